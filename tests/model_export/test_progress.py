"""Byte progress of uploads and downloads: every store reports a large file's bytes as they move (many steps adding up
to its size exactly, never past it, also when a request is retried); the CLI's bar moves within a file on a terminal
and is absent off one or with --json; the agent logs a long download's progress."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from model_export.manifest import FileEntry, load_manifest
from model_export.publish import publish
from model_export.store import open_store
from model_export.store.progress import STEP, Meter, MeteredBody
from model_export.store.s3 import S3Store
from model_export.transfer import download_tree
from modelfleet.agent.cache import LocalCache
from tests.conftest import new_bucket
from tests.support.proxy import Matcher, Proxy, Request, proxying
from tests.support.servers import Server

MIB = 1024 * 1024
LARGE = 24 * MIB  # S3: three parts; GCS: a resumable upload; file: six blocks
SMALL = 6 * MIB  # S3: one PutObject; GCS: one request
CLI = Path(sys.executable).with_name("modelfleet")
# What a child process writing to a terminal may take on this loaded 2-core machine, start-up included: a bound,
# never a timing the test checks.
CLI_BOUND_SECONDS = 180


class Ticks:
    """The callbacks one transfer made (from any thread); the running sums must rise to ``size`` and never past it."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        with self._lock:
            self.steps.append(n)

    def sums(self) -> list[int]:
        out, total = [], 0
        for n in self.steps:
            total += n
            out.append(total)
        return out

    def check(self, size: int, *, at_least: int = 0) -> None:
        """Forward steps only, never past ``size``, ending at it; with ``at_least``, that many values in between, in
        steps of at most a few MiB (the bar moved within the file)."""
        sums = self.sums()
        assert all(n > 0 for n in self.steps), f"only forward steps: {self.steps}"
        assert max(sums, default=0) <= size, f"the bar passed the size: {max(sums)} > {size}"
        assert (sums[-1] if sums else 0) == size, f"the steps add up to the size: {sums[-1:]} vs {size}"
        if at_least:
            within = [s for s in sums if 0 < s < size]
            assert len(within) >= at_least, f"{len(within)} intermediate values: the file moved in too few steps"
            assert max(self.steps) <= 4 * MIB, f"steps of at most a few MiB, got {max(self.steps)}"


def _payload(tmp_path: Path, size: int) -> Path:
    src = tmp_path / f"w-{size}.bin"
    src.write_bytes(os.urandom(size))
    return src


@pytest.mark.parametrize("size", [LARGE, SMALL], ids=["large", "small"])
def test_every_store_reports_bytes_as_they_move(store_uri: str, tmp_path: Path, size: int) -> None:
    st = open_store(store_uri)
    src = _payload(tmp_path, size)
    up = Ticks()
    stored = st.put_file("m/1/w.bin", src, progress=up)
    assert stored.size == size
    up.check(size, at_least=max(1, size // (4 * MIB) - 1))

    down = Ticks()
    dest = tmp_path / "back.bin"
    st.download_file("m/1/w.bin", dest, progress=down)
    assert dest.read_bytes() == src.read_bytes()
    down.check(size, at_least=max(1, size // (4 * MIB) - 1))


def test_download_tree_passes_each_files_bytes_on(store_uri: str, tmp_path: Path) -> None:
    """Before, a file was ticked once, whole, after it had been downloaded and hashed."""
    st = open_store(store_uri)
    src = _payload(tmp_path, LARGE)
    entry = st.put_file("m/1/variables/w.bin", src)
    got = Ticks()
    download_tree(st, "m/1", {"variables/w.bin": FileEntry(entry.sha256, entry.size)}, tmp_path / "d", on_bytes=got)
    got.check(LARGE, at_least=4)
    assert (tmp_path / "d" / "variables" / "w.bin").read_bytes() == src.read_bytes()


# -- retries --------------------------------------------------------------------------------------------------------


@pytest.fixture
def proxied_s3(s3_server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Proxy, str]]:
    bucket = new_bucket("s3")
    with proxying(s3_server.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        yield proxy, bucket


def _put_of(query: str) -> Matcher:
    def matches(req: Request) -> bool:
        return req.method == "PUT" and query in req.path and "/w.bin" in req.path

    return matches


@pytest.mark.parametrize(("size", "query"), [(LARGE, "partNumber=2"), (SMALL, "w.bin")], ids=["part", "single-put"])
def test_bytes_sent_again_after_a_lost_reply_are_not_counted_twice(
    proxied_s3: tuple[Proxy, str], tmp_path: Path, size: int, query: str
) -> None:
    """The reply to a part (or to the one PutObject) is lost after the server took it: botocore sends the same body
    again. The bar must not pass 100 %: the second sending moves nothing until it passes the first."""
    proxy, bucket = proxied_s3
    st = S3Store(f"s3://{bucket}/models", bucket, "models")
    src = _payload(tmp_path, size)
    proxy.drop_reply(_put_of(query))
    up = Ticks()
    st.put_file("m/1/w.bin", src, progress=up)
    assert len(proxy.dropped) == 1, "the fault must have been injected"
    sent = [r for r in proxy.requests if r.method == "PUT" and query in r.path and "/w.bin" in r.path]
    assert len(sent) == 2, "the body was sent twice"
    assert max(up.sums()) == size
    up.check(size, at_least=max(1, size // (4 * MIB) - 1))


def test_meter_hands_on_forward_steps_only_up_to_the_highest_count() -> None:
    """The raw counts s3transfer gives on a retried GET: bytes, then a negative count taking them back, then the
    same bytes again."""
    got = Ticks()
    meter = Meter(got, step=STEP)
    told = []
    for n in [STEP // 2, STEP // 2, STEP, -2 * STEP, STEP, STEP, STEP // 4, STEP, STEP // 2]:
        meter.add(n)
        told.append(sum(got.steps))
    # Half steps wait; the bytes taken back and received again move nothing until they pass the 2 MiB reached.
    high = 3 * STEP + STEP // 4
    assert told == [0, STEP, 2 * STEP, 2 * STEP, 2 * STEP, 2 * STEP, 2 * STEP, high, high]
    meter.finish(3 * STEP + 3 * STEP // 4)
    assert got.steps == [STEP, STEP, STEP + STEP // 4, STEP // 2]


def test_a_body_measured_by_seeking_to_its_end_counts_nothing_until_read() -> None:
    """Regression: botocore measures a request body by seeking to its end and back; counting that seek made the
    whole single PutObject one tick before any byte was sent."""
    got = Ticks()
    meter = Meter(got, step=1)
    body = MeteredBody(b"x" * 1000, meter)
    body.seek(0, os.SEEK_END)
    body.seek(0)
    assert got.steps == []
    body.read(600)
    body.seek(0)  # a retry rewinds it
    body.read(700)
    body.read()
    assert got.sums()[-1] == 1000 and got.steps == [600, 100, 300]


# -- the CLI's bar --------------------------------------------------------------------------------------------------


@pytest.fixture
def model_with_a_large_file(savedmodels: dict[str, Path], tmp_path: Path) -> Path:
    model = tmp_path / "export"
    shutil.copytree(savedmodels["v1"], model)
    (model / "assets").mkdir(exist_ok=True)
    (model / "assets" / "big.bin").write_bytes(os.urandom(LARGE))
    return model


def _publish_argv(model: Path, store: Path, *extra: str) -> list[str]:
    store.mkdir(exist_ok=True)
    return [str(CLI), "publish", str(model), "--store", f"file://{store}", "--model", "m", *extra]


def _env() -> dict[str, str]:
    # tqdm redraws at most every 0.1 s by default: a fast local copy could show only 0 % and 100 %. Redrawing at
    # every update makes what the test sees depend on the ticks the store gives, not on the machine's speed.
    return {**os.environ, "TQDM_MININTERVAL": "0"}


def _run_on_terminal(argv: list[str]) -> tuple[int, str]:
    """Run ``argv`` with stdin, stdout and stderr on a pseudo-terminal; its exit code and everything it wrote."""
    leader, follower = pty.openpty()
    # A new pseudo-terminal is 0 columns wide, where tqdm draws nothing: give it a real terminal's size.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=follower, env=_env(), close_fds=True)
    os.close(follower)
    out = bytearray()
    deadline = time.monotonic() + CLI_BOUND_SECONDS
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(leader, 65536)
            except OSError as e:
                if e.errno == errno.EIO:  # the child closed the terminal
                    break
                raise
            if not data:
                break
            out += data
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
    return code, out.decode(errors="replace")


def _percentages(text: str) -> list[int]:
    return [int(p) for p in re.findall(r"(\d+)%\|", text)]


def test_publish_on_a_terminal_shows_the_bar_moving_within_a_file(
    model_with_a_large_file: Path, tmp_path: Path
) -> None:
    code, out = _run_on_terminal(_publish_argv(model_with_a_large_file, tmp_path / "store"))
    assert code == 0, out
    shown = _percentages(out)
    assert shown and shown[-1] == 100, out
    # The large file is nearly all of the bytes: a value well between 0 and 100 can only come from within it.
    within = [p for p in shown[: shown.index(100)] if 10 <= p <= 90]
    assert len(within) >= 2, f"no intermediate percentages before 100 %: {shown}"
    assert "published m version 1" in out


def test_publish_off_a_terminal_or_with_json_shows_no_bar(model_with_a_large_file: Path, tmp_path: Path) -> None:
    piped = subprocess.run(
        _publish_argv(model_with_a_large_file, tmp_path / "a"),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=CLI_BOUND_SECONDS,
        check=False,
    )
    assert piped.returncode == 0, piped.stderr
    assert "published m version 1" in piped.stdout
    assert _percentages(piped.stderr + piped.stdout) == [] and "upload:" not in piped.stderr

    code, out = _run_on_terminal(_publish_argv(model_with_a_large_file, tmp_path / "b", "--json"))
    assert code == 0, out
    assert _percentages(out) == [] and "upload:" not in out
    assert '"version": 1' in out


# -- the agent ------------------------------------------------------------------------------------------------------


def _published(model: Path, tmp_path: Path) -> tuple[str, int]:
    root = tmp_path / "store"
    root.mkdir()
    uri = f"file://{root}"
    return uri, publish(model, uri, "digits").version


def test_agent_logs_a_long_downloads_progress(
    model_with_a_large_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri, version = _published(model_with_a_large_file, tmp_path)
    st = open_store(uri)
    entry = load_manifest(st, "digits")[0].get(version)
    # An interval of 0: every step is "long enough" to be logged, without the test waiting 10 s.
    cache = LocalCache(tmp_path / "root", progress_log_seconds=0)
    with caplog.at_level(logging.INFO, logger="modelfleet.agent"):
        assert cache.fetch(st, "digits", entry) == entry.total_bytes
    lines = [r.getMessage() for r in caplog.records if "downloaded (" in r.getMessage()]
    assert len(lines) >= 4, lines
    pattern = re.compile(r"^digits v1: ([\d.]+) (B|KiB|MiB) of ([\d.]+) MiB downloaded \((\d+) %\)$")
    parsed = [pattern.match(line) for line in lines]
    assert all(parsed), lines
    percents = [int(m.group(4)) for m in parsed if m]
    assert percents == sorted(percents) and percents[-1] <= 100 and any(0 < p < 100 for p in percents), percents


def test_agent_logs_nothing_more_for_a_download_shorter_than_the_interval(
    savedmodels: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri, version = _published(savedmodels["v1"], tmp_path)
    st = open_store(uri)
    entry = load_manifest(st, "digits")[0].get(version)
    cache = LocalCache(tmp_path / "root", progress_log_seconds=3600)
    with caplog.at_level(logging.INFO, logger="modelfleet.agent"):
        assert cache.fetch(st, "digits", entry) > 0
    assert [r.getMessage() for r in caplog.records if "downloaded (" in r.getMessage()] == []
