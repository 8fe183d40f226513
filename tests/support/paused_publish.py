"""``python -m tests.support.paused_publish PHASE ARGS...``: the real ``modelfleet ARGS...`` in a process that stops
itself (SIGSTOP) at one phase of a publish, as a laptop that sleeps or a frozen pod would, until a test sends SIGCONT.

Phases: ``reserved`` (version number reserved, nothing uploaded), ``uploading`` (after the third file, with
``--workers 1``), ``uploaded`` (every file stored and listed, just before the commit).
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from model_export.store.base import DelegatingStore, ProgressFn, Store, StoredFile
from modelfleet.cli import main

# The module, not the function the package exports under the same name.
publish_module: Any = importlib.import_module("model_export.publish")
PHASES = ("reserved", "uploading", "uploaded")
FILES_BEFORE_PAUSE = 3


def _pause() -> None:
    os.kill(os.getpid(), signal.SIGSTOP)


class _PausingStore(DelegatingStore):
    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.stored = 0

    def put_file(self, key: str, path: Path, *, progress: ProgressFn | None = None) -> StoredFile:
        stored = self.inner.put_file(key, path, progress=progress)
        self.stored += 1
        if self.stored == FILES_BEFORE_PAUSE:
            _pause()
        return stored


def _install(phase: str) -> None:
    if phase == "reserved":
        reserve = publish_module._reserve

        def reserve_then_pause(*args: Any, **kwargs: Any) -> Any:
            res = reserve(*args, **kwargs)
            _pause()
            return res

        publish_module._reserve = reserve_then_pause
    elif phase == "uploading":
        upload = publish_module.upload_tree

        def upload_with_pause(store: Store, *args: Any, **kwargs: Any) -> Any:
            return upload(_PausingStore(store), *args, **kwargs)

        publish_module.upload_tree = upload_with_pause
    elif phase == "uploaded":
        verify = publish_module.verify_uploaded

        def verify_then_pause(*args: Any, **kwargs: Any) -> None:
            verify(*args, **kwargs)
            _pause()

        publish_module.verify_uploaded = verify_then_pause
    else:
        raise SystemExit(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")


def start_paused(phase: str, savedmodel: Path, store: str, timeout: float = 120.0) -> subprocess.Popen[str]:
    """The real CLI publishing ``savedmodel`` as the next version of ``m`` with --label canary (one upload worker),
    returned once it has stopped itself at ``phase``; SIGCONT resumes it. ``timeout``: a bound for a loaded 2-core
    machine, ended as soon as the process is stopped."""
    import pytest

    argv = ["publish", str(savedmodel), "--store", store, "--model", "m", "--label", "canary", "--workers", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.paused_publish", phase, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"publisher exited {proc.returncode} before pausing: {out} {err}")
        state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "T":
            return proc
        time.sleep(0.02)
    proc.kill()
    pytest.fail("publisher never reached its pause")


if __name__ == "__main__":
    _install(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
