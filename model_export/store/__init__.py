"""Store backends, picked by URI scheme: ``file:///path``, ``gs://bucket/prefix``, ``s3://bucket/prefix``."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from model_export.errors import InvalidStoreURI, ModelfleetError
from model_export.store.base import Blob, ObjectInfo, Store

__all__ = ["Blob", "ObjectInfo", "Store", "checked_store", "open_store", "parse_uri"]

URI_FORMS = "file:///absolute/path, gs://bucket/prefix or s3://bucket/prefix"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


def parse_uri(uri: str) -> tuple[str, str, str]:
    """Split a store URI into ``(scheme, bucket_or_root, prefix)``; ``InvalidStoreURI`` names the valid forms."""
    parts = urlsplit(uri)
    scheme = parts.scheme
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise InvalidStoreURI(f"store URI {uri!r} is not an absolute file URI; use {URI_FORMS}")
        return scheme, parts.path.rstrip("/") or "/", ""
    if scheme in ("gs", "s3"):
        bucket = parts.netloc
        if not _BUCKET.match(bucket) or parts.query or parts.fragment:
            raise InvalidStoreURI(f"store URI {uri!r} has no valid bucket name; use {URI_FORMS}")
        prefix = parts.path.strip("/")
        if any(seg in ("", ".", "..") for seg in prefix.split("/")) and prefix:
            raise InvalidStoreURI(f"store URI {uri!r} has an empty or relative path segment; use {URI_FORMS}")
        return scheme, bucket, prefix
    raise InvalidStoreURI(f"store URI {uri!r} has unknown scheme {scheme!r}; use {URI_FORMS}")


def open_store(uri: str) -> Store:
    """Return the backend for ``uri``. Cloud SDKs are imported only by the backend that needs them; an SDK's own
    setup failure (no credentials, a bad endpoint variable) becomes one clear ``ModelfleetError``."""
    scheme, bucket, prefix = parse_uri(uri)
    try:
        return _backend(uri, scheme, bucket, prefix)
    except ModelfleetError:
        raise
    except Exception as e:
        raise ModelfleetError(f"cannot open store {uri}: {type(e).__name__}: {e}") from e


def checked_store(store: str | Store) -> Store:
    """``store``, or the backend for that URI, after ``check()`` (the bucket or directory exists)."""
    st = open_store(store) if isinstance(store, str) else store
    st.check()
    return st


def _backend(uri: str, scheme: str, bucket: str, prefix: str) -> Store:
    if scheme == "file":
        from model_export.store.file import FileStore

        return FileStore(uri, bucket)
    if scheme == "s3":
        from model_export.store.s3 import S3Store

        return S3Store(uri, bucket, prefix)
    from model_export.store.gcs import GCSStore

    return GCSStore(uri, bucket, prefix)
