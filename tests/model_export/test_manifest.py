"""The manifest's schema (v1 read, v2 read and written), its validator's one-line errors, and compare-and-swap under a
competing writer or a lost reply."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from model_export.constants import CANARY, STABLE
from model_export.errors import BadInput, ConflictRetriesExhausted, ManifestError, PreconditionFailed, StoreError
from model_export.manifest import (
    OPERATIONS_KEPT,
    FileEntry,
    Manifest,
    VersionEntry,
    check_idempotency_key,
    field_path,
    is_safe_relpath,
    load_manifest,
    relpath_problem,
    update_manifest,
)
from model_export.publish import publish
from model_export.savedmodel import Validation
from model_export.signature import Signature, TensorSpec
from model_export.store import Store, open_store
from model_export.versions import promote
from modelfleet.agent.cache import LocalCache, VersionRefused

REPO_ROOT = Path(__file__).resolve().parents[2]
KEY = "m/manifest.json"
SIG = Signature(
    "tensorflow/serving/predict",
    {"pixels": TensorSpec("float32", (-1, 64))},
    {"probabilities": TensorSpec("float32", None)},
)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _entry(version: int, *, files: int = 2, key: str | None = None) -> VersionEntry:
    paths = ["saved_model.pb", *(f"variables/variables.data-{i:05d}-of-{files:05d}" for i in range(files - 1))]
    return VersionEntry(
        version,
        "2026-11-25T07:53:36.179Z",
        {p: FileEntry(_digest(f"{version}/{p}"), 100 + i) for i, p in enumerate(paths)},
        SIG,
        {"git_sha": "1a2b3c", "job_id": f"train-{version}"},
        idempotency_key=key,
    )


def _sample() -> Manifest:
    """Two versions, both labels, a history, an abandoned number and one operation: every field of schema v2."""
    m = Manifest("m")
    m.versions = {1: _entry(1, key="train-1"), 3: _entry(3)}
    m.last_version = 3
    m.move_label(STABLE, 1, "publish", "ci@runner")
    m.move_label(CANARY, 3, "label", None)
    m.abandon(2, "ops@host")
    m.record_operation("0123456789abcdef0123456789abcdef", "label", "ops@host")
    return m


def _doc() -> dict[str, Any]:
    return _sample().to_json()


def _loads(doc: object, model: str | None = "m") -> Manifest:
    return Manifest.loads(json.dumps(doc).encode(), "s3://b/m/manifest.json", model=model)


def _file_store(tmp_path: Path) -> Store:
    root = tmp_path / "store"
    root.mkdir(exist_ok=True)
    return open_store(f"file://{root}")


# -- the schema -----------------------------------------------------------------------------------------------------


def test_manifest_round_trips(store_uri: str, savedmodels: dict[str, Path]) -> None:
    publish(savedmodels["v1"], store_uri, "m", label="stable")
    data = json.loads(open_store(store_uri).read(KEY).data)
    m = Manifest.loads(json.dumps(data).encode(), "x", model="m")
    assert m.to_json() == data
    assert set(data) == {
        "schema_version",
        "model",
        "last_version",
        "versions",
        "labels",
        "history",
        "abandoned",
        "operations",
    }
    assert data["schema_version"] == 2
    assert [op["action"] for op in data["operations"]] == ["publish"]
    for f in data["versions"][0]["files"].values():
        assert set(f) == {"digest", "size"} and f["digest"].startswith("sha256:")


def test_every_v2_field_round_trips() -> None:
    m = _sample()
    again = Manifest.loads(m.dumps(), "x", model="m")
    assert again == m
    assert again.dumps() == m.dumps()
    doc = m.to_json()
    assert doc["abandoned"] == [{"version": 2, "time": m.abandoned[2].time, "by": "ops@host"}]
    assert doc["versions"][0]["idempotency_key"] == "train-1"
    assert "idempotency_key" not in doc["versions"][1]  # written only when set
    assert doc["versions"][0]["files"]["saved_model.pb"] == {
        "digest": f"sha256:{_digest('1/saved_model.pb')}",
        "size": 100,
    }
    assert again.versions[1].files["saved_model.pb"].sha256 == _digest("1/saved_model.pb")


def test_a_v1_manifest_is_read_and_rewritten_as_v2() -> None:
    v1 = _doc()
    v1["schema_version"] = 1
    for v in v1["versions"]:
        v.pop("idempotency_key", None)
        v["files"] = {
            p: {"sha256": f["digest"].removeprefix("sha256:"), "size": f["size"]} for p, f in v["files"].items()
        }
    del v1["abandoned"], v1["operations"]
    v1["last_version"] = 3
    m = _loads(v1)
    assert m.versions[3].files == _entry(3).files
    assert (m.abandoned, m.operations) == ({}, [])
    assert m.to_json()["schema_version"] == 2
    # A v1 manifest has no digest form and no v2 fields; one with the v2 file form is malformed.
    v1["versions"][0]["files"]["saved_model.pb"] = {"digest": "sha256:" + "0" * 64, "size": 1}
    with pytest.raises(ManifestError, match=r"versions\[0\]\.files\['saved_model\.pb'\]\.sha256: Field required"):
        _loads(v1)


def test_unknown_fields_are_ignored() -> None:
    m = _sample()
    doc = m.to_json()
    doc["added_later"] = {"x": 1}
    doc["versions"][0]["added_later"] = [1]
    assert _loads(doc) == m


def test_validation_is_written_only_when_present_and_round_trips() -> None:
    m = _sample()
    old = m.to_json()
    assert all("validation" not in v for v in old["versions"])  # what manifests written before it look like
    assert _loads(old) == m
    scored = Validation("accuracy", 0.994, 178)
    m.versions[3] = dataclasses.replace(m.versions[3], validation=scored)
    doc = m.to_json()
    assert doc["versions"][1]["validation"] == {"metric": "accuracy", "value": 0.994, "rows": 178}
    assert "validation" not in doc["versions"][0]
    again = Manifest.loads(m.dumps(), "x", model="m")
    assert again.versions[3].validation == scored and again.versions[1].validation is None
    assert again.dumps() == m.dumps()


@pytest.mark.parametrize(
    ("validation", "message"),
    [
        ({"metric": "", "value": 0.5, "rows": 3}, r"^versions\[0\]\.validation\.metric: String should have at least 1"),
        ({"metric": "mae", "value": "0.5", "rows": 3}, r"^versions\[0\]\.validation\.value: .*valid number"),
        ({"metric": "mae", "value": float("nan"), "rows": 3}, r"^versions\[0\]\.validation\.value: .*finite number"),
        ({"metric": "mae", "value": 0.5, "rows": 0}, r"^versions\[0\]\.validation\.rows: .*greater than or equal to 1"),
        ({"metric": "mae", "value": 0.5}, r"^versions\[0\]\.validation\.rows: Field required"),
        ("accuracy=0.9", r"^versions\[0\]\.validation: Input should be a JSON object"),
    ],
)
def test_malformed_validation_is_one_line_naming_the_field(validation: object, message: str) -> None:
    doc = _doc()
    doc["versions"][0]["validation"] = validation
    with pytest.raises(ManifestError) as caught:
        _loads(doc)
    text = str(caught.value).removeprefix("s3://b/m/manifest.json is malformed: ")
    assert re.search(message, text), text


def test_abandon_fences_the_number() -> None:
    m = _sample()
    m.abandon(7, "ops")
    assert m.last_version == 7 and m.abandoned[7].by == "ops"
    first = m.abandoned[7]
    m.abandon(7, "again")
    assert m.abandoned[7] == first
    with pytest.raises(Exception, match="version 1 of 'm' is published; it cannot be abandoned"):
        m.abandon(1)
    assert _loads(m.to_json()) == m


def test_find_by_idempotency_key() -> None:
    m = _sample()
    assert m.find_by_idempotency_key("train-1") == m.versions[1]
    assert m.find_by_idempotency_key("train-3") is None


@pytest.mark.parametrize("key", ["", " x", "x ", "a\nb", "k" * 257])
def test_check_idempotency_key_refuses(key: str) -> None:
    with pytest.raises(BadInput, match=r"idempotency key .* is invalid"):
        check_idempotency_key(key)


def test_operations_keep_the_last_100() -> None:
    m = Manifest("m")
    for i in range(OPERATIONS_KEPT + 5):
        m.record_operation(f"{i:032x}", "label")
    assert len(m.operations) == OPERATIONS_KEPT == 100
    assert m.operations[0].id == f"{5:032x}" and m.operations[-1].id == f"{104:032x}"


# -- the one path rule ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "safe"),
    [
        ("saved_model.pb", True),
        ("variables/variables.index", True),
        ("assets.extra/tf_serving_warmup_requests", True),
        ("a..b/c.", True),
        ("", False),
        ("/etc/passwd", False),
        ("../x", False),
        ("../../etc/x", False),
        ("a/../../b", False),
        ("a/..", False),
        ("./a", False),
        ("a/./b", False),
        ("a//b", False),
        ("a/", False),
        ("a\\..\\b", False),
        ("a\0b", False),
    ],
)
def test_safe_relpath_rule(rel: str, safe: bool) -> None:
    assert is_safe_relpath(rel) is safe
    assert (relpath_problem(rel) is None) is safe


def test_the_agent_refuses_unsafe_paths_by_the_same_rule(tmp_path: Path) -> None:
    entry = VersionEntry(1, "2026-11-25T07:53:36.179Z", {"../../etc/x": FileEntry("0" * 64, 1)}, SIG)
    with pytest.raises(VersionRefused, match=r"file path '\.\./\.\./etc/x' in manifest: unsafe path \(relative POSIX"):
        LocalCache(tmp_path / "root").fetch(_file_store(tmp_path), "m", entry)
    assert not (tmp_path / "etc").exists()


# -- the validator: one line naming the field -----------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], object]
FILE0 = re.escape("versions[0].files['saved_model.pb']")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        # wrong types (were AssertionError / KeyError / AttributeError tracebacks), no coercion
        (lambda d: d.pop("versions"), r"^versions: Field required$"),
        (lambda d: d["versions"][0].update(files=None), r"^versions\[0\]\.files: Input should be a JSON object"),
        (lambda d: d["versions"][0].update(version="1"), r"^versions\[0\]\.version: .*valid integer \(got '1'\)$"),
        (lambda d: d["versions"][0].update(version=1.0), r"^versions\[0\]\.version: .*valid integer \(got 1\.0\)$"),
        (lambda d: d["versions"][0].update(version=True), r"^versions\[0\]\.version: .*valid integer \(got True\)$"),
        (lambda d: d.update(last_version="3"), r"^last_version: Input should be a valid integer \(got '3'\)$"),
        (lambda d: d["labels"].update(stable="1"), r"^labels\['stable'\]: Input should be a valid integer"),
        (lambda d: d["versions"][0].update(signature=[]), r"^versions\[0\]\.signature: Input should be a JSON object"),
        (
            lambda d: d["versions"][0]["signature"].update(inputs=[1]),
            r"^versions\[0\]\.signature\.inputs: Input should be a JSON object$",
        ),
        (
            lambda d: d["versions"][0]["signature"]["inputs"]["pixels"].update(shape=[-1, "64"]),
            r"^versions\[0\]\.signature\.inputs\['pixels'\]\.shape\[1\]: .*valid integer \(got '64'\)$",
        ),
        (
            lambda d: d["versions"][0]["signature"]["inputs"]["pixels"].update(shape=[-2]),
            r"^versions\[0\]\.signature\.inputs\['pixels'\]\.shape\[0\]: .*greater than or equal to -1",
        ),
        (lambda d: d["versions"][0]["source"].update(job_id=7), r"^versions\[0\]\.source\['job_id'\]: .*valid string"),
        (lambda d: d["history"][0].update(to="1"), r"^history\[0\]\.to: Input should be a valid integer"),
        (lambda d: d["versions"][0].update(created=12), r"^versions\[0\]\.created: Input should be a valid string"),
        (lambda d: d["versions"][0].update(created="yesterday"), r"^versions\[0\]\.created: String should match"),
        # negative numbers
        (lambda d: d["versions"][0].update(version=-1), r"^versions\[0\]\.version: .*greater than or equal to 0"),
        (lambda d: d.update(last_version=-1), r"^last_version: Input should be greater than or equal to 0 \(got -1\)$"),
        (lambda d: d["labels"].update(stable=-1), r"^labels\['stable'\]: .*greater than or equal to 0"),
        (lambda d: d["versions"][0]["files"]["saved_model.pb"].update(size=-5), rf"^{FILE0}\.size: .*greater than"),
        (lambda d: d["abandoned"][0].update(version=-2), r"^abandoned\[0\]\.version: .*greater than or equal to 0"),
        # digests
        (
            lambda d: d["versions"][0]["files"]["saved_model.pb"].update(digest="sha256:" + "A" * 64),
            rf"^{FILE0}\.digest: String should match pattern '\^sha256:\[0-9a-f\]\{{64\}}\$'",
        ),
        (
            lambda d: d["versions"][0]["files"]["saved_model.pb"].update(digest="md5:" + "0" * 32),
            rf"^{FILE0}\.digest: String should match pattern",
        ),
        (  # the v1 file form in a v2 manifest
            lambda d: d["versions"][0]["files"].update(x={"sha256": "0" * 64, "size": 1}),
            r"^versions\[0\]\.files\['x'\]\.digest: Field required$",
        ),
        # unsafe paths
        (
            lambda d: d["versions"][0]["files"].update({"../x": {"digest": "sha256:" + "0" * 64, "size": 1}}),
            r"^versions\[0\]\.files\['\.\./x'\]: unsafe path \(relative POSIX path without '\.\.'\)$",
        ),
        (
            lambda d: d["versions"][1]["files"].update({"/etc/x": {"digest": "sha256:" + "0" * 64, "size": 1}}),
            r"^versions\[1\]\.files\['/etc/x'\]: unsafe path \(absolute",
        ),
        (
            lambda d: d["versions"][0]["files"].update({"a\\b": {"digest": "sha256:" + "0" * 64, "size": 1}}),
            r"^versions\[0\]\.files\['a\\\\b'\]: unsafe path \(backslash",
        ),
        # names and keys
        (lambda d: d.update(model="other"), r"^model: names 'other', but the manifest is stored under model 'm'$"),
        (lambda d: d.update(model="-x"), r"^model: not a model name"),
        (lambda d: d["labels"].update({"canary\n": 1}), r"^labels\['canary\\n'\]: not a label name"),
        (lambda d: d["history"][0].update(label="a b"), r"^history\[0\]\.label: not a label name"),
        (
            lambda d: d["versions"][1].update(idempotency_key="train-1"),
            r"^versions\[1\]\.idempotency_key: 'train-1' is also the key of version 1$",
        ),
        (lambda d: d["versions"][1].update(idempotency_key=""), r"^versions\[1\]\.idempotency_key: use 1-256"),
        (lambda d: d["operations"][0].update(id="not-hex"), r"^operations\[0\]\.id: String should match pattern"),
        # relations between fields
        (lambda d: d["labels"].update(stable=7), r"^labels\['stable'\]: points at version 7, which is not listed$"),
        (lambda d: d["labels"].update(stable=2), r"^labels\['stable'\]: points at version 2, which is not listed$"),
        (lambda d: d.update(last_version=1), r"^last_version: 1 is below listed version 3 \(versions\[1\]\)$"),
        (
            lambda d: (d.update(last_version=3), d["abandoned"][0].update(version=4)),
            r"^last_version: 3 is below abandoned version 4 \(abandoned\[0\]\)$",
        ),
        (
            lambda d: d["versions"][1].update(version=1),
            r"^versions\[1\]\.version: version 1 is listed twice \(also versions\[0\]\)$",
        ),
        (lambda d: d["abandoned"][0].update(version=3), r"^abandoned\[0\]\.version: version 3 is also listed"),
        (lambda d: d["abandoned"].append(d["abandoned"][0]), r"^abandoned\[1\]\.version: version 2 is abandoned twice"),
        # several problems: the first, and a count
        (
            lambda d: d["versions"][0].update(version="1", created=None),
            r"^versions\[0\]\.version: Input should be a valid integer \(got '1'\) \(and 1 more problem\)$",
        ),
    ],
)
def test_malformed_manifests_are_one_line_naming_the_field(mutate: Mutation, message: str) -> None:
    doc = _doc()
    mutate(doc)
    with pytest.raises(ManifestError) as caught:
        _loads(doc)
    text = str(caught.value)
    prefix = "s3://b/m/manifest.json is malformed: "
    assert text.startswith(prefix) and "\n" not in text, text
    assert caught.value.exit_code == 1
    assert re.search(message, text.removeprefix(prefix)), text


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", r"is malformed: JSONDecodeError: Expecting property name"),
        (b"\xff\xfe{}", r"is malformed: (JSONDecodeError|UnicodeDecodeError): "),
        (b"[1, 2]", r"is malformed: the top level is not a JSON object$"),
        (b"[" * 100_000 + b"]" * 100_000, r"is malformed: JSON nested too deeply$"),
        (b'{"schema_version": 2, "versions": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", r"nested too deeply$"),
        (b'{"schema_version": 3}', r"has schema_version 3; this modelfleet reads 1 and 2 \(upgrade it\)$"),
        (b'{"schema_version": "2"}', r"has schema_version '2'; this modelfleet reads 1 and 2"),
        (b'{"schema_version": true}', r"has schema_version True; this modelfleet reads 1 and 2"),
        (b'{"schema_version": 2.0}', r"has schema_version 2\.0; this modelfleet reads 1 and 2"),
        (b"{}", r"has schema_version None; this modelfleet reads 1 and 2"),
    ],
)
def test_undecodable_manifests_are_one_line(data: bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=message) as caught:
        Manifest.loads(data, "gs://b/m/manifest.json")
    assert "\n" not in str(caught.value)


def test_nesting_within_the_json_limit_is_a_type_error_not_a_recursion() -> None:
    doc = _doc()
    deep: Any = 0
    for _ in range(500):
        deep = [deep]
    doc["versions"][0]["signature"] = deep
    with pytest.raises(ManifestError, match=r"versions\[0\]\.signature: Input should be a JSON object$"):
        _loads(doc)


def test_load_manifest_checks_the_model_of_the_key(tmp_path: Path) -> None:
    st = _file_store(tmp_path)
    st.write("other/manifest.json", _sample().dumps())
    with pytest.raises(
        ManifestError, match=r"other/manifest\.json is malformed: model: names 'm', but .* model 'other'"
    ):
        load_manifest(st, "other")


def test_wrong_types_are_reported_under_python_O() -> None:
    """Asserts vanish under -O: the validation must not rely on them (it used to: AssertionError, or worse, nothing)."""
    doc = _doc()
    doc["versions"][0]["signature"]["inputs"] = [1]
    code = (
        "import json, sys\n"
        "from model_export.errors import ManifestError\n"
        "from model_export.manifest import Manifest\n"
        "from model_export.signature import Signature\n"
        "try:\n"
        "    Manifest.loads(sys.stdin.buffer.read(), 'x', model='m')\n"
        "except ManifestError as e:\n"
        "    print(e)\n"
        "try:\n"
        "    Signature.from_json({'method': 'p', 'inputs': [1], 'outputs': {}})\n"
        "except ValueError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-O", "-c", code],
        input=json.dumps(doc).encode(),
        capture_output=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=True,
    )
    assert out.stdout.decode().splitlines() == [
        "x is malformed: versions[0].signature.inputs: Input should be a JSON object",
        "signature.inputs: expected an object, got list",
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], r"^signature: expected an object, got list$"),
        ({"inputs": {}, "outputs": {}}, r"^signature\.method: expected a string, got NoneType$"),
        ({"method": "p", "inputs": {"x": {"dtype": "f", "shape": None}}}, r"^signature\.outputs: expected an object"),
        ({"method": "p", "inputs": {"x": 1}, "outputs": {}}, r"^signature\.inputs\['x'\]: expected an object, got int"),
        (
            {"method": "p", "inputs": {"x": {"shape": None}}, "outputs": {}},
            r"^signature\.inputs\['x'\]\.dtype: expected",
        ),
        (
            {"method": "p", "inputs": {"x": {"dtype": "f"}}, "outputs": {}},
            r"^signature\.inputs\['x'\]\.shape: expected",
        ),
        (
            {"method": "p", "inputs": {"x": {"dtype": "f", "shape": [True]}}, "outputs": {}},
            r"^signature\.inputs\['x'\]\.shape\[0\]: expected an integer >= -1, got bool$",
        ),
    ],
)
def test_signature_from_json_names_the_field(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Signature.from_json(data)


def test_signature_from_json_round_trips() -> None:
    assert Signature.from_json(SIG.to_json()) == SIG


def test_field_path_formats_keys_and_indexes() -> None:
    assert field_path(("versions", 2, "files", "../x", "[key]")) == "versions[2].files['../x']"
    assert field_path(("versions", 0, "source", "files")) == "versions[0].source['files']"
    assert field_path(("versions", 0, "signature", "inputs", "x", "shape", 1)) == (
        "versions[0].signature.inputs['x'].shape[1]"
    )
    assert field_path(()) == "(top level)"


def test_200_versions_of_30_files_load_fast() -> None:
    m = Manifest("m", last_version=200)
    m.versions = {v: _entry(v, files=30, key=f"job-{v}") for v in range(1, 201)}
    m.labels = {STABLE: 199, CANARY: 200}
    for i in range(OPERATIONS_KEPT):
        m.record_operation(f"{i:032x}", "publish", "ci")
    data = m.dumps()
    assert Manifest.loads(data, "x", model="m") == m  # also builds the validator on first use
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        Manifest.loads(data, "x", model="m")
        timings.append(time.perf_counter() - started)
    assert min(timings) < 0.25, timings  # ~20 ms on a laptop; generous for loaded CI machines


# -- compare-and-swap -----------------------------------------------------------------------------------------------


def test_cas_loses_to_a_competing_writer_and_gives_up(store_uri: str) -> None:
    st = open_store(store_uri)
    st.write(KEY, _sample().dumps())
    calls = []

    def change(m: Manifest) -> None:
        calls.append(1)
        # Another writer updates the manifest after our read, every time: our conditional write must lose.
        other, token = load_manifest(st, "m")
        other.move_label(f"shadow{len(calls)}", 1, "label", "other")  # a new change each time
        st.write(KEY, other.dumps(), if_token=token)

    with pytest.raises(ConflictRetriesExhausted, match="kept changing under 4 attempts"):
        update_manifest(st, "m", change, attempts=4, base_delay=0.001)
    assert len(calls) == 4
    final, _ = load_manifest(st, "m")
    assert sorted(h.label for h in final.history if h.by == "other") == [f"shadow{i}" for i in range(1, 5)]


def _seeded(tmp_path: Path) -> Store:
    st = _file_store(tmp_path)
    st.write(KEY, _sample().dumps())
    return st


class _LostReply:
    """Wraps a store's ``write``: the write lands, then the caller gets ``error`` (what an SDK's retry of a
    conditional PUT whose reply was lost gets: 412), ``times`` times."""

    def __init__(self, st: Store, error: Exception, *, times: int = 1, lands: bool = True) -> None:
        self.st, self.error, self.times, self.lands = st, error, times, lands
        self.real = st.write
        self.writes = 0

    def __call__(self, key: str, data: bytes, *, if_token: str | None = None, if_absent: bool = False) -> str:
        self.writes += 1
        if self.times > 0:
            self.times -= 1
            if self.lands:
                self.real(key, data, if_token=if_token, if_absent=if_absent)
            raise self.error
        return self.real(key, data, if_token=if_token, if_absent=if_absent)


def _promote_like(calls: list[int]) -> Callable[[Manifest], str]:
    def change(m: Manifest) -> str:
        calls.append(1)
        if CANARY not in m.labels:
            raise BadInput("model 'm' has no 'canary' label to promote")
        target = m.labels[CANARY]
        m.move_label(STABLE, target, "promote", "me")
        m.move_label(CANARY, None, "promote", "me")
        return f"promoted {target}"

    return change


@pytest.mark.parametrize("error", [PreconditionFailed("412 after a lost reply"), StoreError("read timed out")])
def test_a_write_whose_reply_was_lost_succeeds_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    st = _seeded(tmp_path)
    lossy = _LostReply(st, error)
    monkeypatch.setattr(st, "write", lossy)
    calls: list[int] = []
    manifest, result = update_manifest(st, "m", _promote_like(calls), action="promote", base_delay=0.001)
    assert (result, len(calls), lossy.writes) == ("promoted 3", 1, 1)  # not re-applied: "no canary label"
    final, _ = load_manifest(st, "m")
    assert final == manifest
    assert final.labels == {STABLE: 3}
    assert [(h.label, h.to_version) for h in final.history if h.action == "promote"] == [(STABLE, 3), (CANARY, None)]
    assert [op.action for op in final.operations] == ["label", "promote"]


def test_label_changes_whose_reply_was_lost_are_one_history_entry_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = _seeded(tmp_path)
    before = len(load_manifest(st, "m")[0].history)
    lossy = _LostReply(st, PreconditionFailed("412"), times=2)
    monkeypatch.setattr(st, "write", lossy)
    calls: list[str] = []

    def label(m: Manifest) -> None:
        calls.append("label")
        m.move_label("shadow", 3, "label", "me")

    def unlabel(m: Manifest) -> None:  # as `label --clear`: refuses when the label is not set
        calls.append("unlabel")
        if CANARY not in m.labels:
            raise BadInput("model 'm' has no label 'canary'")
        m.move_label(CANARY, None, "unlabel", "me")

    update_manifest(st, "m", label, action="label")
    update_manifest(st, "m", unlabel, action="unlabel")
    assert (calls, lossy.writes) == (["label", "unlabel"], 2)
    final, _ = load_manifest(st, "m")
    assert [(h.label, h.action) for h in final.history[before:]] == [("shadow", "label"), (CANARY, "unlabel")]


def test_promote_whose_reply_was_lost_reports_success(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    st = _seeded(tmp_path)
    monkeypatch.setattr(st, "write", _LostReply(st, PreconditionFailed("412")))
    assert promote(st, "m").labels == {STABLE: 3}  # was: BadInput "no 'canary' label to promote" (exit 2)


def test_a_store_error_when_nothing_landed_is_raised_without_a_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = _seeded(tmp_path)
    before = st.read(KEY).data
    lossy = _LostReply(st, StoreError("connection reset"), lands=False)
    monkeypatch.setattr(st, "write", lossy)
    calls: list[int] = []
    with pytest.raises(StoreError, match="connection reset"):
        update_manifest(st, "m", _promote_like(calls), action="promote")
    assert (len(calls), lossy.writes) == (1, 1)
    assert st.read(KEY).data == before


def test_a_lost_race_without_our_write_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    st = _seeded(tmp_path)
    lossy = _LostReply(st, PreconditionFailed("412"), times=2, lands=False)
    monkeypatch.setattr(st, "write", lossy)
    calls: list[int] = []
    _, result = update_manifest(st, "m", _promote_like(calls), action="promote", base_delay=0.001)
    assert (result, len(calls), lossy.writes) == ("promoted 3", 3, 3)


def test_a_write_that_lands_late_is_not_applied_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first attempt's write arrives after our re-read said it had not landed: the next attempt sees our
    operation id and returns instead of promoting again."""
    st = _seeded(tmp_path)
    real_write, real_read = st.write, st.read
    delayed: list[Callable[[], str]] = []
    reads_after_failure = []

    def write(key: str, data: bytes, *, if_token: str | None = None, if_absent: bool = False) -> str:
        if not delayed:
            delayed.append(lambda: real_write(key, data, if_token=if_token, if_absent=if_absent))
            raise PreconditionFailed("request timed out; retried: 412")
        return real_write(key, data, if_token=if_token, if_absent=if_absent)

    def read(key: str) -> Any:
        if delayed:
            reads_after_failure.append(1)
            if len(reads_after_failure) == 2:  # the re-read missed it; it lands before the next attempt's read
                delayed[0]()
        return real_read(key)

    monkeypatch.setattr(st, "write", write)
    monkeypatch.setattr(st, "read", read)
    calls: list[int] = []
    manifest, result = update_manifest(st, "m", _promote_like(calls), action="promote", base_delay=0.001)
    assert (result, len(calls)) == ("promoted 3", 1)
    assert manifest.labels == {STABLE: 3}


def test_each_update_records_one_operation(tmp_path: Path) -> None:
    st = _seeded(tmp_path)
    update_manifest(st, "m", lambda m: None, action="label")
    update_manifest(st, "m", lambda m: None)
    ops = load_manifest(st, "m")[0].operations
    assert [op.action for op in ops] == ["label", "label", "update"]
    assert len({op.id for op in ops}) == 3 and all(len(op.id) == 32 for op in ops)


def test_an_update_that_would_be_malformed_is_not_written(tmp_path: Path) -> None:
    st = _seeded(tmp_path)
    before = st.read(KEY).data
    with pytest.raises(
        ManifestError, match=r"not written: .*: labels\['x'\]: points at version 9, which is not listed"
    ):
        update_manifest(st, "m", lambda m: m.labels.update(x=9))
    assert st.read(KEY).data == before


def test_a_store_error_is_raised_when_the_re_read_fails_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    st = _seeded(tmp_path)
    monkeypatch.setattr(st, "write", _LostReply(st, StoreError("write timed out"), lands=False))
    real_read = st.read
    reads: list[str] = []

    def read(key: str) -> Any:
        reads.append(key)
        if len(reads) > 1:  # the re-read after the write
            raise StoreError("store unreachable")
        return real_read(key)

    monkeypatch.setattr(st, "read", read)
    with pytest.raises(StoreError, match="write timed out"):
        update_manifest(st, "m", _promote_like([]), action="promote")
