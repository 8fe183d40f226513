"""The small interface every store backend implements.

Keys are ``/``-separated and relative to the store's root (the URI's bucket + prefix). Backends translate their SDK's
errors into :mod:`model_export.errors` at this edge; everything above (transfers, manifest CAS, publish) is written
once against this interface.
"""

from __future__ import annotations

import datetime as dt
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from model_export.errors import BadInput, TransferError

# How long one store request may take before the SDK's retries give up, end to end, so an unreachable endpoint fails
# with one line within this many seconds instead of minutes of silence. One home; overridable per process.
REQUEST_BUDGET_ENV = "MODELFLEET_STORE_TIMEOUT"
DEFAULT_REQUEST_BUDGET_SECONDS = 30.0


def request_budget() -> float:
    """Seconds a store request (connect, read, and the SDK's retries) may take: ``$MODELFLEET_STORE_TIMEOUT`` or 30."""
    raw = os.environ.get(REQUEST_BUDGET_ENV, "").strip()
    if not raw:
        return DEFAULT_REQUEST_BUDGET_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 1 <= value <= 3600:
        raise BadInput(f"{REQUEST_BUDGET_ENV}={raw!r} is invalid; use a number of seconds from 1 to 3600")
    return value


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: dt.datetime  # server time, timezone-aware


@dataclass(frozen=True)
class Blob:
    data: bytes
    token: str  # what a conditional write or read compares against (ETag, generation, file identity)


def check_read_unchanged(path: Path, before: os.stat_result, after: os.stat_result, read: int, where: str) -> None:
    """The one rule every backend's ``put_file`` applies after its single read of ``path``: ``TransferError`` when
    the file changed meanwhile (another inode, size or mtime, or fewer or more bytes read than it holds), because the
    bytes sent would be a mix of two versions of it. ``before``/``after`` are ``fstat`` of the open file."""
    identity = (before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns)
    if identity != (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns) or read != after.st_size:
        raise TransferError(
            f"{path} changed while it was being uploaded to {where}; nothing was stored — "
            "publish a directory no process is still writing to"
        )


@dataclass(frozen=True)
class StoredFile:
    """What :meth:`Store.put_file` stored, from one read of the file: ``sha256`` and ``size`` of the bytes that were
    sent, and ``checksum`` (``"<algorithm>:<value>"``), the server's own checksum of what it stored, already found
    equal to the same checksum computed over the sent bytes."""

    sha256: str  # hex
    size: int
    checksum: str


ProgressFn = Callable[[int], None]  # called with each number of bytes sent (or received)


class Store(ABC):
    """A bucket (or directory) plus a prefix, addressed by a URI such as ``s3://bucket/prefix``."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    @abstractmethod
    def check(self) -> None:
        """Raise ``StoreNotFound`` when the bucket or root directory does not exist."""

    @abstractmethod
    def read(self, key: str) -> Blob:
        """Return the object and its token; ``ObjectNotFound`` when absent."""

    @abstractmethod
    def read_if_changed(self, key: str, token: str | None) -> Blob | None:
        """Like :meth:`read`, but ``None`` when the object's token still equals ``token`` (one conditional GET)."""

    @abstractmethod
    def write(self, key: str, data: bytes, *, if_token: str | None = None, if_absent: bool = False) -> str:
        """Store ``data`` atomically and return the new token.

        ``if_absent`` creates only when no object exists; ``if_token`` replaces only the version with that token.
        A lost condition raises ``PreconditionFailed`` and changes nothing.
        """

    @abstractmethod
    def put_file(self, key: str, path: Path, *, progress: ProgressFn | None = None) -> StoredFile:
        """Create ``key`` from the file at ``path``; never replace an existing object (S3 ``If-None-Match: *`` on
        PutObject and CompleteMultipartUpload, GCS ``ifGenerationMatch=0`` on every request, file store ``link(2)``).

        The file is read once: the sha256, the server's checksum and the request bodies come from the same buffers.
        Readers never see a partial object. Raises ``PreconditionFailed`` when an object with other content already
        exists at ``key`` (the same content, e.g. our own write whose reply was lost, is success), and
        ``TransferError`` when the server's checksum differs from ours (nothing is left at ``key`` then).

        ``progress`` is called with the bytes sent as they go, in steps of a few MiB at most, adding up to the file's
        size when it succeeds (never more: bytes sent again by a retried request are not counted twice).
        """

    def abort_partial_uploads(self, prefix: str, started_before: dt.datetime) -> int:
        """Remove incomplete uploads under ``prefix`` begun before ``started_before`` (S3 multipart uploads, file
        store temp files) that listing does not show; return how many. Backends without such leftovers return 0."""
        return 0

    @abstractmethod
    def download_file(self, key: str, path: Path, *, progress: ProgressFn | None = None) -> None:
        """Download to ``path`` (whose parent exists); ``ObjectNotFound`` when absent. ``progress`` is called with the
        bytes received as they arrive, in steps of about a MiB, adding up to the object's size when it succeeds (never
        more: bytes received again after a retry are not counted twice)."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in no particular order."""

    @abstractmethod
    def delete(self, keys: Sequence[str]) -> None:
        """Delete the keys; absent keys are not an error."""


class DelegatingStore(Store):
    """Forwards every call to ``inner``: the base of wrappers that watch or change a few calls (the agent's download
    bookkeeping, tests' fault injection) without restating the rest of the interface."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner.uri)
        self.inner = inner

    def check(self) -> None:
        self.inner.check()

    def read(self, key: str) -> Blob:
        return self.inner.read(key)

    def read_if_changed(self, key: str, token: str | None) -> Blob | None:
        return self.inner.read_if_changed(key, token)

    def write(self, key: str, data: bytes, *, if_token: str | None = None, if_absent: bool = False) -> str:
        return self.inner.write(key, data, if_token=if_token, if_absent=if_absent)

    def put_file(self, key: str, path: Path, *, progress: ProgressFn | None = None) -> StoredFile:
        return self.inner.put_file(key, path, progress=progress)

    def abort_partial_uploads(self, prefix: str, started_before: dt.datetime) -> int:
        return self.inner.abort_partial_uploads(prefix, started_before)

    def download_file(self, key: str, path: Path, *, progress: ProgressFn | None = None) -> None:
        self.inner.download_file(key, path, progress=progress)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, keys: Sequence[str]) -> None:
        self.inner.delete(keys)
