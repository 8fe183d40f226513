"""No bad version or restart empties a VM (issue 10 items 1, 7, 8).

TF Serving exits at start-up when a configured version fails to load or a label names a version it has not loaded
(tests/support/tfserving_standin.py plays it as TF Serving 2.20 does). So across TF Serving restarts, agent restarts
and new VMs, a config TF Serving may read at start-up names only versions it has loaded on this VM before; a version
never loaded here is added by a reload, where a failure is recorded and the last good version keeps serving; a VM
that has none falls back to the previous stable version. Retries are milliseconds apart to keep these tests short.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from model_export.constants import HEALTH_PATH, METRICS_PATH, STABLE
from model_export.publish import publish
from model_export.store import open_store
from model_export.versions import set_label
from modelfleet.agent import Agent
from modelfleet.agent import main as agent_main
from modelfleet.agent.health import check_health
from modelfleet.agent.tfs import TfsClient
from modelfleet.agent.tfs_config import ModelEntry, render
from tests.support.agent import (
    MODEL,
    Supervisor,
    accept_and_close,
    failing_copy,
    http_get,
    make_agent,
    metrics,
    served,
    served_version,
    serving,
    versions_in,
    wait_until,
)
from tests.support.servers import free_port
from tests.support.tfserving_standin import StandInProcess, TFServingStandIn

BAD = "INTERNAL: bad graph"
FAILED = f"({BAD})"
FAST = 10_000  # --load_retry_interval_micros: 10 ms between load attempts
WAIT = 20.0  # bounded waits: a VM must recover well within this


def file_store(tmp_path: Path) -> str:
    (tmp_path / "store").mkdir()
    return f"file://{tmp_path / 'store'}"


def tf_serving(config: Path, **options: Any) -> StandInProcess:
    """TF Serving as a process on the agent's config file, polled every 50 ms, one retry of a failed load."""
    options.setdefault("poll_seconds", 0.05)
    return StandInProcess(
        config,
        max_num_load_retries=1,
        load_retry_interval_micros=FAST,
        file_system_poll_wait_seconds=0.1,
        **options,
    )


def agent_for(store: str, root: Path, server_url: str, **options: Any) -> Agent:
    options.setdefault("poll_seconds", 0.1)
    options.setdefault("listen", ("127.0.0.1", free_port()))
    return make_agent(store, root, STABLE, tfs=TfsClient(server_url, timeout=1.0), **options)


def health(base: str) -> tuple[int, str]:
    return http_get(base + HEALTH_PATH)


@contextmanager
def booted(agent: Agent, server: StandInProcess, restart_seconds: float = 0.3) -> Iterator[tuple[str, Supervisor]]:
    """A VM's boot: the agent's first sync (``--once``, ordered before TF Serving), then TF Serving under systemd's
    ``Restart=always``, then the long-running agent and its HTTP endpoint."""
    agent.run_once()
    with Supervisor(server, restart_seconds) as supervisor, serving(agent) as base:
        yield base, supervisor


def test_a_bad_version_then_a_tf_serving_crash_keeps_serving_the_last_good_version(
    savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    """Item 1: v2 will not load; TF Serving is then killed. It must come back serving v1 (not crash-loop on v2), the
    VM healthy and saying it is degraded."""
    store = file_store(tmp_path)
    publish(savedmodels["v1"], store, MODEL, label=STABLE)
    root = tmp_path / "root"
    server = tf_serving(root / "models.config")
    agent = agent_for(store, root, server.rest_url)
    with agent, booted(agent, server) as (base, supervisor):
        wait_until("v1 served", lambda: served_version(server.rest_url) == 1 and health(base)[0] == 200, WAIT)

        publish(failing_copy(savedmodels["v2"], tmp_path / "bad"), store, MODEL, label=STABLE)
        wait_until("v2 failed in TF Serving", lambda: '"END"' in http_get(f"{server.rest_url}/v1/models/{MODEL}")[1])
        time.sleep(0.5)  # a few agent ticks
        assert server.kill() == -9  # a crash, an OOM kill, `docker kill`: systemd restarts it

        wait_until("v1 served again", lambda: served_version(server.rest_url) == 1, WAIT)
        code, body = health(base)
        assert code == 200, body
        assert f"degraded: {MODEL} v2 failed to load {FAILED}; serving v1" in body
        wait_until("v1 labeled", lambda: served(agent.config_path) == {MODEL: ([1], {STABLE: 1})})
        starts = server.starts
        time.sleep(1.0)
        assert server.running and server.starts == starts  # it stays up: no exit-255 loop
        # The labels of the steady config make a start-up from it fail until the agent has seen TF Serving down
        # and rewritten it (see docs/agent.md); systemd's RestartSec is longer than the agent's tick, so at most once.
        assert supervisor.exits[0] == -9 and supervisor.startup_failures <= 1, supervisor.exits
        m = metrics(http_get(base + METRICS_PATH)[1])
        assert m[f'modelfleet_agent_degraded{{model="{MODEL}"}}'] == 1
        assert m[f'modelfleet_agent_failed_loads_total{{model="{MODEL}"}}'] == 1
        assert m[f'modelfleet_agent_current_version{{model="{MODEL}"}}'] == 1
        assert m[f'modelfleet_agent_desired_version{{model="{MODEL}"}}'] == 2


def test_a_new_vm_whose_stable_version_fails_serves_the_previous_stable(
    savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    """Item 8: a brand-new VM (nothing ever loaded on it) whose stable label names a version that cannot load falls
    back to the previous stable version from the manifest's history, degraded, and TF Serving never exits."""
    store = file_store(tmp_path)
    publish(savedmodels["v1"], store, MODEL, label=STABLE)
    publish(savedmodels["v2"], store, MODEL, label=STABLE)
    publish(failing_copy(savedmodels["v2"], tmp_path / "bad"), store, MODEL, label=STABLE)  # v3: stable 1 -> 2 -> 3
    root = tmp_path / "new-vm"
    server = tf_serving(root / "models.config")
    agent = agent_for(store, root, server.rest_url)
    with agent, booted(agent, server) as (base, supervisor):
        wait_until("v2 served", lambda: served_version(server.rest_url) == 2, WAIT)
        wait_until("healthy", lambda: health(base)[0] == 200)
        assert f"degraded: {MODEL} v3 failed to load {FAILED}; serving v2" in health(base)[1]
        wait_until("v2 labeled", lambda: served(agent.config_path) == {MODEL: ([2], {STABLE: 2})})
        assert supervisor.exits == [] and server.running


def test_a_first_version_that_fails_is_503_with_the_reason_and_tf_serving_stays_up(
    savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    """Nothing to fall back to: 503 with TF Serving's error, the model left out of the config (it is not tried again
    in a loop), and TF Serving keeps running."""
    store = file_store(tmp_path)
    publish(failing_copy(savedmodels["v1"], tmp_path / "bad"), store, MODEL, label=STABLE)
    root = tmp_path / "new-vm"
    server = tf_serving(root / "models.config")
    agent = agent_for(store, root, server.rest_url)
    with agent, booted(agent, server) as (base, supervisor):
        reason = f"{MODEL}: no version to serve yet: v1 failed to load {FAILED}; no earlier version to fall back to"
        wait_until("the reason in health", lambda: reason in health(base)[1], WAIT)
        code, body = health(base)
        assert code == 503, body
        attempts = f':standin_load_attempts{{model_name="{MODEL}",version="1"}}'
        tried = server.metrics().get(attempts)
        time.sleep(1.0)
        assert served(agent.config_path) == {}
        assert server.running and supervisor.exits == []
        assert server.metrics().get(attempts) == tried == 2  # one attempt and one retry, then never again


def test_a_label_move_before_the_first_labeled_config_keeps_the_serving_version(
    savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    """Item 8: v1 was loaded from the agent's first config (no labels yet) when the label moved to a v2 that fails:
    the config must keep v1 beside v2, so v1 still serves (and survives a restart) once v2 fails."""
    store = file_store(tmp_path)
    publish(savedmodels["v1"], store, MODEL, label=STABLE)
    with TFServingStandIn(grpc=False, faithful=True, manage_state_interval_seconds=0.01, max_num_load_retries=0) as tfs:
        agent = make_agent(store, tmp_path / "root", STABLE, tfs=TfsClient(tfs.rest_url), poll_seconds=30)
        with agent:
            agent.tick()
            assert served(agent.config_path) == {MODEL: ([1], {})}
            tfs.load_config(agent.config_path)
            tfs.wait_idle()
            assert tfs.versions(MODEL) == {1: "AVAILABLE"}

            publish(failing_copy(savedmodels["v2"], tmp_path / "bad"), store, MODEL, label=STABLE)
            agent.tick()  # the label moved before the agent's first labeled config
            assert versions_in(agent.config_path) == {MODEL: [1, 2]}
            tfs.load_config(agent.config_path)  # accepted: a label here names v1, AVAILABLE
            tfs.wait_idle()
            assert tfs.status(MODEL, 2) == ("END", "INTERNAL", "bad graph")

            agent.tick(poll_store=False)
            assert served(agent.config_path) == {MODEL: ([1], {STABLE: 1})}
            tfs.load_config(agent.config_path)
            tfs.wait_idle()
            assert served_version(tfs.rest_url) == 1
            healthy, lines = check_health(agent.status, TfsClient(tfs.rest_url))
            assert healthy, lines
            assert lines == [
                f"{MODEL}: version 1 AVAILABLE",
                f"degraded: {MODEL} v2 failed to load {FAILED}; serving v1",
            ]
        assert tfs.config_errors == []


def test_tf_serving_accepting_and_closing_connections_is_starting_and_the_serving_version_stays(
    savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    """Item 7: while TF Serving restarts, Docker's proxy accepts and closes connections. A label move then must not
    write the new, never-loaded version alone: the config TF Serving reads next names the version it served."""
    store = file_store(tmp_path)
    publish(savedmodels["v1"], store, MODEL, label=STABLE)
    rest_port = free_port()
    root = tmp_path / "root"
    with TFServingStandIn(
        grpc=False, faithful=True, manage_state_interval_seconds=0.01, rest_api_port=rest_port
    ) as tfs:
        agent = make_agent(store, root, STABLE, tfs=TfsClient(tfs.rest_url, timeout=1.0), poll_seconds=30)
        agent.tick()
        tfs.load_config(agent.config_path)
        tfs.wait_idle()
        agent.tick(poll_store=False)
        assert served(agent.config_path) == {MODEL: ([1], {STABLE: 1})}
    with agent:
        with accept_and_close(rest_port):  # the TF Serving container restarts, its server still loading
            publish(savedmodels["v2"], store, MODEL, label=STABLE)
            agent.tick()
            assert served(agent.config_path) == {MODEL: ([1], {})}  # v1 kept, no label: safe as a start-up config
            assert agent.status.models()[0].target == 2
        with tf_serving(agent.config_path, rest_api_port=rest_port) as server:  # its start-up: v1
            assert served_version(server.rest_url) == 1
            agent.tick(poll_store=False)
            assert served(agent.config_path) == {MODEL: ([1, 2], {STABLE: 1})}  # v2 by a reload, v1 labeled
            wait_until("v2 loaded", lambda: served_version(server.rest_url) == 2)
            agent.tick(poll_store=False)
            assert served(agent.config_path) == {MODEL: ([2], {STABLE: 2})}


def test_an_agent_restart_with_an_old_state_file_keeps_the_version_that_served(
    savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    """An agent upgraded mid-move (schema 1 state: target 2, config {1, 2} labeled on 1), on a VM whose TF Serving
    is down: the labeled version is the one proven, so the config names v1 alone and TF Serving starts; v2 (bad)
    then fails by a reload, and v1 keeps serving."""
    store = file_store(tmp_path)
    publish(savedmodels["v1"], store, MODEL, label=STABLE)
    root = tmp_path / "root"
    server = tf_serving(root / "models.config")
    with make_agent(store, root, STABLE) as old:  # just to fill the cache: v1 and v2 on disk, verified
        old.run_once()
        publish(failing_copy(savedmodels["v2"], tmp_path / "bad"), store, MODEL, label=STABLE)
        old.run_once()
        assert old.cache.versions(MODEL) == [1, 2]
    state = {
        "schema": 1,
        "role": STABLE,
        "models": {MODEL: {"target": 2, "config": {"versions": [1, 2], "labels": {STABLE: 1}}}},
    }
    (root / ".agent-state.json").write_text(json.dumps(state))
    (root / "models.config").write_text(render([ModelEntry(MODEL, str(root / MODEL), (1, 2), {STABLE: 1})]))

    agent = agent_for(store, root, server.rest_url)
    with agent, booted(agent, server) as (base, supervisor):
        wait_until("v1 served", lambda: served_version(server.rest_url) == 1, WAIT)
        wait_until("degraded on v1", lambda: f"{MODEL} v2 failed to load {FAILED}; serving v1" in health(base)[1])
        assert health(base)[0] == 200
        assert supervisor.exits == []
    saved = json.loads((root / ".agent-state.json").read_text())
    assert saved["schema"] == agent_main.STATE_SCHEMA
    assert saved["models"][MODEL]["proven"] == [1] and saved["models"][MODEL]["last_good"] == 1
    assert saved["models"][MODEL]["failed"]["2"]["error"] == BAD


def test_a_failed_version_is_not_retried_until_the_label_moves_away_and_back(
    savedmodels: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Versions are immutable: a failed one is not listed again (TF Serving would not retry it while listed anyway),
    until the desired version moves away and back."""
    # After a retry is written, TF Serving shows the earlier attempt's END until it reads the config: that END is not
    # taken for a new failure for a while (120 s), unless TF Serving shows another state first. These loads fail in
    # milliseconds, between two ticks: shorten the wait.
    monkeypatch.setattr(agent_main, "RETRY_GRACE_SECONDS", 0.3, raising=False)
    store = file_store(tmp_path)
    publish(savedmodels["v1"], store, MODEL, label=STABLE)
    with TFServingStandIn(
        grpc=False, faithful=True, manage_state_interval_seconds=0.01, max_num_load_retries=1,
        load_retry_interval_micros=1000,
    ) as tfs:  # fmt: skip
        agent = make_agent(store, tmp_path / "root", STABLE, tfs=TfsClient(tfs.rest_url), poll_seconds=30)

        def rounds(n: int, *, poll_store: bool = False) -> None:
            for _ in range(n):
                agent.tick(poll_store=poll_store)
                tfs.load_config(agent.config_path)
                tfs.wait_idle()

        with agent:
            rounds(2, poll_store=True)
            publish(failing_copy(savedmodels["v2"], tmp_path / "bad"), store, MODEL, label=STABLE)
            rounds(1, poll_store=True)
            rounds(5)
            assert tfs.load_attempts[(MODEL, 2)] == 2  # one attempt, one retry; not listed again
            assert served(agent.config_path) == {MODEL: ([1], {STABLE: 1})}
            view = agent.status.models()[0]
            assert (view.desired, view.target, view.desired_failed) == (2, 1, True)
            assert agent.status.load_failures() == {MODEL: 1}

            set_label(open_store(store), MODEL, STABLE, 1)  # away ...
            rounds(2, poll_store=True)
            assert agent.status.models()[0].degraded is None
            set_label(open_store(store), MODEL, STABLE, 2)  # ... and back: one more try
            rounds(1, poll_store=True)
            assert versions_in(agent.config_path) == {MODEL: [1, 2]}
            time.sleep(0.35)
            rounds(3)
            assert tfs.load_attempts[(MODEL, 2)] == 4
            assert served(agent.config_path) == {MODEL: ([1], {STABLE: 1})}
            assert agent.status.load_failures() == {MODEL: 2}
            assert agent.status.models()[0].degraded == f"{MODEL} v2 failed to load {FAILED}; serving v1"
        assert tfs.config_errors == []


def test_a_version_whose_load_kills_tf_serving_is_failed_after_two_crashes(
    savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    """A load that kills TF Serving (the OOM killer: both versions held at once above the memory limit) never
    reports an error: after it stopped twice while loading it, the version counts as failed, v1 keeps serving."""
    store = file_store(tmp_path)
    publish(savedmodels["v1"], store, MODEL, label=STABLE)
    s1, s2 = (sum(p.stat().st_size for p in savedmodels[v].rglob("*") if p.is_file()) for v in ("v1", "v2"))
    root = tmp_path / "root"
    # Each version alone fits, both do not: AvailabilityPreservingPolicy holds v1 while v2 loads.
    server = tf_serving(root / "models.config", memory_limit_bytes=max(s1, s2) + min(s1, s2) // 2)
    agent = agent_for(store, root, server.rest_url)
    with agent, booted(agent, server) as (base, supervisor):
        wait_until("v1 served", lambda: served_version(server.rest_url) == 1 and health(base)[0] == 200, WAIT)
        publish(savedmodels["v2"], store, MODEL, label=STABLE)
        wait_until("degraded", lambda: "degraded:" in health(base)[1], WAIT)
        code, body = health(base)
        assert code == 200, body
        assert f"{MODEL} v2 failed to load (TF Serving stopped 2 times while loading it" in body
        wait_until("v1 served", lambda: served_version(server.rest_url) == 1, WAIT)
        assert supervisor.exits.count(-9) == 2 and supervisor.startup_failures <= 2, supervisor.exits


def test_random_label_moves_bad_versions_and_restarts_never_empty_the_vm(
    savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    """40 random steps: publishes (a third of them cannot load), label moves, TF Serving restarts (seen by the
    agent, as systemd's RestartSec is longer than its tick). TF Serving must accept every config, every start-up must
    succeed, and once a version has served, one always does: the desired one when it can load, else the last good."""
    (tmp_path / "store").mkdir()
    store = open_store(f"file://{tmp_path / 'store'}")
    bad_copy = failing_copy(savedmodels["v2"], tmp_path / "bad")
    publish(savedmodels["v1"], store, MODEL, label=STABLE)
    good: set[int] = {1}
    bad: set[int] = set()
    port = free_port()
    root = tmp_path / "root"

    def tf_serving(config: Path | None) -> TFServingStandIn:
        server = TFServingStandIn(
            grpc=False, faithful=True, manage_state_interval_seconds=0.005, max_num_load_retries=0,
            file_system_poll_wait_seconds=0, rest_api_port=port, model_config_file=config,
        )  # fmt: skip
        server.start()  # ConfigError if the start-up config fails: TF Serving would exit
        return server

    tfs = tf_serving(None)
    agent = make_agent(store, root, STABLE, tfs=TfsClient(tfs.rest_url, timeout=1.0), poll_seconds=30)

    def settle() -> None:
        for _ in range(4):
            agent.tick(poll_store=False)
            tfs.load_config(agent.config_path)  # ConfigError if TF Serving would refuse it
            tfs.wait_idle()

    rng = random.Random(10)
    expected = 1
    with agent:
        agent.tick()
        settle()
        try:
            for step in range(40):
                roll = rng.random()
                if roll < 0.3:
                    fails = rng.random() < 0.35
                    version = publish(bad_copy if fails else savedmodels["v1"], store, MODEL, label=STABLE).version
                    (bad if fails else good).add(version)
                elif roll < 0.55:
                    set_label(store, MODEL, STABLE, rng.choice(sorted(good | bad)))
                elif roll < 0.75:
                    tfs.stop()
                    agent.tick(poll_store=False)  # it sees TF Serving down: the config becomes start-up safe
                    names = versions_in_config(agent.config_path)
                    assert not names & bad, (step, names)
                    tfs = tf_serving(agent.config_path)
                agent.tick()
                settle()
                desired = agent.states[MODEL].desired
                if desired in good:
                    expected = desired
                assert served_version(tfs.rest_url) == expected, (step, desired, agent.states[MODEL])
                assert not versions_in_config(agent.config_path) & (bad - {desired}), step
        finally:
            tfs.stop()


def versions_in_config(config: Path) -> set[int]:
    return {v for versions, _ in served(config).values() for v in versions}
