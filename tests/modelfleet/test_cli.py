"""The CLI contract: exit codes (0 ok, 1 failed, 2 bad input), one-line errors, JSON output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model_export.store import open_store
from tests.support.cli import run_cli

FORMS = "use file:///absolute/path, gs://bucket/prefix or s3://bucket/prefix"


@pytest.fixture
def store(tmp_path: Path) -> str:
    (tmp_path / "s").mkdir()
    return f"file://{tmp_path / 's'}"


run = run_cli


def test_publish_json_and_versions(
    capsys: pytest.CaptureFixture[str], store: str, savedmodels: dict[str, Path]
) -> None:
    code, out, err = run(
        capsys,
        "publish",
        str(savedmodels["v1"]),
        "--store",
        store,
        "--model",
        "m",
        "--json",
        "--label",
        "stable",
        "--meta",
        "team=search",
    )
    assert (code, err) == (0, "")
    result = json.loads(out)
    assert (result["model"], result["version"], result["labels"]) == ("m", 1, ["stable"])
    assert result["files"] >= 4 and result["bytes"] > 0

    code, out, _ = run(capsys, "versions", "--store", store, "--model", "m", "--json")
    listing = json.loads(out)
    assert code == 0
    assert listing["labels"] == {"stable": 1}
    assert listing["versions"][0]["version"] == 1
    assert listing["versions"][0]["source"]["team"] == "search"

    code, out, _ = run(capsys, "versions", "--store", store, "--model", "m")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "model m"
    assert lines[1].split() == ["VERSION", "LABELS", "CREATED", "SIZE", "FILES", "VALIDATION", "SOURCE"]
    assert lines[2].split()[:2] == ["1", "stable"]

    code, out, _ = run(capsys, "show", "--store", store, "--model", "m", "1")
    assert code == 0
    assert "input  features: float32 [?, 4]" in out
    assert "saved_model.pb" in out


def test_label_promote_rollback_commands(
    capsys: pytest.CaptureFixture[str], store: str, savedmodels: dict[str, Path]
) -> None:
    for label in ("stable", "canary"):
        assert (
            run(capsys, "publish", str(savedmodels["v1"]), "--store", store, "--model", "m", "--label", label)[0] == 0
        )
    assert run(capsys, "promote", "--store", store, "--model", "m")[1] == "m labels: stable=2\n"
    assert run(capsys, "rollback", "--store", store, "--model", "m")[1] == "m labels: stable=1\n"
    assert run(capsys, "label", "--store", store, "--model", "m", "canary", "2")[1] == "m labels: canary=2, stable=1\n"
    code, out, _ = run(capsys, "label", "--store", store, "--model", "m", "canary", "--clear", "--json")
    assert (code, json.loads(out)) == (0, {"model": "m", "labels": {"stable": 1}})
    code, out, _ = run(capsys, "prune", "--store", store, "--model", "m", "--keep", "0", "--dry-run")
    assert code == 0
    assert out.startswith("m: would delete versions [2], crashed-publish leftovers [] (5 objects, ")
    assert len(list(open_store(store).list("m/2/"))) == 5


def test_bad_inputs_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], store: str, savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    sm = str(savedmodels["v1"])
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["publish", sm, "--store", "models/", "--model", "m"], f"store URI 'models/' has unknown scheme ''; {FORMS}"),
        (
            ["publish", str(empty), "--store", store, "--model", "m"],
            f"'{empty}' is not a SavedModel: no saved_model.pb",
        ),
        (
            ["publish", sm, "--store", store, "--model", "bad/name"],
            "model name 'bad/name' is invalid; use 1-128 of [A-Za-z0-9_.-], starting alphanumeric",
        ),
        (
            # "$" in a regex matches before a trailing newline: such a name was once published.
            ["publish", sm, "--store", store, "--model", "m\n"],
            "model name 'm\\n' is invalid; use 1-128 of [A-Za-z0-9_.-], starting alphanumeric",
        ),
        (
            ["publish", sm, "--store", store, "--model", "m", "--label", "canary\n"],
            "label 'canary\\n' is invalid; labels are [A-Za-z0-9_]+ (e.g. stable, canary)",
        ),
        (
            ["publish", sm, "--store", f"{store}/absent", "--model", "m"],
            f"store root '{store.removeprefix('file://')}/absent' is not an existing directory (from '{store}/absent')",
        ),
        (
            ["versions", "--store", store, "--model", "nothing"],
            f"no model 'nothing' in {store} (nothing published under that name)",
        ),
    ]
    for argv, message in cases:
        code, out, err = run(capsys, *argv)
        assert (code, out, err) == (2, "", f"modelfleet: error: {message}\n"), argv
    assert list(open_store(store).list("")) == []

    assert run(capsys, "publish", sm, "--store", store, "--model", "m", "--label", "stable")[0] == 0
    manifest = open_store(store).read("m/manifest.json").data
    for argv, message in [
        (["label", "--store", store, "--model", "m", "canary", "9"], "model 'm' has no version 9 (versions: 1)"),
        (["rollback", "--store", store, "--model", "m", "--to", "3"], "model 'm' has no version 3 (versions: 1)"),
        (
            ["publish", str(savedmodels["wide"]), "--store", store, "--model", "m"],
            "serving_default inputs differ from stable version 1 of 'm': input 'features' changed from float32[-1, 4] "
            "to float32[-1, 5]; pass --allow-signature-change to publish anyway",
        ),
        (
            ["label", "--store", store, "--model", "m", "canary"],
            "give either VERSION or --clear for label 'canary', not both or neither",
        ),
    ]:
        code, out, err = run(capsys, *argv)
        assert (code, out, err) == (2, "", f"modelfleet: error: {message}\n"), argv
    assert open_store(store).read("m/manifest.json").data == manifest


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], store: str) -> None:
    code, _, err = run(capsys, "prune", "--store", store, "--model", "m", "--keep", "-1")
    assert code == 2
    assert "argument --keep: '-1' must be 0 or more" in err


def test_missing_bucket_exits_2(
    capsys: pytest.CaptureFixture[str], s3_server: object, savedmodels: dict[str, Path]
) -> None:
    code, _, err = run(capsys, "publish", str(savedmodels["v1"]), "--store", "s3://no-such-bucket-mf/x", "--model", "m")
    assert (code, err) == (
        2,
        "modelfleet: error: bucket 'no-such-bucket-mf' does not exist (from 's3://no-such-bucket-mf/x')\n",
    )


def test_failed_operation_exits_1(capsys: pytest.CaptureFixture[str], store: str) -> None:
    open_store(store).write("m/manifest.json", b"{oops")
    code, out, err = run(capsys, "versions", "--store", store, "--model", "m")
    assert code == 1 and out == ""
    assert err.startswith(f"modelfleet: error: {store}/m/manifest.json is malformed: JSONDecodeError")
    assert err.count("\n") == 1


def test_console_script_and_module_entry_points(store: str) -> None:
    script = Path(sys.executable).with_name("modelfleet")
    for argv in ([str(script)], [sys.executable, "-m", "modelfleet"]):
        proc = subprocess.run([*argv, "versions", "--store", store, "--model", "x"], capture_output=True, text=True)
        assert proc.returncode == 2
        assert proc.stderr == f"modelfleet: error: no model 'x' in {store} (nothing published under that name)\n"


def test_every_command_is_listed_with_its_own_summary() -> None:
    """`modelfleet --help` lists commands without importing them: each listed summary must be the first line of the
    command's own help, and every command a module registers must be listed."""
    import argparse

    from modelfleet.cli import COMMANDS, build_parser

    for name, (_, summary) in COMMANDS.items():
        parser = build_parser(name)
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        assert set(sub.choices) <= set(COMMANDS), set(sub.choices) - set(COMMANDS)
        description = sub.choices[name].description or ""
        assert description.splitlines()[0] == summary, name


def test_help_and_version_import_no_command_module() -> None:
    code = (
        "import sys\nfrom modelfleet.cli import main\n"
        "for argv in (['--help'], ['--version']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('modelfleet.cli.')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("grace", ["nan", "inf", "1e300", "-1"])
def test_prune_refuses_a_pending_grace_no_clock_can_use(
    capsys: pytest.CaptureFixture[str], store: str, savedmodels: dict[str, Path], grace: str
) -> None:
    """These once ended in a traceback (timedelta overflow) or compared as never-old: one line, exit 2, no delete."""
    assert run(capsys, "publish", str(savedmodels["v1"]), "--store", store, "--model", "m")[0] == 0
    before = sorted(o.key for o in open_store(store).list(""))
    code, out, err = run(capsys, "prune", "--store", store, "--model", "m", "--keep", "0", "--pending-grace", grace)
    assert (code, out) == (2, "")
    assert err == f"modelfleet: error: pending grace must be 0 to 3.1536e+08 seconds (10 years), got {float(grace)}\n"
    assert sorted(o.key for o in open_store(store).list("")) == before


def test_usage_errors_are_one_line_naming_the_value(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run_cli(
        capsys, "publish", str(tmp_path), "--store", f"file://{tmp_path}", "--model", "m", "--workers", "0"
    )
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "'0' must be 1 or more" in err and "--help" in err


@pytest.mark.parametrize("option", ["--idempotency-key", "--job-id"])
def test_an_empty_idempotency_key_or_job_id_is_refused_not_ignored(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, savedmodels: dict[str, Path], option: str
) -> None:
    """A CI job passing --idempotency-key "$KEY" with KEY unset would otherwise lose its retry protection."""
    store = tmp_path / "store"
    store.mkdir()
    code, _, err = run_cli(
        capsys, "publish", str(savedmodels["v1"]), "--store", f"file://{store}", "--model", "m", option, ""
    )
    assert code == 2 and err.count("\n") == 1 and "''" in err
    assert list(store.iterdir()) == []
