"""`modelfleet demo` end to end on a local file store (what `make demo` runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_export.manifest import load_manifest
from model_export.store import open_store
from modelfleet.cli import main

pytestmark = pytest.mark.slow  # trains a model with TensorFlow: left out of `make quick`


def test_demo_runs_the_whole_cycle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "published version 1 as stable" in out
    assert "published version 2 as canary" in out
    assert "promoted canary: stable is now version 2" in out
    assert "rolled back: stable is version 1 again" in out
    manifest, _ = load_manifest(open_store(f"file://{tmp_path / 'store'}"), "digits")
    assert manifest.labels == {"stable": 1}
    assert sorted(manifest.versions) == [1, 2]
    assert [h.action for h in manifest.history] == ["publish", "publish", "promote", "promote", "rollback"]
    accuracy = [float(line.split("accuracy ")[1].split(")")[0]) for line in out.splitlines() if "accuracy" in line]
    assert min(accuracy) > 0.85  # a trained model, not a placeholder


def test_a_second_demo_on_the_same_store_runs_the_cycle_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make demo` twice in one working copy: the second run publishes versions 3 and 4 and promotes and rolls back
    them (it once got the first run's versions back by idempotency key, with no canary label, and failed to promote)."""
    assert main(["demo", "--workdir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["demo", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "published version 3 as stable" in out and "published version 4 as canary" in out
    assert "promoted canary: stable is now version 4" in out
    manifest, _ = load_manifest(open_store(f"file://{tmp_path / 'store'}"), "digits")
    assert sorted(manifest.versions) == [1, 2, 3, 4]
