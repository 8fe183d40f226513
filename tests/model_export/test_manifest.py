"""The manifest's schema, parsing errors, and compare-and-swap under a competing writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_export.errors import ConflictRetriesExhausted, ManifestError
from model_export.manifest import Manifest, load_manifest, update_manifest
from model_export.publish import publish
from model_export.store import open_store


def _valid(store_uri: str, savedmodels: dict[str, Path]) -> dict[str, object]:
    publish(savedmodels["v1"], store_uri, "m", label="stable")
    data: dict[str, object] = json.loads(open_store(store_uri).read("m/manifest.json").data)
    return data


def test_manifest_round_trips(store_uri: str, savedmodels: dict[str, Path]) -> None:
    data = _valid(store_uri, savedmodels)
    m = Manifest.loads(json.dumps(data).encode(), "x")
    assert m.to_json() == data
    assert set(data) == {"schema_version", "model", "last_version", "versions", "labels", "history"}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(schema_version=2), "has schema_version 2; this modelfleet reads 1"),
        (lambda d: d.pop("versions"), "is malformed: KeyError"),
        (lambda d: d.update(labels={"stable": 7}), "labels point at missing versions {'stable': 7}"),
        (lambda d: d.update(last_version=0), "last_version 0 is below a listed version"),
        (lambda d: d["versions"][0].update(files=None), "is malformed: AttributeError"),
    ],
)
def test_malformed_manifests_are_reported(
    tmp_path: Path, savedmodels: dict[str, Path], mutate: object, message: str
) -> None:
    (tmp_path / "s").mkdir()
    uri = f"file://{tmp_path / 's'}"
    data = _valid(uri, savedmodels)
    mutate(data)  # type: ignore[operator]
    open_store(uri).write("m/manifest.json", json.dumps(data).encode())
    with pytest.raises(ManifestError, match=message):
        load_manifest(open_store(uri), "m")


def test_not_json_is_a_manifest_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="malformed"):
        Manifest.loads(b"{not json", "gs://b/m/manifest.json")


def test_cas_loses_to_a_competing_writer_and_gives_up(store_uri: str, savedmodels: dict[str, Path]) -> None:
    _valid(store_uri, savedmodels)
    st = open_store(store_uri)
    calls = []

    def change(m: Manifest) -> None:
        calls.append(1)
        # Another writer updates the manifest after our read, every time: our conditional write must lose.
        other, token = load_manifest(st, "m")
        other.move_label(f"shadow{len(calls)}", 1, "label", "other")  # a new change each time
        st.write("m/manifest.json", other.dumps(), if_token=token)

    with pytest.raises(ConflictRetriesExhausted, match="kept changing under 4 attempts"):
        update_manifest(st, "m", change, attempts=4, base_delay=0.001)
    assert len(calls) == 4
    final, _ = load_manifest(st, "m")
    assert sorted(h.label for h in final.history if h.by == "other") == [f"shadow{i}" for i in range(1, 5)]
