"""Amazon S3 store (``s3://bucket/prefix``) through boto3.

Endpoint, region and credentials come from boto3's standard chain (``AWS_ENDPOINT_URL``, ``AWS_REGION``, instance
profile, ...). Conditional writes use S3's ``If-None-Match: *`` and ``If-Match: <etag>``.

Files are stored by :meth:`S3Store.put_file`, written here on the low-level client rather than boto3's transfer
manager, because it must do what the manager cannot: ``If-None-Match: *`` on CompleteMultipartUpload, one read of
the file feeding the sha256 and every request body, and a SHA-256 checksum on every request that the server checks
and answers with (per object, or per part and then composite: ``base64(sha256(part digests))-N``).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from model_export.errors import (
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
from model_export.store.progress import Meter, MeteredBody

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, ObjectIdentifierTypeDef

MIB = 1024 * 1024
# Files up to MULTIPART_THRESHOLD go up in one PutObject (one buffer of the whole file), larger ones as a multipart
# upload of PART_SIZE parts, PART_WORKERS sent at a time, at most PART_WORKERS + 1 parts (40 MiB) held per file.
# Measured against the local S3 API server the tests use (moto, CPU-bound; median of 3-9 puts): one PUT and 8 MiB
# parts were within noise up to 32 MiB (16 MiB: 0.11-0.18 s vs 0.14-0.21 s), parts won from 48 MiB on (64 MiB: 0.69 s
# vs 0.49 s). A real link, where one connection's throughput is the limit, favours parallel parts sooner, and one PUT
# holds the whole file in memory: so one PUT up to 16 MiB, 8 MiB parts above (boto3's own default part size).
MULTIPART_THRESHOLD = 16 * MIB
PART_SIZE = 8 * MIB
PART_WORKERS = 4
# File bytes one store's uploads hold in memory at once (request bodies read, not yet acknowledged), whatever the
# number of files in flight: without it 8 file workers could hold 8 x (PART_WORKERS + 1) parts (320 MiB), 16 twice
# that. 128 MiB is 16 parts in flight; the benchmark's publish (docs/benchmarks.md) holds at most 96 MiB and never
# waits for it.
MEMORY_BUDGET = 128 * MIB
MAX_PARTS = 10_000  # S3's limit; larger files get larger parts
_MIN_PART = 5 * MIB  # S3's smallest part (but the last)
# Enough pooled connections for the transfer layer's workers, each of which may send PART_WORKERS parts at once.
_POOL = 64
_DOWNLOAD = TransferConfig(
    multipart_threshold=64 * MIB,
    multipart_chunksize=16 * MIB,
    max_concurrency=4,
    use_threads=True,
)
_EXPECT_CONTINUE_WAIT = 1.0  # botocore's wait for "100 Continue" before a PutObject/UploadPart body
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_BAD_DIGEST = {"BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch", "XAmzContentSHA256Mismatch"}
NO_CREDENTIALS = (
    "no AWS credentials: run `aws configure` / `aws sso login`, or set AWS_PROFILE or "
    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
)


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def client_config(budget: float) -> Config:
    """Timeouts and retries that end a request within ``budget`` seconds, the SDK's retries included.

    Each attempt may wait its share for the connection and for each read, plus the 1 s botocore waits for a
    ``100 Continue`` before it sends a body anyway; botocore's standard mode waits at most ``2**i`` s between
    attempts (throttling; 50 ms scale otherwise), which is reserved first. Short budgets get fewer attempts rather
    than uselessly short ones (30 s: 3 attempts of 8 s; 10 s: 2 of 3.5 s; 2 s: one of 1 s).

    Bodies are not hashed again for the signature (``UNSIGNED-PAYLOAD``): every body put_file sends carries its own
    ``x-amz-checksum-sha256`` (a signed header, which S3 checks against the body), and other writes carry the SDK's
    default CRC32. Over HTTPS botocore already leaves such bodies out of the signature; over plain HTTP (local
    servers) it would otherwise spend a third SHA-256 pass on every byte uploaded.
    """
    attempts = 3 if budget >= 20 else 2 if budget >= 8 else 1
    backoff = 2 ** (attempts - 1) - 1
    per_attempt = max(1.0, (budget - backoff) / attempts - _EXPECT_CONTINUE_WAIT)
    return Config(
        max_pool_connections=_POOL,
        connect_timeout=per_attempt,
        read_timeout=per_attempt,
        retries={"mode": "standard", "total_max_attempts": attempts},
        s3={"payload_signing_enabled": False},
    )


@dataclass(frozen=True)
class _Sent:
    """The bytes one put_file read and sent: their sha256, size and the checksum S3 must answer with."""

    sha256: str
    size: int
    value: str  # base64 SHA-256 of the object, or of the concatenated part digests
    parts: int | None  # None for a single PutObject

    @property
    def checksum(self) -> str:
        return f"sha256:{self.value}" if self.parts is None else f"sha256-composite:{self.value}-{self.parts}"

    def stored(self) -> StoredFile:
        return StoredFile(sha256=self.sha256, size=self.size, checksum=self.checksum)

    def matches(self, theirs: str | None) -> bool:
        """Whether S3's ``ChecksumSHA256`` is ours: ``<b64>`` for one PUT, ``<b64>-N`` for N parts (HeadObject on some
        servers leaves the ``-N`` off a composite checksum; the digest of N part digests already fixes N)."""
        if not theirs:
            return False
        value, _, count = theirs.partition("-")
        if self.parts is None:
            return not count and value == self.value
        return value == self.value and count in ("", str(self.parts))


class S3Store(Store):
    def __init__(
        self,
        uri: str,
        bucket: str,
        prefix: str,
        client: S3Client | None = None,
        *,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = PART_SIZE,
        part_workers: int = PART_WORKERS,
        memory_budget: int = MEMORY_BUDGET,
    ) -> None:
        super().__init__(uri)
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.budget = request_budget()
        # A session of its own: boto3's default session is not thread-safe and keeps the first credentials it found.
        self.client: S3Client = client or boto3.session.Session().client("s3", config=client_config(self.budget))
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.part_workers = max(1, part_workers)
        self._memory = _Budget(memory_budget)

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _fail(self, err: Exception, key: str) -> Exception:
        """Translate an SDK error about ``key`` into the project's exception (one line)."""
        if isinstance(err, ClientError):
            code = _code(err)
            if code == "NoSuchBucket":
                return StoreNotFound(f"bucket {self.bucket!r} does not exist (from {self.uri!r})")
            if code in _NOT_FOUND:
                return ObjectNotFound(f"{self.uri}/{key}")
            if code in _PRECONDITION:
                return PreconditionFailed(f"{self.uri}/{key} changed since it was read")
            if code in _BAD_DIGEST:
                return TransferError(f"S3 refused {self._where(key)}: the bytes it received differ from those sent")
            return StoreError(f"S3 {code or 'error'} on {self._where(key)}: {one_line(err)}")
        endpoint = self.client.meta.endpoint_url
        if isinstance(err, NoCredentialsError):
            return StoreError(NO_CREDENTIALS)
        if isinstance(err, (ReadTimeoutError, ConnectTimeoutError)):
            return StoreError(
                f"S3 endpoint {endpoint} did not answer within {self.budget:g} s ({one_line(err)}); check "
                f"AWS_ENDPOINT_URL and the network, or raise {REQUEST_BUDGET_ENV}"
            )
        if isinstance(err, EndpointConnectionError):
            return StoreError(f"cannot connect to S3 endpoint {endpoint} ({one_line(err)}); check AWS_ENDPOINT_URL")
        if isinstance(err, ConnectionClosedError):
            return StoreError(f"S3 endpoint {endpoint} closed the connection ({one_line(err)}); check AWS_ENDPOINT_URL")
        return StoreError(f"S3 request for {self._where(key)} failed: {one_line(err)}")

    def check(self) -> None:
        # A one-key listing of the prefix, not HeadBucket: the fleets' role may list only its prefix.
        try:
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except ClientError as e:
            if _code(e) in {"404", "NoSuchBucket", "NotFound"}:
                raise StoreNotFound(f"bucket {self.bucket!r} does not exist (from {self.uri!r})") from e
            raise self._fail(e, "") from e
        except BotoCoreError as e:
            raise self._fail(e, "") from e

    def read(self, key: str) -> Blob:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return Blob(resp["Body"].read(), resp["ETag"])
        except (ClientError, BotoCoreError) as e:
            raise self._fail(e, key) from e

    def read_if_changed(self, key: str, token: str | None) -> Blob | None:
        kwargs: dict[str, Any] = {"IfNoneMatch": token} if token else {}
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key), **kwargs)
            return Blob(resp["Body"].read(), resp["ETag"])
        except ClientError as e:
            if _code(e) in {"304", "NotModified"}:
                return None
            raise self._fail(e, key) from e
        except BotoCoreError as e:
            raise self._fail(e, key) from e

    def write(self, key: str, data: bytes, *, if_token: str | None = None, if_absent: bool = False) -> str:
        kwargs: dict[str, Any] = {}
        if if_absent:
            kwargs["IfNoneMatch"] = "*"
        elif if_token is not None:
            kwargs["IfMatch"] = if_token
        try:
            resp = self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **kwargs)
            return resp["ETag"]
        except (ClientError, BotoCoreError) as e:
            raise self._fail(e, key) from e

    # -- put_file ----------------------------------------------------------------------------------------------------

    def put_file(self, key: str, path: Path, *, progress: ProgressFn | None = None) -> StoredFile:
        """Create ``key`` from ``path``, read once in part-sized buffers: each buffer updates the file's sha256 and is
        the body of a request carrying its own SHA-256 (``ChecksumSHA256``), which S3 checks before it stores it.

        Up to ``multipart_threshold`` bytes go as one PutObject, more as a multipart upload whose parts are sent by
        ``part_workers`` threads while this one reads on; both create only (``If-None-Match: *``). The bodies read
        and not yet sent count against the store's ``memory_budget`` (a read waits for room). S3's checksum of
        the object is then compared with ours; a mismatch deletes the object and raises ``TransferError``. A file
        that changes while it is read raises ``TransferError`` before anything is stored.
        """
        meter = Meter(progress)
        try:
            f = path.open("rb")
        except OSError as e:
            raise TransferError(f"cannot read {path}: {e.strerror or e}") from e
        with f:
            reader = _Reader(f, path, f"{self.uri}/{key}", self.part_size)
            if reader.before.st_size > self.multipart_threshold:
                return self._put_multipart(key, reader, meter)
            held = self._memory.take(reader.before.st_size + 1)
            try:
                body = reader.read(reader.before.st_size + 1) or b""  # one more byte than expected: did it grow?
                reader.finish()
                # One buffer: the file's SHA-256 is the body's, sent as its checksum.
                sent = _Sent(reader.sha256(), reader.size, _b64(bytes.fromhex(reader.sha256())), None)
                return self._put_single(key, body, sent, meter)
            finally:
                self._memory.give(held)

    def _put_single(self, key: str, body: bytes, sent: _Sent, meter: Meter) -> StoredFile:
        try:
            resp = self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(key),
                Body=MeteredBody(body, meter),
                IfNoneMatch="*",
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=sent.value,
            )
        except ClientError as e:
            if _code(e) in _PRECONDITION:
                return self._existing(key, sent, meter, e)
            raise self._fail(e, key) from e
        except BotoCoreError as e:
            raise self._fail(e, key) from e
        self._verify(key, sent, resp.get("ChecksumSHA256"))
        meter.finish(sent.size)
        return sent.stored()

    def _put_multipart(self, key: str, reader: _Reader, meter: Meter) -> StoredFile:
        """Send the file as parts, complete create-only, verify. The upload is aborted unless it completed."""
        full = self._key(key)
        try:
            upload_id = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=full, ChecksumAlgorithm="SHA256", ChecksumType="COMPOSITE"
            )["UploadId"]
        except (ClientError, BotoCoreError) as e:
            raise self._fail(e, key) from e
        completed = False
        try:
            parts = self._send_parts(key, upload_id, reader, meter)
            reader.finish()
            composite = _b64(hashlib.sha256(b"".join(digest for _, _, digest in parts)).digest())
            sent = _Sent(reader.sha256(), reader.size, composite, len(parts))
            listed: list[CompletedPartTypeDef] = [
                {"PartNumber": n, "ETag": etag, "ChecksumSHA256": _b64(digest)} for n, etag, digest in parts
            ]
            try:
                resp = self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=full,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": listed},
                    IfNoneMatch="*",
                )
            except ClientError as e:
                # NoSuchUpload: the SDK's retry of a complete whose reply was lost finds the upload already gone.
                if _code(e) in _PRECONDITION or _code(e) == "NoSuchUpload":
                    return self._existing(key, sent, meter, e)
                raise self._fail(e, key) from e
            except BotoCoreError as e:
                raise self._fail(e, key) from e
            completed = True
            self._verify(key, sent, resp.get("ChecksumSHA256"))
            meter.finish(sent.size)
            return sent.stored()
        finally:
            if not completed:
                self._abort(full, upload_id)

    def _send_parts(self, key: str, upload_id: str, reader: _Reader, meter: Meter) -> list[tuple[int, str, bytes]]:
        """Upload each buffer of ``reader`` as parts 1, 2, ..., ``part_workers`` at a time, holding at most
        ``part_workers + 1`` parts (read, not yet acknowledged), each counted against the store's memory budget until
        it is acknowledged; return each part's number, ETag and raw SHA-256 digest, in order. The first failure stops
        the reading and is raised. ``meter`` hears of each part's bytes as they go out, not when the part is
        acknowledged: a part is several MiB, and several go out at once."""
        full = self._key(key)
        slots = threading.Semaphore(self.part_workers + 1)
        failed = threading.Event()

        def send(number: int, body: bytes, held: int) -> tuple[int, str, bytes]:
            try:
                digest = hashlib.sha256(body).digest()
                value = _b64(digest)
                try:
                    resp = self.client.upload_part(
                        Bucket=self.bucket,
                        Key=full,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=MeteredBody(body, meter),
                        ChecksumAlgorithm="SHA256",
                        ChecksumSHA256=value,
                    )
                except (ClientError, BotoCoreError) as e:
                    raise self._fail(e, key) from e
                theirs = resp.get("ChecksumSHA256")
                if theirs is not None and theirs != value:
                    raise TransferError(
                        f"{self.uri}/{key}: S3's checksum of part {number} differs from the bytes sent; upload again"
                    )
                return number, resp["ETag"], digest
            except BaseException:
                failed.set()
                raise
            finally:
                del body
                self._memory.give(held)
                slots.release()

        futures: list[Future[tuple[int, str, bytes]]] = []
        holding: list[int] = []  # what each part holds of the memory budget
        with ThreadPoolExecutor(self.part_workers, thread_name_prefix="s3-part") as pool:
            try:
                while True:
                    slots.acquire()  # a worker's release (also when it fails) wakes this
                    if failed.is_set():
                        break
                    held = self._memory.take(reader.part_size)
                    try:
                        body = None if failed.is_set() else reader.read()  # a part may have failed meanwhile
                        if body is None:
                            self._memory.give(held)
                            break
                        if len(futures) >= MAX_PARTS:
                            raise TransferError(
                                f"{reader.path} grew past {MAX_PARTS} parts while it was being uploaded to "
                                f"{reader.what}; nothing was stored"
                            )
                        futures.append(pool.submit(send, len(futures) + 1, body, held))
                    except BaseException:
                        self._memory.give(held)  # not handed to a worker
                        raise
                    holding.append(held)
                    del body  # the part is the worker's now; its slot and the budget bound how long it lives
            except BaseException:
                for fut, held in zip(futures, holding, strict=True):
                    if fut.cancel():  # never to run: what it held is free again
                        self._memory.give(held)
                raise
        for fut in futures:
            err = fut.exception()
            if err is not None:
                raise err
        return [fut.result() for fut in futures]

    def _abort(self, full: str, upload_id: str) -> None:
        # Best effort: abort_partial_uploads (prune) removes what is left.
        with contextlib.suppress(ClientError, BotoCoreError):
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)

    def _head_checksum(self, key: str) -> tuple[int, str | None] | None:
        """Size and ``ChecksumSHA256`` of the object at ``key``, or ``None`` when there is none."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key), ChecksumMode="ENABLED")
        except ClientError as e:
            if _code(e) in _NOT_FOUND:
                return None
            raise self._fail(e, key) from e
        except BotoCoreError as e:
            raise self._fail(e, key) from e
        return head["ContentLength"], head.get("ChecksumSHA256")

    def _existing(self, key: str, sent: _Sent, meter: Meter, err: ClientError) -> StoredFile:
        """The create lost its condition: the object there is ours (an earlier attempt whose reply was lost, the same
        content published again) when its size and checksum are ours; anything else is a conflict."""
        found = self._head_checksum(key)
        if found is None:
            raise PreconditionFailed(
                f"{self.uri}/{key} is being written by another upload at the same time; retry"
            ) from err
        their_size, theirs = found
        if their_size == sent.size and sent.matches(theirs):
            meter.finish(sent.size)
            return sent.stored()
        raise PreconditionFailed(f"{self.uri}/{key} already exists with other content; it was not replaced") from err

    def _verify(self, key: str, sent: _Sent, theirs: str | None) -> None:
        """Compare S3's checksum of what it stored (from the write's reply, else HeadObject) with ours; on a mismatch
        delete the object, so nothing unverified stays at ``key``."""
        if theirs is None:
            found = self._head_checksum(key)
            theirs = found[1] if found else None
        if sent.matches(theirs):
            return
        with contextlib.suppress(ClientError, BotoCoreError):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        what = f"S3's checksum {theirs}" if theirs else "no SHA-256 checksum from S3"
        raise TransferError(
            f"{self.uri}/{key}: {what} instead of {sent.checksum.partition(':')[2]} for the bytes sent; "
            "the object was deleted, upload again"
        )

    # -- the rest ----------------------------------------------------------------------------------------------------

    def abort_partial_uploads(self, prefix: str, started_before: dt.datetime) -> int:
        """Abort the multipart uploads under ``prefix`` initiated before ``started_before`` (naive means UTC)."""
        cutoff = started_before if started_before.tzinfo else started_before.replace(tzinfo=dt.timezone.utc)
        paginator = self.client.get_paginator("list_multipart_uploads")
        aborted = 0
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] >= cutoff:
                        continue
                    try:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                    except ClientError as e:
                        if _code(e) in {"NoSuchUpload", "404"}:
                            continue  # completed or aborted meanwhile
                        raise
                    aborted += 1
        except (ClientError, BotoCoreError) as e:
            raise self._fail(e, prefix) from e
        return aborted

    def download_file(self, key: str, path: Path, *, progress: ProgressFn | None = None) -> None:
        # s3transfer calls back per block read (256 KiB) from each ranged GET, and with a negative count when it
        # retries one: the meter turns that into forward MiB steps.
        meter = Meter(progress) if progress is not None else None
        try:
            self.client.download_file(
                self.bucket, self._key(key), str(path), Config=_DOWNLOAD, Callback=meter.add if meter else None
            )
        except (ClientError, BotoCoreError) as e:
            raise self._fail(e, key) from e
        if meter is not None:
            meter.finish(path.stat().st_size)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        cut = len(self.prefix)
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(obj["Key"][cut:], obj["Size"], obj["LastModified"])
        except (ClientError, BotoCoreError) as e:
            raise self._fail(e, prefix) from e

    def delete(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch: list[ObjectIdentifierTypeDef] = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            try:
                resp = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except (ClientError, BotoCoreError) as e:
                raise self._fail(e, keys[start]) from e
            errors = resp.get("Errors", [])
            if errors:
                first = errors[0]
                raise StoreError(
                    f"{len(errors)} deletes failed under {self.uri}, first {first.get('Key')}: "
                    f"{one_line(str(first.get('Message')))}"
                )


class _Budget:
    """Bytes the uploads of one store may hold in memory at once: ``take`` waits until there is room (a request for
    more than the whole budget takes the whole budget), ``give`` returns what was taken."""

    def __init__(self, total: int) -> None:
        self.total = max(1, total)
        self._free = self.total
        self._room = threading.Condition()

    def take(self, n: int) -> int:
        n = min(max(n, 0), self.total)
        with self._room:
            self._room.wait_for(lambda: self._free >= n)
            self._free -= n
        return n

    def give(self, n: int) -> None:
        with self._room:
            self._free += n
            self._room.notify_all()


class _Reader:
    """Reads a file once, sequentially, in ``part_size`` buffers, feeding each to the file's sha256."""

    def __init__(self, f: IO[bytes], path: Path, what: str, part_size: int) -> None:
        self.f = f
        self.path = path
        self.what = what  # where the file goes, for messages
        self.before = os.fstat(f.fileno())
        self.part_size = _part_size_for(self.before.st_size, part_size)
        self.size = 0
        self._sha256 = hashlib.sha256()

    def read(self, size: int | None = None) -> bytes | None:
        """The next buffer (``part_size`` bytes, or ``size``, fewer only at the end), ``None`` at the end."""
        try:
            buf = self.f.read(size or self.part_size)
        except OSError as e:
            raise TransferError(f"cannot read {self.path}: {e.strerror or e}") from e
        if not buf:
            return None
        self._sha256.update(buf)  # hashlib releases the GIL on large buffers: part workers keep sending meanwhile
        self.size += len(buf)
        return buf

    def finish(self) -> None:
        """Raise ``TransferError`` when the file changed while it was read (the bytes would be a mix of versions)."""
        check_read_unchanged(self.path, self.before, os.fstat(self.f.fileno()), self.size, self.what)

    def sha256(self) -> str:
        return self._sha256.hexdigest()


def _part_size_for(size: int, part_size: int) -> int:
    """``part_size``, or larger parts (whole MiB) when a file of ``size`` bytes would need more than 9000 (S3 allows
    10000; the rest is room for a file that grows while it is read)."""
    need = -(-size // 9000)
    if need <= part_size:
        return part_size
    return max(_MIN_PART, -(-need // MIB) * MIB)
