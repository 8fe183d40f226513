"""The agent's store budget: a black-holed store (it accepts connections and never answers) fails one poll within
``--store-timeout`` seconds, a transient error the agent backs off from, instead of botocore's 60 s x 3 attempts."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from model_export.constants import AGENT_STORE_TIMEOUT_SECONDS, STABLE
from model_export.errors import BadInput
from model_export.store.base import REQUEST_BUDGET_ENV
from modelfleet.cli import main
from modelfleet.cli.agent_cmd import store_budget, store_timeout
from tests.support.agent import MODEL, make_agent
from tests.support.servers import black_hole, free_port, point_s3_at


@pytest.fixture
def hole(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An S3 endpoint on 127.0.0.1 that accepts connections (the kernel completes them) and never answers."""
    with black_hole() as it:
        point_s3_at(monkeypatch, it.endpoint)
        monkeypatch.delenv(REQUEST_BUDGET_ENV, raising=False)
        yield it.endpoint


def test_the_agents_tick_fails_transiently_within_its_budget(hole: str, tmp_path: Path) -> None:
    with store_budget(2), make_agent("s3://black-hole/models", tmp_path / "root", STABLE) as agent:
        t0 = time.monotonic()
        (report,) = agent.tick()
        elapsed = time.monotonic() - t0
    assert report.transient and report.refused is None
    assert (report.error or "").startswith(
        f"digits: cannot read the manifest: S3 endpoint {hole} did not answer within 2 s ("
    )
    assert elapsed < 15, elapsed  # botocore alone would wait 3 x 60 s; slack for a loaded CI
    assert REQUEST_BUDGET_ENV not in os.environ  # the budget is the agent's, for its lifetime only


def test_store_timeout_flag_bounds_the_agent(hole: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dead_tfs = f"http://127.0.0.1:{free_port()}"
    argv = ["agent", "--store", "s3://black-hole/models", "--models", MODEL, "--root", str(tmp_path / "root")]
    argv += ["--role", STABLE, "--tfs-url", dead_tfs, "--once", "--store-timeout", "2"]
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO):
        assert main(argv) == 1
    assert time.monotonic() - t0 < 15  # slack for a loaded CI; unbounded it would be minutes
    assert f"S3 endpoint {hole} did not answer within 2 s" in caplog.text
    assert REQUEST_BUDGET_ENV not in os.environ


def test_the_agents_default_budget_is_shorter_than_the_store_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUEST_BUDGET_ENV, raising=False)
    assert store_timeout(None) == AGENT_STORE_TIMEOUT_SECONDS == 10
    assert store_timeout(3) == 3
    monkeypatch.setenv(REQUEST_BUDGET_ENV, "20")  # an operator's explicit setting still wins over the default
    assert store_timeout(None) == 20
    assert store_timeout(3) == 3
    monkeypatch.setenv(REQUEST_BUDGET_ENV, "soon")
    with pytest.raises(BadInput, match=f"{REQUEST_BUDGET_ENV}='soon' is invalid"):
        store_timeout(None)


@pytest.mark.parametrize(
    ("value", "message"),
    [("0", "'0' must be from 1 to 3600 seconds"), ("later", "'later' is not a number of seconds")],
)
def test_a_bad_store_timeout_exits_2(
    value: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["agent", "--store", f"file://{tmp_path}", "--models", MODEL, "--root", str(tmp_path / "root")]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--role", STABLE, "--once", "--store-timeout", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err == f"modelfleet agent: error: argument --store-timeout: {message} (see `modelfleet agent --help`)\n"
