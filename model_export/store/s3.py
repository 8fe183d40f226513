"""Amazon S3 store (``s3://bucket/prefix``) through boto3.

Endpoint, region and credentials come from boto3's standard chain (``AWS_ENDPOINT_URL``, ``AWS_REGION``, instance
profile, ...). Conditional writes use S3's ``If-None-Match: *`` and ``If-Match: <etag>``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from model_export.errors import ObjectNotFound, PreconditionFailed, StoreError, StoreNotFound
from model_export.store.base import Blob, ObjectInfo, Store

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

# Enough pooled connections for the transfer layer's workers, each of which may run multipart parts in parallel.
_POOL = 64
_TRANSFER = TransferConfig(
    multipart_threshold=64 * 1024 * 1024,
    multipart_chunksize=16 * 1024 * 1024,
    max_concurrency=4,
    use_threads=True,
)
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


class S3Store(Store):
    def __init__(self, uri: str, bucket: str, prefix: str, client: S3Client | None = None) -> None:
        super().__init__(uri)
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.client: S3Client = client or boto3.client(
            "s3", config=Config(max_pool_connections=_POOL, retries={"mode": "standard"})
        )

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _fail(self, err: Exception, key: str) -> Exception:
        """Translate an SDK error about ``key`` into the project's exception."""
        if isinstance(err, ClientError):
            code = _code(err)
            if code == "NoSuchBucket":
                return StoreNotFound(f"bucket {self.bucket!r} does not exist (from {self.uri!r})")
            if code in _NOT_FOUND:
                return ObjectNotFound(f"{self.uri}/{key}")
            if code in _PRECONDITION:
                return PreconditionFailed(f"{self.uri}/{key} changed since it was read")
            return StoreError(f"S3 {code or 'error'} on s3://{self.bucket}/{self._key(key)}: {err}")
        return StoreError(f"S3 request for s3://{self.bucket}/{self._key(key)} failed: {err}")

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

    def upload_file(self, key: str, path: Path) -> None:
        try:
            self.client.upload_file(str(path), self.bucket, self._key(key), Config=_TRANSFER)
        except (ClientError, BotoCoreError) as e:
            raise self._fail(e, key) from e
        except boto3.exceptions.S3UploadFailedError as e:
            raise StoreError(f"upload of {path} to s3://{self.bucket}/{self._key(key)} failed: {e}") from e

    def download_file(self, key: str, path: Path) -> None:
        try:
            self.client.download_file(self.bucket, self._key(key), str(path), Config=_TRANSFER)
        except (ClientError, BotoCoreError) as e:
            raise self._fail(e, key) from e

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
                    f"{len(errors)} deletes failed under {self.uri}, first {first.get('Key')}: {first.get('Message')}"
                )
