"""Google Cloud Storage store (``gs://bucket/prefix``) through google-cloud-storage.

Credentials and endpoint come from the SDK's standard chain (ADC, the VM's service account, ``STORAGE_EMULATOR_HOST``).
Conditional writes use generation preconditions: ``if_generation_match=0`` creates, ``=<gen>`` replaces.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY

from model_export.errors import ObjectNotFound, PreconditionFailed, StoreError, StoreNotFound
from model_export.store.base import Blob, ObjectInfo, Store

# Small reads (manifests) give up after this long, so a poller notices an outage instead of blocking in retries
# for the SDK's default two minutes.
_READ_RETRY = DEFAULT_RETRY.with_timeout(30.0)
# Bigger files go up in resumable chunks; smaller ones in one request (which also carries the preconditions).
_CHUNK = 32 * 1024 * 1024


class GCSStore(Store):
    def __init__(self, uri: str, bucket: str, prefix: str, client: storage.Client | None = None) -> None:
        super().__init__(uri)
        self.prefix = f"{prefix}/" if prefix else ""
        self.client = client or storage.Client()
        self.bucket = self.client.bucket(bucket)

    def _blob(self, key: str) -> storage.Blob:
        return self.bucket.blob(self.prefix + key)

    def _fail(self, err: Exception, key: str) -> Exception:
        if isinstance(err, gexc.NotFound):
            if "bucket" in str(err).lower() and "object" not in str(err).lower():
                return StoreNotFound(f"bucket {self.bucket.name!r} does not exist (from {self.uri!r})")
            return ObjectNotFound(f"{self.uri}/{key}")
        if isinstance(err, gexc.PreconditionFailed):
            return PreconditionFailed(f"{self.uri}/{key} changed since it was read")
        return StoreError(f"GCS request for gs://{self.bucket.name}/{self.prefix}{key} failed: {err}")

    def check(self) -> None:
        # A one-object listing of the prefix, not buckets.get: readers hold only object permissions.
        try:
            list(self.client.list_blobs(self.bucket, prefix=self.prefix, max_results=1))
        except gexc.NotFound as e:
            raise StoreNotFound(f"bucket {self.bucket.name!r} does not exist (from {self.uri!r})") from e
        except gexc.GoogleAPIError as e:
            raise self._fail(e, "") from e

    def _download(self, key: str, **kwargs: Any) -> Blob:
        blob = self._blob(key)
        data = blob.download_as_bytes(retry=_READ_RETRY, **kwargs)
        # The download response carries the generation it read; that is the token for a later conditional write.
        return Blob(data, str(blob.generation))

    def read(self, key: str) -> Blob:
        try:
            return self._download(key)
        except gexc.GoogleAPIError as e:
            raise self._fail(e, key) from e

    def read_if_changed(self, key: str, token: str | None) -> Blob | None:
        try:
            blob = self._download(key, if_generation_not_match=int(token)) if token else self._download(key)
        except gexc.NotModified:
            return None
        except gexc.GoogleAPIError as e:
            raise self._fail(e, key) from e
        # Some GCS emulators ignore the precondition on media downloads; the generation still tells.
        return None if blob.token == token else blob

    def write(self, key: str, data: bytes, *, if_token: str | None = None, if_absent: bool = False) -> str:
        blob = self._blob(key)
        kwargs: dict[str, Any] = {}
        if if_absent:
            kwargs["if_generation_match"] = 0
        elif if_token is not None:
            kwargs["if_generation_match"] = int(if_token)
        try:
            blob.upload_from_string(data, content_type="application/octet-stream", **kwargs)
        except gexc.GoogleAPIError as e:
            raise self._fail(e, key) from e
        return str(blob.generation)

    def upload_file(self, key: str, path: Path) -> None:
        blob = self._blob(key)
        blob.chunk_size = _CHUNK
        try:
            blob.upload_from_filename(str(path), content_type="application/octet-stream", checksum="auto")
        except gexc.GoogleAPIError as e:
            raise self._fail(e, key) from e

    def download_file(self, key: str, path: Path) -> None:
        try:
            self._blob(key).download_to_filename(str(path), checksum="auto")
        except gexc.GoogleAPIError as e:
            path.unlink(missing_ok=True)
            raise self._fail(e, key) from e

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        cut = len(self.prefix)
        try:
            for blob in self.client.list_blobs(self.bucket, prefix=self.prefix + prefix):
                yield ObjectInfo(blob.name[cut:], int(blob.size or 0), blob.updated)
        except gexc.GoogleAPIError as e:
            raise self._fail(e, prefix) from e

    def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            try:
                self._blob(key).delete()
            except gexc.NotFound:
                continue
            except gexc.GoogleAPIError as e:
                raise self._fail(e, key) from e
