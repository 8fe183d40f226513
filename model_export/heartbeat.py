"""The heartbeat a fleet VM's agent writes to ``layout.heartbeat_key(fleet, instance)``, and the counter arithmetic
that readers (``status``, ``--wait``, ``canary``) do on it.

One JSON object per instance, overwritten at every heartbeat (docs/manifest.md "Fleet status")::

    {"schema": 1, "instance": "mf-stable-x1z2", "zone": "europe-west1-b", "fleet": "stable", "agent_version": "0.9.0",
     "started": 1796000000.0, "at": 1796000030.0, "interval": 30.0,
     "latency_bounds_us": [10.0, 18.0, ...],            # TF Serving's request_latency buckets; +Inf implied
     "models": {"digits": {
         "desired": 7, "target": 7, "serving": 7,        # serving: the version the fleet's label names, AVAILABLE
         "states": {"7": "AVAILABLE"}, "failed": {"8": "INVALID_ARGUMENT: ..."},
         "degraded": null, "draining": null, "problem": null, "cache_bytes": 123456,
         "samples": [{"at": ..., "since": ..., "ok": 120, "errors": {"INTERNAL": 3}, "latency": [0, 4, ...]}, ...]}}}

``samples``: the model's request counters at the last heartbeats (oldest first, the last is now), so a reader gets
rates over a window from one read. ``ok`` counts inference requests that succeeded (the count of TF Serving's
``request_latency`` for Predict/Classify/Regress/MultiInference: TF Serving records latency for successful requests
only); ``errors`` the non-OK ``request_count`` by status code; ``latency`` the per-bucket counts (not cumulative) of
``request_latency``, microseconds. Counters restart with TF Serving: ``since`` is when the agent first saw the
running TF Serving, and a reader that sees it change (or a counter go down) starts over from zero.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model_export.constants import ROLES

SCHEMA = 1
DEFAULT_INTERVAL_SECONDS = 30.0
# A heartbeat older than this many intervals is stale: its instance is gone, hung or cut off from the store.
STALE_INTERVALS = 3
# How far back the samples reach (the agent keeps this much, at heartbeat spacing): the longest ``status --window``.
SAMPLES_SECONDS = 900.0
MAX_SAMPLES = 64
# TF Serving's request_latency buckets (servables/tensorflow/util.cc: Buckets::Exponential(10, 1.8, 33), in
# microseconds); the agent reports the bounds it scraped, this is what readers assume when a heartbeat has none.
TFS_LATENCY_BOUNDS_US: tuple[float, ...] = tuple(10.0 * 1.8**i for i in range(33))


def standard_bounds(bounds: Sequence[float]) -> bool:
    """``bounds`` are TF Serving's usual latency buckets, as its exporter prints them (6 significant digits)."""
    return len(bounds) == len(TFS_LATENCY_BOUNDS_US) and all(
        math.isclose(a, b, rel_tol=1e-5) for a, b in zip(bounds, TFS_LATENCY_BOUNDS_US, strict=True)
    )


class _Wire(BaseModel):
    # allow_inf_nan=False: an "at" of Infinity would be fresh forever and print as invalid JSON.
    model_config = ConfigDict(strict=True, extra="ignore", defer_build=True, allow_inf_nan=False)


_Count = Annotated[int, Field(ge=0)]
_Version = Annotated[int, Field(ge=1)]


class WireSample(_Wire):
    at: float
    since: float | None = None
    ok: _Count = 0
    errors: dict[str, _Count] = Field(default_factory=dict)
    latency: list[_Count] = Field(default_factory=list)


class WireModel(_Wire):
    desired: _Version | None = None
    target: _Version | None = None
    serving: _Version | None = None
    states: dict[str, str] = Field(default_factory=dict)
    failed: dict[str, str] = Field(default_factory=dict)
    degraded: str | None = None
    draining: str | None = None
    problem: str | None = None
    cache_bytes: _Count | None = None
    samples: list[WireSample] = Field(default_factory=list)


class WireHeartbeat(_Wire):
    schema_: int = Field(alias="schema")
    instance: str
    zone: str | None = None
    fleet: str
    agent_version: str | None = None
    started: float
    at: float
    interval: Annotated[float, Field(gt=0)]
    stopping: bool = False
    latency_bounds_us: list[float] | None = None
    models: dict[str, WireModel] = Field(default_factory=dict)


class NewerSchema(ValueError):
    """A heartbeat of a schema this reader does not know: its instance's state is unknown, not absent."""


@dataclass(frozen=True)
class Sample:
    """A model's request counters at one time on one instance (cumulative since ``since``)."""

    at: float
    since: float | None = None
    ok: int = 0
    errors: Mapping[str, int] = field(default_factory=dict)
    latency: tuple[int, ...] = ()

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "since": self.since, "ok": self.ok, "errors": dict(self.errors), "latency": self.latency}


@dataclass(frozen=True)
class ModelReport:
    desired: int | None = None
    target: int | None = None
    serving: int | None = None
    states: Mapping[int, str] = field(default_factory=dict)
    failed: Mapping[int, str] = field(default_factory=dict)
    degraded: str | None = None
    draining: str | None = None
    problem: str | None = None
    cache_bytes: int | None = None
    samples: tuple[Sample, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "desired": self.desired,
            "target": self.target,
            "serving": self.serving,
            "states": {str(v): s for v, s in sorted(self.states.items())},
            "failed": {str(v): e for v, e in sorted(self.failed.items())},
            "degraded": self.degraded,
            "draining": self.draining,
            "problem": self.problem,
            "cache_bytes": self.cache_bytes,
            "samples": [s.to_json() for s in self.samples],
        }


@dataclass(frozen=True)
class Heartbeat:
    instance: str
    fleet: str
    started: float
    at: float
    interval: float
    zone: str | None = None
    agent_version: str | None = None
    stopping: bool = False  # the agent's last word before it stopped: not serving any more
    latency_bounds_us: tuple[float, ...] = TFS_LATENCY_BOUNDS_US
    models: Mapping[str, ModelReport] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "instance": self.instance,
            "zone": self.zone,
            "fleet": self.fleet,
            "agent_version": self.agent_version,
            "started": self.started,
            "at": self.at,
            "interval": self.interval,
            "stopping": self.stopping,
            "latency_bounds_us": list(self.latency_bounds_us),
            "models": {name: m.to_json() for name, m in sorted(self.models.items())},
        }

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def loads(cls, data: bytes, where: str, *, fleet: str | None = None, instance: str | None = None) -> Heartbeat:
        """Parse a heartbeat read from ``where``; ``ValueError`` with one line naming what is wrong. With ``fleet``
        and ``instance`` (those of its key), the document must name the same: a VM may write anything under
        ``_fleet/``, and a body that claims another key's identity would show one instance twice."""
        try:
            w = WireHeartbeat.model_validate_json(data)
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise ValueError(f"{where}: not a heartbeat ({loc}: {first['msg']})") from None
        if w.schema_ != SCHEMA:
            raise NewerSchema(f"{where}: heartbeat schema {w.schema_} is not {SCHEMA} (a newer agent wrote it)")
        if w.fleet not in ROLES:
            raise ValueError(f"{where}: fleet {w.fleet!r} is not one of {', '.join(ROLES)}")
        if (fleet is not None and w.fleet != fleet) or (instance is not None and w.instance != instance):
            raise ValueError(f"{where}: names instance {w.instance!r} of fleet {w.fleet!r}, not its key's")
        bounds = tuple(w.latency_bounds_us) if w.latency_bounds_us else TFS_LATENCY_BOUNDS_US
        if any(b <= 0 for b in bounds) or any(b2 <= b1 for b1, b2 in itertools.pairwise(bounds)):
            raise ValueError(f"{where}: latency_bounds_us must be positive and increasing")
        for name, m in w.models.items():
            for s in m.samples:
                if s.latency and len(s.latency) != len(bounds) + 1:
                    raise ValueError(
                        f"{where}: models.{name}.samples: {len(s.latency)} latency buckets for {len(bounds)} bounds"
                    )
        try:
            models = {
                name: ModelReport(
                    desired=m.desired,
                    target=m.target,
                    serving=m.serving,
                    states={int(v): s for v, s in m.states.items()},
                    failed={int(v): e for v, e in m.failed.items()},
                    degraded=m.degraded,
                    draining=m.draining,
                    problem=m.problem,
                    cache_bytes=m.cache_bytes,
                    samples=tuple(Sample(s.at, s.since, s.ok, dict(s.errors), tuple(s.latency)) for s in m.samples),
                )
                for name, m in w.models.items()
            }
        except ValueError:
            raise ValueError(f"{where}: a version key is not a number") from None
        if any(v < 1 for m in models.values() for v in (*m.states, *m.failed)):
            raise ValueError(f"{where}: a version key is below 1")
        return cls(
            w.instance, w.fleet, w.started, w.at, w.interval, w.zone, w.agent_version, w.stopping, bounds, models
        )


# -- counter arithmetic ----------------------------------------------------------------------------------------------


@dataclass
class Delta:
    """Requests between two samples (or summed over instances): successes, errors by code, latency bucket counts."""

    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latency: list[int] = field(default_factory=list)
    seconds: float = 0.0  # the span the counts cover (summed over instances: instance-seconds)
    rate: float = 0.0  # requests per second (summed over instances)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def total(self) -> int:
        return self.ok + self.error_count

    @property
    def error_rate(self) -> float | None:
        return None if self.total == 0 else self.error_count / self.total

    def add(self, other: Delta) -> None:
        self.ok += other.ok
        for code, n in other.errors.items():
            self.errors[code] = self.errors.get(code, 0) + n
        if len(self.latency) < len(other.latency):
            self.latency += [0] * (len(other.latency) - len(self.latency))
        for i, n in enumerate(other.latency):
            self.latency[i] += n
        self.seconds += other.seconds
        self.rate += other.rate


def restarted(before: Sample, after: Sample) -> bool:
    """The counters started over between the two samples: TF Serving restarted (``since`` changed, or a counter went
    down: a restart the agent did not see)."""
    return (
        before.since != after.since
        or after.ok < before.ok
        or any(after.errors.get(code, 0) < n for code, n in before.errors.items())
        or (bool(before.latency) and len(after.latency) != len(before.latency))  # () until one request succeeded
        or any(a < b for a, b in zip(after.latency, before.latency, strict=False))
    )


def delta(before: Sample | None, after: Sample) -> Delta:
    """What happened between ``before`` and ``after`` on one instance. Counters restart with TF Serving: when
    ``since`` changed or any counter went down, everything ``after`` counts (all of it happened since the restart);
    ``before`` ``None`` means from zero."""
    if before is None or restarted(before, after):
        base = Sample(after.since if after.since is not None else after.at)
        span = after.at - (after.since if after.since is not None else after.at)
    else:
        base, span = before, after.at - before.at
    errors = {code: n - base.errors.get(code, 0) for code, n in after.errors.items()}
    latency = [a - (base.latency[i] if i < len(base.latency) else 0) for i, a in enumerate(after.latency)]
    d = Delta(after.ok - base.ok, {c: n for c, n in errors.items() if n}, latency, max(0.0, span))
    d.rate = d.total / d.seconds if d.seconds > 0 else 0.0
    return d


def sample_at(samples: Sequence[Sample], when: float) -> Sample | None:
    """The newest sample taken at or before ``when`` (``None`` if every sample is newer)."""
    found = None
    for s in samples:
        if s.at <= when:
            found = s
    return found


def quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float | None:
    """The ``q`` quantile of a histogram (``counts[i]`` observations in ``(bounds[i-1], bounds[i]]``, the last count
    above the last bound), interpolated linearly inside its bucket as Prometheus's ``histogram_quantile`` does;
    ``None`` with no observations, or when ``counts`` does not fit ``bounds``. A quantile in the open last bucket is
    the last bound (nothing finer is known)."""
    total = sum(counts)
    if total == 0 or not bounds or len(counts) != len(bounds) + 1:
        return None
    rank = q * total
    seen = 0.0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i == len(bounds):
                return bounds[-1]
            lower = 0.0 if i == 0 else bounds[i - 1]
            return lower + (bounds[i] - lower) * max(0.0, rank - seen) / n
        seen += n
    return bounds[-1]
