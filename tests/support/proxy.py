"""An HTTP proxy on 127.0.0.1 in front of a real storage server, for faults no server makes on its own.

It forwards every request as it came (method, path, headers, body) and records it; ``drop_reply`` names requests
whose reply is lost: the request reaches the server and takes effect, then the client's connection is closed
without an answer, as when a reply is lost on the network. The SDK then retries the request, as it would in the
field.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # with the query string
    headers: dict[str, str]  # lower-cased names


Matcher = Callable[[Request], bool]


@dataclass
class Proxy:
    upstream: str  # http://127.0.0.1:PORT
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    dropped: list[Request] = field(default_factory=list)
    _drops: list[Matcher] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def drop_reply(self, matches: Matcher) -> None:
        """Lose the reply to the next request ``matches`` accepts (once)."""
        with self._lock:
            self._drops.append(matches)

    def _should_drop(self, req: Request) -> bool:
        with self._lock:
            self.requests.append(req)
            for i, matches in enumerate(self._drops):
                if matches(req):
                    del self._drops[i]
                    self.dropped.append(req)
                    return True
        return False


def _handler(proxy: Proxy) -> type[BaseHTTPRequestHandler]:
    target = urlsplit(proxy.upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = self._read_chunked()
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
            if body is not None:
                headers["Content-Length"] = str(len(body))
            req = Request(self.command, self.path, {k.lower(): v for k, v in headers.items()})
            drop = proxy._should_drop(req)
            conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=60)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            finally:
                conn.close()
            if drop:
                # The server acted on the request; the client never hears about it.
                self.close_connection = True
                return
            self.send_response_only(resp.status, resp.reason)
            for name, value in resp.getheaders():
                if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(name, value)
            # A HEAD reply's Content-Length is the object's size, not that of its (empty) body.
            upstream_length = resp.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", upstream_length or str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _read_chunked(self) -> bytes:
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _forward

    return Handler


@contextmanager
def proxying(upstream: str) -> Iterator[Proxy]:
    proxy = Proxy(upstream)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy))
    server.daemon_threads = True
    proxy.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def conditional_manifest_put(req: Request) -> bool:
    """A conditional write of model ``m``'s manifest (a compare-and-swap): the request whose reply a test drops."""
    return (
        req.method == "PUT"
        and req.path.split("?")[0].endswith("/m/manifest.json")
        and ("if-match" in req.headers or "if-none-match" in req.headers)
    )
