"""The rules of `status`, `--wait` and `canary` on hand-made heartbeats in a file store: staleness by the store's
clock, what counts as failed, unreadable and newer heartbeats, store errors during a wait, incomplete canary
evidence. Each is a failure an adversarial review reproduced (the agents are exercised in
tests/modelfleet/test_fleet_status.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from model_export import layout
from model_export.canary import (
    CanaryOptions,
    Point,
    fleet_delta,
    run_canary,
)
from model_export.constants import CANARY, STABLE
from model_export.errors import BadInput, ModelfleetError, StoreError
from model_export.fleet_status import Seen, model_status
from model_export.heartbeat import TFS_LATENCY_BOUNDS_US, Heartbeat, ModelReport, Sample
from model_export.publish import publish
from model_export.rollout import wait_for_fleets
from model_export.store import Store, open_store
from model_export.store.base import DelegatingStore
from model_export.versions import get_manifest, set_label

MODEL = "digits"
BUCKETS = len(TFS_LATENCY_BOUNDS_US) + 1


@pytest.fixture
def store(tmp_path: Path, savedmodels: dict[str, Path]) -> str:
    (tmp_path / "store").mkdir()
    uri = f"file://{tmp_path / 'store'}"
    publish(savedmodels["v1"], uri, MODEL, label=STABLE)
    publish(savedmodels["v2"], uri, MODEL)
    return uri


def put_beat(
    uri: str,
    fleet: str,
    instance: str,
    *,
    desired: int = 1,
    serving: int | None = 1,
    failed: dict[int, str] | None = None,
    at: float | None = None,
    modified: float | None = None,
    samples: tuple[Sample, ...] = (),
    bounds: tuple[float, ...] = TFS_LATENCY_BOUNDS_US,
    interval: float = 30.0,
) -> None:
    now = time.time()
    states = {serving: "AVAILABLE"} if serving is not None else {}
    beat = Heartbeat(
        instance, fleet, now - 100, now if at is None else at, interval, "z-1", "test",
        latency_bounds_us=bounds,
        models={MODEL: ModelReport(desired, desired, serving, states, failed or {}, samples=samples)},
    )  # fmt: skip
    key = layout.heartbeat_key(fleet, instance)
    open_store(uri).write(key, beat.dumps())
    if modified is not None:
        os.utime(Path(uri.removeprefix("file://")) / key, (modified, modified))


def test_staleness_is_judged_by_the_stores_clock_not_the_vms(store: str) -> None:
    now = time.time()
    put_beat(store, STABLE, "behind", at=now - 120)  # a VM clock 2 minutes slow, written just now
    put_beat(store, STABLE, "ahead", at=now + 600, modified=now - 200)  # a dead VM whose clock ran 10 minutes fast
    fleet = model_status(store, MODEL).fleets[STABLE]
    state = {i.id: (i.fresh, i.state, round(i.age_seconds)) for i in fleet.instances}
    assert state["behind"][:2] == (True, "serving")
    assert state["ahead"][:2] == (False, "stale") and state["ahead"][2] >= 199  # never a negative age
    assert json.dumps(model_status(store, MODEL).to_json(), allow_nan=False)


def test_a_failure_from_before_the_change_is_not_the_new_versions(store: str) -> None:
    """v2 failed earlier, stable went back to v1; setting stable to v2 again must not read that old failure: the
    agent tries v2 again when its desired version moves back to it."""
    put_beat(store, STABLE, "vm-1", desired=1, serving=1, failed={2: "INTERNAL: earlier"})
    out = wait_for_fleets(store, MODEL, {STABLE: 2}, timeout=1.0, poll=0.2)
    assert not out.ok and out.failed_instances == 0
    assert "vm-1 pending (has not seen v2 yet" in out.reason
    # once the agent has seen v2 and failed on it, the failure is its
    put_beat(store, STABLE, "vm-1", desired=2, serving=1, failed={2: "INTERNAL: bad graph"})
    out = wait_for_fleets(store, MODEL, {STABLE: 2}, timeout=5.0, poll=0.2)
    assert out.failed_instances == 1 and "failed to load v2: INTERNAL: bad graph (vm-1)" in out.reason


def test_unreadable_and_newer_heartbeats_are_reported_and_never_pass_for_an_empty_fleet(store: str) -> None:
    st = open_store(store)
    put_beat(store, STABLE, "ok")
    st.write(layout.heartbeat_key(STABLE, "garbage"), b"{not json")
    doc = json.loads(Heartbeat("new", CANARY, 0, time.time(), 30.0).dumps())
    st.write(layout.heartbeat_key(CANARY, "new"), json.dumps({**doc, "schema": 2}).encode())
    # a body that names another instance than its key: not trusted
    other = json.loads(Heartbeat("ok", STABLE, 0, time.time(), 30.0).dumps())
    st.write(layout.heartbeat_key(STABLE, "impostor"), json.dumps(other).encode())
    status = model_status(store, MODEL)
    stable, canary = status.fleets[STABLE], status.fleets[CANARY]
    assert [i.id for i in stable.instances] == ["ok"]
    assert len(stable.unreadable) == 2 and any("not its key's" in p for p in stable.unreadable)
    assert canary.newer == 1 and not canary.converged
    # the canary fleet follows stable (no canary label): a newer agent there is not "no fleet", it is unknown
    out = wait_for_fleets(store, MODEL, {STABLE: 1, CANARY: 1}, required={STABLE}, timeout=0.5, poll=0.2)
    assert not out.ok and "newer agent: upgrade modelfleet here" in out.reason


def test_bad_latency_buckets_are_refused_and_other_bounds_are_not_summed(store: str) -> None:
    st = open_store(store)
    bad = json.loads(Heartbeat("vm-9", STABLE, 0, time.time(), 30.0).dumps())
    bad["models"] = {MODEL: {"samples": [{"at": 1.0, "latency": [1] * (BUCKETS + 3)}]}}
    st.write(layout.heartbeat_key(STABLE, "vm-9"), json.dumps(bad).encode())
    now = time.time()

    def two(at: float, ok: int, bucket: int, n_buckets: int) -> tuple[Sample, Sample]:
        lat = [0] * n_buckets
        lat2 = list(lat)
        lat2[bucket] = ok
        return Sample(at - 60, 1.0, 0, {}, tuple(lat)), Sample(at, 1.0, ok, {}, tuple(lat2))

    put_beat(store, STABLE, "std", samples=two(now, 100, 20, BUCKETS))  # ~ 2 ms
    odd = (1.0, 2.0, 3.0)
    put_beat(store, STABLE, "odd", samples=two(now, 100, 1, 4), bounds=odd)
    fleet = model_status(store, MODEL, window=60).fleets[STABLE]  # no IndexError
    assert any("latency buckets" in p for p in fleet.unreadable)
    assert fleet.traffic is not None and fleet.traffic.requests == 200  # both count
    low, high = TFS_LATENCY_BOUNDS_US[19] / 1000, TFS_LATENCY_BOUNDS_US[20] / 1000
    assert fleet.traffic.p99_ms is not None and low <= fleet.traffic.p99_ms <= high  # only "std"'s latency


class FailingLists(DelegatingStore):
    def __init__(self, inner: Store, failures: int) -> None:
        super().__init__(inner)
        self.failures = failures

    def list(self, prefix: str):  # type: ignore[no-untyped-def]
        if prefix.startswith("_fleet/") and self.failures > 0:
            self.failures -= 1
            raise StoreError(f"{self.uri}/{prefix}: 503 Slow Down")
        return self.inner.list(prefix)


def test_a_store_error_during_the_wait_is_retried_until_the_deadline(store: str) -> None:
    put_beat(store, STABLE, "vm-1")
    out = wait_for_fleets(FailingLists(open_store(store), 2), MODEL, {STABLE: 1}, timeout=10.0, poll=0.1)
    assert out.ok
    out = wait_for_fleets(FailingLists(open_store(store), 10**6), MODEL, {STABLE: 1}, timeout=0.5, poll=0.1)
    assert not out.ok and "the store failed: " in out.reason and "503 Slow Down" in out.reason


def seen(instance: str, sample: Sample, modified: float, started: float = 0.0) -> Point:
    return Point(Seen(Heartbeat(instance, CANARY, started, sample.at, 30.0), modified), sample)


def test_canary_evidence_with_a_vanished_or_restarted_instance_is_incomplete() -> None:
    began, ended = 1000.0, 1600.0
    s0 = Sample(1001.0, since=1.0, ok=100, errors={"INTERNAL": 60})
    start = {(CANARY, "a"): seen("a", s0, 1001.0), (CANARY, "b"): seen("b", s0, 1001.0)}
    # "a" restarted TF Serving mid-bake (its counters started over: its first 560 s are lost); "b" vanished
    end = {(CANARY, "a"): seen("a", Sample(1601.0, since=1500.0, ok=40, errors={}), 1601.0)}
    out = fleet_delta(start, end, CANARY, began, ended)
    assert out.delta.total == 40
    assert any("a (TF Serving restarted" in x for x in out.incomplete)
    assert any("b (stopped reporting)" in x for x in out.incomplete)
    # an instance that joined during the bake counts from zero and is complete
    late = {(CANARY, "c"): seen("c", Sample(1601.0, since=1200.0, ok=50), 1601.0, started=1190.0)}
    out = fleet_delta({}, late, CANARY, began, ended)
    assert out.delta.total == 50 and not out.incomplete


def canary_fleet(store: str, version: int, **kw: object) -> None:
    put_beat(store, CANARY, "c0", desired=version, serving=version, **kw)  # type: ignore[arg-type]


def test_canary_refuses_the_stable_version_and_stops_when_the_label_moves_mid_bake(store: str) -> None:
    with pytest.raises(BadInput, match="already stable"):
        run_canary(store, MODEL, 1, CanaryOptions(bake_seconds=60))
    canary_fleet(store, 2)
    put_beat(store, STABLE, "s0")

    def sleep(seconds: float) -> None:
        set_label(store, MODEL, CANARY, 1)  # someone else moves the canary during the bake
        time.sleep(min(seconds, 0.01))

    with pytest.raises(ModelfleetError, match="canary of 'digits' moved to 1 during the bake of v2"):
        run_canary(store, MODEL, 2, CanaryOptions(bake_seconds=60, timeout_seconds=5), sleep=sleep)
    assert get_manifest(store, MODEL).labels == {STABLE: 1, CANARY: 1}
