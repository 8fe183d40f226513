"""What the CLI prints reads well: predict's JSON on and off a terminal, output names over REST, help text, and the
demo's stderr (the demo run itself is in test_demo.py)."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_export.errors import ServingError
from modelfleet.cli import COMMANDS, build_parser
from modelfleet.cli.common import readable_json, tensorflow_logs_hidden
from tests.support import REPO_ROOT
from tests.support.cli import run_cli
from tests.support.tfserving_standin import TFServingStandIn

X = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
PROBABILITIES = [[0.1, 0.2, 0.7], [0.25, 0.5, 0.25]]
ONLY_A_NUMBER = re.compile(r"^\s*-?[0-9][0-9.eE+-]*,?\s*$")


@pytest.fixture
def tfs(server: TFServingStandIn) -> TFServingStandIn:
    """Model ``digits``: one output, ``probabilities``, a row of 3 per input row (float32, as Keras exports it)."""
    server.reset()
    server.set_model(
        "digits",
        versions={1: "AVAILABLE"},
        inputs={"x": ("float32", (-1, 3))},
        outputs={"probabilities": ("float32", (-1, 3))},
        predict=lambda inputs, version: {"probabilities": np.array(PROBABILITIES, np.float32)},
    )
    return server


def predict_cli(tfs: TFServingStandIn, request: Path, *extra: str, grpc: bool = False) -> list[str]:
    url = tfs.grpc_target if grpc else tfs.rest_url
    return [sys.executable, "-m", "modelfleet", "predict", "--url", url, "--model", "digits", *extra, str(request)]


def write_request(tmp_path: Path) -> Path:
    path = tmp_path / "request.json"
    path.write_text(json.dumps({"inputs": {"x": X.tolist()}}))
    return path


def run_on_a_terminal(argv: list[str]) -> tuple[int, str, str]:
    """``argv`` with its stdout on a pseudo-terminal (stderr piped): exit code, what the terminal showed, stderr."""
    main_fd, child_fd = pty.openpty()
    try:
        proc = subprocess.Popen(argv, stdout=child_fd, stderr=subprocess.PIPE, cwd=REPO_ROOT)
    finally:
        os.close(child_fd)
    shown = b""
    deadline = time.monotonic() + 120  # a Python start with numpy, on a loaded machine, takes seconds, not minutes
    try:
        while select.select([main_fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            chunk = os.read(main_fd, 65536)
            if not chunk:
                break
            shown += chunk
    except OSError:  # EIO: the child closed the terminal (it exited)
        pass
    finally:
        os.close(main_fd)
    if time.monotonic() >= deadline:
        proc.kill()
    _, err = proc.communicate(timeout=120)
    return proc.returncode, shown.decode().replace("\r\n", "\n"), err.decode()


@pytest.mark.parametrize("grpc", [False, True])
def test_predict_off_a_terminal_prints_one_line(tfs: TFServingStandIn, tmp_path: Path, grpc: bool) -> None:
    """Over gRPC too, which imports TensorFlow: none of its start-up logging reaches stderr."""
    argv = predict_cli(tfs, write_request(tmp_path), *(["--grpc"] if grpc else []), grpc=grpc)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.endswith("\n") and done.stdout.count("\n") == 1
    assert json.loads(done.stdout) == {"outputs": {"probabilities": PROBABILITIES}}


def test_predict_on_a_terminal_is_indented_with_rows_on_one_line(tfs: TFServingStandIn, tmp_path: Path) -> None:
    code, shown, err = run_on_a_terminal(predict_cli(tfs, write_request(tmp_path)))
    assert (code, err) == (0, "")
    assert json.loads(shown) == {"outputs": {"probabilities": PROBABILITIES}}
    lines = shown.splitlines()
    assert len(lines) > 1
    assert not [line for line in lines if ONLY_A_NUMBER.match(line)]
    assert "      [0.1, 0.2, 0.7]," in lines  # a row of the output, indented under its name


@pytest.mark.parametrize("request_body", [{"inputs": {"x": X.tolist()}}, {"instances": X.tolist()}])
def test_a_single_output_keeps_its_name_over_rest_as_over_grpc(
    tfs: TFServingStandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str], request_body: dict[str, Any]
) -> None:
    request = tmp_path / "request.json"
    request.write_text(json.dumps(request_body))
    rest = run_cli(capsys, "predict", "--url", tfs.rest_url, "--model", "digits", str(request))
    grpc = run_cli(capsys, "predict", "--url", tfs.grpc_target, "--grpc", "--model", "digits", str(request))
    assert (
        rest == grpc == (0, json.dumps({"outputs": {"probabilities": PROBABILITIES}}, separators=(",", ":")) + "\n", "")
    )


def test_float32_outputs_print_as_written_not_widened(
    tfs: TFServingStandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """0.1 as a float32 widened to float64 prints 0.10000000149011612; TF Serving's JSON writes 0.1, and so does
    the CLI over gRPC. The values still read back as the same float32s."""
    request = write_request(tmp_path)
    _, out, _ = run_cli(capsys, "predict", "--url", tfs.grpc_target, "--grpc", "--model", "digits", str(request))
    assert "0.10000000149011612" not in out and "[0.1,0.2,0.7]" in out
    printed = np.array(json.loads(out)["outputs"]["probabilities"], np.float32)
    assert printed.tobytes() == np.array(PROBABILITIES, np.float32).tobytes()


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ({"a": [1, 2], "b": {"c": [[1.5, 2], [3, 4]]}}, '{\n  "a": [1, 2],\n  "b": {\n    "c": [\n      [1.5, 2],\n'
         '      [3, 4]\n    ]\n  }\n}'),
        ({"s": [{"b64": "YWJj"}, {"b64": "/w=="}]}, '{\n  "s": [\n    {"b64": "YWJj"},\n    {"b64": "/w=="}\n  ]\n}'),
        ({"y": 3.0, "e": [], "n": {}}, '{"y": 3.0, "e": [], "n": {}}'),
        ([], "[]"),
        ("h\u00e9", '"h\\u00e9"'),
    ],
)  # fmt: skip
def test_readable_json(value: Any, text: str) -> None:
    assert readable_json(value) == text
    assert json.loads(text) == value


def test_help_is_the_dedented_docstring() -> None:
    """Each command's --help shows its docstring without the source's 4-space indent, examples' own indent kept."""
    for name in COMMANDS:
        parser = build_parser(name)
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        command = sub.choices[name]
        doc = command.get_default("run").__doc__
        shown = command.format_help()
        dedented = inspect.cleandoc(doc)
        assert dedented in shown, name
        indented = {line for line in doc.splitlines()[1:] if line.startswith("    ") and line.strip()}
        assert indented, name  # the source is indented: this test would see a leak
        assert not indented & set(shown.splitlines()) - set(dedented.splitlines()), name
        assert "\n  modelfleet " + name in shown, name  # the Example: lines keep their 2-space indent


TF_NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796607040.306897    8013 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders.",
    "I0000 00:00:1796607040.543690    8013 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the "
    "appropriate compiler flags.",
    "E0000 00:00:1796607043.858598    8013 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed "
    "call to cuInit: UNKNOWN ERROR (303)",
    "W0000 00:00:1796607043.858598    8013 py_utils.cc:9] TF-TRT Warning: Could not find TensorRT",
    "2024-05-01 10:00:00.123456: I tensorflow/core/util/port.cc:113] oneDNN custom operations are on.",
    "INFO:tensorflow:Assets written to: /tmp/export/assets",
]


def write_fd2(lines: list[str]) -> None:
    os.write(2, "".join(line + "\n" for line in lines).encode())  # as C++ does: under Python's sys.stderr


def test_tensorflow_logs_are_hidden_and_other_stderr_is_kept(capfd: pytest.CaptureFixture[str]) -> None:
    with tensorflow_logs_hidden():
        write_fd2([*TF_NOISE[:3], "a warning of ours"])
        write_fd2([*TF_NOISE[3:], "another line of ours"])
        print("stdout is untouched")
    out, err = capfd.readouterr()
    assert (out, err) == ("stdout is untouched\n", "a warning of ours\nanother line of ours\n")


def test_tensorflow_logs_are_all_shown_when_the_block_crashes(capfd: pytest.CaptureFixture[str]) -> None:
    """An unexpected failure keeps everything: TensorFlow's own lines may be the only account of what went wrong."""
    with pytest.raises(RuntimeError, match="boom"), tensorflow_logs_hidden():
        write_fd2([*TF_NOISE, "a warning of ours"])
        raise RuntimeError("boom")
    assert capfd.readouterr().err.splitlines() == [*TF_NOISE, "a warning of ours"]
    print("after", file=sys.stderr)  # fd 2 is back where it was
    assert capfd.readouterr().err == "after\n"


@pytest.mark.parametrize(
    "error", [ServingError("TF Serving at h:1 answered NOT_FOUND", code="NOT_FOUND"), KeyboardInterrupt()]
)
def test_tensorflow_logs_stay_hidden_when_the_failure_explains_itself(
    capfd: pytest.CaptureFixture[str], error: BaseException
) -> None:
    """Our own errors (one line, printed by main) and Ctrl-C need no TensorFlow start-up logging beside them."""
    with pytest.raises(type(error)), tensorflow_logs_hidden():
        write_fd2([*TF_NOISE, "a warning of ours"])
        raise error
    assert capfd.readouterr().err == "a warning of ours\n"


def test_grpc_predict_errors_are_one_line(tfs: TFServingStandIn, tmp_path: Path) -> None:
    argv = predict_cli(tfs, write_request(tmp_path), "--grpc", grpc=True)
    argv[argv.index("digits")] = "ghost"
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        f"modelfleet: error: TF Serving at {tfs.grpc_target} answered NOT_FOUND: "
        "Servable not found for request: Latest(ghost)\n"
    )


@pytest.mark.parametrize("argv", [["completion", "bash"], ["completion", "fish"]])
def test_a_reader_that_closed_the_pipe_gets_no_traceback(argv: list[str]) -> None:
    """`modelfleet ... | head -1`: head exits, the next write fails with EPIPE; the command stops quietly with 141
    (a shell's code for SIGPIPE), as `cat` would, instead of a BrokenPipeError traceback. (`--help` is argparse's,
    which ignores the error itself.)"""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write: every write fails, deterministically
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "modelfleet", *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (141, "")
