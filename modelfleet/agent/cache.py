"""The local model root TF Serving reads: ``<root>/<model>/<version>/``, filled only by verified, atomic renames.

A version is downloaded into ``<root>/<model>/.tmp-<version>-…`` (a name TF Serving never takes for a version),
every file's sha256 and size is checked, the files are fsynced, and only then is the directory renamed to
``<version>``. A directory named as a version is therefore always complete. The last ``keep`` versions used stay on
disk, so a rollback to one of them needs no download.

A fetch never waits on the cache: when the disk lacks room for the version (its size plus a headroom), cached
versions no longer in use are evicted first, least recently used first, until it fits. In use, never evicted: the
versions the written TF Serving config names (what :meth:`LocalCache.prune` and :meth:`LocalCache.mark_in_use` were
last told), each model's target (the version last :meth:`LocalCache.touch`-ed) and the version being fetched; a model
the cache knows neither of is left alone. When even that is not enough the fetch fails with ``DiskTooSmall``, a local
condition: nothing is evicted and the version is not blamed.

Failures are told apart by where they are: the store's copy is bad (``VersionRefused``: a checksum mismatch or a
missing object), the store failed (``FetchFailed``), or the local disk did (``LocalDiskError``: full, out of inodes,
over quota, read-only, I/O error). Only the first refuses the version.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from model_export.errors import ModelfleetError, ObjectNotFound, TransferError
from model_export.layout import version_number, version_prefix
from model_export.manifest import VersionEntry, relpath_problem
from model_export.store.base import DelegatingStore, ProgressFn, Store
from model_export.transfer import download_tree
from modelfleet.agent.durable import fsync_path, fsync_tree

log = logging.getLogger("modelfleet.agent")
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
MIB = 1024 * 1024
# Free space a fetch leaves beyond the version's files (each rounded up to whole blocks): what the other writers of
# the same disk need meanwhile (TF Serving's config and the agent's state file, logs, Docker).
DEFAULT_HEADROOM_BYTES = 256 * MIB
# A version download running longer than this logs how far it got, then again each time this much more has passed:
# an operator reading the journal sees a multi-GB download move; a quick one logs nothing more.
PROGRESS_LOG_SECONDS = 10.0
# A download writes only to local disk, so a store call failing with one of these failed on our side.
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class VersionRefused(ModelfleetError):
    """The store's copy of a version is unusable (a checksum mismatch or a missing file): it is never served."""


class FetchFailed(ModelfleetError):
    """A version could not be fetched for a reason that may pass (store unreachable, local disk full): retry."""


class LocalDiskError(FetchFailed):
    """The local disk failed while a version was written or verified (no space, no free inodes, over quota,
    read-only, I/O error): retried with backoff, the version is not blamed."""


class DiskTooSmall(FetchFailed):
    """The disk cannot hold the version even with every cached version not in use evicted. Nothing was evicted; it
    is retried with backoff (someone may free space or grow the disk) and stays reported meanwhile."""


@dataclass(frozen=True)
class _Cached:
    model: str
    version: int
    used: float  # the directory's mtime, set by ``touch``
    size: int  # bytes it takes on disk


class _Watched(DelegatingStore):
    """Delegates to a store and records what each download did, so a failed batch can be told apart: the store's
    copy is bad (refuse the version) or the store or local disk failed (retry later)."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.errors: list[BaseException] = []
        self.bytes = 0
        self._lock = threading.Lock()

    def download_file(self, key: str, path: Path, *, progress: ProgressFn | None = None) -> None:
        try:
            self.inner.download_file(key, path, progress=progress)
        except BaseException as e:
            with self._lock:
                self.errors.append(e)
            raise
        size = path.stat().st_size
        with self._lock:
            self.bytes += size


class _ProgressLog:
    """Bytes received for one version (from any download thread), logged at most once every ``every`` seconds, the
    first time only once the download has run that long."""

    def __init__(self, what: str, total: int, every: float) -> None:
        self.what = what
        self.total = total
        self.every = every
        self.done = 0
        self._next = time.monotonic() + every
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if now < self._next:
                return
            self._next = now + self.every
            done = self.done
        percent = 100 * done // max(1, self.total)
        log.info("%s: %s of %s downloaded (%d %%)", self.what, human_size(done), human_size(self.total), percent)


def is_version_name(name: str) -> bool:
    """What TF Serving takes for a version directory: a name that parses as a (non-negative) integer."""
    return version_number(name) is not None


def _os_error(exc: BaseException, codes: Iterable[int] | None = None) -> OSError | None:
    """The first ``OSError`` (with an errno in ``codes``, when given) in ``exc``'s chain of causes."""
    wanted = None if codes is None else frozenset(codes)
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and (wanted is None or cur.errno in wanted):
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


def human_size(n: float) -> str:
    """``n`` bytes for a message: ``512 B``, ``1.5 MiB``, ``11.0 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _disk_usage(path: Path) -> int:
    """Bytes the files and directories under ``path`` take on disk (allocated blocks)."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*filenames, *dirnames]:
            with contextlib.suppress(OSError):
                total += Path(dirpath, name).lstat().st_blocks * 512
    return total


class LocalCache:
    def __init__(
        self,
        root: Path,
        *,
        workers: int = 8,
        headroom_bytes: int = DEFAULT_HEADROOM_BYTES,
        progress_log_seconds: float = PROGRESS_LOG_SECONDS,
    ) -> None:
        self.root = root
        self.workers = workers
        self.headroom_bytes = headroom_bytes
        self.progress_log_seconds = progress_log_seconds
        self.bytes_fetched = 0  # every byte downloaded, also for versions then refused
        # Per model, the versions the written TF Serving config names, and the target: never evicted. A model in
        # neither is left alone altogether (the config on disk may name any of its versions).
        self._in_use: dict[str, frozenset[int]] = {}
        self._targets: dict[str, int] = {}

    def model_dir(self, model: str) -> Path:
        return self.root / model

    def version_dir(self, model: str, version: int) -> Path:
        return self.root / model / str(version)

    def model_bytes(self, model: str) -> int:
        """What the model's cached versions take on disk."""
        return _disk_usage(self.model_dir(model))

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

    def mark_in_use(self, model: str, versions: Iterable[int]) -> None:
        """Record the versions the written TF Serving config names for ``model``: eviction never takes them."""
        self._in_use[model] = frozenset(versions)

    # -- fetch -----------------------------------------------------------------------------------------------------

    def space_needed(self, entry: VersionEntry, block_size: int) -> int:
        """Free bytes a fetch of ``entry`` wants: its files rounded up to whole blocks, its directories, and
        ``headroom_bytes``."""
        block = max(1, block_size)
        files = sum(-(-f.size // block) * block for f in entry.files.values())
        dirs = {str(Path(rel).parent) for rel in entry.files} | {"."}
        return files + len(dirs) * block + self.headroom_bytes

    def fetch(self, store: Store, model: str, entry: VersionEntry) -> int:
        """Make ``<root>/<model>/<version>`` hold the verified version; return the bytes downloaded (0 when cached).

        Makes room first by evicting versions not in use (see the module's docstring). ``VersionRefused`` when the
        store's copy is bad; ``LocalDiskError`` and ``DiskTooSmall`` when the local disk fails or is too small,
        ``FetchFailed`` when the store fails. In every failure the temp directory is removed and nothing new carries
        a version name.
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
            self._make_room(model, entry)
        except OSError as e:
            raise self._disk_error(model, entry, e) from e
        watched = _Watched(store)
        tmp: Path | None = None
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{entry.version}-", dir=model_dir))
            tmp.chmod(0o755)  # mkdtemp's 0700 would hide the version from a TF Serving container's user
            # Directories first, here: a failure to create one (no free inodes) is then plainly the local disk's.
            for sub in sorted({(tmp / rel).parent for rel in entry.files}):
                sub.mkdir(parents=True, exist_ok=True)
            shown = _ProgressLog(f"{model} v{entry.version}", entry.total_bytes, self.progress_log_seconds)
            try:
                download_tree(
                    watched,
                    version_prefix(model, entry.version),
                    entry.files,
                    tmp,
                    workers=self.workers,
                    on_bytes=shown.add,
                )
            except TransferError as e:
                raise self._classify(model, entry, e, watched) from e
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
            raise self._disk_error(model, entry, e) from e
        finally:
            self.bytes_fetched += watched.bytes
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        return watched.bytes

    def _classify(self, model: str, entry: VersionEntry, err: TransferError, watched: _Watched) -> ModelfleetError:
        """What a failed ``download_tree`` means: the store's copy is bad only when every failure says so."""
        what = f"{model} version {entry.version}"
        first = err.__cause__  # download_tree's first failure (by file name); the store's calls are all in watched
        ours = first is not None and not any(first is e for e in watched.errors)
        local = next((o for e in watched.errors if (o := _os_error(e, _WRITE_ERRNOS)) is not None), None)
        if local is None and ours and first is not None:
            local = _os_error(first)  # our own mkdir, open or read of the downloaded file
        if local is not None:
            return self._disk_error(model, entry, local)
        if any(not isinstance(e, ObjectNotFound) for e in watched.errors):
            return FetchFailed(f"{what}: {err}")
        if ours and not isinstance(first, TransferError):  # neither a checksum mismatch nor a missing object
            return FetchFailed(f"{what}: {err}")
        return VersionRefused(f"{what} refused: {err}")

    def _disk_error(self, model: str, entry: VersionEntry, err: OSError) -> LocalDiskError:
        detail = str(err)
        if err.errno == errno.ENOSPC:
            with contextlib.suppress(OSError):
                st = os.statvfs(self.model_dir(model))
                if st.f_files and st.f_favail == 0:
                    detail += f" (no free inodes: all {st.f_files} in use)"
        return LocalDiskError(
            f"{model}: local disk: cannot write version {entry.version} under {self.model_dir(model)}: {detail}"
        )

    # -- room ------------------------------------------------------------------------------------------------------

    def _make_room(self, model: str, entry: VersionEntry) -> None:
        """Evict cached versions not in use, least recently used first, until the fetch of ``entry`` fits; or
        ``DiskTooSmall`` (evicting nothing) when it cannot fit."""
        model_dir = self.model_dir(model)
        free = shutil.disk_usage(model_dir).free
        needed = self.space_needed(entry, os.statvfs(model_dir).f_frsize)
        if free >= needed:
            return
        candidates = self._evictable(model, entry.version)
        reclaimable = sum(c.size for c in candidates)
        if free + reclaimable < needed:
            in_use = self._protected(model, entry.version)
            kept = ", ".join(
                f"{m} {vs}" for m in sorted(in_use) if (vs := [v for v in self.versions(m) if v in in_use[m]])
            )
            raise DiskTooSmall(
                f"disk too small for {model} v{entry.version}: needs {human_size(needed)} "
                f"({human_size(entry.total_bytes)} of files + {human_size(self.headroom_bytes)} headroom), "
                f"free {human_size(free + reclaimable)} with every cached version not in use evicted"
                + (f" (in use: {kept})" if kept else "")
            )
        freed = 0
        for c in candidates:
            if free + freed >= needed:
                break
            if self._remove(c.model, c.version):
                freed += c.size
                log.warning(
                    "evicted cached %s version %d (%s) to make room for %s version %d",
                    c.model,
                    c.version,
                    human_size(c.size),
                    model,
                    entry.version,
                )

    def _protected(self, model: str, fetching: int) -> dict[str, set[int]]:
        """Per model whose use is known, the versions in use (config and target); ``fetching`` of ``model`` too."""
        out = {m: set(vs) for m, vs in self._in_use.items()}
        for m, target in self._targets.items():
            out.setdefault(m, set()).add(target)
        if model in out:
            out[model].add(fetching)
        return out

    def _evictable(self, model: str, fetching: int) -> list[_Cached]:
        """Cached versions of known models that neither a config nor a target needs, least recently used first."""
        found: list[_Cached] = []
        for m, keep in self._protected(model, fetching).items():
            for v in self.versions(m):
                if v in keep:
                    continue
                path = self.version_dir(m, v)
                try:
                    used = path.stat().st_mtime
                except OSError:
                    continue
                found.append(_Cached(m, v, used, _disk_usage(path)))
        return sorted(found, key=lambda c: (c.used, c.model, c.version))

    def _remove(self, model: str, version: int) -> bool:
        # Rename first: the name stops being a version at once, even if the delete is interrupted.
        src = self.version_dir(model, version)
        trash = self.model_dir(model) / f"{TRASH_PREFIX}{version}-{os.getpid()}"
        try:
            src.rename(trash)
        except OSError as e:
            log.warning("cannot remove cached %s: %s", src, e)
            return False
        shutil.rmtree(trash, ignore_errors=True)
        return True

    # -- use and prune ---------------------------------------------------------------------------------------------

    def touch(self, model: str, version: int) -> None:
        """Mark a version as just used: the model's target (never evicted; the cache keeps the most recently used)."""
        self._targets[model] = version
        with contextlib.suppress(OSError):
            now = time.time()
            os.utime(self.version_dir(model, version), (now, now))

    def prune(self, model: str, keep: int, referenced: Iterable[int]) -> list[int]:
        """Delete all but the ``keep`` most recently used versions, never one in ``referenced`` (the config's, which
        are also recorded as in use: eviction never takes them either)."""
        keep_set = set(referenced)
        self.mark_in_use(model, keep_set)
        others = [v for v in self.versions(model) if v not in keep_set]

        def used(v: int) -> float:
            try:
                return self.version_dir(model, v).stat().st_mtime
            except OSError:
                return 0.0

        others.sort(key=used, reverse=True)
        room = max(0, keep - len(keep_set))
        doomed = [v for v in others[room:] if self._remove(model, v)]
        return doomed
