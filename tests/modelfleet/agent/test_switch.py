"""The version switch (issue 10, "memory-bounded switch"): ``--switch overlap|drain|auto``.

TF Serving loads a new version before it unloads the old one (server.cc hard-codes the availability-preserving
policy), so a VM whose memory holds one version but not two is OOM-killed by a plain switch. ``drain`` takes the VM out
of the load balancer (``/healthz`` 503), drops the model from the config until TF Serving has unloaded it, then loads
the new version, with at most the fleet's drain slots (leases in the store) out at once. The faithful TF Serving
stand-in plays the memory: above ``memory_limit_bytes`` it dies as an OOM kill would. Timings are small.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from model_export import layout
from model_export.constants import HEALTH_PATH, STABLE
from model_export.errors import ObjectNotFound
from model_export.manifest import Manifest
from model_export.publish import publish
from model_export.store import open_store
from modelfleet.agent import Agent
from modelfleet.agent.lease import DrainLeases
from modelfleet.agent.main import MEMORY_FACTOR
from modelfleet.agent.switch_options import SwitchOptions
from modelfleet.agent.tfs import TfsClient
from tests.support.agent import MODEL, http_get, make_agent, served_version, serving, versions_in, wait_until
from tests.support.servers import free_port
from tests.support.tfserving_standin import TFServingStandIn

PAD_BYTES = 1 << 20  # each version carries a 1 MiB asset, so both weigh about the same
WAIT = 20.0
TTL, SKEW = 3.0, 0.5  # drain leases: short, for the tests


def file_store(tmp_path: Path) -> str:
    (tmp_path / "store").mkdir()
    return f"file://{tmp_path / 'store'}"


def padded(savedmodel: Path, dest: Path) -> Path:
    shutil.copytree(savedmodel, dest)
    (dest / "assets").mkdir(exist_ok=True)
    (dest / "assets" / "pad.bin").write_bytes(os.urandom(PAD_BYTES))
    return dest


def sizes(store: str) -> dict[int, int]:
    blob = open_store(store).read(layout.manifest_key(MODEL))
    manifest = Manifest.loads(blob.data, "test")
    return {v: e.total_bytes for v, e in manifest.versions.items()}


def lease_record(store: str, slot: int = 0) -> dict[str, Any] | None:
    try:
        data = open_store(store).read(layout.drain_slot_key(STABLE, slot)).data
    except ObjectNotFound:
        return None
    doc: dict[str, Any] = json.loads(data)
    return doc


def health(base: str) -> tuple[int, str]:
    return http_get(base + HEALTH_PATH)


def agent_for(store: str, root: Path, port: int, listen: int, switch: SwitchOptions, **options: Any) -> Agent:
    options.setdefault("holder", "vm-a")
    return make_agent(
        store,
        root,
        STABLE,
        tfs=TfsClient(f"http://127.0.0.1:{port}", timeout=1.0),
        listen=("127.0.0.1", listen),
        poll_seconds=0.1,
        switch=switch,
        lease_ttl_seconds=TTL,
        lease_skew_seconds=SKEW,
        drain_settle_seconds=0.2,
        **options,
    )


def tf_serving(config: Path, port: int, memory_limit: int | None = None) -> TFServingStandIn:
    return TFServingStandIn(
        faithful=True,
        grpc=False,
        rest_api_port=port,
        model_config_file=config,
        model_config_file_poll_wait_seconds=0.05,
        load_seconds=0.1,
        unload_seconds=0.1,
        max_num_load_retries=0,
        load_retry_interval_micros=1000,
        file_system_poll_wait_seconds=0.1,
        memory_limit_bytes=memory_limit,
    )


@dataclass
class VM:
    agent: Agent
    tfs: TFServingStandIn
    base: str


@contextmanager
def vm(store: str, root: Path, switch: SwitchOptions, memory_limit: int | None = None, **options: Any) -> Iterator[VM]:
    """A new serving VM: the agent's boot sync (an empty config), TF Serving started on it, then the agent's loop."""
    port, listen = free_port(), free_port()
    agent = agent_for(store, root, port, listen, switch, **options)
    with agent:
        agent.run_once()
        tfs = tf_serving(agent.config_path, port, memory_limit)
        tfs.start()
        try:
            with serving(agent) as base:
                yield VM(agent, tfs, base)
        finally:
            tfs.stop()


def serves(machine: VM, version: int) -> bool:
    return served_version(machine.tfs.rest_url) == version and health(machine.base)[0] == 200


class HealthLog:
    """``/healthz`` sampled every 20 ms in a thread: ``[(monotonic time, status, body)]``."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.samples: list[tuple[float, int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> HealthLog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            code, body = health(self.base)
            self.samples.append((time.monotonic(), code, body))


def event_time(tfs: TFServingStandIn, version: int, state: str) -> float:
    return next(e.time for e in tfs.events if e.model == MODEL and e.version == version and e.state == state)


def two_versions(savedmodels: dict[str, Path], tmp_path: Path) -> tuple[str, Path]:
    """A store whose stable v1 is published; returns it and v2's directory (publish it to promote)."""
    store = file_store(tmp_path)
    publish(padded(savedmodels["v1"], tmp_path / "v1"), store, MODEL, label=STABLE)
    return store, padded(savedmodels["v2"], tmp_path / "v2")


def test_drain_switches_within_one_version_of_memory_out_of_the_load_balancer(
    savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    store, v2 = two_versions(savedmodels, tmp_path)
    size = sizes(store)[1]
    limit = int(1.5 * (size + 4096))
    switch = SwitchOptions(mode="drain", drain_wait_seconds=0.5)
    with vm(store, tmp_path / "vm", switch, memory_limit=limit) as machine:
        wait_until("v1 served", lambda: serves(machine, 1), WAIT)
        with HealthLog(machine.base) as samples:
            publish(v2, store, MODEL, label=STABLE)
            wait_until("v2 served", lambda: serves(machine, 2) and machine.agent.drain is None, WAIT)
            time.sleep(0.1)
        tfs = machine.tfs
        assert not tfs.oom and tfs.peak_memory_bytes <= limit, (tfs.peak_memory_bytes, limit)
        # Unload first, then load: never both in memory.
        assert event_time(tfs, 1, "END") < event_time(tfs, 2, "LOADING")
        unloading, available = event_time(tfs, 1, "UNLOADING"), event_time(tfs, 2, "AVAILABLE")
        draining = [t for t, code, body in samples.samples if code == 503 and "draining" in body]
        assert draining and draining[0] < unloading - 0.5  # 503 for the drain wait before anything unloads
        assert all(code == 503 for t, code, _ in samples.samples if draining[0] <= t < available)
        assert any(code == 200 for t, code, _ in samples.samples if t > available)
        record = lease_record(store)
        assert record is not None and record["state"] == "free" and record["holder"] == "vm-a"
        assert "drain" not in json.loads(machine.agent.state_path.read_text())


def test_overlap_under_the_same_memory_is_killed(savedmodels: dict[str, Path], tmp_path: Path) -> None:
    """Why the drain exists: TF Serving loads v2 beside v1, and two versions do not fit."""
    store, v2 = two_versions(savedmodels, tmp_path)
    limit = int(1.5 * (sizes(store)[1] + 4096))
    with vm(store, tmp_path / "vm", SwitchOptions(mode="overlap"), memory_limit=limit) as machine:
        wait_until("v1 served", lambda: serves(machine, 1), WAIT)
        publish(v2, store, MODEL, label=STABLE)
        wait_until("TF Serving OOM-killed", lambda: machine.tfs.oom, WAIT)
        assert machine.tfs.peak_memory_bytes > limit
        assert lease_record(store) is None


@pytest.mark.parametrize("over", [1, 0], ids=["budget-one-byte-short-drains", "budget-just-enough-overlaps"])
def test_auto_drains_exactly_when_both_versions_exceed_the_budget(
    savedmodels: dict[str, Path], tmp_path: Path, over: int
) -> None:
    store, v2 = two_versions(savedmodels, tmp_path)
    v2_bytes = sum(f.stat().st_size for f in v2.rglob("*") if f.is_file())
    need = int((sizes(store)[1] + v2_bytes) * MEMORY_FACTOR)
    switch = SwitchOptions(mode="auto", memory_budget_bytes=need - over, drain_wait_seconds=0.2)
    with vm(store, tmp_path / "vm", switch) as machine:
        wait_until("v1 served", lambda: serves(machine, 1), WAIT)
        publish(v2, store, MODEL, label=STABLE)
        wait_until("v2 served", lambda: serves(machine, 2) and machine.agent.drain is None, WAIT)
        tfs = machine.tfs
        wait_until("v1 unloaded", lambda: tfs.versions(MODEL).get(1) == "END", WAIT)
        drained = event_time(tfs, 1, "END") < event_time(tfs, 2, "LOADING")
        assert drained == bool(over)
        assert (lease_record(store) is not None) == bool(over)
        if not over:  # overlap: v1 served until v2 was AVAILABLE
            assert event_time(tfs, 1, "UNLOADING") > event_time(tfs, 2, "AVAILABLE")


def test_two_agents_of_one_fleet_with_one_drain_slot_never_drain_together(
    savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    store, v2 = two_versions(savedmodels, tmp_path)
    switch = SwitchOptions(mode="drain", drain_wait_seconds=0.5, fleet_size=2, max_draining_percent=50)
    assert switch.drain_slots == 1
    with (
        vm(store, tmp_path / "a", switch, holder="vm-a") as a,
        vm(store, tmp_path / "b", switch, holder="vm-b") as b,
    ):
        wait_until("v1 served on both", lambda: serves(a, 1) and serves(b, 1), WAIT)
        samples: list[tuple[bool, bool, int, int]] = []
        publish(v2, store, MODEL, label=STABLE)
        deadline = time.monotonic() + WAIT
        while not (serves(a, 2) and serves(b, 2) and a.agent.drain is None and b.agent.drain is None):
            assert time.monotonic() < deadline, "both VMs did not reach v2"
            samples.append((a.agent.drain is not None, b.agent.drain is not None, health(a.base)[0], health(b.base)[0]))
            time.sleep(0.02)
        assert not any(da and db for da, db, _, _ in samples)
        assert not any(ca == 503 and cb == 503 for _, _, ca, cb in samples)
        # Each drained in turn while the other waited and kept serving (200).
        assert any(da and cb == 200 for da, _, _, cb in samples)
        assert any(db and ca == 200 for _, db, ca, _ in samples)
        assert not a.tfs.oom and not b.tfs.oom


def test_a_killed_agents_lease_expires_and_the_waiting_agent_proceeds(
    savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    """A VM whose agent died mid-drain holds the fleet's only slot and never renews nor releases it: the other VM
    keeps serving v1 until the lease has expired (its TTL plus the skew margin), then drains and serves v2."""
    store, v2 = two_versions(savedmodels, tmp_path)
    switch = SwitchOptions(mode="drain", drain_wait_seconds=0.2)
    with vm(store, tmp_path / "vm", switch, holder="vm-b") as machine:
        wait_until("v1 served", lambda: serves(machine, 1), WAIT)
        dead = DrainLeases(open_store(store), STABLE, 1, TTL, "vm-dead", skew_seconds=SKEW).acquire()
        assert dead is not None
        taken = time.monotonic()
        publish(v2, store, MODEL, label=STABLE)
        time.sleep(1.5)
        assert machine.agent.drain is None and machine.agent._waiting  # waits for the slot ...
        assert serves(machine, 1)  # ... and keeps serving
        wait_until("v2 served", lambda: serves(machine, 2), WAIT)
        assert time.monotonic() - taken >= TTL + SKEW
        wait_until("lease released", lambda: (lease_record(store) or {}).get("state") == "free")
        assert (lease_record(store) or {}).get("holder") == "vm-b"


def test_an_agent_restarted_mid_drain_resumes_without_loading_the_old_version_again(
    savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    store, v2 = two_versions(savedmodels, tmp_path)
    limit = int(1.5 * (sizes(store)[1] + 4096))
    switch = SwitchOptions(mode="drain", drain_wait_seconds=0.5, fleet_size=4, max_draining_percent=50)
    assert switch.drain_slots == 2
    root = tmp_path / "vm"
    port, listen = free_port(), free_port()
    first = agent_for(store, root, port, listen, switch)
    first.run_once()
    tfs = tf_serving(first.config_path, port, limit)
    tfs.start()
    try:
        with first, serving(first) as base:
            wait_until("v1 served", lambda: served_version(tfs.rest_url) == 1 and health(base)[0] == 200, WAIT)
            publish(v2, store, MODEL, label=STABLE)
            # Stopped once the model is out of the config (v1 unloading or unloaded), before v2 is listed.
            wait_until("the model dropped from the config", lambda: MODEL not in versions_in(first.config_path))
        # The agent is gone (its loop stopped, its lock freed) without releasing its lease.
        stopped = time.monotonic()
        saved = json.loads((root / ".agent-state.json").read_text())
        assert saved["drain"]["out"] is True and saved["drain"]["models"] == {MODEL: {"from": 1, "to": 2}}
        assert (lease_record(store) or {}).get("state") == "held"

        second = agent_for(store, root, port, listen, switch)
        assert second.drain is not None
        with second, serving(second) as base:
            assert health(base)[0] == 503  # still draining: readiness comes back with v2 only
            wait_until("v2 served", lambda: served_version(tfs.rest_url) == 2 and health(base)[0] == 200, WAIT)
            wait_until("drain over", lambda: second.drain is None)
        assert not tfs.oom and tfs.peak_memory_bytes <= limit
        assert not [e for e in tfs.events if e.version == 1 and e.state == "LOADING" and e.time > stopped]
        record = lease_record(store)
        assert record is not None and record["state"] == "free" and record["holder"] == "vm-a"
        assert lease_record(store, 1) is None  # the restarted agent took its own slot back, not a second one
    finally:
        tfs.stop()
