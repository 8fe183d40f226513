"""What the fleets report through the store: per fleet, the live instances, what each serves, whether the fleet has
converged on its label's version, and request rate, error rate and latency over a window (``modelfleet status``).

Reads the model's manifest (the labels) and every heartbeat under ``layout.heartbeat_prefix(fleet)`` for both fleets:
one listing and one GET per instance, in parallel. Nothing is written.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from model_export import layout, versions
from model_export.constants import CANARY, ROLES, STABLE
from model_export.errors import BadInput, ModelfleetError, ObjectNotFound
from model_export.heartbeat import (
    SAMPLES_SECONDS,
    STALE_INTERVALS,
    TFS_LATENCY_BOUNDS_US,
    Delta,
    Heartbeat,
    NewerSchema,
    delta,
    quantile,
    sample_at,
    standard_bounds,
)
from model_export.manifest import check_model_name, load_manifest
from model_export.store import Store, checked_store

DEFAULT_WINDOW_SECONDS = 300.0
READERS = 16  # parallel heartbeat GETs
# A heartbeat not rewritten for this long is a VM that is gone (scaled in, replaced): counted, not read or listed.
GONE_SECONDS = 3600.0
LISTING_GRANULARITY_SECONDS = 1.0  # S3 lists LastModified to the second

# Instance states, as ``status`` shows them (``InstanceStatus.state``).
SERVING = "serving"  # serves the fleet's desired version, AVAILABLE, under the fleet's label
FAILED = "failed"  # TF Serving failed to load the desired version on this instance
STALE = "stale"
STOPPED = "stopped"


def fleet_desired(labels: Mapping[str, int], fleet: str) -> int | None:
    """The version ``fleet`` should serve: the canary fleet serves ``canary``, or ``stable`` when there is none (the
    agents' rule, ``modelfleet.agent.plan.desired_version``, kept in step by a test)."""
    if fleet == CANARY and CANARY in labels:
        return labels[CANARY]
    return labels.get(STABLE)


@dataclass(frozen=True)
class InstanceStatus:
    id: str
    fleet: str
    zone: str | None
    fresh: bool
    state: str
    serving: int | None
    detail: str | None
    age_seconds: float
    agent_version: str | None
    heartbeat: Heartbeat | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "zone": self.zone,
            "serving": self.serving,
            "state": self.state,
            "fresh": self.fresh,
            "detail": self.detail,
            "heartbeat_age_seconds": round(self.age_seconds, 1),
            "agent_version": self.agent_version,
        }


@dataclass(frozen=True)
class Traffic:
    """One fleet's requests over the window, from the heartbeats' counter deltas (successful requests only have a
    latency: TF Serving records none for errors)."""

    seconds: float
    requests: int
    errors: int
    rate: float
    p50_ms: float | None
    p99_ms: float | None
    errors_by_code: Mapping[str, int] = field(default_factory=dict)

    @property
    def error_rate(self) -> float | None:
        return None if self.requests == 0 else self.errors / self.requests

    def to_json(self) -> dict[str, Any]:
        return {
            "window_seconds": round(self.seconds, 1),
            "requests": self.requests,
            "errors": self.errors,
            "errors_by_code": dict(self.errors_by_code),
            "request_rate": round(self.rate, 3),
            "error_rate": self.error_rate,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
        }


@dataclass(frozen=True)
class FleetStatus:
    fleet: str
    desired: int | None
    instances: tuple[InstanceStatus, ...]
    traffic: Traffic | None  # None: no instance has reported two samples yet
    gone: int = 0  # heartbeats not rewritten for GONE_SECONDS: instances that no longer exist (not read)
    unreadable: tuple[str, ...] = ()  # heartbeats that could not be read or parsed (one line each)
    newer: int = 0  # heartbeats of a newer schema among ``unreadable``: instances whose state is unknown here

    @property
    def live(self) -> tuple[InstanceStatus, ...]:
        return tuple(i for i in self.instances if i.fresh)

    @property
    def converged(self) -> bool:
        """Every live instance, and at least one, serves the desired version AVAILABLE (and no heartbeat is of a schema
        this reader cannot judge)."""
        live = self.live
        return self.desired is not None and bool(live) and all(i.state == SERVING for i in live) and not self.newer

    def to_json(self) -> dict[str, Any]:
        return {
            "desired": self.desired,
            "converged": self.converged,
            "instances": [i.to_json() for i in self.instances],
            "live": len(self.live),
            "gone": self.gone,
            "unreadable": list(self.unreadable),
            "traffic": None if self.traffic is None else self.traffic.to_json(),
        }


@dataclass(frozen=True)
class ModelStatus:
    model: str
    labels: Mapping[str, int]
    fleets: Mapping[str, FleetStatus]
    at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "labels": dict(sorted(self.labels.items())),
            "fleets": {name: f.to_json() for name, f in self.fleets.items()},
        }


@dataclass(frozen=True)
class Seen:
    """A heartbeat as the store keeps it: the document, and when the store last took a write of it (server time,
    from the listing: one clock for every instance, whatever the VMs' clocks say)."""

    beat: Heartbeat
    modified: float

    def age(self, now: float) -> float:
        return max(0.0, now - self.modified)

    def stale(self, now: float) -> bool:
        # + LISTING_GRANULARITY_SECONDS: S3 lists modification times to the second
        return self.age(now) > STALE_INTERVALS * self.beat.interval + LISTING_GRANULARITY_SECONDS

    def fresh(self, now: float) -> bool:
        """A live member of its fleet: written recently, and not the last word of an agent that stopped."""
        return not self.beat.stopping and not self.stale(now)


@dataclass
class Heartbeats:
    seen: list[Seen] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # unreadable ones, one line each
    newer: int = 0  # written by a newer agent (another schema): their instances' state is unknown
    gone: int = 0  # not rewritten for GONE_SECONDS: not read at all


def read_heartbeats(store: Store, fleet: str, now: float | None = None) -> Heartbeats:
    """Every heartbeat of ``fleet`` rewritten within ``GONE_SECONDS``: one listing, then one GET each, in parallel.
    An object that cannot be read or parsed is one line in ``problems``, never a failure of the whole read."""
    now = time.time() if now is None else now
    out = Heartbeats()
    listed: list[tuple[str, str, float]] = []
    for obj in store.list(layout.heartbeat_prefix(fleet)):
        instance = layout.heartbeat_instance_of(fleet, obj.key)
        if instance is None:
            continue
        modified = obj.modified.timestamp()
        if now - modified > GONE_SECONDS:
            out.gone += 1
        else:
            listed.append((obj.key, instance, modified))

    def one(item: tuple[str, str, float]) -> Seen | str | None:
        key, instance, modified = item
        where = f"{store.uri}/{key}"
        try:
            return Seen(Heartbeat.loads(store.read(key).data, where, fleet=fleet, instance=instance), modified)
        except ObjectNotFound:
            return None  # deleted between the listing and the read
        except NewerSchema as e:
            out.newer += 1
            return str(e)
        except ValueError as e:
            return str(e)
        except ModelfleetError as e:
            return f"{where}: {e}"

    if not listed:
        return out
    with ThreadPoolExecutor(max_workers=min(READERS, len(listed)), thread_name_prefix="modelfleet-status") as pool:
        for found in pool.map(one, listed):
            if isinstance(found, Seen):
                out.seen.append(found)
            elif isinstance(found, str):
                out.problems.append(found)
    return out


def instance_status(seen: Seen, model: str, desired: int | None, now: float) -> InstanceStatus:
    """One instance's state for ``model``: ``serving`` (the desired version, AVAILABLE, under the fleet's label),
    ``failed``, ``stale``/``stopped``, ``pending`` (it has not seen the desired version yet: whatever it said before
    about that version, a failure included, predates the change), or what it is doing (TF Serving's state of the
    desired version, lower case: ``loading``; ``draining``)."""
    beat = seen.beat
    age = seen.age(now)
    report = beat.models.get(model)
    serving = report.serving if report is not None else None

    def make(state: str, detail: str | None) -> InstanceStatus:
        return InstanceStatus(
            beat.instance, beat.fleet, beat.zone, seen.fresh(now), state, serving, detail, age, beat.agent_version, beat
        )

    if beat.stopping:
        return make(STOPPED, "the agent stopped")
    if seen.stale(now):
        return make(STALE, f"last heartbeat {age:.0f} s ago (every {beat.interval:g} s)")
    if report is None:
        return make("not-following", f"the agent does not follow model {model!r}")
    if desired is not None and serving == desired and report.states.get(desired) == "AVAILABLE":
        return make(SERVING, report.degraded)
    if report.desired != desired:
        return make("pending", f"has not seen v{desired} yet (its manifest says v{report.desired})")
    if desired is not None and desired in report.failed:
        return make(FAILED, f"v{desired}: {report.failed[desired]}")
    if report.draining:
        return make("draining", report.draining)
    if desired is not None and desired in report.states:
        return make(report.states[desired].lower(), report.problem or report.degraded)
    return make("pending", report.problem or report.degraded)


def traffic(seen: Sequence[Seen], model: str, window: float, now: float) -> Traffic | None:
    """Requests of ``model`` on the fresh instances over the last ``window`` seconds (each instance from its sample
    at or before ``now - window``, or its oldest one); ``None`` when no instance has two samples yet. Latency is
    summed only over instances with TF Serving's usual buckets (another build's buckets cannot be added up)."""
    total = Delta()
    span = 0.0
    measured = False
    for one in seen:
        report = one.beat.models.get(model)
        if not one.fresh(now) or report is None or len(report.samples) < 2:
            continue
        last = report.samples[-1]
        base = sample_at(report.samples, last.at - window) or report.samples[0]
        if base is last:
            continue
        d = delta(base, last)
        if not standard_bounds(one.beat.latency_bounds_us):
            d.latency = []
        total.add(d)
        span = max(span, d.seconds)
        measured = True
    if not measured:
        return None
    p50, p99 = (quantile(q, TFS_LATENCY_BOUNDS_US, total.latency) for q in (0.5, 0.99))
    return Traffic(
        span,
        total.total,
        total.error_count,
        total.rate,
        None if p50 is None else p50 / 1000,
        None if p99 is None else p99 / 1000,
        dict(sorted(total.errors.items())),
    )


def fleet_status(
    store: Store, model: str, fleet: str, labels: Mapping[str, int], window: float, now: float | None = None
) -> FleetStatus:
    now = time.time() if now is None else now
    found = read_heartbeats(store, fleet, now)
    desired = fleet_desired(labels, fleet)
    instances = sorted(
        (instance_status(one, model, desired, now) for one in found.seen),
        key=lambda i: (not i.fresh, i.zone or "", i.id),
    )
    return FleetStatus(
        fleet,
        desired,
        tuple(instances),
        traffic(found.seen, model, window, now),
        found.gone,
        tuple(found.problems),
        found.newer,
    )


def check_window(window: float) -> float:
    if not 0 < window <= SAMPLES_SECONDS:
        raise BadInput(f"--window {window:g} is invalid: more than 0 and at most {SAMPLES_SECONDS:g} seconds")
    return window


def model_status(store: str | Store, model: str, *, window: float = DEFAULT_WINDOW_SECONDS) -> ModelStatus:
    """The fleets' view of ``model``: the labels, and per fleet its instances, convergence and traffic."""
    check_model_name(model)
    check_window(window)
    st = checked_store(store)
    manifest, token = load_manifest(st, model)
    if token is None:
        raise versions.unknown_model(st, model)
    now = time.time()
    return ModelStatus(
        model,
        dict(manifest.labels),
        {f: fleet_status(st, model, f, manifest.labels, window, now) for f in ROLES},
        now,
    )
