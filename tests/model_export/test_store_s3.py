"""S3Store.put_file, abort_partial_uploads and bounded failures, against a real S3 API server (moto 5.2.5).

What moto enforces, and so what these tests prove by the server's behaviour: ``If-None-Match: *`` on PutObject and on
CompleteMultipartUpload (412 when the key exists), and the composite checksum of a multipart object, which moto
computes from the part bytes it received (HeadObject/GetObject with ``ChecksumMode=ENABLED``).

What moto does not enforce, and so what these tests prove by recording the requests (a botocore ``before-send``
hook on the store's client sees each request as it goes on the wire): that each PutObject and UploadPart carries
``x-amz-checksum-sha256`` equal to the SHA-256 of its own body (moto stores and echoes the header unchecked, where
real S3 refuses a mismatch with BadDigest), and that the bodies sent are the file read exactly once. moto also
reports the same fixed ``Initiated`` time (2010-11-10) for every multipart upload, so the abort test gives its new
upload a current time in the listing the store receives.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import http.client
import io
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PosixPath
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.exceptions import ConnectionClosedError

from model_export.errors import ObjectNotFound, PreconditionFailed, StoreError, TransferError
from model_export.store import open_store
from model_export.store.base import StoredFile
from model_export.store.s3 import MIB, NO_CREDENTIALS, S3Store, client_config
from tests.conftest import new_bucket
from tests.support.servers import Server, black_hole, free_port

# Multipart in the tests: three parts (5 MiB is S3's, and moto's, smallest part but the last).
PART = 5 * MIB
BIG = 2 * PART + 1000
SMALL = 300_000
PATHS = ["single", "multipart"]


@dataclass
class Sent:
    op: str
    url: str
    headers: dict[str, str]
    body: bytes

    @property
    def part(self) -> int:
        return int(dict(q.split("=") for q in urlsplit(self.url).query.split("&"))["partNumber"])


def b64sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def make_store(kind: str) -> S3Store:
    """A store on a fresh bucket; "multipart" sends anything over 5 MiB as 5 MiB parts."""
    bucket = new_bucket("s3")
    if kind == "multipart":
        return S3Store(f"s3://{bucket}/models", bucket, "models", multipart_threshold=PART, part_size=PART)
    return S3Store(f"s3://{bucket}/models", bucket, "models")


def record(st: S3Store) -> list[Sent]:
    """Every request the store's client sends from now on (also from its part threads)."""
    sent: list[Sent] = []

    def hook(request: Any, event_name: str, **_: Any) -> None:
        body = request.body
        data = body.getvalue() if isinstance(body, io.BytesIO) else bytes(body or b"")
        headers = {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        sent.append(Sent(event_name.rsplit(".", 1)[1], request.url, headers, data))

    st.client.meta.events.register("before-send.s3.*", hook)
    return sent


def uploads(st: S3Store) -> list[str]:
    resp = st.client.list_multipart_uploads(Bucket=st.bucket)
    return sorted(u["Key"] for u in resp.get("Uploads", []))


def download(st: S3Store, key: str, tmp_path: Path) -> bytes:
    dest = tmp_path / "back.bin"
    st.download_file(key, dest)
    return dest.read_bytes()


class CountingPath(PosixPath):
    """A path whose opened files count the bytes read from them."""

    bytes_read = 0

    def open(self, *args: Any, **kwargs: Any) -> Any:
        real = super().open(*args, **kwargs)

        class Counting:
            def read(self, n: int = -1) -> bytes:
                data: bytes = real.read(n)
                CountingPath.bytes_read += len(data)
                return data

            def fileno(self) -> int:
                return int(real.fileno())

            def __enter__(self) -> Counting:
                return self

            def __exit__(self, *exc: object) -> None:
                real.close()

        return Counting()


@pytest.mark.parametrize("kind", PATHS)
def test_put_file_creates_only_and_recognises_its_own_content(kind: str, s3_server: Server, tmp_path: Path) -> None:
    st = make_store(kind)
    size = BIG if kind == "multipart" else SMALL
    src = tmp_path / "w.bin"
    payload = os.urandom(size)
    src.write_bytes(payload)
    ticks: list[int] = []

    stored = st.put_file("m/1/w.bin", src, progress=ticks.append)

    assert stored.sha256 == hashlib.sha256(download(st, "m/1/w.bin", tmp_path)).hexdigest()
    assert stored.size == size and sum(ticks) == size
    if kind == "multipart":
        assert len(ticks) >= 10 and max(ticks) < PART, "the parts' bytes as they go out, not a tick per part"
        digests = b"".join(hashlib.sha256(payload[i : i + PART]).digest() for i in range(0, size, PART))
        assert stored.checksum == f"sha256-composite:{base64.b64encode(hashlib.sha256(digests).digest()).decode()}-3"
    else:
        assert stored.checksum == f"sha256:{b64sha256(payload)}"
    # The same bytes again (a retried job, a reply lost after the object landed): success, the same answer.
    assert st.put_file("m/1/w.bin", src) == stored
    # Other bytes of the same size never replace the object (moto refuses If-None-Match: * with 412 on both paths).
    src.write_bytes(os.urandom(size))
    with pytest.raises(PreconditionFailed, match="already exists with other content") as err:
        st.put_file("m/1/w.bin", src)
    assert "\n" not in str(err.value)
    assert download(st, "m/1/w.bin", tmp_path) == payload
    assert uploads(st) == [], "a refused multipart upload is aborted"


@pytest.mark.parametrize("kind", PATHS)
def test_requests_carry_create_only_and_a_checksum_of_their_own_body(
    kind: str, s3_server: Server, tmp_path: Path
) -> None:
    """moto accepts any x-amz-checksum-sha256 unchecked: the recorded requests show what real S3 would check."""
    st = make_store(kind)
    size = BIG if kind == "multipart" else SMALL
    payload = os.urandom(size)
    (tmp_path / "w.bin").write_bytes(payload)
    src = CountingPath(tmp_path / "w.bin")
    sent = record(st)
    CountingPath.bytes_read = 0

    stored = st.put_file("m/1/w.bin", src)

    assert CountingPath.bytes_read == size, "the file is read exactly once"
    bodies = [s for s in sent if s.op in ("PutObject", "UploadPart")]
    for s in bodies:
        assert s.headers["x-amz-checksum-sha256"] == b64sha256(s.body)
        assert s.headers["x-amz-sdk-checksum-algorithm"] == "SHA256"
    ops = [s.op for s in sent]
    if kind == "multipart":
        assert ops[0] == "CreateMultipartUpload" and ops.count("UploadPart") == 3
        assert sent[0].headers["x-amz-checksum-algorithm"] == "SHA256"
        (complete,) = [s for s in sent if s.op == "CompleteMultipartUpload"]
        assert complete.headers["if-none-match"] == "*"
        assert b"".join(s.body for s in sorted(bodies, key=lambda s: s.part)) == payload
        for s in bodies:  # each part's digest is listed in the complete request, as S3 requires
            assert f"<ChecksumSHA256>{s.headers['x-amz-checksum-sha256']}</ChecksumSHA256>" in complete.body.decode()
    else:
        assert ops[0] == "PutObject" and ops.count("PutObject") == 1
        assert bodies[0].headers["if-none-match"] == "*"
        assert bodies[0].body == payload
    assert stored.sha256 == hashlib.sha256(payload).hexdigest()


def test_a_lost_reply_retried_by_the_sdk_is_our_own_write(s3_server: Server, tmp_path: Path) -> None:
    """The first PutObject reaches the server and lands, then its connection closes without a reply; botocore
    retries, gets 412, and the store recognises its own object by size and SHA-256."""
    st = make_store("single")
    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(SMALL))
    lost: list[str] = []

    def lose_first_reply(request: Any, **_: Any) -> None:
        if lost:
            return
        url = urlsplit(request.url)
        headers = {k: v for k, v in request.headers.items() if k.lower() != "expect"}
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
        target = f"{url.path}?{url.query}" if url.query else url.path
        conn.request(request.method, target, request.body.getvalue(), headers)
        lost.append(str(conn.getresponse().status))
        conn.close()
        raise ConnectionClosedError(endpoint_url=request.url)

    sent = record(st)  # first: it sees the attempt whose reply is lost too
    st.client.meta.events.register("before-send.s3.PutObject", lose_first_reply)
    ticks: list[int] = []
    stored = st.put_file("m/1/w.bin", src, progress=ticks.append)
    assert lost == ["200"], "the first attempt landed"
    assert [s.op for s in sent].count("PutObject") == 2, "botocore retried it"
    assert stored.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert sum(ticks) == SMALL


def test_a_server_checksum_other_than_ours_deletes_the_single_put(s3_server: Server, tmp_path: Path) -> None:
    """moto echoes the checksum it was sent, so the reply is altered here as a server that stored other bytes
    would answer."""
    st = make_store("single")
    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(SMALL))

    def other_checksum(response_dict: dict[str, Any], **_: Any) -> None:
        response_dict["headers"]["x-amz-checksum-sha256"] = b64sha256(b"other bytes")

    st.client.meta.events.register("before-parse.s3.PutObject", other_checksum)
    with pytest.raises(TransferError, match="the object was deleted") as err:
        st.put_file("m/1/w.bin", src)
    assert "\n" not in str(err.value)
    with pytest.raises(ObjectNotFound):
        st.read("m/1/w.bin")


def test_a_part_changed_in_transit_fails_the_composite_check(s3_server: Server, tmp_path: Path) -> None:
    """One part's body is altered after its checksum header was set (real S3 refuses that part; moto stores it):
    moto's composite checksum of what it stored then differs from ours, and nothing is left at the key."""
    st = make_store("multipart")
    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(BIG))

    def flip_a_byte_of_part_2(request: Any, **_: Any) -> None:
        if "partNumber=2&" in request.url + "&":
            data = bytearray(request.body.getvalue())
            data[0] ^= 1
            request.body = io.BytesIO(bytes(data))

    st.client.meta.events.register("before-send.s3.UploadPart", flip_a_byte_of_part_2)
    with pytest.raises(TransferError, match="the object was deleted") as err:
        st.put_file("m/1/w.bin", src)
    assert "\n" not in str(err.value)
    with pytest.raises(ObjectNotFound):
        st.read("m/1/w.bin")
    assert uploads(st) == []


@pytest.mark.parametrize("kind", PATHS)
def test_a_file_rewritten_during_the_upload_is_refused_or_stored_as_hashed(
    kind: str, s3_server: Server, tmp_path: Path
) -> None:
    st = make_store(kind)
    size = BIG if kind == "multipart" else 4 * MIB
    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(size))
    stop = threading.Event()
    rewrites = 0

    def rewrite() -> None:
        """In place, as a writer still running would: each pass stamps its number every 64 KiB, so no two passes
        leave the same bytes (a second read of the file would not match the first)."""
        nonlocal rewrites
        fd = os.open(src, os.O_WRONLY)
        try:
            while not stop.is_set():
                rewrites += 1
                stamp = rewrites.to_bytes(8, "big")
                for off in range(0, size, 64 * 1024):
                    os.pwrite(fd, stamp, off)
        finally:
            os.close(fd)

    writer = threading.Thread(target=rewrite, daemon=True)
    writer.start()
    try:
        stored: StoredFile | None = st.put_file("m/1/w.bin", src)
    except TransferError as e:
        assert "changed while it was being uploaded" in str(e) and "\n" not in str(e)
        stored = None
    finally:
        stop.set()
        writer.join(10)
    assert rewrites > 0
    if stored is None:
        with pytest.raises(ObjectNotFound):
            st.read("m/1/w.bin")
        assert uploads(st) == []
    else:
        assert stored.sha256 == hashlib.sha256(download(st, "m/1/w.bin", tmp_path)).hexdigest()


def test_a_file_that_grows_before_its_last_part_is_sent_stores_nothing(s3_server: Server, tmp_path: Path) -> None:
    st = make_store("multipart")
    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(BIG))

    def append_while_part_1_is_sent(request: Any, **_: Any) -> None:
        if "partNumber=1&" in request.url + "&":
            with src.open("ab") as f:
                f.write(b"more")

    st.client.meta.events.register("before-send.s3.UploadPart", append_while_part_1_is_sent)
    with pytest.raises(TransferError, match=r"changed while it was being uploaded.*nothing was stored") as err:
        st.put_file("m/1/w.bin", src)
    assert "\n" not in str(err.value)
    with pytest.raises(ObjectNotFound):
        st.read("m/1/w.bin")
    assert uploads(st) == []


def test_abort_partial_uploads_removes_old_uploads_under_the_prefix_only(s3_server: Server) -> None:
    st = make_store("multipart")
    raw = boto3.client("s3")
    for key in ("models/m/1/old.bin", "models/m/2/new.bin", "models/n/1/old.bin", "elsewhere/m/1/old.bin"):
        raw.create_multipart_upload(Bucket=st.bucket, Key=key)
    now = dt.datetime.now(dt.timezone.utc)

    def new_one_started_now(parsed: dict[str, Any], **_: Any) -> None:
        # moto lists every upload as initiated at 2010-11-10T20:48:33Z; the new one gets the current time.
        for upload in parsed.get("Uploads", []):
            if upload["Key"].endswith("new.bin"):
                upload["Initiated"] = now

    st.client.meta.events.register("after-call.s3.ListMultipartUploads", new_one_started_now)
    assert st.abort_partial_uploads("m/", now - dt.timedelta(hours=1)) == 1
    assert uploads(st) == ["elsewhere/m/1/old.bin", "models/m/2/new.bin", "models/n/1/old.bin"]
    assert st.abort_partial_uploads("m/", now - dt.timedelta(hours=1)) == 0


def test_the_client_fits_its_retries_into_the_budget() -> None:
    """Attempts x (per-attempt timeout + botocore's 1 s wait for 100 Continue) + the longest backoff between them
    stays within the budget (from 2 s: one attempt has a floor of 1 s)."""
    for budget in (2, 5, 7.5, 8, 12, 19, 20, 30, 3600):
        cfg: Any = client_config(budget)  # botocore-stubs do not declare the options as attributes
        attempts = cfg.retries["total_max_attempts"]
        backoff = 2 ** (attempts - 1) - 1
        assert cfg.connect_timeout == cfg.read_timeout >= 1
        assert attempts * (cfg.read_timeout + 1) + backoff <= budget
    cfg = client_config(30)
    assert (cfg.retries, cfg.read_timeout) == ({"mode": "standard", "total_max_attempts": 3}, 8)


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""
    with black_hole() as hole:
        yield hole.endpoint


@pytest.mark.parametrize("endpoint_kind", ["silent", "refusing"])
def test_an_unreachable_endpoint_fails_with_one_line_within_the_budget(
    endpoint_kind: str, silent_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    endpoint = silent_endpoint if endpoint_kind == "silent" else f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("MODELFLEET_STORE_TIMEOUT", "2")
    src = tmp_path / "w.bin"
    src.write_bytes(b"x" * 1000)
    st = open_store("s3://unreachable-bucket/models")
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            st.put_file("m/1/w.bin", src)
        except BaseException as e:
            outcome.append(e)

    t0 = time.monotonic()
    worker = threading.Thread(target=run, daemon=True)  # without bounds botocore would wait 3 x 60 s
    worker.start()
    worker.join(20)
    elapsed = time.monotonic() - t0
    assert not worker.is_alive(), f"still waiting after {elapsed:.0f} s"
    (err,) = outcome
    assert isinstance(err, StoreError) and err.exit_code == 1
    assert "\n" not in str(err)
    if endpoint_kind == "silent":
        assert str(err).startswith(f"S3 endpoint {endpoint} did not answer within 2 s (")
        assert elapsed < 15  # botocore alone would wait 3 x 60 s; slack for a loaded CI
    else:
        assert str(err).startswith(f"cannot connect to S3 endpoint {endpoint} (")


def test_missing_credentials_is_one_line(s3_server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    uri = f"s3://{new_bucket('s3')}/models"
    for var in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    src = tmp_path / "w.bin"
    src.write_bytes(b"x")
    st = open_store(uri)
    with pytest.raises(StoreError) as err:
        st.put_file("m/1/w.bin", src)
    assert str(err.value) == NO_CREDENTIALS
    with pytest.raises(StoreError) as err:
        st.check()
    assert str(err.value) == NO_CREDENTIALS
