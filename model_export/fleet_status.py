"""What the fleets report through the store: per fleet, the live instances, what each serves, whether the fleet has
converged on its label's version, and request rate, error rate and latency over a window (``modelfleet status``).

Reads the model's manifest (the labels) and every heartbeat under ``layout.heartbeat_prefix(fleet)`` for both fleets:
one listing and one GET per instance, in parallel. Nothing is written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from model_export import layout
from model_export.constants import CANARY, ROLES, STABLE
from model_export.errors import BadInput, ModelfleetError, ObjectNotFound, UnknownModel
from model_export.heartbeat import (
    SAMPLES_SECONDS,
    TFS_LATENCY_BOUNDS_US,
    Delta,
    Heartbeat,
    delta,
    quantile,
    sample_at,
)
from model_export.manifest import Manifest, check_model_name, load_manifest
from model_export.store import Store, checked_store

DEFAULT_WINDOW_SECONDS = 300.0
READERS = 16  # parallel heartbeat GETs
# A heartbeat stale for longer than this is a VM that is gone (scaled in, replaced): counted, not listed.
GONE_SECONDS = 3600.0

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
    traffic: Traffic
    gone: int = 0  # heartbeats stale for over GONE_SECONDS: instances that no longer exist
    unreadable: tuple[str, ...] = ()  # heartbeats that could not be read or parsed (one line each)

    @property
    def live(self) -> tuple[InstanceStatus, ...]:
        return tuple(i for i in self.instances if i.fresh)

    @property
    def converged(self) -> bool:
        """Every live instance, and at least one, serves the desired version AVAILABLE."""
        live = self.live
        return self.desired is not None and bool(live) and all(i.state == SERVING for i in live)

    def to_json(self) -> dict[str, Any]:
        return {
            "desired": self.desired,
            "converged": self.converged,
            "instances": [i.to_json() for i in self.instances],
            "live": len(self.live),
            "gone": self.gone,
            "unreadable": list(self.unreadable),
            "traffic": self.traffic.to_json(),
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


def read_heartbeats(store: Store, fleet: str) -> tuple[list[Heartbeat], list[str]]:
    """Every heartbeat of ``fleet`` (``(heartbeats, problems)``: an object that cannot be read or parsed is one line
    in ``problems``, never a failure of the whole read)."""
    keys = [
        obj.key
        for obj in store.list(layout.heartbeat_prefix(fleet))
        if layout.heartbeat_instance_of(fleet, obj.key) is not None
    ]

    def one(key: str) -> Heartbeat | str | None:
        where = f"{store.uri}/{key}"
        try:
            return Heartbeat.loads(store.read(key).data, where)
        except ObjectNotFound:
            return None  # deleted between the listing and the read
        except ValueError as e:
            return str(e)
        except ModelfleetError as e:
            return f"{where}: {e}"

    beats: list[Heartbeat] = []
    problems: list[str] = []
    if not keys:
        return beats, problems
    with ThreadPoolExecutor(max_workers=min(READERS, len(keys)), thread_name_prefix="modelfleet-status") as pool:
        for found in pool.map(one, keys):
            if isinstance(found, Heartbeat):
                beats.append(found)
            elif isinstance(found, str):
                problems.append(found)
    return beats, problems


def instance_status(beat: Heartbeat, model: str, desired: int | None, now: float) -> InstanceStatus:
    """One instance's state for ``model``: ``serving`` (the desired version, AVAILABLE, under the fleet's label),
    ``failed``, ``stale``/``stopped``, or what it is doing (TF Serving's state of the desired version, lower case:
    ``loading``; ``draining``; ``pending`` before it has picked the version up)."""
    age = now - beat.at
    report = beat.models.get(model)
    serving = report.serving if report is not None else None

    def make(state: str, detail: str | None) -> InstanceStatus:
        return InstanceStatus(
            beat.instance, beat.fleet, beat.zone, beat.fresh(now), state, serving, detail, age, beat.agent_version, beat
        )

    if beat.stopping:
        return make(STOPPED, "the agent stopped")
    if beat.stale(now):
        return make(STALE, f"last heartbeat {age:.0f} s ago (every {beat.interval:g} s)")
    if report is None:
        return make("not-following", f"the agent does not follow model {model!r}")
    if desired is not None and desired in report.failed:
        return make(FAILED, f"v{desired}: {report.failed[desired]}")
    if desired is not None and serving == desired and report.states.get(desired) == "AVAILABLE":
        return make(SERVING, report.degraded)
    if report.draining:
        return make("draining", report.draining)
    if desired is not None and desired in report.states:
        return make(report.states[desired].lower(), report.problem or report.degraded)
    if report.desired != desired:
        return make("pending", f"has not seen v{desired} yet (its manifest says {report.desired})")
    return make("pending", report.problem or report.degraded)


def traffic(beats: Sequence[Heartbeat], model: str, window: float, now: float) -> Traffic:
    """Requests of ``model`` on the fresh instances over the last ``window`` seconds (each instance from its sample
    at or before ``now - window``, or its oldest one)."""
    total = Delta()
    bounds: Sequence[float] = TFS_LATENCY_BOUNDS_US
    span = 0.0
    for beat in beats:
        report = beat.models.get(model)
        if not beat.fresh(now) or report is None or not report.samples:
            continue
        last = report.samples[-1]
        base = sample_at(report.samples, last.at - window) or report.samples[0]
        if base is last:
            continue  # one sample: nothing to subtract from yet
        d = delta(base, last)
        total.add(d)
        span = max(span, d.seconds)
        bounds = beat.latency_bounds_us
    p50, p99 = (quantile(q, bounds, total.latency) for q in (0.5, 0.99))
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
    beats, problems = read_heartbeats(store, fleet)
    now = time.time() if now is None else now
    desired = fleet_desired(labels, fleet)
    shown = [b for b in beats if now - b.at <= GONE_SECONDS]
    instances = sorted(
        (instance_status(b, model, desired, now) for b in shown), key=lambda i: (not i.fresh, i.zone or "", i.id)
    )
    return FleetStatus(
        fleet, desired, tuple(instances), traffic(shown, model, window, now), len(beats) - len(shown), tuple(problems)
    )


def check_window(window: float) -> float:
    if not 0 < window <= SAMPLES_SECONDS:
        raise BadInput(f"--window {window:g} is invalid: more than 0 and at most {SAMPLES_SECONDS:g} seconds")
    return window


def model_status(
    store: str | Store,
    model: str,
    *,
    window: float = DEFAULT_WINDOW_SECONDS,
    fleets: Sequence[str] = ROLES,
    manifest: Manifest | None = None,
    clock: Callable[[], float] = time.time,
) -> ModelStatus:
    """The fleets' view of ``model``: the labels, and per fleet its instances, convergence and traffic."""
    check_model_name(model)
    check_window(window)
    st = checked_store(store)
    if manifest is None:
        manifest, token = load_manifest(st, model)
        if token is None:
            raise UnknownModel(f"no model {model!r} in {st.uri} (nothing published under that name)")
    now = clock()
    return ModelStatus(
        model,
        dict(manifest.labels),
        {f: fleet_status(st, model, f, manifest.labels, window, now) for f in fleets},
        now,
    )
