"""`modelfleet predict` against what a tired user types and what a server in the way answers: every failure is one
line with the right exit code (2: the request file; 1: the server), never a traceback, and nothing is sent or
printed that the user did not mean."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import threading
import zipfile
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from model_export.errors import ServingError
from modelfleet.tfs_rest import http_json
from tests.support.cli import run_cli
from tests.support.tfserving_standin import TFServingStandIn

Inputs = dict[str, np.ndarray]


@pytest.fixture
def echo(server: TFServingStandIn) -> TFServingStandIn:
    """Model ``echo``: one string input ``s``, answered as the string output ``out``, both named in its metadata."""
    server.reset()
    server.set_model(
        "echo",
        versions={1: "AVAILABLE"},
        inputs={"s": ("string", (-1,))},
        outputs={"out": ("string", (-1,))},
        predict=lambda inputs, version: {"out": inputs["s"]},
    )
    return server


def request_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "request.json"
    path.write_text(text, encoding="utf-8")
    return str(path)


def assert_one_line_error(code: int, out: str, err: str, exit_code: int, *named: str) -> None:
    assert (code, out) == (exit_code, "")
    assert err.startswith("modelfleet: error: ") and err.count("\n") == 1, err
    for text in named:
        assert text in err, err


def test_unpadded_b64_in_a_request_is_sent_as_tf_serving_would_decode_it(
    echo: TFServingStandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """TF Serving decodes {"b64": ...} with absl::Base64Unescape, padding optional: "aGVsbG8" is b"hello"."""
    request = request_file(tmp_path, '{"instances": [{"b64": "aGVsbG8"}]}')
    code, out, err = run_cli(capsys, "predict", "--url", echo.rest_url, "--model", "echo", request)
    assert (code, err) == (0, "")
    assert json.loads(out) == {"outputs": {"out": ["hello"]}}


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ('"!!!"', "'!!!'"),  # once decoded to b"" and sent: the model answered an empty string
        ('"aGVsbG8=x"', "aGVsbG8=x"),
        ("5", '{"b64": 5}'),
        ("null", '{"b64": None}'),
    ],
)
def test_b64_that_is_not_base64_is_refused_before_anything_is_sent(
    echo: TFServingStandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, named: str
) -> None:
    request = request_file(tmp_path, f'{{"instances": [{{"b64": {value}}}]}}')
    code, out, err = run_cli(capsys, "predict", "--url", echo.rest_url, "--model", "echo", request)
    assert_one_line_error(code, out, err, 2, request, named, "is not base64 text")
    assert [c for c in echo.calls if c.method == "predict"] == [], "a predict request was sent"


@pytest.mark.parametrize("escape", ["\\ud83d", "\\udc80abc"])
def test_a_lone_surrogate_escape_in_a_request_is_a_one_line_error(
    echo: TFServingStandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str], escape: str
) -> None:
    """Half an emoji, as a JavaScript program that cut a string in the middle writes it: valid JSON, no text."""
    request = request_file(tmp_path, f'{{"inputs": {{"s": ["{escape}"]}}}}')
    code, out, err = run_cli(capsys, "predict", "--url", echo.rest_url, "--model", "echo", request)
    assert_one_line_error(code, out, err, 2, request, "input 's'", "is not valid Unicode")


@pytest.fixture
def answering() -> Iterator[Callable[[bytes], str]]:
    """A server that answers every request with the given JSON body: what a proxy or a broken server sends."""
    body = [b""]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body[0])))
            self.end_headers()
            self.wfile.write(body[0])

        do_GET = do_POST = _answer

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()

    def serve(answer: bytes) -> str:
        body[0] = answer
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    try:
        yield serve
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=30)


def test_an_answer_whose_b64_is_not_base64_is_an_error_not_an_empty_string(
    answering: Callable[[bytes], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = answering(b'{"outputs": {"a_bytes": [{"b64": "%%%"}], "b": [1]}}')
    request = request_file(tmp_path, '{"inputs": {"s": ["x"]}}')
    code, out, err = run_cli(capsys, "predict", "--url", url, "--model", "echo", request)
    assert_one_line_error(code, out, err, 1, url, "'%%%'", "is not base64 text")


def test_a_string_output_that_is_not_utf8_keeps_its_bytes(
    answering: Callable[[bytes], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """TF Serving writes a string output's bytes as they are (json_tensor.cc): 0xff is no UTF-8, and was "a body
    that is not JSON" (exit 1). The bytes come back as they were, printed as b64."""
    url = answering(b'{"outputs": {"token": ["caf\xc3\xa9", "\xff\xfe"], "n": [1, 2]}}')
    request = request_file(tmp_path, '{"inputs": {"s": ["x", "y"]}}')
    code, out, err = run_cli(capsys, "predict", "--url", url, "--model", "echo", request)
    assert (code, err) == (0, "")
    assert json.loads(out)["outputs"]["token"] == ["caf\u00e9", {"b64": base64.b64encode(b"\xff\xfe").decode()}]


def test_rest_sent_to_an_http2_only_port_says_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--url http://HOST:8500` without --grpc: TF Serving's gRPC port answers with HTTP/2 frames, which were printed
    raw into the error."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer_in_http2() -> None:
        """What an HTTP/2-only server does with an HTTP/1.1 request: frames, then it closes (GOAWAY). The whole
        request is read first: closing with some of it unread resets the connection (ECONNRESET) before the client
        reads the frames, which once made this test fail; then the client's own close is awaited."""
        conn, _ = listener.accept()
        with conn, contextlib.suppress(OSError):
            conn.settimeout(30)
            seen = b""
            while b"\r\n\r\n" not in seen and (chunk := conn.recv(65536)):
                seen += chunk
            head, _, body = seen.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
            while len(body) < length and (chunk := conn.recv(65536)):
                body += chunk
            conn.sendall(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64")  # a SETTINGS frame
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):
                pass

    thread = threading.Thread(target=answer_in_http2, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        request = request_file(tmp_path, '{"inputs": {"x": [[1.0, 2.0]]}}')
        code, out, err = run_cli(capsys, "predict", "--url", url, "--model", "m", request)
    finally:
        thread.join(timeout=30)
        listener.close()
    assert_one_line_error(code, out, err, 1, url, "did not answer HTTP/1.x", "gRPC port", "8501")
    assert "\\x00" not in err


def test_a_connection_closed_without_an_answer_is_not_listening_not_the_grpc_port() -> None:
    """Docker's proxy in front of a TF Serving still starting reads the request and closes: RemoteDisconnected, which
    is a BadStatusLine too. The agent must read it as "not listening" (starting), as before the gRPC-port message; it
    once read it as a server answering in HTTP/2, and wrote a config without the serving version's label."""
    listener = socket.create_server(("127.0.0.1", 0))

    def read_then_close() -> None:
        conn, _ = listener.accept()
        with conn:
            seen = b""
            while b"\r\n\r\n" not in seen:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                seen += chunk

    thread = threading.Thread(target=read_then_close, daemon=True)
    thread.start()
    try:
        with pytest.raises(ServingError) as caught:
            http_json("GET", f"http://127.0.0.1:{listener.getsockname()[1]}", "/v1/models/m", None, timeout=30)
    finally:
        thread.join(timeout=30)
        listener.close()
    assert caught.value.not_listening and "gRPC" not in str(caught.value)


def test_complex_outputs_print_as_real_imaginary_pairs(
    server: TFServingStandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Over gRPC (TF Serving's JSON has no complex numbers): JSON has none either, so each value is [re, im]."""
    server.reset()
    server.set_model(
        "fft",
        versions={1: "AVAILABLE"},
        inputs={"x": ("float32", (-1, 2))},
        outputs={"z": ("complex64", (-1, 2))},
        predict=lambda inputs, version: {"z": np.array([[1 + 2j, -0.5j]], np.complex64)},
    )
    request = request_file(tmp_path, '{"instances": [[1.0, 2.0]]}')
    code, out, err = run_cli(capsys, "predict", "--url", server.grpc_target, "--grpc", "--model", "fft", request)
    assert (code, err) == (0, "")
    assert json.loads(out) == {"outputs": {"z": [[[1.0, 2.0], [0.0, -0.5]]]}}


def _cut_short(path: Path) -> None:
    """An .npz whose copy stopped half-way (its zip directory, at the end, is gone)."""
    np.savez(path, x=np.zeros((2, 3), np.float32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _damaged(path: Path) -> None:
    """np.savez_compressed's file with a flipped run of bytes inside the compressed member."""
    np.savez_compressed(path, x=np.random.default_rng(0).random((64, 64)))
    data = bytearray(path.read_bytes())
    data[200:260] = bytes(b ^ 0xFF for b in data[200:260])
    path.write_bytes(bytes(data))


def _one_array(path: Path) -> None:
    """`mv x.npy x.npz`: one unnamed array where named ones are expected."""
    with path.open("wb") as f:
        np.save(f, np.zeros((2, 3), np.float32))


def _not_an_array_inside(path: Path) -> None:
    """A zip made by hand whose member is not an .npy file (np.load would hand back its bytes)."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", b"not an array")


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (_cut_short, "File is not a zip file"),
        (_damaged, ""),  # zlib.error, a bad CRC or a garbled header, depending on where the damage falls
        (_one_array, "one array, not a zip of named arrays"),
        (_not_an_array_inside, "member 'x' is not an array"),
    ],
)
def test_a_broken_npz_is_a_one_line_error(
    echo: TFServingStandIn,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make: Callable[[Path], None],
    named: str,
) -> None:
    path = tmp_path / "batch.npz"
    make(path)
    code, out, err = run_cli(capsys, "predict", "--url", echo.rest_url, "--model", "echo", str(path))
    assert_one_line_error(code, out, err, 2, f"input file {str(path)!r} is not a valid .npz file: ", named)
    assert [c for c in echo.calls if c.method == "predict"] == [], "a predict request was sent"
