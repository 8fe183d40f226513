"""The local model root TF Serving reads: ``<root>/<model>/<version>/``, filled only by verified, atomic renames.

A version is downloaded into ``<root>/<model>/.tmp-<version>-…`` (a name TF Serving never takes for a version),
every file's sha256 and size is checked, the files are fsynced, and only then is the directory renamed to
``<version>``. A directory named as a version is therefore always complete. The last ``keep`` versions used stay on
disk, so a rollback to one of them needs no download.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from model_export.errors import ModelfleetError, ObjectNotFound, TransferError
from model_export.layout import version_number, version_prefix
from model_export.manifest import VersionEntry, relpath_problem
from model_export.store.base import DelegatingStore, Store
from model_export.transfer import download_tree
from modelfleet.agent.durable import fsync_path, fsync_tree

log = logging.getLogger("modelfleet.agent")
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"


class VersionRefused(ModelfleetError):
    """The store's copy of a version is unusable (a checksum mismatch or a missing file): it is never served."""


class FetchFailed(ModelfleetError):
    """A version could not be fetched for a reason that may pass (store unreachable, local disk full): retry."""


class _Watched(DelegatingStore):
    """Delegates to a store and records what each download did, so a failed batch can be told apart: the store's
    copy is bad (refuse the version) or the store or local disk failed (retry later)."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.errors: list[BaseException] = []
        self.bytes = 0
        self._lock = threading.Lock()

    def download_file(self, key: str, path: Path) -> None:
        try:
            self.inner.download_file(key, path)
        except BaseException as e:
            with self._lock:
                self.errors.append(e)
            raise
        size = path.stat().st_size
        with self._lock:
            self.bytes += size


def is_version_name(name: str) -> bool:
    """What TF Serving takes for a version directory: a name that parses as a (non-negative) integer."""
    return version_number(name) is not None


class LocalCache:
    def __init__(self, root: Path, *, workers: int = 8) -> None:
        self.root = root
        self.workers = workers
        self.bytes_fetched = 0  # every byte downloaded, also for versions then refused

    def model_dir(self, model: str) -> Path:
        return self.root / model

    def version_dir(self, model: str, version: int) -> Path:
        return self.root / model / str(version)

    def versions(self, model: str) -> list[int]:
        try:
            names = [p.name for p in self.model_dir(model).iterdir() if p.is_dir()]
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names if is_version_name(n))

    def is_complete(self, model: str, entry: VersionEntry) -> bool:
        """The version's directory holds every file of the manifest entry at its size (a cheap stat-only check: the
        content was verified before the directory got its name)."""
        base = self.version_dir(model, entry.version)
        try:
            return all((base / rel).stat().st_size == f.size for rel, f in entry.files.items())
        except OSError:
            return False

    def clean_temp(self, models: Iterable[str]) -> None:
        """Remove what an interrupted download or prune left (only names that are never versions)."""
        for model in models:
            d = self.model_dir(model)
            if not d.is_dir():
                continue
            for p in d.iterdir():
                if p.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
                    log.info("removing leftover %s", p)
                    shutil.rmtree(p, ignore_errors=True)

    def fetch(self, store: Store, model: str, entry: VersionEntry) -> int:
        """Make ``<root>/<model>/<version>`` hold the verified version; return the bytes downloaded (0 when cached).

        ``VersionRefused`` when the store's copy is bad, ``FetchFailed`` when the store or the local disk failed. In
        every failure the temp directory is removed and nothing new carries a version name.
        """
        # The manifest's validator refuses these already; checked again here, where files are looked up and written.
        unsafe = sorted((rel, problem) for rel in entry.files if (problem := relpath_problem(rel)))
        if unsafe:
            rel, problem = unsafe[0]
            raise VersionRefused(f"{model} version {entry.version} refused: file path {rel!r} in manifest: {problem}")
        if self.is_complete(model, entry):
            return 0
        model_dir = self.model_dir(model)
        try:
            model_dir.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(model_dir).free
        except OSError as e:
            raise FetchFailed(f"{model} version {entry.version}: cannot prepare {model_dir}: {e}") from e
        if free < entry.total_bytes:
            raise FetchFailed(
                f"{model} version {entry.version}: not enough disk space under {model_dir}: "
                f"needs {entry.total_bytes} B, {free} B free"
            )
        watched = _Watched(store)
        tmp: Path | None = None
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{entry.version}-", dir=model_dir))
            tmp.chmod(0o755)  # mkdtemp's 0700 would hide the version from a TF Serving container's user
            try:
                download_tree(watched, version_prefix(model, entry.version), entry.files, tmp, workers=self.workers)
            except TransferError as e:
                transient = [x for x in watched.errors if not isinstance(x, ObjectNotFound)]
                if transient:
                    raise FetchFailed(f"{model} version {entry.version}: {e}") from e
                raise VersionRefused(f"{model} version {entry.version} refused: {e}") from e
            fsync_tree(tmp)
            final = self.version_dir(model, entry.version)
            if final.exists():  # an incomplete directory someone else left: move it out of TF Serving's sight first
                trash = Path(tempfile.mkdtemp(prefix=TRASH_PREFIX, dir=model_dir))
                final.rename(trash / "old")
                shutil.rmtree(trash, ignore_errors=True)
            tmp.rename(final)
            tmp = None
            fsync_path(model_dir)
        except OSError as e:
            raise FetchFailed(f"{model} version {entry.version}: local disk error: {e}") from e
        finally:
            self.bytes_fetched += watched.bytes
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        return watched.bytes

    def touch(self, model: str, version: int) -> None:
        """Mark a version as just used (the cache keeps the most recently used)."""
        with contextlib.suppress(OSError):
            now = time.time()
            os.utime(self.version_dir(model, version), (now, now))

    def prune(self, model: str, keep: int, referenced: Iterable[int]) -> list[int]:
        """Delete all but the ``keep`` most recently used versions, never one in ``referenced`` (the config's)."""
        keep_set = set(referenced)
        others = [v for v in self.versions(model) if v not in keep_set]

        def used(v: int) -> float:
            try:
                return self.version_dir(model, v).stat().st_mtime
            except OSError:
                return 0.0

        others.sort(key=used, reverse=True)
        room = max(0, keep - len(keep_set))
        doomed = others[room:]
        for v in doomed:
            # Rename first: the name stops being a version at once, even if the delete is interrupted.
            src = self.version_dir(model, v)
            trash = self.model_dir(model) / f"{TRASH_PREFIX}{v}-{os.getpid()}"
            try:
                src.rename(trash)
            except OSError as e:
                log.warning("cannot remove cached %s: %s", src, e)
                continue
            shutil.rmtree(trash, ignore_errors=True)
        return doomed
