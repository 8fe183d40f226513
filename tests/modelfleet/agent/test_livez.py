"""Liveness (``LIVE_PATH``) over HTTP against the TF Serving stand-in: what replaces VMs acts on it, so it must stay
200 through everything a new VM would not fix (draining, a version that cannot load) and turn 503 only for a VM that
never came up, an agent loop that stopped, or a TF Serving that has been silent for long."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from model_export.constants import HEALTH_PATH, LIVE_PATH
from modelfleet.agent.health import LIVE_MARKER, AgentHTTPServer, Liveness, liveness_window
from modelfleet.agent.status import AgentStatus
from modelfleet.agent.sync import ModelState
from modelfleet.agent.tfs import TfsClient
from tests.support.agent import MODEL, dead_tfs, http_get
from tests.support.tfserving_standin import TFServingStandIn


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def tfs() -> Iterator[TFServingStandIn]:
    server = TFServingStandIn(grpc=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def status_serving(version: int) -> AgentStatus:
    status = AgentStatus("stable", (MODEL,))
    status.publish({MODEL: ModelState(MODEL, desired=version, target=version)})
    return status


def endpoint(status: AgentStatus, tfs: TfsClient, liveness: Liveness | None) -> AgentHTTPServer:
    server = AgentHTTPServer(("127.0.0.1", 0), status, tfs, liveness)
    server.start()
    return server


def test_livez_waits_for_the_first_ready_then_ignores_readiness_and_watches_the_loop_and_tf_serving(
    tfs: TFServingStandIn, tmp_path: Path
) -> None:
    clock = Clock()
    marker = tmp_path / LIVE_MARKER
    live = Liveness(max_silence_seconds=30, tfs_down_seconds=120, marker=marker, clock=clock)
    tfs.set_model(MODEL, versions={1: "LOADING"})
    http = endpoint(status_serving(1), TfsClient(tfs.rest_url, timeout=1), live)
    try:
        # A VM that has not been ready yet is not live: a rolling update waits for it, autohealing replaces it.
        code, body = http_get(http.url + LIVE_PATH)
        assert code == 503
        assert body.splitlines()[0] == "not live"
        assert f"starting: not ready ({HEALTH_PATH}) since this VM started" in body
        assert not marker.exists()

        tfs.set_state(MODEL, 1, "AVAILABLE")
        assert http_get(http.url + LIVE_PATH) == (
            200,
            "live\nagent loop: last tick 0 s ago\nTF Serving: answering\n",
        )
        assert marker.exists()

        # Readiness goes (draining: the model is out of TF Serving's config; or a version that cannot load) ...
        tfs.remove_model(MODEL)
        assert http_get(http.url + HEALTH_PATH)[0] == 503
        assert http_get(http.url + LIVE_PATH)[0] == 200  # ... liveness stays

        # The loop stops beating.
        clock.now += 31
        code, body = http_get(http.url + LIVE_PATH)
        assert code == 503
        assert "agent loop: last tick 31 s ago, over the 30 s limit" in body
        live.beat()
        assert http_get(http.url + LIVE_PATH)[0] == 200

        # TF Serving stops answering: a restart (it reloads every model before listening) is waited out ...
        tfs.stop()
        clock.now += 100
        live.beat()
        code, body = http_get(http.url + LIVE_PATH)
        assert code == 200
        assert "TF Serving: no answer for 100 s (limit 120 s): TF Serving at" in body
        # ... a TF Serving silent for longer needs a new VM.
        clock.now += 21
        live.beat()
        code, body = http_get(http.url + LIVE_PATH)
        assert code == 503
        assert "TF Serving: no answer for 121 s, over the 120 s limit" in body
    finally:
        http.stop()


def test_an_agent_restart_mid_drain_stays_live_because_the_first_ready_is_on_disk(tmp_path: Path) -> None:
    (tmp_path / LIVE_MARKER).touch()
    live = Liveness(max_silence_seconds=30, marker=tmp_path / LIVE_MARKER, clock=Clock())
    status = AgentStatus("stable", (MODEL,))  # nothing served yet after the restart; TF Serving not answering yet
    http = endpoint(status, dead_tfs(), live)
    try:
        assert http_get(http.url + HEALTH_PATH)[0] == 503
        code, body = http_get(http.url + LIVE_PATH)
        assert code == 200, body
    finally:
        http.stop()


def test_without_a_wired_heartbeat_livez_still_answers_from_tf_serving(tfs: TFServingStandIn) -> None:
    tfs.set_model(MODEL, versions={2: "AVAILABLE"})
    http = endpoint(status_serving(2), TfsClient(tfs.rest_url, timeout=1), None)
    try:
        assert http_get(http.url + LIVE_PATH) == (200, "live\nTF Serving: answering\n")
    finally:
        http.stop()


def test_the_loop_may_be_silent_for_a_few_polls_but_never_less_than_five_minutes() -> None:
    assert liveness_window(5) == 300
    assert liveness_window(120) == 600
