"""Durable local writes: what the agent writes (TF Serving's config, its state, a version directory) survives a crash
or power loss as either the old content or the new, never a mix. Temp file + fsync + rename, then fsync the directory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, text: str) -> bool:
    """Replace ``path`` with ``text`` by temp file + fsync + rename; ``False`` (nothing touched) when unchanged.

    TF Serving polls the file; it must never read a half-written one, and an unchanged file is left alone so its
    modification time says when the served set last changed.
    """
    data = text.encode()
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).chmod(0o644)  # mkstemp's 0600 would hide it from a TF Serving container running as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)
    return True


def fsync_path(path: Path) -> None:
    """Flush a file's data to disk, or a directory's entries (which makes a rename in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` to disk (before the rename that makes the tree visible)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fsync_path(Path(dirpath, name))
        fsync_path(Path(dirpath))
