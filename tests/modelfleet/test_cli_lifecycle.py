"""`diff`, `delete` (one version, or a whole model) and shell completion, against real stores."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from model_export import versions as ops
from model_export.delete import delete_version
from model_export.errors import StoreError
from model_export.manifest import Manifest, load_manifest, update_manifest
from model_export.store import Store, open_store
from model_export.store.base import DelegatingStore
from tests.conftest import new_bucket
from tests.support.cli import run_cli as run

MAIN = "import sys\nfrom modelfleet.cli import main\nsys.exit(main())"
BOUND = 120.0  # seconds: any one subprocess here, on a loaded 2-core machine


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An empty store: a directory, and a bucket on a real (moto) S3 server."""
    for name in ("MODELFLEET_STORE", "MODELFLEET_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODELFLEET_ACTOR", "ci@test")
    if request.param == "file":
        (tmp_path / "s").mkdir()
        return f"file://{tmp_path / 's'}"
    request.getfixturevalue("s3_server")
    return f"s3://{new_bucket('s3')}/models"


def publish(capsys: pytest.CaptureFixture[str], sm: Path, store: str, model: str, *extra: str) -> None:
    code, _, err = run(capsys, "publish", str(sm), "--store", store, "--model", model, *extra)
    assert (code, err) == (0, ""), err


@pytest.fixture
def iris(capsys: pytest.CaptureFixture[str], store: str, savedmodels: dict[str, Path]) -> str:
    """iris: v1 (the previous stable), v2 stable, v3 unlabelled with a wider input; wine: v1. Returns the store."""
    publish(capsys, savedmodels["v1"], store, "iris", "--label", "stable", "--git-sha", "aaa")
    publish(capsys, savedmodels["v2"], store, "iris", "--label", "canary", "--git-sha", "bbb", "--meta", "run=7")
    assert run(capsys, "promote", "--store", store, "--model", "iris")[0] == 0
    publish(capsys, savedmodels["wide"], store, "iris", "--allow-signature-change", "--git-sha", "ccc")
    publish(capsys, savedmodels["v1"], store, "wine")
    return store


def keys(store: str, prefix: str = "") -> dict[str, int]:
    """Every key under ``prefix`` with its size (the file store's lock files are not store keys)."""
    return {o.key: o.size for o in open_store(store).list(prefix)}


def manifest_bytes(store: str, model: str = "iris") -> bytes:
    return open_store(store).read(f"{model}/manifest.json").data


def assert_deleted(store: str, model: str = "iris") -> Manifest:
    """Nothing of ``model`` is left but its tombstone manifest (which keeps the numbering); returns it."""
    assert set(keys(store, f"{model}/")) == {f"{model}/manifest.json"}
    tombstone, _ = load_manifest(open_store(store), model)
    assert tombstone.deleted and not tombstone.versions and not tombstone.labels
    return tombstone


# -- diff ------------------------------------------------------------------------------------------------------------


def test_diff_text_names_each_tensor_file_size_and_source(capsys: pytest.CaptureFixture[str], iris: str) -> None:
    m = ops.get_manifest(iris, "iris")
    a, b = m.get(1), m.get(3)
    code, out, err = run(capsys, "diff", "--store", iris, "--model", "iris", "1", "3")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "iris: v1 -> v3"
    assert lines[1] == "signature (tensorflow/serving/predict): 1 tensor differs"
    assert lines[2] == "  ~ input  features: float32 [?, 4] -> float32 [?, 5]"
    changed = sorted(p for p in a.files if a.files[p] != b.files.get(p))
    assert lines[3] == f"files: 0 added, 0 removed, {len(changed)} changed, {len(a.files) - len(changed)} unchanged"
    assert changed, "a wider model has other variables"
    for line, path in zip(lines[4 : 4 + len(changed)], changed, strict=True):
        fa, fb = a.files[path], b.files[path]
        assert line == f"  ~ {path}: {fa.size} B {fa.sha256[:12]} -> {fb.size} B {fb.sha256[:12]}"
    assert lines[4 + len(changed)].startswith("size: ")
    assert lines[5 + len(changed) :] == ["source:", "  ~ git_sha: aaa -> ccc"]


def test_diff_json_has_a_stable_shape(capsys: pytest.CaptureFixture[str], iris: str) -> None:
    m = ops.get_manifest(iris, "iris")
    a, b = m.get(1), m.get(2)
    code, out, err = run(capsys, "diff", "--store", iris, "--model", "iris", "1", "2", "--json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    changed = sorted(p for p in a.files if a.files[p] != b.files[p])
    assert doc == {
        "model": "iris",
        "a": {"version": 1, "labels": [], "created": a.created, "bytes": a.total_bytes},
        "b": {"version": 2, "labels": ["stable"], "created": b.created, "bytes": b.total_bytes},
        "same": False,
        "signature": {
            "method": {"a": "tensorflow/serving/predict", "b": "tensorflow/serving/predict"},
            "inputs": [],
            "outputs": [],
        },
        "files": {
            "changes": [
                {
                    "name": p,
                    "change": "changed",
                    "a": {"size": a.files[p].size, "sha256": a.files[p].sha256},
                    "b": {"size": b.files[p].size, "sha256": b.files[p].sha256},
                }
                for p in changed
            ],
            "unchanged": len(a.files) - len(changed),
        },
        "bytes": {"a": a.total_bytes, "b": b.total_bytes, "change": b.total_bytes - a.total_bytes},
        "source": [
            {"name": "git_sha", "change": "changed", "a": {"value": "aaa"}, "b": {"value": "bbb"}},
            {"name": "run", "change": "added", "a": None, "b": {"value": "7"}},
        ],
    }


def test_diff_takes_labels_and_v_numbers(capsys: pytest.CaptureFixture[str], iris: str) -> None:
    by_number = run(capsys, "diff", "--store", iris, "--model", "iris", "2", "3", "--json")
    assert by_number[0] == 0
    assert run(capsys, "diff", "--store", iris, "--model", "iris", "stable", "v3", "--json") == by_number
    code, out, _ = run(capsys, "diff", "--store", iris, "--model", "iris", "stable", "2")
    assert (code, out) == (0, "iris: v2 [stable] -> v2 [stable]\nsame signature, files and source\n")


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        ("1", "9", "model 'iris' has no version 9 (versions: 1, 2, 3)"),
        ("canary", "1", "model 'iris' has no version or label 'canary' (versions: 1, 2, 3; labels: stable=v2)"),
        ("v9", "1", "model 'iris' has no version 9 (versions: 1, 2, 3)"),
        ("1", "", "model 'iris' has no version or label '' (versions: 1, 2, 3; labels: stable=v2)"),
    ],
)
def test_diff_of_an_unknown_version_lists_the_versions(
    capsys: pytest.CaptureFixture[str], iris: str, a: str, b: str, message: str
) -> None:
    assert run(capsys, "diff", "--store", iris, "--model", "iris", a, b) == (2, "", f"modelfleet: error: {message}\n")


# -- delete one version ----------------------------------------------------------------------------------------------


def test_delete_an_unlabelled_version(capsys: pytest.CaptureFixture[str], iris: str) -> None:
    st = open_store(iris)
    st.write("iris/30/stray", b"x")  # "iris/3" is also a prefix of this key, which is not version 3's
    before = keys(iris)
    v3 = {k: s for k, s in before.items() if k.startswith("iris/3/")}
    assert len(v3) == len(ops.get_manifest(iris, "iris").get(3).files)

    code, out, err = run(capsys, "delete", "--store", iris, "--model", "iris", "--version", "3")
    assert (code, err) == (0, "")
    assert out.startswith(f"deleted iris version 3: {len(v3)} files (")
    after = keys(iris)
    assert set(after) == set(before) - set(v3)
    assert {k: after[k] for k in after if k != "iris/manifest.json"} == {
        k: before[k] for k in before if k not in v3 and k != "iris/manifest.json"
    }
    m = ops.get_manifest(iris, "iris")
    assert sorted(m.versions) == [1, 2] and m.labels == {"stable": 2} and m.last_version == 3
    assert m.operations[-1].action == "delete"
    # The number is never reused: the next publish is version 4.
    assert run(capsys, "delete", "--store", iris, "--model", "iris", "--version", "3") == (
        2,
        "",
        "modelfleet: error: model 'iris' has no version 3 (versions: 1, 2)\n",
    )


@pytest.mark.parametrize(
    ("version", "why"),
    [
        ("2", "it is labelled stable; move or clear the label first (`modelfleet label`)"),
        ("1", "it is the rollback target (the previous stable); `modelfleet rollback` would go back to it"),
    ],
)
def test_delete_refuses_a_labelled_version_and_the_rollback_target(
    capsys: pytest.CaptureFixture[str], iris: str, version: str, why: str
) -> None:
    before, manifest = keys(iris), manifest_bytes(iris)
    assert run(capsys, "delete", "--store", iris, "--model", "iris", "--version", version) == (
        2,
        "",
        f"modelfleet: error: version {version} of 'iris' was not deleted: {why}\n",
    )
    assert (keys(iris), manifest_bytes(iris)) == (before, manifest)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "modelfleet delete: error: one of the arguments --version --all is required"),
        (["--version", "0"], "modelfleet delete: error: argument --version: '0' must be 1 or more"),
        (["--version", "3", "--all"], "modelfleet delete: error: argument --all: not allowed with argument --version"),
        (["--version", "3", "--yes"], "modelfleet: error: --yes and --force go with --all; deleting one version asks"),
    ],
)
def test_delete_bad_arguments(capsys: pytest.CaptureFixture[str], iris: str, argv: list[str], message: str) -> None:
    before = keys(iris)
    code, out, err = run(capsys, "delete", "--store", iris, "--model", "iris", *argv)
    assert (code, out) == (2, "")
    assert err.startswith(message) and err.count("\n") == 1, err
    assert keys(iris) == before


class FailingDelete(DelegatingStore):
    """A process killed after its manifest update: every delete fails."""

    def delete(self, keys: Sequence[str]) -> None:
        raise StoreError("connection reset")


def test_a_delete_cut_short_is_finished_by_a_rerun(capsys: pytest.CaptureFixture[str], iris: str) -> None:
    v3 = [k for k in keys(iris) if k.startswith("iris/3/")]
    with pytest.raises(StoreError):
        delete_version(FailingDelete(open_store(iris)), "iris", 3)
    assert 3 not in ops.get_manifest(iris, "iris").versions  # servers no longer see it...
    assert set(v3) <= set(keys(iris))  # ...while its files are still there

    code, out, err = run(capsys, "delete", "--store", iris, "--model", "iris", "--version", "3")
    assert (code, err) == (0, "")
    assert out == f"iris: version 3 was already out of the manifest; deleted its {len(v3)} leftover files\n"
    assert not set(v3) & set(keys(iris))


def test_a_rerun_leaves_the_files_of_a_publish_in_flight_alone(capsys: pytest.CaptureFixture[str], iris: str) -> None:
    """Files of a number the manifest no longer lists are a publish's while its reservation exists (a publish of N
    still uploading after N+1 committed): a delete re-run must not take them."""
    with pytest.raises(StoreError):
        delete_version(FailingDelete(open_store(iris)), "iris", 3)
    open_store(iris).write("iris/_pending/3.json", b"{}")
    before = keys(iris)
    assert run(capsys, "delete", "--store", iris, "--model", "iris", "--version", "3") == (
        2,
        "",
        "modelfleet: error: version 3 of 'iris' is not in the manifest and a publish holds it "
        "(iris/_pending/3.json); nothing deleted — `modelfleet prune` removes it if that publish crashed\n",
    )
    assert keys(iris) == before


def test_prune_also_cleans_up_after_a_delete_cut_short(capsys: pytest.CaptureFixture[str], iris: str) -> None:
    v3 = [k for k in keys(iris) if k.startswith("iris/3/")]
    with pytest.raises(StoreError):
        delete_version(FailingDelete(open_store(iris)), "iris", 3)
    code, out, _ = run(capsys, "prune", "--store", iris, "--model", "iris", "--keep", "10", "--json")
    assert code == 0
    assert json.loads(out)["leftovers"] == [3]
    assert not set(v3) & set(keys(iris))
    assert sorted(ops.get_manifest(iris, "iris").versions) == [1, 2]


# -- delete a whole model --------------------------------------------------------------------------------------------


def test_delete_all_off_a_terminal_needs_yes(capsys: pytest.CaptureFixture[str], iris: str) -> None:
    before = keys(iris)
    assert run(capsys, "delete", "--store", iris, "--model", "iris", "--all") == (
        2,
        "",
        "modelfleet: error: delete --all of model 'iris' needs --yes when not on a terminal; nothing deleted\n",
    )
    assert keys(iris) == before


def test_delete_all_with_yes_removes_everything_under_the_model(capsys: pytest.CaptureFixture[str], iris: str) -> None:
    open_store(iris).write("iris/_pending/9.json", b"{}")  # a crashed publish's reservation goes too
    open_store(iris).write("iris2/keep", b"k")  # "iris" is a prefix of this key, not its model
    wine = keys(iris, "wine/")
    iris_keys = keys(iris, "iris/")
    code, out, err = run(capsys, "delete", "--store", iris, "--model", "iris", "--all", "--yes", "--json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert (doc["model"], doc["versions"], doc["labels"], doc["objects"]) == (
        "iris",
        [1, 2, 3],
        {"stable": 2},
        len(iris_keys) - 1,  # all but the manifest, which stays as the tombstone
    )
    tombstone = assert_deleted(iris)
    assert 9 in tombstone.abandoned  # the reserved number is fenced: that publish can never commit
    # A write that changes nothing, landing after the delete (a prune or an auto-rollback's undo racing it), must
    # not bring the model back.
    update_manifest(open_store(iris), "iris", lambda m: None, action="prune")
    assert_deleted(iris)
    assert keys(iris, "wine/") == wine
    assert keys(iris, "iris2/") == {"iris2/keep": 1}
    code, out, _ = run(capsys, "models", "--store", iris, "--json")
    assert [m["model"] for m in json.loads(out)["models"]] == ["wine"]
    assert run(capsys, "delete", "--store", iris, "--model", "iris", "--all", "--yes") == (
        2,
        "",
        f"modelfleet: error: no model 'iris' in {iris} (models: wine)\n",
    )


def test_delete_all_cut_short_is_finished_by_a_rerun(capsys: pytest.CaptureFixture[str], iris: str) -> None:
    open_store(iris).delete(["iris/manifest.json"])  # killed right after the manifest went
    assert keys(iris, "iris/")
    code, out, err = run(capsys, "delete", "--store", iris, "--model", "iris", "--all", "--yes")
    assert (code, err) == (0, "")
    assert out.startswith("deleted model iris: ")
    assert set(keys(iris, "iris/")) == set()  # no manifest was left to keep as the tombstone


def beat(st: Store, instance: str, *, stopping: bool = False) -> None:
    now = time.time()
    doc = {"schema": 1, "instance": instance, "fleet": "stable", "started": now, "at": now, "interval": 30.0}
    doc |= {"stopping": stopping, "models": {"iris": {"desired": 2}}}
    st.write(f"_fleet/stable/status/{instance}.json", json.dumps(doc).encode())


def test_delete_all_is_refused_while_a_live_agent_follows_the_model(
    capsys: pytest.CaptureFixture[str], iris: str
) -> None:
    st = open_store(iris)
    beat(st, "vm-gone", stopping=True)  # an agent that stopped follows nothing
    beat(st, "vm-1")
    before = keys(iris, "iris/")
    assert run(capsys, "delete", "--store", iris, "--model", "iris", "--all", "--yes") == (
        2,
        "",
        "modelfleet: error: model 'iris' was not deleted: live agents follow it (stable/vm-1); take it out of their "
        "--models first, or pass --force\n",
    )
    assert keys(iris, "iris/") == before
    code, _, err = run(capsys, "delete", "--store", iris, "--model", "iris", "--all", "--yes", "--force")
    assert (code, err) == (0, "")
    assert_deleted(iris)


def _read_until(fd: int, marker: bytes, seen: bytearray, deadline: float) -> None:
    while marker not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no {marker!r} in time; got {bytes(seen)!r}"
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            chunk = b""
        assert chunk, f"the terminal closed before {marker!r}; got {bytes(seen)!r}"
        seen += chunk


def delete_on_a_terminal(store: str, answer: str) -> tuple[int, str]:
    """``delete --all`` with stdin, stdout and stderr on a pseudo-terminal; types ``answer`` at the prompt."""
    master, slave = pty.openpty()
    argv = [sys.executable, "-c", MAIN, "delete", "--store", store, "--model", "iris", "--all"]
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    seen = bytearray()
    try:
        deadline = time.monotonic() + BOUND
        _read_until(master, b"Type the model name to confirm: ", seen, deadline)
        os.write(master, answer.encode() + b"\n")
        code = proc.wait(BOUND)
        while select.select([master], [], [], 0)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, seen.decode().replace("\r\n", "\n")


def test_delete_all_on_a_terminal_asks_for_the_model_name(iris: str) -> None:
    before = keys(iris, "iris/")
    code, text = delete_on_a_terminal(iris, "irsi")
    assert code == 2
    assert "This deletes model 'iris' from " in text and "3 versions" in text and "labels (stable=v2)" in text
    assert text.splitlines()[-1] == "modelfleet: error: model 'iris' was not deleted: 'irsi' is not its name"
    assert keys(iris, "iris/") == before

    code, text = delete_on_a_terminal(iris, "iris")
    assert code == 0, text
    assert text.splitlines()[-1].startswith("deleted model iris: ")
    assert_deleted(iris)


def test_a_model_published_again_after_delete_all_never_reuses_a_number(
    capsys: pytest.CaptureFixture[str], iris: str, savedmodels: dict[str, Path]
) -> None:
    """A VM whose TF Serving still holds the old iris v1 would never load a new v1: numbering goes on after 3."""
    assert run(capsys, "delete", "--store", iris, "--model", "iris", "--all", "--yes")[0] == 0
    for command in (["versions"], ["history"], ["label", "stable", "1"], ["delete", "--version", "1"]):
        code, out, err = run(capsys, *command, "--store", iris, "--model", "iris")
        assert (code, out, err) == (2, "", f"modelfleet: error: no model 'iris' in {iris} (models: wine)\n"), command
    assert run(capsys, "delete", "--store", iris, "--model", "iris", "--all", "--yes")[0] == 2  # nothing left

    publish(capsys, savedmodels["v1"], iris, "iris", "--label", "stable")
    code, out, _ = run(capsys, "versions", "--store", iris, "--model", "iris", "--json")
    doc = json.loads(out)
    assert [v["version"] for v in doc["versions"]] == [4] and doc["labels"] == {"stable": 4}
    code, out, _ = run(capsys, "models", "--store", iris, "--json")
    assert [m["model"] for m in json.loads(out)["models"]] == ["iris", "wine"]


# -- completion ------------------------------------------------------------------------------------------------------


def complete(tmp_path: Path, line: str, env: dict[str, str] | None = None) -> list[str]:
    """What argcomplete answers for the command line ``line`` (cursor at its end), as the shell asks for it."""
    out = tmp_path / "completions"
    environ = {
        **os.environ,
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_SHELL": "bash",
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
        **(env or {}),
        "_ARGCOMPLETE_STDOUT_FILENAME": str(out),  # instead of fd 8, which the shell script opens
    }
    proc = subprocess.run(
        [sys.executable, "-c", MAIN], env=environ, capture_output=True, text=True, timeout=BOUND, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return sorted(c.strip() for c in out.read_text().split("\x0b") if c.strip())


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("modelfleet pr", ["predict", "promote", "prune"]),
        ("modelfleet pro", ["promote"]),
        ("modelfleet publish --la", ["--label"]),
        ("modelfleet de", ["delete", "demo"]),
        ("modelfleet delete --a", ["--all"]),
        ("modelfleet diff --js", ["--json"]),
        ('modelfleet "delete" --ve', ["--version"]),
    ],
)
def test_completion_of_commands_and_options(tmp_path: Path, line: str, expected: list[str]) -> None:
    assert complete(tmp_path, line) == expected


def test_completion_with_a_cursor_the_shell_did_not_set(tmp_path: Path) -> None:
    assert complete(tmp_path, "modelfleet pr", {"COMP_POINT": ""}) == ["predict", "promote", "prune"]


def test_completion_of_model_names(capsys: pytest.CaptureFixture[str], iris: str, tmp_path: Path) -> None:
    assert complete(tmp_path, f"modelfleet diff --store {iris} --model ") == ["iris", "wine"]
    assert complete(tmp_path, "modelfleet versions --model w", {"MODELFLEET_STORE": iris}) == ["wine"]
    # A store that cannot be read completes nothing, and prints no error into the shell.
    assert complete(tmp_path, "modelfleet versions --store file:///nonexistent/x --model ") == []


def test_the_bash_script_completes_through_the_command(tmp_path: Path) -> None:
    """The script `modelfleet completion bash` prints, sourced into bash, asks the modelfleet on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "modelfleet"
    shim.write_text(f"#!{sys.executable}\n{MAIN}\n")
    shim.chmod(0o755)
    script = textwrap.dedent(
        """
        source <(modelfleet completion bash)
        COMP_LINE="modelfleet pr"; COMP_POINT=${#COMP_LINE}; COMP_WORDS=(modelfleet pr); COMP_CWORD=1
        _python_argcomplete modelfleet
        printf '%s\\n' "${COMPREPLY[@]}"
        """
    )
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=BOUND, check=False)
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split()) == ["predict", "promote", "prune"]


def test_completion_script_for_an_unknown_shell(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "completion", "tcsh")
    assert (code, out) == (2, "")
    assert err.startswith("modelfleet completion: error: argument SHELL: invalid choice: 'tcsh' (choose from")
