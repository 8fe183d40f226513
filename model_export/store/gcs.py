"""Google Cloud Storage store (``gs://bucket/prefix``) through google-cloud-storage.

Credentials and endpoint come from the SDK's standard chain (ADC, the VM's service account, ``STORAGE_EMULATOR_HOST``).
Conditional writes use generation preconditions: ``if_generation_match=0`` creates, ``=<gen>`` replaces.

Every request carries a timeout and a retry deadline derived from :func:`request_budget`, so an endpoint that accepts
connections and never answers fails with one line within the budget.

Files are stored by :meth:`GCSStore.put_file`: create-only (``ifGenerationMatch=0`` on the one-request upload and on
the request that opens a resumable upload session), the file read once through :class:`_HashingReader`, whose bytes
are both the request bodies and the input of our sha256 and CRC32C; the server's CRC32C of what it stored is then
compared with ours. A resumable upload's bytes are streamed from the file straight into the request (the session is
opened by the SDK, the bytes sent here, by GCS's documented resumable protocol): the SDK's own resumable upload holds
each chunk in memory, so it needs small chunks, and every chunk is one more request. Not done, on purpose:

* parallel chunks (``transfer_manager.upload_chunks_concurrently``): it uses the XML multipart-upload API, which takes
  no generation precondition from that function (so it could replace an object) and which fake-gcs-server, the tests'
  server, does not implement at all (so it cannot be measured or tested here). Parallel parts joined by ``compose``
  (which does take ``ifGenerationMatch=0`` on the destination) would work on both, but every part is one more object
  written, verified and deleted, and on two cores shared with the server one streamed request was faster
  (docs/benchmarks.md);
* batched deletes (``client.batch()``): fake-gcs-server skips every part of a batch without a ``Content-ID`` header,
  which the Python SDK never sends, so its batches do nothing there and the SDK fails to parse the empty reply.
  :meth:`GCSStore.delete` sends one request per key instead, a few at a time, and stops at the first failure.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode

import google_crc32c
import requests
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.auth import exceptions as auth_exc
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption
from google.cloud.storage.retry import DEFAULT_RETRY

from model_export.errors import (
    ModelfleetError,
    ObjectNotFound,
    PreconditionFailed,
    StoreError,
    StoreNotFound,
    TransferError,
    one_line,
)
from model_export.store.base import (
    REQUEST_BUDGET_ENV,
    Blob,
    ObjectInfo,
    ProgressFn,
    Store,
    StoredFile,
    check_read_unchanged,
    request_budget,
)
from model_export.store.progress import Meter, MeteredWriter

MIB = 1024 * 1024
# Files up to this size go up in one request (the whole file in one buffer; the request carries our sha256 and CRC32C
# in the object's metadata, so GCS itself refuses bytes that differ). This is also the SDK's own limit: it sends
# anything larger as a resumable upload.
SINGLE_REQUEST_MAX = 8 * MIB
# Larger files go up as a resumable upload: a session opened create-only, then the bytes streamed from the file in
# requests of at most CHUNK_SIZE bytes (a multiple of 256 KiB; None: the whole file in one request, as GCS recommends),
# STREAM_BLOCK bytes at a time, so a file in flight holds one block, whatever the request's size. Each further request
# costs a round trip, and fake-gcs-server re-hashes everything received so far at every one of them.
CHUNK_SIZE: int | None = None
STREAM_BLOCK = MIB
_CHUNK_MULTIPLE = 256 * 1024
_RESUME_INCOMPLETE = 308  # a resumable session's answer while bytes are still expected
# A streamed request that fails in one of these ways (or with one of these statuses) is retried from the offset the
# server reports (its status check); the SDK retries the same ones.
_RETRIABLE = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError, ConnectionError)
_RETRIABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Deletes sent at a time (the SDK's batch endpoint is not used; see the module docstring).
DELETE_WORKERS = 8
SHA256_METADATA = "sha256"  # custom metadata key holding the hex sha256 put_file computed of the bytes it sent
_OCTET = "application/octet-stream"
_EMULATOR_ENV = "STORAGE_EMULATOR_HOST"  # the SDK's own variable for another endpoint (an emulator)
NO_CREDENTIALS = (
    "no Google credentials: run `gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS"
)
# What the SDK raises besides the API's own errors: the transport's (a timeout, a refused connection) and the
# credentials' (a token refresh that fails).
_SDK_ERRORS = (gexc.GoogleAPIError, requests.RequestException, auth_exc.GoogleAuthError)
_Checksum: Any = google_crc32c.Checksum  # untyped; hardware CRC32C (the C extension) when available


@dataclass(frozen=True)
class _Limits:
    """How long one request may take: ``timeout`` for each attempt's connect and each read, and ``retry`` with a
    deadline such that the last attempt still ends within ``budget``."""

    budget: float
    timeout: tuple[float, float]
    retry: Retry


def _limits() -> _Limits:
    budget = request_budget()
    attempt = budget / 3
    # The deadline is checked only between attempts, so the last one may start just before it: reserve one attempt.
    return _Limits(budget, (attempt, attempt), DEFAULT_RETRY.with_timeout(budget - attempt))


def _client() -> Any:
    """A client from the standard chain; missing credentials are one line instead of the SDK's paragraph."""
    try:
        return storage.Client()
    except auth_exc.DefaultCredentialsError as e:
        if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
            raise ModelfleetError(
                f"the Google credentials in GOOGLE_APPLICATION_CREDENTIALS are unusable: {one_line(e)}"
            ) from e
        raise ModelfleetError(NO_CREDENTIALS) from e


def _check_hint() -> str:
    return "check STORAGE_EMULATOR_HOST and the network" if os.environ.get(_EMULATOR_ENV) else "check the network"


def _b64_crc32c(crc: Any) -> str:
    return base64.b64encode(crc.digest()).decode("ascii")


class _HashingReader:
    """The file as the uploads read it: every byte handed out feeds the whole-file sha256 and CRC32C, exactly once.

    A resumable upload may seek back and read again (a request that failed is followed by the rest of the file from
    the offset the server says it holds, or a request is repeated by the transport): only bytes beyond the highest
    offset already hashed are hashed. Bytes read again after a seek-back may differ from the first read when the file
    changed meanwhile: our digests keep the first bytes, the server stores the second, and the comparison of the
    server's CRC32C with ours catches it. A seek forward past unread bytes hashes them first, so the digests always
    cover the file from its start.

    When the bytes read reach the file's size at open, the file must still be the one opened, unchanged (same size
    and modification time): otherwise ``TransferError``, raised from ``read`` before the last bytes can be sent, so a
    file still being written is never stored as a mix of versions.
    """

    _BLOCK = MIB

    def __init__(self, fh: IO[bytes], path: Path, what: str, progress: ProgressFn | None) -> None:
        self._fh = fh
        self.path = path
        self.what = what  # where the bytes go, for messages
        self._progress = progress
        self.before = os.fstat(fh.fileno())
        self._pos = 0
        self.hashed = 0  # bytes [0, hashed) are in the digests
        self._checked = False
        self._sha = hashlib.sha256()
        self._crc = _Checksum()

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    @property
    def crc32c(self) -> str:
        """Base64 of the big-endian CRC32C, as GCS writes ``crc32c``."""
        return _b64_crc32c(self._crc)

    # -- what the SDK calls ----------------------------------------------------------------------------------------

    def read(self, size: int | None = -1) -> bytes:
        if self._pos > self.hashed:
            self._hash_gap(self._pos)
        data = self._read(size)
        start = self._pos
        self._pos += len(data)
        if self._pos > self.hashed:
            self._absorb(data if start >= self.hashed else data[self.hashed - start :])
        return data

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._pos = self._fh.seek(offset, whence)
        return self._pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    # -- ours ------------------------------------------------------------------------------------------------------

    def finish(self) -> None:
        """Hash the rest of the file (what the SDK has not read: the upload stopped early), then check it."""
        self._hash_gap(None)
        if not self._checked:
            self._check()

    def _read(self, size: int | None) -> bytes:
        try:
            return self._fh.read(-1 if size is None else size)
        except OSError as e:
            raise TransferError(f"cannot read {self.path}: {e.strerror or e}") from e

    def _absorb(self, data: bytes) -> None:
        self._sha.update(data)
        self._crc.update(data)
        self.hashed += len(data)
        if self._progress is not None and data:
            self._progress(len(data))
        if self.hashed >= self.before.st_size and not self._checked:
            self._check()

    def _hash_gap(self, end: int | None) -> None:
        """Hash the bytes from ``hashed`` to ``end`` (to the end of the file for ``None``) and come back."""
        pos = self._pos
        self._fh.seek(self.hashed)
        while end is None or self.hashed < end:
            want = self._BLOCK if end is None else min(self._BLOCK, end - self.hashed)
            block = self._read(want)
            if not block:
                break
            self._absorb(block)
        self._fh.seek(pos)

    def _check(self) -> None:
        self._checked = True
        check_read_unchanged(self.path, self.before, os.fstat(self._fh.fileno()), self.hashed, self.what)


class _Parts:
    """A request body of known length sent as the given parts, without joining them (and again when iterated
    again: a request the transport repeats). ``data``, the file's bytes, goes in ``STREAM_BLOCK`` slices, each told
    to ``meter`` as it is handed to the transport (and taken back when the body is sent again)."""

    def __init__(self, head: bytes, data: bytes, tail: bytes, meter: Meter) -> None:
        self.head, self.data, self.tail = head, data, tail
        self.meter = meter
        self._handed = 0  # of ``data``, in the current iteration

    def __len__(self) -> int:
        return len(self.head) + len(self.data) + len(self.tail)

    def __iter__(self) -> Iterator[bytes | memoryview]:
        self.meter.add(-self._handed)
        self._handed = 0
        yield self.head
        view = memoryview(self.data)
        for start in range(0, len(view), STREAM_BLOCK):
            block = view[start : start + STREAM_BLOCK]
            self._handed += len(block)
            self.meter.add(len(block))
            yield block
        yield self.tail


class _Body:
    """Bytes ``[start, end)`` of the reader's file as a request body of known length, read ``STREAM_BLOCK`` at a time
    as the request sends them; iterated again (a request the transport repeats), it reads them again."""

    def __init__(self, reader: _HashingReader, start: int, end: int) -> None:
        self.reader = reader
        self.start = start
        self.end = end

    def __len__(self) -> int:
        return self.end - self.start

    def __iter__(self) -> Iterator[bytes]:
        self.reader.seek(self.start)
        left = self.end - self.start
        while left > 0:
            data = self.reader.read(min(STREAM_BLOCK, left))
            if not data:  # the file shrank: say so (finish raises), never send fewer bytes than announced
                self.reader.finish()
                raise TransferError(f"{self.reader.path} ended early while it was being uploaded to {self.reader.what}")
            left -= len(data)
            yield data


class GCSStore(Store):
    def __init__(
        self,
        uri: str,
        bucket: str,
        prefix: str,
        client: Any | None = None,
        *,
        chunk_size: int | None = CHUNK_SIZE,
    ) -> None:
        super().__init__(uri)
        if chunk_size is not None and (chunk_size <= 0 or chunk_size % _CHUNK_MULTIPLE):
            raise ValueError(f"chunk_size must be a positive multiple of 256 KiB or None, got {chunk_size}")
        self.prefix = f"{prefix}/" if prefix else ""
        self.client = client or _client()
        self.bucket = self.client.bucket(bucket)
        self.chunk_size = chunk_size

    def _blob(self, key: str) -> Any:
        return self.bucket.blob(self.prefix + key)

    def _where(self, key: str) -> str:
        return f"gs://{self.bucket.name}/{self.prefix}{key}"

    def _fail(self, err: BaseException, key: str) -> ModelfleetError:
        """Translate an SDK error about ``key`` into the project's exception, on one line."""
        if isinstance(err, gexc.NotFound):
            if "bucket" in str(err).lower() and "object" not in str(err).lower():
                return StoreNotFound(f"bucket {self.bucket.name!r} does not exist (from {self.uri!r})")
            return ObjectNotFound(f"{self.uri}/{key}")
        if isinstance(err, gexc.PreconditionFailed):
            return PreconditionFailed(f"{self.uri}/{key} changed since it was read")
        cause: BaseException = err
        if isinstance(err, gexc.RetryError) and err.cause is not None:
            cause = err.cause  # the retries ran out of time: say what the last attempt met
        if isinstance(cause, auth_exc.TransportError) and cause.args and isinstance(cause.args[0], BaseException):
            cause = cause.args[0]
        endpoint = self.client.api_endpoint
        budget = request_budget()
        if isinstance(cause, requests.Timeout):
            return StoreError(
                f"GCS endpoint {endpoint} did not answer within {budget:g} s ({self._where(key)}); {_check_hint()}, "
                f"or raise {REQUEST_BUDGET_ENV}"
            )
        if isinstance(cause, (requests.ConnectionError, ConnectionError)):
            # requests' text nests urllib3's ("HTTPConnectionPool(...): Max retries exceeded ..."): keep the OS reason.
            reason = re.search(r"\[Errno -?\d+\][^'\")]*", str(cause))
            return StoreError(
                f"GCS endpoint {endpoint} could not be reached within {budget:g} s ({self._where(key)}): "
                f"{reason.group(0).strip() if reason else one_line(cause, 300)}; {_check_hint()}"
            )
        return StoreError(f"GCS request for {self._where(key)} failed: {one_line(err)}")

    def check(self) -> None:
        # A one-object listing of the prefix, not buckets.get: readers hold only object permissions.
        lim = _limits()
        try:
            list(
                self.client.list_blobs(
                    self.bucket, prefix=self.prefix, max_results=1, timeout=lim.timeout, retry=lim.retry
                )
            )
        except gexc.NotFound as e:
            raise StoreNotFound(f"bucket {self.bucket.name!r} does not exist (from {self.uri!r})") from e
        except _SDK_ERRORS as e:
            raise self._fail(e, "") from e

    def _download(self, key: str, **kwargs: Any) -> Blob:
        lim = _limits()
        blob = self._blob(key)
        data = blob.download_as_bytes(timeout=lim.timeout, retry=lim.retry, **kwargs)
        # The download response carries the generation it read; that is the token for a later conditional write.
        return Blob(data, str(blob.generation))

    def read(self, key: str) -> Blob:
        try:
            return self._download(key)
        except _SDK_ERRORS as e:
            raise self._fail(e, key) from e

    def read_if_changed(self, key: str, token: str | None) -> Blob | None:
        try:
            blob = self._download(key, if_generation_not_match=int(token)) if token else self._download(key)
        except gexc.NotModified:
            return None
        except _SDK_ERRORS as e:
            raise self._fail(e, key) from e
        # Some GCS emulators ignore the precondition on media downloads; the generation still tells.
        return None if blob.token == token else blob

    def write(self, key: str, data: bytes, *, if_token: str | None = None, if_absent: bool = False) -> str:
        lim = _limits()
        blob = self._blob(key)
        kwargs: dict[str, Any] = {}
        if if_absent:
            kwargs["if_generation_match"] = 0
        elif if_token is not None:
            kwargs["if_generation_match"] = int(if_token)
        try:
            blob.upload_from_string(
                data,
                content_type=_OCTET,
                timeout=lim.timeout,
                # As the SDK's default: an upload is retried only under a precondition, which makes a repeat harmless.
                retry=lim.retry if kwargs else None,
                **kwargs,
            )
        except _SDK_ERRORS as e:
            raise self._fail(e, key) from e
        return str(blob.generation)

    # -- put_file ------------------------------------------------------------------------------------------------------

    def put_file(self, key: str, path: Path, *, progress: ProgressFn | None = None) -> StoredFile:
        """Create ``key`` from ``path``, never replacing an object, the file read once.

        Up to ``SINGLE_REQUEST_MAX`` bytes go as one request whose metadata carries our sha256 and CRC32C (GCS refuses
        a body of another CRC32C); more as a resumable upload whose requests of up to ``chunk_size`` bytes stream the
        file through a :class:`_HashingReader`, the sha256 added to the metadata afterwards (the session's metadata is
        sent before the bytes are read). Either way the server's CRC32C and size of what it stored must equal ours,
        else the object is deleted and ``TransferError`` raised. A 412 (an object exists) is success when that object
        has our size, CRC32C and sha256 (our own earlier write whose reply was lost), else ``PreconditionFailed``.
        """
        lim = _limits()
        meter = Meter(progress)
        try:
            fh = path.open("rb")
        except OSError as e:
            raise TransferError(f"cannot read {path}: {e.strerror or e}") from e
        with fh:
            # The bytes count as sent when the reader first hands them to a streamed request (it reads each offset
            # once), or as the one-request body hands them on.
            small = os.fstat(fh.fileno()).st_size <= SINGLE_REQUEST_MAX
            reader = _HashingReader(fh, path, f"{self.uri}/{key}", None if small else meter.add)
            blob = self._blob(key)
            try:
                if small:
                    data = reader.read()
                    reader.finish()  # a file that shrank since it was opened fails here, before anything is sent
                    blob.metadata = {SHA256_METADATA: reader.sha256}
                    blob._set_properties(self._send_one_request(blob, data, reader.crc32c, lim, meter))
                else:
                    # checksum=None: our own comparison below, which deletes only this generation on a mismatch (the
                    # SDK's would delete whatever object has the name).
                    session = blob.create_resumable_upload_session(
                        content_type=_OCTET,
                        size=reader.before.st_size,
                        if_generation_match=0,
                        checksum=None,
                        timeout=lim.timeout,
                        retry=lim.retry,
                    )
                    blob._set_properties(self._send_resumable(session, reader, lim))
            except gexc.PreconditionFailed as e:
                reader.finish()
                existing = self._existing(key, reader, e)
                meter.finish(existing.size)
                return existing
            except gexc.BadRequest as e:
                if "crc32c" in str(e).lower():
                    raise TransferError(
                        f"GCS refused {self._where(key)}: the bytes it received differ from those sent; "
                        "nothing was stored, upload again"
                    ) from e
                raise self._fail(e, key) from e
            except _SDK_ERRORS as e:
                raise self._fail(e, key) from e
            except ValueError as e:  # the SDK's own checks of the stream (e.g. fewer bytes than the size given)
                reader.finish()  # a file that shrank while it was read: say so
                raise TransferError(f"uploading {path} to {self.uri}/{key} failed: {one_line(e)}") from e
        self._verify(key, blob, reader)
        if (blob.metadata or {}).get(SHA256_METADATA) != reader.sha256:
            self._add_sha256(key, blob, reader.sha256)
        meter.finish(reader.hashed)
        return StoredFile(reader.sha256, reader.hashed, f"crc32c:{reader.crc32c}")

    def _send_one_request(self, blob: Any, data: bytes, crc32c: str, lim: _Limits, meter: Meter) -> dict[str, Any]:
        """Create ``blob`` from ``data`` in one multipart request (``uploadType=multipart``, ``ifGenerationMatch=0``):
        the first part is the object's metadata (as the SDK writes it for ``blob``: name, our sha256) plus ``crc32c``,
        the CRC32C of ``data`` (GCS refuses a body of another), the second ``data`` itself; return the object's
        resource from the reply. The parts go to the socket as they are: the SDK's own one-request upload
        concatenates them into a new body, several copies of the file, and computes the CRC32C once more."""
        client = self.client
        # The SDK's own headers (user agent, idempotency token, ...) and metadata for this blob.
        headers, resource, content_type = blob._get_upload_arguments(client, _OCTET)
        resource["crc32c"] = crc32c
        boundary = f"==============={secrets.randbelow(10**19):019d}==".encode()
        head = b"".join(
            [
                b"--" + boundary + b"\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n",
                json.dumps(resource).encode(),
                b"\r\n--" + boundary + b"\r\ncontent-type: " + content_type.encode() + b"\r\n\r\n",
            ]
        )
        headers["content-type"] = f'multipart/related; boundary="{boundary.decode()}"'
        query = {"uploadType": "multipart", "ifGenerationMatch": "0"}
        if self.bucket.user_project is not None:
            query["userProject"] = self.bucket.user_project
        url = (
            f"{client._connection.get_api_base_url_for_mtls()}/upload/storage/v1{self.bucket.path}/o?{urlencode(query)}"
        )
        body = _Parts(head, data, b"\r\n--" + boundary + b"--", meter)

        def send() -> dict[str, Any]:
            resp = client._http.request("POST", url, data=body, headers=headers, timeout=lim.timeout)
            if resp.status_code != 200:
                raise gexc.from_http_response(resp)  # type: ignore[no-untyped-call]
            created: dict[str, Any] = resp.json()
            return created

        # Retried as the SDK retries it: the precondition makes a repeat harmless (a 412 then is our own write).
        result: dict[str, Any] = lim.retry(send)()
        return result

    def _send_resumable(self, session: str, reader: _HashingReader, lim: _Limits) -> dict[str, Any]:
        """Send the file's bytes to the resumable upload ``session`` in requests of up to ``chunk_size`` bytes, each
        body streamed from ``reader``; return the object's resource from the final reply.

        A request that fails in a retriable way (a dropped connection, a timeout, 408, 429, 5xx) is followed by GCS's
        status check, which says how many bytes the server holds, and the upload goes on from there; the retries end
        when no byte more has been stored for the retry deadline of one request. The reader hashes each offset once,
        so bytes sent again are not hashed again (and bytes that differ on the second read make the server's CRC32C
        differ from ours).
        """
        size = reader.before.st_size
        transport = self.client._http
        window = lim.retry.timeout or lim.budget
        offset = 0  # the server holds bytes [0, offset)
        known = True  # False after a failed request: the server's offset must be asked for
        give_up = time.monotonic() + window
        delay = 0.5
        while True:
            try:
                if not known:
                    resp = transport.request(
                        "PUT", session, data=b"", headers={"Content-Range": f"bytes */{size}"}, timeout=lim.timeout
                    )
                else:
                    end = size if self.chunk_size is None else min(size, offset + self.chunk_size)
                    known = False
                    resp = transport.request(
                        "PUT",
                        session,
                        data=_Body(reader, offset, end),
                        headers={"Content-Type": _OCTET, "Content-Range": f"bytes {offset}-{end - 1}/{size}"},
                        timeout=lim.timeout,
                    )
                if resp.status_code in (200, 201):
                    resource: dict[str, Any] = resp.json()
                    return resource
                if resp.status_code != _RESUME_INCOMPLETE:
                    raise gexc.from_http_response(resp)  # type: ignore[no-untyped-call]
                held = re.fullmatch(r"bytes=0-(\d+)", resp.headers.get("Range", ""))
                stored = int(held.group(1)) + 1 if held else 0
                if stored > offset:  # progress: a new retry deadline
                    give_up, delay = time.monotonic() + window, 0.5
                offset, known = stored, True
            except (*_RETRIABLE, gexc.GoogleAPICallError) as e:
                retriable = not isinstance(e, gexc.GoogleAPICallError) or e.code in _RETRIABLE_STATUS
                if not retriable or time.monotonic() + delay > give_up:
                    raise
                time.sleep(delay)
                delay = min(2 * delay, 8.0)

    def _verify(self, key: str, blob: Any, reader: _HashingReader) -> None:
        """The server's CRC32C and size of what it stored (from the upload's reply) against ours; on a mismatch delete
        that generation, so nothing unverified stays at ``key``."""
        if blob.crc32c == reader.crc32c and blob.size == reader.hashed:
            return
        theirs = f"CRC32C {blob.crc32c} of {blob.size} B" if blob.crc32c else "no CRC32C"
        raise TransferError(
            f"{self.uri}/{key}: GCS reports {theirs} for the {reader.hashed} B sent (CRC32C {reader.crc32c}); "
            f"{self._discard(key, blob)}, upload again"
        )

    def _add_sha256(self, key: str, blob: Any, sha256: str) -> None:
        """Record our sha256 in the metadata of the generation just created (a repeat sets the same value again)."""
        lim = _limits()
        blob.metadata = {SHA256_METADATA: sha256}
        try:
            blob.patch(if_generation_match=blob.generation, timeout=lim.timeout, retry=lim.retry)
        except _SDK_ERRORS as e:
            raise StoreError(
                f"recording the sha256 of {self._where(key)} failed ({one_line(self._fail(e, key), 300)}); "
                f"{self._discard(key, blob)}, upload again"
            ) from e

    def _discard(self, key: str, blob: Any) -> str:
        """Delete exactly ``blob``'s generation (best effort); say what happened, for the message."""
        lim = _limits()
        try:
            blob.delete(if_generation_match=blob.generation, timeout=lim.timeout, retry=lim.retry)
        except gexc.NotFound:
            return "the object is gone"
        except _SDK_ERRORS as e:
            return f"deleting the object failed too ({one_line(self._fail(e, key), 200)})"
        return "the object was deleted"

    def _existing(self, key: str, reader: _HashingReader, err: Exception) -> StoredFile:
        """The create lost its precondition: the object there is ours (an earlier attempt whose reply was lost, or the
        same file published again) when its size, CRC32C and recorded sha256 are ours; anything else is a conflict."""
        lim = _limits()
        try:
            found = self.bucket.get_blob(self.prefix + key, timeout=lim.timeout, retry=lim.retry)
        except _SDK_ERRORS as e:
            raise self._fail(e, key) from e
        if found is None:
            raise PreconditionFailed(
                f"{self.uri}/{key} is being written or deleted by another process at the same time; retry"
            ) from err
        same = (
            found.size == reader.hashed
            and found.crc32c == reader.crc32c
            and (found.metadata or {}).get(SHA256_METADATA) == reader.sha256
        )
        if not same:
            raise PreconditionFailed(
                f"{self.uri}/{key} already exists with other content; it was not replaced"
            ) from err
        return StoredFile(reader.sha256, reader.hashed, f"crc32c:{reader.crc32c}")

    # -- the rest ------------------------------------------------------------------------------------------------------

    def download_file(self, key: str, path: Path, *, progress: ProgressFn | None = None) -> None:
        lim = _limits()
        try:
            if progress is None:
                self._blob(key).download_to_filename(str(path), checksum="auto", timeout=lim.timeout, retry=lim.retry)
            else:
                # The SDK writes each 8 KiB block it receives (a retry resumes at the offset reached; a restart seeks
                # back), so the writer sees the bytes as they come.
                meter = Meter(progress)
                with path.open("wb") as fh:
                    self._blob(key).download_to_file(
                        MeteredWriter(fh, meter), checksum="auto", timeout=lim.timeout, retry=lim.retry
                    )
                meter.finish(path.stat().st_size)
        except DataCorruption as e:
            path.unlink(missing_ok=True)
            raise TransferError(f"{self._where(key)}: the bytes downloaded differ from GCS's checksum of them") from e
        except _SDK_ERRORS as e:
            path.unlink(missing_ok=True)
            raise self._fail(e, key) from e

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        lim = _limits()
        cut = len(self.prefix)
        try:
            for blob in self.client.list_blobs(
                self.bucket, prefix=self.prefix + prefix, timeout=lim.timeout, retry=lim.retry
            ):
                yield ObjectInfo(blob.name[cut:], int(blob.size or 0), blob.updated)
        except _SDK_ERRORS as e:
            raise self._fail(e, prefix) from e

    def delete(self, keys: Sequence[str]) -> None:
        """Delete each key (absent ones are fine), ``DELETE_WORKERS`` at a time. The first failure cancels the deletes
        not yet started and is raised once the running ones end, so an unreachable endpoint fails within about one
        request's budget, however many keys."""
        unique = list(dict.fromkeys(keys))
        if not unique:
            return
        lim = _limits()

        def one(key: str) -> None:
            with contextlib.suppress(gexc.NotFound):
                self._blob(key).delete(timeout=lim.timeout, retry=lim.retry)

        with ThreadPoolExecutor(min(DELETE_WORKERS, len(unique)), thread_name_prefix="gcs-delete") as pool:
            futures = {pool.submit(one, key): key for key in unique}
            _, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for fut in pending:
                fut.cancel()
        for fut, key in futures.items():
            err = None if fut.cancelled() else fut.exception()
            if isinstance(err, _SDK_ERRORS):
                raise self._fail(err, key) from err
            if err is not None:
                raise err
