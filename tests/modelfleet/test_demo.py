"""`modelfleet demo` end to end on a local file store (what `make demo` runs)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from model_export.manifest import load_manifest
from model_export.store import open_store
from modelfleet.cli import main
from tests.support import REPO_ROOT

pytestmark = pytest.mark.slow  # trains a model with TensorFlow: left out of `make quick`


# What TensorFlow writes while it starts (C++ absl logging, much of it before TF_CPP_MIN_LOG_LEVEL is read).
TF_NOISE = re.compile(
    r"^[IWEF]\d{4} |absl|cuda|oneDNN|TF-TRT|rebuild TensorFlow|tensorflow", re.IGNORECASE | re.MULTILINE
)


def test_demo_runs_the_whole_cycle(tmp_path: Path) -> None:
    """In a process of its own, as `make demo` runs it: TensorFlow starts there, with all its start-up logging."""
    done = subprocess.run(
        [sys.executable, "-m", "modelfleet", "demo", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert done.stderr == ""  # no TensorFlow start-up logging (it was 7-9 lines, "E0000 ... CUDA error" among them)
    assert not TF_NOISE.search(out), out
    assert "published version 1 as stable" in out
    assert "published version 2 as canary" in out
    assert "promoted canary: stable is now version 2" in out
    assert "rolled back: stable is version 1 again" in out
    manifest, _ = load_manifest(open_store(f"file://{tmp_path / 'store'}"), "digits")
    assert manifest.labels == {"stable": 1}
    assert sorted(manifest.versions) == [1, 2]
    assert [h.action for h in manifest.history] == ["publish", "publish", "promote", "promote", "rollback"]
    accuracy = [float(a) for a in re.findall(r"held-out accuracy ([\d.]+)\)", out)]
    assert len(accuracy) == 2 and min(accuracy) > 0.85  # a trained model, not a placeholder
    # The served graph (raw pixels in) scored what training measured, and the score is recorded with the version.
    served = {v: manifest.versions[v].validation for v in (1, 2)}
    for (version, validation), trained in zip(sorted(served.items()), accuracy, strict=True):
        assert validation is not None and validation.metric == "accuracy", version
        assert abs(validation.value - trained) <= 0.01
    assert served[1] is not None and served[1].text() in out  # the versions table's VALIDATION column


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
