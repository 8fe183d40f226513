"""The GCS backend against a real fake-gcs-server: create-only ``put_file`` (one request and resumable), one read of
the file, CRC32C verification, deletes, bounded failures, and missing credentials.

What fake-gcs-server (1.54) enforces and what these tests prove otherwise:

* ``ifGenerationMatch=0`` on a one-request (multipart) upload: enforced by the server, tested on it.
* ``ifGenerationMatch=0`` on a resumable upload: the server ignores it (it commits every session unconditionally).
  A recording proxy proves the session-opening request carries it, and a proxy that answers 412 as GCS does proves
  what ``put_file`` makes of the 412.
* A CRC32C declared in a one-request upload's metadata: not checked by the server; a proxy that flips a byte in
  transit proves our own comparison of the server's CRC32C with ours (and its generation-bound delete).
* Batched deletes: the server skips every part of a batch without a ``Content-ID``, which the Python SDK never
  sends, so ``delete`` sends one request per key; tested on the server.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import google_crc32c
import pytest

from model_export.errors import PreconditionFailed, StoreError, TransferError
from model_export.store import gcs
from model_export.store.gcs import NO_CREDENTIALS, SHA256_METADATA, GCSStore, _HashingReader
from tests.conftest import new_bucket
from tests.support.servers import Server, free_port

MIB = 1024 * 1024
CHUNK = MIB  # the tests' resumable chunk: a "large" file of LARGE bytes goes up in 9 chunks
LARGE = gcs.SINGLE_REQUEST_MAX + 300 * 1024  # just over the one-request limit: a resumable upload
SMALL = 300 * 1024


def _crc32c(data: bytes) -> str:
    return base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- a recording proxy in front of fake-gcs-server ---------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]

    @property
    def upload_type(self) -> str | None:
        """``multipart`` or ``resumable`` for a request that uploads or opens an upload session, else ``None``."""
        if self.method == "POST" and self.path.startswith("/upload/storage/v1/b/"):
            return self.query.get("uploadType", [None])[0]
        return None


class Proxy(ThreadingHTTPServer):
    """Forwards every request to the fake server and records its method, path and query. ``answer`` may return a
    status to send instead of forwarding (what GCS would have answered); ``mutate`` may change a request body."""

    daemon_threads = True

    def __init__(self, upstream_port: int) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.upstream_port = upstream_port
        self.seen: list[Seen] = []
        self.answer: Callable[[Seen], int | None] | None = None
        self.mutate: Callable[[Seen, bytes], bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def uploads(self) -> list[Seen]:
        return [s for s in self.seen if s.upload_type is not None]


class _Forward(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Proxy

    def _forward(self) -> None:
        assert "chunked" not in self.headers.get("Transfer-Encoding", ""), "the proxy reads Content-Length bodies only"
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlsplit(self.path)
        seen = Seen(self.command, url.path, parse_qs(url.query))
        self.server.seen.append(seen)
        status = self.server.answer(seen) if self.server.answer else None
        if status is not None:
            self._reply(status, "injected", [("Content-Type", "application/json")], _error_body(status))
            return
        if self.server.mutate is not None:
            body = self.server.mutate(seen, body)
        conn = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=30)
        try:
            # The client's Host header goes along, so the server's resumable session URLs point at the proxy too.
            skip = {"content-length", "connection", "transfer-encoding"}
            headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            self._reply(resp.status, resp.reason, resp.getheaders(), resp.read())
        finally:
            conn.close()

    def _reply(self, status: int, reason: str, headers: list[tuple[str, str]], data: bytes) -> None:
        self.send_response(status, reason)
        for k, v in headers:
            if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _error_body(status: int) -> bytes:
    return json.dumps({"error": {"code": status, "message": "answered by the test proxy"}}).encode()


# -- fixtures ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def bucket(gcs_server: Server) -> str:
    return new_bucket("gcs")


def _store(bucket: str) -> GCSStore:
    return GCSStore(f"gs://{bucket}/models", bucket, "models", chunk_size=CHUNK)


@pytest.fixture
def store(bucket: str) -> GCSStore:
    return _store(bucket)


@pytest.fixture
def proxy(gcs_server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Proxy]:
    """A recording proxy; stores made while it is in use (``_store``) send every request through it."""
    server = Proxy(gcs_server.port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.endpoint)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _download(st: GCSStore, key: str, tmp_path: Path) -> bytes:
    dest = tmp_path / "downloaded"
    st.download_file(key, dest)
    return dest.read_bytes()


def _object(st: GCSStore, key: str) -> Any:
    return st.bucket.get_blob(st.prefix + key)


# -- create-only -------------------------------------------------------------------------------------------------------


def test_small_put_is_create_only_on_the_server_and_reports_the_stored_bytes(store: GCSStore, tmp_path: Path) -> None:
    payload = os.urandom(SMALL)
    src = _file(tmp_path, "w.bin", payload)
    sent: list[int] = []
    stored = store.put_file("m/1/w.bin", src, progress=sent.append)
    assert (stored.sha256, stored.size, stored.checksum) == (_sha256(payload), SMALL, f"crc32c:{_crc32c(payload)}")
    assert sum(sent) == SMALL
    assert _sha256(_download(store, "m/1/w.bin", tmp_path)) == stored.sha256
    assert _object(store, "m/1/w.bin").metadata == {SHA256_METADATA: stored.sha256}

    # Our own earlier write (its reply lost): the same bytes again are success, with the same answer.
    assert store.put_file("m/1/w.bin", src) == stored
    # Other bytes never replace it: the server refuses the create, and the object there is not ours.
    other = _file(tmp_path, "other.bin", os.urandom(SMALL))
    with pytest.raises(PreconditionFailed, match="already exists with other content"):
        store.put_file("m/1/w.bin", other)
    assert _download(store, "m/1/w.bin", tmp_path) == payload


def test_an_object_with_our_bytes_but_not_our_sha256_is_not_taken_for_ours(store: GCSStore, tmp_path: Path) -> None:
    """Size and CRC32C equal are not enough: the sha256 recorded in the object's metadata must be ours too."""
    payload = os.urandom(SMALL)
    foreign = store._blob("m/1/w.bin")
    foreign.metadata = {SHA256_METADATA: "0" * 64}
    foreign.upload_from_string(payload, if_generation_match=0)
    with pytest.raises(PreconditionFailed, match="already exists with other content"):
        store.put_file("m/1/w.bin", _file(tmp_path, "w.bin", payload))
    assert _object(store, "m/1/w.bin").metadata == {SHA256_METADATA: "0" * 64}


def test_every_upload_request_carries_if_generation_match_0(proxy: Proxy, bucket: str, tmp_path: Path) -> None:
    """fake-gcs-server ignores ``ifGenerationMatch`` on resumable uploads (it commits them unconditionally), so the
    precondition cannot be shown on the server for large files: the proxy records every request, and every upload
    request (the one-request upload and the request that opens a resumable session, which binds the session's
    preconditions) must carry ``ifGenerationMatch=0``. The sha256 added to a resumable upload's metadata afterwards
    is bound to the generation just created. The one-request upload also declares the CRC32C and sha256 of its bytes
    in the object's metadata (GCS refuses a body of another CRC32C; fake-gcs-server does not check)."""
    st = _store(bucket)
    declared: list[dict[str, Any]] = []

    def keep_metadata(seen: Seen, body: bytes) -> bytes:
        if seen.upload_type == "multipart":  # the first part of the body is the object's metadata, as JSON
            declared.append(json.loads(body.split(b"\r\n\r\n", 1)[1].split(b"\r\n--", 1)[0]))
        return body

    proxy.mutate = keep_metadata
    small_bytes = os.urandom(SMALL)
    small = st.put_file("m/1/small.bin", _file(tmp_path, "small.bin", small_bytes))
    large = st.put_file("m/1/large.bin", _file(tmp_path, "large.bin", os.urandom(LARGE)))
    assert [(d["crc32c"], d["metadata"]) for d in declared] == [
        (_crc32c(small_bytes), {SHA256_METADATA: _sha256(small_bytes)})
    ]
    assert {s.upload_type for s in proxy.uploads()} == {"multipart", "resumable"}
    assert all(s.query.get("ifGenerationMatch") == ["0"] for s in proxy.uploads()), proxy.uploads()
    chunks = [s for s in proxy.seen if s.method == "PUT" and "upload_id" in s.query]
    assert len(chunks) == -(-LARGE // CHUNK)  # the resumable upload went in chunks of chunk_size
    generation = str(_object(st, "m/1/large.bin").generation)
    patches = [s for s in proxy.seen if s.method == "PATCH"]
    assert [p.query.get("ifGenerationMatch") for p in patches] == [[generation]]
    assert (small.size, large.size) == (SMALL, LARGE)


def test_resumable_put_after_a_412_is_ours_only_with_our_content(proxy: Proxy, bucket: str, tmp_path: Path) -> None:
    """GCS answers 412 to a resumable upload whose ``ifGenerationMatch=0`` fails; fake-gcs-server never does, so the
    proxy answers it for the session-opening request once an object exists. Nothing of the file has been read by
    then: ``put_file`` reads it to the end to compare with the object there."""
    st = _store(bucket)
    payload = os.urandom(LARGE)
    src = _file(tmp_path, "w.bin", payload)
    first = st.put_file("m/1/w.bin", src)
    proxy.answer = lambda s: 412 if s.upload_type == "resumable" else None

    sent: list[int] = []
    assert st.put_file("m/1/w.bin", src, progress=sent.append) == first  # our own object: success
    assert sum(sent) == LARGE
    other = _file(tmp_path, "other.bin", payload[:-1] + bytes([payload[-1] ^ 1]))
    with pytest.raises(PreconditionFailed, match="already exists with other content"):
        st.put_file("m/1/w.bin", other)
    assert _download(st, "m/1/w.bin", tmp_path) == payload


# -- one read, verified ------------------------------------------------------------------------------------------------


def test_resumable_put_reports_the_stored_bytes_and_records_its_sha256(store: GCSStore, tmp_path: Path) -> None:
    payload = os.urandom(LARGE)
    sent: list[int] = []
    stored = store.put_file("m/1/w.bin", _file(tmp_path, "w.bin", payload), progress=sent.append)
    back = _download(store, "m/1/w.bin", tmp_path)
    assert (stored.sha256, stored.size) == (_sha256(back), len(back)) == (_sha256(payload), LARGE)
    assert stored.checksum == f"crc32c:{_crc32c(payload)}"
    assert sum(sent) == LARGE and len(sent) > 1  # progress came chunk by chunk
    assert _object(store, "m/1/w.bin").metadata == {SHA256_METADATA: stored.sha256}


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["one-request", "resumable"])
def test_bytes_changed_in_transit_are_caught_and_not_kept(proxy: Proxy, bucket: str, tmp_path: Path, size: int) -> None:
    """The proxy flips one byte of the file's bytes in the upload's body; the server's CRC32C of what it stored then
    differs from ours: ``TransferError``, and that generation (only) is deleted."""
    st = _store(bucket)
    flipped = threading.Event()

    def flip(seen: Seen, body: bytes) -> bytes:
        media = seen.upload_type == "multipart" or (seen.method == "PUT" and "upload_id" in seen.query)
        if not media or flipped.is_set() or not body:
            return body
        flipped.set()
        # The last byte of the file's bytes: before the closing boundary of a multipart body, else the chunk's last.
        at = body.rindex(b"\r\n--") - 1 if seen.upload_type == "multipart" else len(body) - 1
        return body[:at] + bytes([body[at] ^ 0xFF]) + body[at + 1 :]

    proxy.mutate = flip
    with pytest.raises(TransferError, match=r"GCS reports CRC32C .* the object was deleted"):
        st.put_file("m/1/w.bin", _file(tmp_path, "w.bin", os.urandom(size)))
    assert flipped.is_set()
    assert _object(st, "m/1/w.bin") is None
    deletes = [s for s in proxy.seen if s.method == "DELETE"]
    assert len(deletes) == 1 and deletes[0].query.get("ifGenerationMatch", [""])[0].isdigit()


def test_the_reader_hashes_each_offset_once_from_the_first_read(tmp_path: Path) -> None:
    """A seek back and a second read of bytes that changed meanwhile: the digests keep the first bytes (so a server
    that stored the second has another CRC32C, which put_file catches), progress counts each byte once, and the end
    of the file finds it changed."""
    path = _file(tmp_path, "f.bin", b"a" * 20)
    sent: list[int] = []
    with path.open("rb", buffering=0) as fh:  # unbuffered: a read after the seek-back reads the file again
        reader = _HashingReader(fh, path, "gs://b/k", sent.append)
        assert reader.read(10) == b"a" * 10
        with path.open("r+b") as w:
            w.seek(5)
            w.write(b"b" * 15)
        reader.seek(5)
        assert reader.read(10) == b"b" * 10  # offsets 5..15: 5..10 read before, 10..15 new
        assert (reader.tell(), reader.hashed, sum(sent)) == (15, 15, 15)
        assert reader.sha256 == _sha256(b"a" * 10 + b"b" * 5)
        assert reader.crc32c == _crc32c(b"a" * 10 + b"b" * 5) != _crc32c(b"a" * 5 + b"b" * 10)
        reader.seek(18)  # forward past unread bytes: they are hashed before the read
        with pytest.raises(TransferError, match="changed while it was being uploaded"):
            reader.read(2)
        assert reader.sha256 == _sha256(b"a" * 10 + b"b" * 10)


@pytest.mark.parametrize(
    ("size", "change"),
    [(SMALL, "rewrite"), (LARGE, "rewrite"), (SMALL, "shrink"), (LARGE, "shrink"), (LARGE, "grow")],
)
def test_a_file_changed_while_it_is_read_is_not_stored(
    store: GCSStore, tmp_path: Path, size: int, change: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rewritten (a new modification time), or shrunk or grown with its modification time kept: ``TransferError``
    before the last bytes are sent, and nothing at the key."""
    src = _file(tmp_path, "w.bin", os.urandom(size))
    old = time.time_ns() - 10**10
    os.utime(src, ns=(old, old))  # any rewrite now changes the modification time

    changed = threading.Event()

    def rewrite(n: int) -> None:  # at the first progress report: the first bytes have been read
        if changed.is_set():
            return
        changed.set()
        if change == "rewrite":
            src.write_bytes(os.urandom(size))
            return
        with src.open("r+b") as fh:
            if change == "shrink":
                fh.truncate(size // 2)
            else:
                fh.seek(0, os.SEEK_END)
                fh.write(b"more")
        os.utime(src, ns=(old, old))

    if size == SMALL:
        # One read of the whole file, then the check, then the request: progress comes as the request sends the
        # bytes, after the check, so the change is made right after the file's read returns instead.
        real_read = _HashingReader._read

        def read_then_change(self: _HashingReader, n: int | None) -> bytes:
            data = real_read(self, n)
            rewrite(len(data))
            return data

        monkeypatch.setattr(_HashingReader, "_read", read_then_change)
    with pytest.raises(TransferError, match=r"changed while it was being uploaded.*nothing was stored"):
        store.put_file("m/1/w.bin", src, progress=None if size == SMALL else rewrite)
    assert _object(store, "m/1/w.bin") is None


def test_the_digest_is_of_the_bytes_sent_even_when_a_change_goes_unseen(store: GCSStore, tmp_path: Path) -> None:
    """A rewrite that keeps size and modification time passes the file check; the one read still makes the sha256
    that of the bytes stored (the first chunk old, the rest new), neither the old file's nor the new one's."""
    old_bytes, new_bytes = os.urandom(LARGE), os.urandom(LARGE)
    src = _file(tmp_path, "w.bin", old_bytes)
    st = src.stat()

    changed = threading.Event()

    def rewrite(n: int) -> None:  # at the first progress report: the first chunk has been read
        if not changed.is_set():
            changed.set()
            with src.open("r+b") as fh:
                fh.write(new_bytes)
            os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))

    stored = store.put_file("m/1/w.bin", src, progress=rewrite)
    back = _download(store, "m/1/w.bin", tmp_path)
    assert back == old_bytes[:CHUNK] + new_bytes[CHUNK:]
    assert stored.sha256 == _sha256(back)


# -- deletes -----------------------------------------------------------------------------------------------------------


def test_delete_removes_every_key_and_ignores_absent_ones(store: GCSStore) -> None:
    keys = [f"m/1/f{i:02}" for i in range(25)]
    for key in keys:
        store.write(key, b"x")
    store.write("other/keep", b"k")
    store.delete([*keys, "m/1/never-existed", keys[0], "m/2/absent"])
    assert [o.key for o in store.list("")] == ["other/keep"]
    store.delete([])
    store.delete(["m/1/never-existed"])


# -- bounded failures, missing credentials -----------------------------------------------------------------------------


@pytest.fixture
def silent_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An endpoint that accepts connections (the kernel completes them) and never answers; a 1 s budget."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
    monkeypatch.setenv("MODELFLEET_STORE_TIMEOUT", "1")
    try:
        yield endpoint
    finally:
        sock.close()


@pytest.mark.parametrize("operation", ["read", "put_file", "delete", "list"])
def test_an_endpoint_that_never_answers_fails_within_the_budget_in_one_line(
    silent_endpoint: str, tmp_path: Path, operation: str
) -> None:
    st = GCSStore("gs://b/models", "b", "models")
    src = _file(tmp_path, "w.bin", b"x" * 1000)
    calls: dict[str, Callable[[], object]] = {
        "read": lambda: st.read("m/manifest.json"),
        "put_file": lambda: st.put_file("m/1/w.bin", src),
        "delete": lambda: st.delete([f"m/1/f{i}" for i in range(40)]),  # 40 keys, still one budget
        "list": lambda: list(st.list("m/")),
    }
    start = time.monotonic()
    with pytest.raises(StoreError) as info:
        calls[operation]()
    elapsed = time.monotonic() - start
    assert elapsed < 10, f"{operation} took {elapsed:.1f} s"  # the SDK default waits 120 s; slack for a loaded CI
    message = str(info.value)
    assert message.startswith(f"GCS endpoint {silent_endpoint} did not answer within 1 s"), message
    assert "\n" not in message


def test_no_credentials_is_one_line_from_the_cli(tmp_path: Path) -> None:
    """No emulator, no GOOGLE_APPLICATION_CREDENTIALS, an empty gcloud config and no metadata server (a closed port,
    so the SDK's probe fails at once): exit 1 and one line with the fix, instead of the SDK's paragraph."""
    closed = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GCLOUD", "CLOUDSDK", "GCE_"))}
    env.pop("STORAGE_EMULATOR_HOST", None)
    env.update(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path), GCE_METADATA_HOST=closed, GCE_METADATA_IP=closed)
    proc = subprocess.run(
        [sys.executable, "-m", "modelfleet", "versions", "--store", "gs://mf-no-credentials/prod", "--model", "m"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [f"modelfleet: error: {NO_CREDENTIALS}"]
    assert proc.stdout == ""
