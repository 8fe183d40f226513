"""The small interface every store backend implements.

Keys are ``/``-separated and relative to the store's root (the URI's bucket + prefix). Backends translate their SDK's
errors into :mod:`model_export.errors` at this edge; everything above (transfers, manifest CAS, publish) is written
once against this interface.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: dt.datetime  # server time, timezone-aware


@dataclass(frozen=True)
class Blob:
    data: bytes
    token: str  # what a conditional write or read compares against (ETag, generation, file identity)


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
    def upload_file(self, key: str, path: Path) -> None:
        """Upload a local file; readers never see a partial object."""

    @abstractmethod
    def download_file(self, key: str, path: Path) -> None:
        """Download to ``path`` (whose parent exists); ``ObjectNotFound`` when absent."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in no particular order."""

    @abstractmethod
    def delete(self, keys: Sequence[str]) -> None:
        """Delete the keys; absent keys are not an error."""
