"""The agent against real stores (a directory, moto's S3 server, fake-gcs-server): follow, fetch, verify, refuse."""

from __future__ import annotations

import json
from pathlib import Path

from model_export.constants import CANARY, STABLE
from model_export.layout import manifest_key
from model_export.manifest import load_manifest
from model_export.publish import publish
from model_export.store import open_store
from model_export.versions import clear_label, promote, rollback, set_label
from modelfleet.agent import Agent
from modelfleet.agent.tfs import TfsClient
from tests.support.agent import MODEL, CountingStore, Fleet, assert_verified, leftovers, make_agent, served
from tests.support.tfserving_standin import TFServingStandIn


def targets(agent: Agent) -> dict[str, int | None]:
    """Each model's target: the complete, verified local version the agent drives TF Serving to. With TF Serving not
    running (these tests), the config names only versions TF Serving has loaded on the VM before (none here), so the
    target is where a sync shows. The state file (what a restarted agent resumes) must say the same."""
    in_memory = {name: st.target for name, st in agent.states.items()}
    saved = json.loads(agent.state_path.read_text())["models"]
    assert {name: saved.get(name, {}).get("target") for name in agent.states} == in_memory
    return in_memory


def test_publish_canary_promote_rollback_and_a_corrupted_version(
    store_uri: str, savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    store = CountingStore(open_store(store_uri))
    publish(savedmodels["v1"], store, MODEL, label=STABLE)
    with (
        TFServingStandIn(grpc=False) as stable_tfs,
        TFServingStandIn(grpc=False) as canary_tfs,
        make_agent(store, tmp_path / "stable", STABLE, tfs=TfsClient(stable_tfs.rest_url)) as stable_agent,
        make_agent(store, tmp_path / "canary", CANARY, tfs=TfsClient(canary_tfs.rest_url)) as canary_agent,
    ):
        stable, canary = Fleet(stable_agent, stable_tfs), Fleet(canary_agent, canary_tfs)

        # v1 stable: both fleets serve it, its files verified on disk.
        assert stable.settle() and canary.settle()
        assert served(stable_agent.config_path) == {MODEL: ([1], {STABLE: 1})}
        assert served(canary_agent.config_path) == {MODEL: ([1], {STABLE: 1, CANARY: 1})}
        assert stable_tfs.versions(MODEL) == {1: "AVAILABLE"} and stable_tfs.labels(MODEL) == {STABLE: 1}
        m1 = load_manifest(store, MODEL)[0]
        assert_verified(stable_agent.root / MODEL / "1", m1.get(1))

        # v2 as canary: only the canary fleet moves (the stable fleet neither loads nor downloads it).
        stable_config = stable_agent.config_path.read_bytes()
        publish(savedmodels["v2"], store, MODEL, label=CANARY)
        assert stable.settle() and canary.settle()
        assert stable_agent.config_path.read_bytes() == stable_config
        assert not (stable_agent.root / MODEL / "2").exists()
        assert served(canary_agent.config_path) == {MODEL: ([2], {CANARY: 2})}
        assert canary_tfs.labels(MODEL) == {CANARY: 2}
        assert_verified(canary_agent.root / MODEL / "2", load_manifest(store, MODEL)[0].get(2))

        # promote: the stable fleet moves to v2; the canary fleet, without a canary label, serves stable (v2).
        promote(store, MODEL)
        assert stable.settle() and canary.settle()
        assert served(stable_agent.config_path) == {MODEL: ([2], {STABLE: 2})}
        assert served(canary_agent.config_path) == {MODEL: ([2], {STABLE: 2, CANARY: 2})}
        assert stable_tfs.labels(MODEL) == {STABLE: 2}

        # rollback to v1 with v1 gone from the store: it must come from the local cache, with no download.
        store.delete([f"{MODEL}/1/{rel}" for rel in m1.get(1).files])
        rollback(store, MODEL)
        store.reset()
        fetched = stable_agent.cache.bytes_fetched
        assert stable.settle()
        assert served(stable_agent.config_path) == {MODEL: ([1], {STABLE: 1})}
        assert stable_tfs.labels(MODEL) == {STABLE: 1}
        assert store.calls["download_file"] == 0 and stable_agent.cache.bytes_fetched == fetched
        assert_verified(stable_agent.root / MODEL / "1", m1.get(1))

        # v3 published with one object overwritten by other bytes of the same size: refused, v1 kept.
        v3 = publish(savedmodels["v2"], store, MODEL).version
        entry = load_manifest(store, MODEL)[0].get(v3)
        victim = max(entry.files, key=lambda rel: entry.files[rel].size)
        key = f"{MODEL}/{v3}/{victim}"
        good = store.read(key).data
        store.write(key, bytes(b ^ 0xFF for b in good))
        config_before = stable_agent.config_path.read_bytes()
        set_label(store, MODEL, STABLE, v3)
        assert not stable.settle()
        assert stable_agent.config_path.read_bytes() == config_before
        assert stable_tfs.versions(MODEL)[1] == "AVAILABLE" and v3 not in stable_tfs.versions(MODEL)
        assert not (stable_agent.root / MODEL / str(v3)).exists()
        assert leftovers(stable_agent.root) == []
        _, _, refused, _ = stable_agent.status.counters()
        assert refused == {MODEL: 1}
        view = stable_agent.status.models()[0]
        assert (view.desired, view.target) == (v3, 1)
        assert view.problem is not None and "checksum mismatch" in view.problem
        # A refused version is not fetched again at every poll.
        store.reset()
        assert not stable_agent.run_once()
        assert store.calls["download_file"] == 0
        assert stable_agent.status.counters()[2] == {MODEL: 1}


def test_one_conditional_get_per_model_per_poll_when_nothing_changed(
    store_uri: str, savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    store = CountingStore(open_store(store_uri))
    publish(savedmodels["v1"], store, "a", label=STABLE)
    publish(savedmodels["v1"], store, "b", label=STABLE)
    with make_agent(store, tmp_path / "root", STABLE, models=("a", "b")) as agent:
        assert agent.run_once()
        store.reset()
        for _ in range(3):
            assert agent.run_once()
        assert store.calls == {"read_if_changed": 6}
        assert store.unchanged == 6  # the store itself answered "not modified"
        assert targets(agent) == {"a": 1, "b": 1}
        assert agent.cache.versions("a") == [1] and agent.cache.versions("b") == [1]


def test_missing_file_refuses_the_version(store_uri: str, savedmodels: dict[str, Path], tmp_path: Path) -> None:
    store = open_store(store_uri)
    publish(savedmodels["v1"], store, MODEL, label=STABLE)
    with make_agent(store, tmp_path / "root", STABLE) as agent:
        assert agent.run_once()
        v2 = publish(savedmodels["v2"], store, MODEL, label=STABLE)
        store.delete([f"{MODEL}/2/variables/variables.index"])
        assert v2.version == 2
        assert not agent.run_once()
        assert targets(agent) == {MODEL: 1}  # refused: the target stays on version 1
        assert agent.states[MODEL].desired == 2
        assert agent.cache.versions(MODEL) == [1] and leftovers(agent.root) == []
        assert agent.status.counters()[2] == {MODEL: 1}


def test_malformed_manifest_keeps_the_last_good_one(
    store_uri: str, savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    store = CountingStore(open_store(store_uri))
    publish(savedmodels["v1"], store, MODEL, label=STABLE)
    with make_agent(store, tmp_path / "root", STABLE) as agent:
        assert agent.run_once()
        config, state = agent.config_path.read_bytes(), agent.state_path.read_bytes()
        good = store.read(manifest_key(MODEL)).data
        for bad in (b"{not json", good.replace(b'"schema_version": 2', b'"schema_version": 99')):
            store.write(manifest_key(MODEL), bad)
            reports = agent.tick()
            assert reports[0].error is not None and not reports[0].transient
            # Nothing moves: not the config, not the target or desired version the state file keeps.
            assert agent.config_path.read_bytes() == config
            assert agent.state_path.read_bytes() == state
            assert agent.status.models()[0].target == 1
            # The same bad bytes are not fetched again: the next poll is one conditional GET answered "unchanged".
            store.reset()
            assert agent.tick()[0].error is None
            assert store.calls == {"read_if_changed": 1} and store.unchanged == 1
        assert agent.status.counters()[1] == {MODEL: 2}
        # Repaired, then a new stable: followed again.
        store.write(manifest_key(MODEL), good)
        publish(savedmodels["v2"], store, MODEL, label=STABLE)
        assert agent.run_once()
        assert targets(agent) == {MODEL: 2}


def test_a_cleared_label_keeps_the_last_version_served(
    store_uri: str, savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    store = open_store(store_uri)
    publish(savedmodels["v1"], store, MODEL, label=STABLE)
    with make_agent(store, tmp_path / "root", STABLE) as agent:
        assert agent.run_once()
        config = agent.config_path.read_bytes()
        clear_label(store, MODEL, STABLE)
        assert not agent.run_once()  # nothing to follow: not "ok", but nothing is taken down either
        assert agent.config_path.read_bytes() == config
        view = agent.status.models()[0]
        assert (view.desired, view.target) == (None, 1)
        assert view.problem == f"{MODEL}: the manifest has no stable label; still serving version 1"
