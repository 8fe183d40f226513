"""A publisher paused past prune's grace (SIGSTOP, as a sleeping laptop or a frozen pod) can never commit a broken
version, nor touch another publisher's files: prune fences its number in the manifest before deleting anything.

Each test runs the real CLI in a subprocess that stops itself at one phase (tests/support/paused_publish.py), then
runs prune and a competing publisher, then resumes it, on all three stores.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from model_export.manifest import load_manifest
from model_export.publish import publish
from model_export.store import open_store
from model_export.transfer import download_tree
from model_export.versions import prune
from tests.support.paused_publish import FILES_BEFORE_PAUSE, PHASES

GRACE = 1.0
# Bounds for a loaded 2-core machine; the waits end as soon as their condition holds.
STOP_TIMEOUT = 120.0
EXIT_TIMEOUT = 120.0


def _wait_stopped(proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"publisher exited {proc.returncode} before pausing: {out} {err}")
        state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "T":
            return
        time.sleep(0.02)
    proc.kill()
    pytest.fail("publisher never reached its pause")


def _model_with_assets(src: Path, dest: Path, tag: str, files: int = 6) -> Path:
    shutil.copytree(src, dest)
    (dest / "assets").mkdir(exist_ok=True)
    for i in range(files):
        (dest / "assets" / f"{tag}-{i}.bin").write_bytes(f"{tag}:{i}:".encode() * 20_000)
    return dest


@pytest.mark.parametrize("phase", PHASES)
def test_paused_publisher_cannot_commit_after_prune_gave_its_version_up(
    store_uri: str, savedmodels: dict[str, Path], tmp_path: Path, phase: str
) -> None:
    st = open_store(store_uri)
    publish(savedmodels["v1"], st, "m", label="stable")
    paused_model = _model_with_assets(savedmodels["v1"], tmp_path / "paused", "paused")
    rival_model = _model_with_assets(savedmodels["v1"], tmp_path / "rival", "rival")

    argv = ["publish", str(paused_model), "--store", store_uri, "--model", "m", "--label", "canary", "--workers", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.paused_publish", phase, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_stopped(proc)
        if phase == "uploading":
            assert len(list(st.list("m/2/"))) == FILES_BEFORE_PAUSE
        time.sleep(GRACE + 0.5)  # the paused reservation is now older than the grace

        plan = prune(st, "m", keep=10, pending_grace_seconds=GRACE)
        assert plan.leftovers == [2] and plan.in_progress == []
        rival = publish(rival_model, st, "m")
        assert rival.version == 3, "a version given up is never handed out again"
    finally:
        proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=EXIT_TIMEOUT)

    assert proc.returncode == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "version 2" in lines[0] and "nothing was committed" in lines[0], err
    manifest, _ = load_manifest(st, "m")
    assert sorted(manifest.versions) == [1, 3]
    assert 2 in manifest.abandoned and manifest.last_version == 3
    assert manifest.labels == {"stable": 1}, "the paused publish's --label never landed"
    # Every listed version is complete and intact (no file of one publisher overwritten by another) ...
    for v, entry in manifest.versions.items():
        download_tree(st, f"m/{v}", entry.files, tmp_path / "check" / str(v))
    # ... and the abandoned number holds nothing, not even what the paused publisher uploaded after resuming.
    assert list(st.list("m/2/")) == []
    assert list(st.list("m/_pending/")) == []


def test_prune_with_a_live_heartbeat_leaves_the_publish_alone(store_uri: str, savedmodels: dict[str, Path]) -> None:
    """The fence only takes versions whose reservation is older than the grace: a running publish is untouched."""
    st = open_store(store_uri)
    publish(savedmodels["v1"], st, "m")
    st.write("m/_pending/2.json", b'{"publisher": "x"}', if_absent=True)
    plan = prune(st, "m", keep=10, pending_grace_seconds=600)
    assert (plan.in_progress, plan.leftovers) == ([2], [])
    manifest, _ = load_manifest(st, "m")
    assert manifest.abandoned == {}
    assert [o.key for o in st.list("m/_pending/")] == ["m/_pending/2.json"]
