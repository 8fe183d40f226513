"""Local directory store (``file:///path``): also what a shared filesystem (NFS, Filestore, EFS) looks like."""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from model_export.errors import ObjectNotFound, PreconditionFailed, StoreError, StoreNotFound
from model_export.store.base import Blob, ObjectInfo, Store

# Temp files and locks live beside the data but are never listed as objects.
_TMP = ".mf-tmp-"
_LOCKS = ".mf-locks"


def _token(st: os.stat_result) -> str:
    # Every write replaces the file by rename, so the inode changes with each version.
    return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"


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
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP, dir=path.parent)
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
        tmp = self._temp_beside(path)
        try:
            tmp.write_bytes(data)
            if if_absent:
                try:
                    os.link(tmp, path)  # atomic and exclusive: fails if the name exists
                except FileExistsError as e:
                    raise PreconditionFailed(f"{self.uri}/{key} already exists") from e
                return _token(path.stat())
            if if_token is None:
                os.replace(tmp, path)
                return _token(path.stat())
            with self._lock(key):
                try:
                    current = _token(path.stat())
                except FileNotFoundError:
                    current = None
                if current != if_token:
                    raise PreconditionFailed(f"{self.uri}/{key} changed since it was read")
                os.replace(tmp, path)
                return _token(path.stat())
        except OSError as e:
            raise StoreError(f"cannot write {path}: {e.strerror}") from e
        finally:
            tmp.unlink(missing_ok=True)

    def upload_file(self, key: str, path: Path) -> None:
        dest = self._path(key)
        tmp = self._temp_beside(dest)
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        except OSError as e:
            raise StoreError(f"cannot copy {path} to {dest}: {e.strerror}") from e
        finally:
            tmp.unlink(missing_ok=True)

    def download_file(self, key: str, path: Path) -> None:
        try:
            shutil.copyfile(self._path(key), path)
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
        # Remove directories the deletes emptied, deepest first, never the root.
        for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
            while parent != self.root and self.root in parent.parents:
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent
