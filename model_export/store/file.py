"""Local directory store (``file:///path``): also what a shared filesystem (NFS, Filestore, EFS) looks like."""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from model_export.errors import ObjectNotFound, PreconditionFailed, StoreError, StoreNotFound
from model_export.store.base import Blob, ObjectInfo, ProgressFn, Store, StoredFile, check_read_unchanged

# Temp files and locks live beside the data but are never listed as objects.
_TMP = ".mf-tmp-"
_LOCKS = ".mf-locks"
# put_file reads, hashes and writes in blocks of this size (one reused buffer per call).
_BLOCK = 4 * 1024 * 1024
# What sendfile(2) fails with where it cannot copy between two files: copy through a buffer instead.
_NO_SENDFILE = frozenset({errno.EINVAL, errno.ENOTSOCK, errno.ENOTSUP, errno.ENOSYS})
# Making a directory and a temp file in it can lose a race with delete() pruning the directory it just emptied (in
# another thread or process): try again this many times before reporting the error.
_MKDIR_ATTEMPTS = 20


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` both sets and returns it, racing other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


_UMASK = _umask()


def _token(st: os.stat_result) -> str:
    # Every write replaces the file by rename, so the inode changes with each version.
    return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"


def _sha256_of(path: Path, buf: bytearray) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    view = memoryview(buf)
    with path.open("rb", buffering=0) as fh:
        while n := fh.readinto(view):
            h.update(view[:n])
            size += n
    return h.hexdigest(), size


class FileStore(Store):
    def __init__(self, uri: str, root: str) -> None:
        super().__init__(uri)
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    def check(self) -> None:
        if not self.root.is_dir():
            raise StoreNotFound(f"store root {str(self.root)!r} is not an existing directory (from {self.uri!r})")

    @contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        locks = self.root / _LOCKS
        locks.mkdir(exist_ok=True)
        name = hashlib.sha256(key.encode()).hexdigest()[:32]
        with (locks / name).open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _temp_beside(self, path: Path) -> Path:
        """An empty temp file (``.mf-tmp-*``) in ``path``'s directory, creating the directory as needed. A directory
        removed in between by a concurrent :meth:`delete` (it was empty a moment ago) is made again."""
        attempts = _MKDIR_ATTEMPTS
        while True:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=_TMP, dir=path.parent)
            except (FileNotFoundError, FileExistsError):
                # ENOENT: a directory on the way vanished. EEXIST: mkdir found it, then it vanished before it was
                # confirmed to be a directory (or a file is in the way: then every attempt fails, and we report it).
                attempts -= 1
                if attempts == 0:
                    raise
                continue
            try:
                # mkstemp makes 0600; an object gets the mode any new file of this user gets, so agents running as
                # another user on a shared filesystem can read it when the umask allows.
                os.fchmod(fd, 0o666 & ~_UMASK)
            finally:
                os.close(fd)
            return Path(tmp)

    def read(self, key: str) -> Blob:
        path = self._path(key)
        try:
            with path.open("rb") as fh:
                st = os.fstat(fh.fileno())
                return Blob(fh.read(), _token(st))
        except FileNotFoundError as e:
            raise ObjectNotFound(f"{self.uri}/{key}") from e
        except OSError as e:
            raise StoreError(f"cannot read {path}: {e.strerror}") from e

    def read_if_changed(self, key: str, token: str | None) -> Blob | None:
        try:
            if token is not None and _token(self._path(key).stat()) == token:
                return None
        except FileNotFoundError as e:
            raise ObjectNotFound(f"{self.uri}/{key}") from e
        return self.read(key)

    def write(self, key: str, data: bytes, *, if_token: str | None = None, if_absent: bool = False) -> str:
        path = self._path(key)
        tmp: Path | None = None
        try:
            tmp = self._temp_beside(path)
            tmp.write_bytes(data)
            # The new version's token, taken from the temp file itself: link and rename keep inode, mtime and size,
            # and a stat of ``path`` afterwards could already see the next writer's version.
            token = _token(tmp.stat())
            if if_absent:
                try:
                    os.link(tmp, path)  # atomic and exclusive: fails if the name exists
                except FileExistsError as e:
                    raise PreconditionFailed(f"{self.uri}/{key} already exists") from e
                return token
            if if_token is None:
                os.replace(tmp, path)
                tmp = None  # the name is gone (and may be reused by another writer's temp file): never unlink it
                return token
            with self._lock(key):
                try:
                    current = _token(path.stat())
                except FileNotFoundError:
                    current = None
                if current != if_token:
                    raise PreconditionFailed(f"{self.uri}/{key} changed since it was read")
                os.replace(tmp, path)
                tmp = None
                return token
        except OSError as e:
            raise StoreError(f"cannot write {path}: {e.strerror}") from e
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    def put_file(self, key: str, path: Path, *, progress: ProgressFn | None = None) -> StoredFile:
        """One read of ``path``: each block is hashed and written to a temp file beside the destination, which is then
        linked to its name (``link(2)`` never replaces). An existing file with the same bytes is success."""
        dest = self._path(key)
        buf = bytearray(_BLOCK)
        view = memoryview(buf)
        h = hashlib.sha256()
        size = 0
        tmp: Path | None = None
        try:
            with path.open("rb", buffering=0) as src:
                before = os.fstat(src.fileno())
                tmp = self._temp_beside(dest)
                with tmp.open("wb", buffering=0) as out:
                    while n := src.readinto(view):
                        block = view[:n]
                        h.update(block)  # hashlib releases the GIL on large buffers: workers hash in parallel
                        while block:  # an unbuffered write may be short
                            block = block[out.write(block) :]
                        size += n
                        if progress is not None:
                            progress(n)
                    os.fsync(out.fileno())
                after = os.fstat(src.fileno())
            check_read_unchanged(path, before, after, size, f"{self.uri}/{key}")
            sha256 = h.hexdigest()
            try:
                os.link(tmp, dest)  # atomic and exclusive: readers never see a partial file, nothing is replaced
            except FileExistsError:
                # Our own earlier write (its reply lost, a retried job) is success; anything else is a conflict.
                if dest.stat().st_size != size or _sha256_of(dest, buf) != (sha256, size):
                    raise PreconditionFailed(f"{self.uri}/{key} already exists with other content") from None
        except OSError as e:
            raise StoreError(f"cannot copy {path} to {dest}: {e.strerror or e}") from e
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        return StoredFile(sha256=sha256, size=size, checksum=f"sha256:{sha256}")

    def abort_partial_uploads(self, prefix: str, started_before: dt.datetime) -> int:
        """Remove ``.mf-tmp-*`` files (what a killed writer leaves: up to a whole file per worker) whose directory
        could hold keys starting with ``prefix`` and whose last write is before ``started_before``.

        A running write keeps its temp file's mtime fresh with every block, so it is newer than any cutoff taken
        before it started and is kept. (Should one still be removed, its ``link`` fails: nothing partial is stored.)
        """
        cutoff = started_before.timestamp()
        head, _, _ = prefix.rpartition("/")
        base = self._path(head) if head else self.root
        removed = 0
        emptied: set[Path] = set()
        for dirpath, dirnames, filenames in os.walk(base):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            dir_key = "" if rel == "." else f"{rel}/"
            # Descend only into directories whose keys can start with the prefix (``m/1`` also matches ``m/10/``).
            dirnames[:] = [d for d in dirnames if d != _LOCKS and _may_hold(f"{dir_key}{d}/", prefix)]
            # Files here become keys ``<dir_key><name>``: the directory must match the prefix, or the prefix may end
            # with a name in this directory.
            if not (dir_key.startswith(prefix) or (prefix.startswith(dir_key) and "/" not in prefix[len(dir_key) :])):
                continue
            for name in filenames:
                if not name.startswith(_TMP):
                    continue
                tmp = Path(dirpath, name)
                try:
                    if tmp.lstat().st_mtime >= cutoff:
                        continue  # a live write, or one too recent to judge
                    tmp.unlink()
                except FileNotFoundError:
                    continue  # its writer finished, or another cleanup got there first
                except OSError as e:
                    raise StoreError(f"cannot remove partial upload {tmp}: {e.strerror}") from e
                removed += 1
                emptied.add(tmp.parent)
        self._prune_empty_dirs(emptied)
        return removed

    def download_file(self, key: str, path: Path, *, progress: ProgressFn | None = None) -> None:
        try:
            if progress is None:
                shutil.copyfile(self._path(key), path)  # in the kernel (sendfile), when nobody watches
            else:
                _copy_in_blocks(self._path(key), path, progress)
        except FileNotFoundError as e:
            raise ObjectNotFound(f"{self.uri}/{key}") from e
        except OSError as e:
            raise StoreError(f"cannot copy {self._path(key)} to {path}: {e.strerror}") from e

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # Walk only the deepest directory the prefix names, then filter by the rest of it.
        head, _, _ = prefix.rpartition("/")
        base = self._path(head) if head else self.root
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if d != _LOCKS]
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith(_TMP):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if not key.startswith(prefix):
                    continue
                try:
                    st = Path(dirpath, name).stat()
                except FileNotFoundError:
                    continue
                modified = dt.datetime.fromtimestamp(st.st_mtime, tz=dt.timezone.utc)
                yield ObjectInfo(key, st.st_size, modified)

    def delete(self, keys: Sequence[str]) -> None:
        parents: set[Path] = set()
        for key in keys:
            path = self._path(key)
            try:
                path.unlink(missing_ok=True)
            except OSError as e:
                raise StoreError(f"cannot delete {path}: {e.strerror}") from e
            parents.add(path.parent)
        self._prune_empty_dirs(parents)

    def _prune_empty_dirs(self, dirs: Iterable[Path]) -> None:
        """Remove the directories that are now empty, and their emptied parents, deepest first, never the root.

        Best effort: another writer may be filling or re-creating any of them, or another delete removing them, at
        the same moment. A directory already gone (``ENOENT``) lets the climb go on to its parent; one not empty
        (``ENOTEMPTY``/``EEXIST``) or otherwise not removable ends it. None of these is an error.
        """
        for start in sorted(set(dirs), key=lambda p: len(p.parts), reverse=True):
            parent = start
            while parent != self.root and self.root in parent.parents:
                try:
                    parent.rmdir()
                except FileNotFoundError:
                    pass
                except OSError:
                    break
                parent = parent.parent


def _copy_in_blocks(src: Path, dest: Path, progress: ProgressFn) -> None:
    """Copy ``src`` to ``dest`` a block at a time, telling ``progress`` of each block written: in the kernel
    (``sendfile``, as ``shutil.copyfile`` does; a copy through Python buffers took three times as long), else where
    the system cannot send from file to file (macOS) through a buffer."""
    with src.open("rb", buffering=0) as fin, dest.open("wb", buffering=0) as fout:
        copied = 0
        try:
            while n := os.sendfile(fout.fileno(), fin.fileno(), None, _BLOCK):
                copied += n
                progress(n)
            return
        except (AttributeError, OSError) as e:  # AttributeError: no os.sendfile at all
            if copied or getattr(e, "errno", errno.ENOTSUP) not in _NO_SENDFILE:
                raise
        buf = bytearray(_BLOCK)
        view = memoryview(buf)
        while n := fin.readinto(view):
            block = view[:n]
            while block:  # an unbuffered write may be short
                block = block[fout.write(block) :]
            progress(n)


def _may_hold(dir_key: str, prefix: str) -> bool:
    """Whether a directory whose keys start with ``dir_key`` (ends in ``/``) can hold keys starting with ``prefix``."""
    return dir_key.startswith(prefix) or prefix.startswith(dir_key)
