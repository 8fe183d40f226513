"""Publishing to all three stores: layout, manifest, validation, signature rules, round trip."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from model_export.errors import ModelfleetError, NotASavedModel, SignatureChanged
from model_export.manifest import load_manifest
from model_export.publish import publish
from model_export.store import ObjectInfo, open_store
from model_export.transfer import download_tree
from tests.support.models import SAMPLE, predict


def _objects(uri: str) -> dict[str, int]:
    return {o.key: o.size for o in open_store(uri).list("")}


def test_publish_writes_files_then_manifest(store_uri: str, savedmodels: dict[str, Path]) -> None:
    result = publish(savedmodels["v1"], store_uri, "digits", source={"job_id": "job-7", "git_sha": "abc123"})
    assert (result.model, result.version, result.labels) == ("digits", 1, [])
    st = open_store(store_uri)
    manifest, token = load_manifest(st, "digits")
    assert token is not None
    entry = manifest.get(1)
    local = {p.relative_to(savedmodels["v1"]).as_posix(): p for p in savedmodels["v1"].rglob("*") if p.is_file()}
    assert set(entry.files) == set(local)
    for rel, path in local.items():
        assert entry.files[rel].sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry.files[rel].size == path.stat().st_size
    assert entry.source == {"job_id": "job-7", "git_sha": "abc123"}
    assert entry.signature.inputs["features"].dtype == "float32"
    assert entry.signature.inputs["features"].shape == (-1, 4)
    assert set(entry.signature.outputs) == {"probs"}
    stored = {k: v for k, v in _objects(store_uri).items() if k.startswith("digits/1/")}
    assert stored == {f"digits/1/{rel}": p.stat().st_size for rel, p in local.items()}
    # Nothing but the version, the manifest and no leftover reservation.
    assert set(_objects(store_uri)) == {*stored, "digits/manifest.json"}
    raw = json.loads(st.read("digits/manifest.json").data)
    assert raw["schema_version"] == 2 and raw["last_version"] == 1


def test_second_publish_gets_next_version_and_label(store_uri: str, savedmodels: dict[str, Path]) -> None:
    publish(savedmodels["v1"], store_uri, "m", label="stable")
    result = publish(savedmodels["v2"], store_uri, "m", label="canary")
    assert (result.version, result.labels) == (2, ["canary"])
    manifest, _ = load_manifest(open_store(store_uri), "m")
    assert manifest.labels == {"stable": 1, "canary": 2}
    assert [(h.label, h.from_version, h.to_version, h.action) for h in manifest.history] == [
        ("stable", None, 1, "publish"),
        ("canary", None, 2, "publish"),
    ]


def test_round_trip_predicts_like_the_original(store_uri: str, savedmodels: dict[str, Path], tmp_path: Path) -> None:
    publish(savedmodels["v2"], store_uri, "m")
    st = open_store(store_uri)
    manifest, _ = load_manifest(st, "m")
    dest = tmp_path / "downloaded"
    download_tree(st, "m/1", manifest.get(1).files, dest)
    got = predict(dest, SAMPLE)
    want = predict(savedmodels["v2"], SAMPLE)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.shape == (8, 3)


def test_download_refuses_a_corrupted_object(store_uri: str, savedmodels: dict[str, Path], tmp_path: Path) -> None:
    from model_export.errors import TransferError

    publish(savedmodels["v1"], store_uri, "m")
    st = open_store(store_uri)
    manifest, _ = load_manifest(st, "m")
    st.write("m/1/saved_model.pb", b"not the bytes that were published")
    with pytest.raises(TransferError, match=r"saved_model\.pb: checksum mismatch"):
        download_tree(st, "m/1", manifest.get(1).files, tmp_path / "d")


def test_savedmodel_without_variables_is_refused_before_any_upload(
    store_uri: str, savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(savedmodels["v1"], broken)
    shutil.rmtree(broken / "variables")
    before = _objects(store_uri)
    with pytest.raises(NotASavedModel, match=r"has variables but no variables/variables\.index"):
        publish(broken, store_uri, "m")
    assert _objects(store_uri) == before


def test_incompatible_signature_is_refused_unless_allowed(store_uri: str, savedmodels: dict[str, Path]) -> None:
    publish(savedmodels["v1"], store_uri, "m", label="stable")
    before = _objects(store_uri)
    with pytest.raises(SignatureChanged) as exc:
        publish(savedmodels["wide"], store_uri, "m")
    assert str(exc.value) == (
        "serving_default inputs differ from stable version 1 of 'm': input 'features' changed from "
        "float32[-1, 4] to float32[-1, 5]; pass --allow-signature-change to publish anyway"
    )
    assert _objects(store_uri) == before
    assert publish(savedmodels["wide"], store_uri, "m", allow_signature_change=True).version == 2


def test_compatible_publish_needs_no_flag(store_uri: str, savedmodels: dict[str, Path]) -> None:
    publish(savedmodels["v1"], store_uri, "m", label="stable")
    assert publish(savedmodels["v2"], store_uri, "m").version == 2


def test_a_version_published_during_reservation_is_not_reused(savedmodels: dict[str, Path], tmp_path: Path) -> None:
    """Publisher A commits version 1 and releases its reservation between publisher B's manifest read and B's
    reservation: B's create-only write of `_pending/1.json` then succeeds, and only a manifest read after it shows
    that 1 is taken. (Found by the 8-publisher test on a loaded machine; made deterministic here.)"""
    from model_export.store.file import FileStore

    root = tmp_path / "s"
    root.mkdir()
    uri = f"file://{root}"

    class PublishesDuringListing(FileStore):
        interfered = False

        def list(self, prefix: str) -> Iterator[ObjectInfo]:
            listed = list(super().list(prefix))
            if prefix.endswith("/_pending/") and not self.interfered:
                self.interfered = True
                assert publish(savedmodels["v1"], uri, "m").version == 1  # publisher A, start to finish
            return iter(listed)

    b = publish(savedmodels["v2"], PublishesDuringListing(uri, str(root)), "m")
    assert b.version == 2
    manifest, _ = load_manifest(open_store(uri), "m")
    assert sorted(manifest.versions) == [1, 2]
    v1_pb = (savedmodels["v1"] / "saved_model.pb").read_bytes()
    assert manifest.get(1).files["saved_model.pb"].sha256 == hashlib.sha256(v1_pb).hexdigest()
    assert (root / "m" / "1" / "saved_model.pb").read_bytes() == v1_pb  # A's files were not overwritten
    assert list(open_store(uri).list("m/_pending/")) == []


def test_a_file_rewritten_during_publish_never_commits_a_digest_of_other_bytes(
    store_uri: str, savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    """A concurrent writer rewrites a big asset in place, same size, while it is published: publish fails, or every
    recorded digest is that of the bytes the store holds. Never exit 0 with a version the agents would refuse."""
    model = tmp_path / "model"
    shutil.copytree(savedmodels["v1"], model)
    asset = model / "assets" / "big.bin"
    asset.parent.mkdir(exist_ok=True)
    size = 24 * 1024 * 1024
    asset.write_bytes(b"\0" * size)
    stop = threading.Event()

    def rewrite() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            with asset.open("r+b") as fh:  # in place: same inode, same size
                for offset in range(0, size, 1024 * 1024):
                    fh.seek(offset)
                    fh.write(bytes([n % 251]) * 4096)

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        outcomes: list[int | None] = []
        for _ in range(3):
            try:
                outcomes.append(publish(model, store_uri, "m").version)
            except ModelfleetError as e:
                assert "\n" not in str(e)
                outcomes.append(None)
    finally:
        stop.set()
        writer.join()
    st = open_store(store_uri)
    manifest, _ = load_manifest(st, "m")
    assert sorted(manifest.versions) == sorted(v for v in outcomes if v is not None)
    for v, entry in manifest.versions.items():
        download_tree(st, f"m/{v}", entry.files, tmp_path / "check" / str(v))  # raises on any digest mismatch
