"""Health and metrics over HTTP, against the TF Serving stand-in's REST API."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from model_export.constants import HEALTH_PATH, METRICS_PATH, STABLE
from model_export.manifest import load_manifest
from model_export.publish import publish
from model_export.store import open_store
from model_export.versions import rollback
from modelfleet.agent.health import check_health
from modelfleet.agent.tfs import TfsClient
from tests.support.agent import MODEL, http_get, make_agent, metrics, served, serving, wait_until
from tests.support.servers import free_port
from tests.support.tfserving_standin import TFServingStandIn


@pytest.fixture
def store(tmp_path: Path) -> str:
    (tmp_path / "store").mkdir()
    return f"file://{tmp_path / 'store'}"


def test_health_is_503_while_the_version_is_loading_200_when_available_503_when_tf_serving_is_down(
    store: str, savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    publish(savedmodels["v1"], store, MODEL, label=STABLE)
    listen = ("127.0.0.1", free_port())
    tfs = TFServingStandIn(grpc=False)
    tfs.start()
    try:
        tfs.set_model(MODEL, versions={1: "LOADING"})
        agent = make_agent(
            store, tmp_path / "root", STABLE, tfs=TfsClient(tfs.rest_url), poll_seconds=0.1, listen=listen
        )
        with agent, serving(agent) as base:
            wait_until("the first sync", lambda: agent.status.models()[0].target == 1)
            # TF Serving itself answers 200 for a model whose only version is LOADING ...
            assert http_get(f"{tfs.rest_url}/v1/models/{MODEL}")[0] == 200
            # ... the agent's health does not. (Its store poll runs apart from the loop that publishes the status, so
            # the first report can lag the target by a tick: wait for it, bounded.)
            loading = "unhealthy\ndigits: version 1 is LOADING, not AVAILABLE\n"
            wait_until("health to report the loading version", lambda: http_get(base + HEALTH_PATH)[1] == loading)
            assert http_get(base + HEALTH_PATH) == (503, loading)

            tfs.set_state(MODEL, 1, "AVAILABLE")
            code, body = http_get(base + HEALTH_PATH)
            assert (code, body) == (200, "ok\ndigits: version 1 AVAILABLE\n")

            tfs.stop()
            code, body = http_get(base + HEALTH_PATH)
            assert code == 503
            assert body.startswith(f"unhealthy\ndigits: version 1 not confirmed: TF Serving at {tfs.rest_url} is ")
    finally:
        tfs.stop()


def test_health_is_503_until_a_first_version_is_synced(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    listen = ("127.0.0.1", free_port())
    with TFServingStandIn(grpc=False) as tfs:
        agent = make_agent(
            f"file://{tmp_path / 'store'}", tmp_path / "root", STABLE, tfs=TfsClient(tfs.rest_url), listen=listen
        )
        with agent, serving(agent) as base:
            # The first store poll runs beside the HTTP endpoint: until it has answered, the reason is less precise.
            wait_until("the first poll's reason", lambda: "no manifest at" in http_get(base + HEALTH_PATH)[1])
            code, body = http_get(base + HEALTH_PATH)
            assert code == 503
            assert "digits: no version to serve yet: no manifest at" in body


def test_metrics_after_a_sync(store: str, savedmodels: dict[str, Path], tmp_path: Path) -> None:
    publish(savedmodels["v1"], store, MODEL, label=STABLE)
    total = load_manifest(open_store(store), MODEL)[0].get(1).total_bytes
    listen = ("127.0.0.1", free_port())
    with TFServingStandIn(grpc=False) as tfs:
        agent = make_agent(
            store, tmp_path / "root", STABLE, tfs=TfsClient(tfs.rest_url), listen=listen, poll_seconds=0.1
        )
        started = time.time()
        with agent, serving(agent) as base:
            wait_until("a successful sync", lambda: agent.status.counters()[0] is not None)
            code, text = http_get(base + METRICS_PATH)
    assert code == 200
    m = metrics(text)
    assert m['modelfleet_agent_up{role="stable"}'] == 1
    assert started <= m["modelfleet_agent_last_sync_success_timestamp_seconds"] <= time.time()
    assert m['modelfleet_agent_desired_version{model="digits"}'] == 1
    assert m['modelfleet_agent_current_version{model="digits"}'] == 1
    assert m['modelfleet_agent_sync_failures_total{model="digits"}'] == 0
    assert m['modelfleet_agent_refused_versions_total{model="digits"}'] == 0
    assert m["modelfleet_agent_bytes_fetched_total"] == total
    assert "# TYPE modelfleet_agent_sync_failures_total counter" in text


def test_label_moves_end_to_end_with_tf_serving_polling_the_config(
    store: str, savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    """TF Serving re-reads the file every 50 ms, as --model_config_file_poll_wait_seconds does: it must accept every
    config the agent writes, through a promote and a rollback."""
    publish(savedmodels["v1"], store, MODEL, label=STABLE)
    listen = ("127.0.0.1", free_port())
    root = tmp_path / "root"
    with TFServingStandIn(grpc=False) as tfs:
        agent = make_agent(store, root, STABLE, tfs=TfsClient(tfs.rest_url), listen=listen, poll_seconds=0.05)
        with agent, serving(agent) as base:
            wait_until("the first config", lambda: agent.config_path.exists())
            tfs.watch_config(agent.config_path, poll_seconds=0.05)
            wait_until("v1 labeled stable", lambda: tfs.labels(MODEL) == {STABLE: 1})
            assert http_get(base + HEALTH_PATH)[0] == 200

            publish(savedmodels["v2"], store, MODEL, label=STABLE)
            wait_until("v2 labeled stable", lambda: tfs.labels(MODEL) == {STABLE: 2})
            wait_until("v1 unloaded", lambda: tfs.versions(MODEL) == {1: "END", 2: "AVAILABLE"})
            assert http_get(base + HEALTH_PATH) == (200, "ok\ndigits: version 2 AVAILABLE\n")

            rollback(store, MODEL)
            wait_until("v1 labeled stable again", lambda: tfs.labels(MODEL) == {STABLE: 1})
            wait_until("v2 unloaded", lambda: tfs.versions(MODEL) == {1: "AVAILABLE", 2: "END"})
            assert http_get(base + HEALTH_PATH) == (200, "ok\ndigits: version 1 AVAILABLE\n")
            assert served(agent.config_path) == {MODEL: ([1], {STABLE: 1})}
        assert tfs.config_errors == []


def test_a_transition_completes_without_waiting_for_the_next_store_poll(
    store: str, savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    """Store polls every 30 s, but once TF Serving reports the version AVAILABLE the labels follow within a second."""
    publish(savedmodels["v1"], store, MODEL, label=STABLE)
    listen = ("127.0.0.1", free_port())
    with TFServingStandIn(grpc=False) as tfs:
        tfs.set_model(MODEL, versions={1: "LOADING"})
        agent = make_agent(
            store, tmp_path / "root", STABLE, tfs=TfsClient(tfs.rest_url), listen=listen, poll_seconds=30
        )
        with agent, serving(agent) as base:
            wait_until("the first config", lambda: agent.config_path.exists())
            assert served(agent.config_path) == {MODEL: ([1], {})}  # no label on a version that is still loading
            tfs.set_state(MODEL, 1, "AVAILABLE")
            wait_until("the label", lambda: served(agent.config_path) == {MODEL: ([1], {STABLE: 1})}, timeout=5)
            assert http_get(base + HEALTH_PATH)[0] == 200


def test_health_stays_200_while_a_label_move_loads_and_if_the_new_version_fails(
    store: str, savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    """Every VM of a fleet moves at once: 503 during a move would empty the load balancer (and trigger autohealing)
    although TF Serving keeps answering with the labeled version until the new one is AVAILABLE. A new version that
    fails to load is the same on every VM: the agent goes back to the last good version, degraded, still 200."""
    publish(savedmodels["v1"], store, MODEL, label=STABLE)
    listen = ("127.0.0.1", free_port())
    with TFServingStandIn(grpc=False) as tfs:
        tfs.set_model(MODEL, versions={1: "AVAILABLE"})
        agent = make_agent(
            store, tmp_path / "root", STABLE, tfs=TfsClient(tfs.rest_url), listen=listen, poll_seconds=0.05
        )
        with agent, serving(agent) as base:
            wait_until("the first config", lambda: agent.config_path.exists())
            wait_until("v1 labeled", lambda: served(agent.config_path) == {MODEL: ([1], {STABLE: 1})})
            publish(savedmodels["v2"], store, MODEL, label=STABLE)
            tfs.set_model(MODEL, versions={1: "AVAILABLE", 2: "LOADING"})
            wait_until("the transition config", lambda: served(agent.config_path) == {MODEL: ([1, 2], {STABLE: 1})})
            wait_until("v2 targeted", lambda: agent.status.models()[0].target == 2)
            expected = (
                "ok\ndigits: version 1 AVAILABLE and serving; version 2 is LOADING, labels move to it once it is "
                "AVAILABLE\n"
            )
            wait_until("health reflects the transition", lambda: http_get(base + HEALTH_PATH) == (200, expected))

            # v2 fails to load. Health is read throughout, every answer 200, until the agent has recorded the failure
            # and gone back to v1, the last good version (what TF Serving answers with), saying it is degraded.
            tfs.set_state(MODEL, 2, "END", error_code="UNKNOWN", error_message="bad graph")
            degraded = (
                "ok\ndigits: version 1 AVAILABLE\ndegraded: digits v2 failed to load (UNKNOWN: bad graph); serving v1\n"
            )
            answers: list[tuple[int, str]] = []

            def settled_degraded() -> bool:
                answers.append(http_get(base + HEALTH_PATH))
                return answers[-1] == (200, degraded)

            wait_until("health says degraded, v1 serving", settled_degraded)
            assert all(code == 200 for code, _ in answers), answers
            st = agent.states[MODEL]
            assert (st.desired, st.target, st.last_good) == (2, 1, 1) and 2 in st.failed
            # The labels never moved to v2, and v2 is not listed again.
            wait_until("the config back to v1 alone", lambda: served(agent.config_path) == {MODEL: ([1], {STABLE: 1})})
            for _ in range(5):  # it stays so over the agent's next ticks (it polls every 50 ms)
                time.sleep(0.1)
                assert http_get(base + HEALTH_PATH) == (200, degraded)
                assert served(agent.config_path) == {MODEL: ([1], {STABLE: 1})}
            tfs.load_config(agent.config_path)  # TF Serving accepts it and keeps v1 serving
            assert tfs.labels(MODEL) == {STABLE: 1} and tfs.versions(MODEL)[1] == "AVAILABLE"

            tfs.set_state(MODEL, 1, "END")  # nothing serves any more: now the VM is unhealthy
            code, body = http_get(base + HEALTH_PATH)
            assert code == 503, body
            assert body.startswith("unhealthy\ndigits: version 1 is END, not AVAILABLE\n"), body


def test_health_read_between_sync_and_config_write_still_sees_the_labels(
    store: str, savedmodels: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tick publishes its status twice: after the store sync and after the config is written. Health read in
    between (the load balancer's check does not wait for ticks) must still see the labeled version serving; it once
    saw no labels there and answered 503 in the middle of every label move."""
    publish(savedmodels["v1"], store, MODEL, label=STABLE)
    with TFServingStandIn(grpc=False) as tfs:
        tfs.set_model(MODEL, versions={1: "AVAILABLE"})
        tfs_client = TfsClient(tfs.rest_url)
        agent = make_agent(store, tmp_path / "root", STABLE, tfs=tfs_client, poll_seconds=30)
        with agent:
            agent.tick()
            agent.tick()
            assert served(agent.config_path) == {MODEL: ([1], {STABLE: 1})}
            publish(savedmodels["v2"], store, MODEL, label=STABLE)
            tfs.set_model(MODEL, versions={1: "AVAILABLE", 2: "LOADING"})
            seen: list[tuple[bool, list[str]]] = []
            reconcile = agent.reconcile

            def health_then_reconcile() -> None:
                seen.append(check_health(agent.status, tfs_client))
                reconcile()

            monkeypatch.setattr(agent, "reconcile", health_then_reconcile)
            agent.tick()
            assert agent.status.models()[0].target == 2  # the sync moved the target: the move is under way
            (healthy, lines), *_ = seen
            assert healthy, lines
            assert lines[0].startswith("digits: version 1 AVAILABLE and serving; version 2 is LOADING")
