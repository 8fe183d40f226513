"""Automated canary analysis (``modelfleet canary``): point ``canary`` at a version, wait for the canary fleet, bake,
compare the canary fleet with the stable fleet, then promote, abort, or call it inconclusive.

The comparison, over the bake window, from the fleets' heartbeats (``model_export.heartbeat``), with
``F = max_error_rate_increase`` the increase of the error rate that matters:

* **Errors**: the one-sided 95 % confidence bounds of ``d = canary error rate - stable error rate`` by Newcombe's
  hybrid score method (his method 10: Wilson intervals of each rate, combined; sound with zero errors, where the
  Wald interval collapses). It is the two-proportion comparison inverted into an interval:
  - lower bound above 0 (the canary is significantly worse) and ``d`` above ``F`` -> **abort**;
  - upper bound at most ``F`` (the canary is not worse by ``F`` or more, at 95 %) -> passes;
  - anything else: the data cannot tell -> **inconclusive**.
* **Minimum sample**: the canary requests with which a canary exactly as good as stable passes with 80 % power, at
  the stable fleet's observed error rate and the observed stable:canary traffic ratio (the non-inferiority sample
  size, computed on the same bound). Fewer canary requests than ``min_requests`` is **inconclusive** whatever they
  show; with fewer than the minimum sample the bounds are too wide to pass, and the outcome is **inconclusive**
  ("too little canary traffic") unless the canary is already clearly worse (abort). Inconclusive leaves the canary
  in place and promotes nothing.
* **Latency**: canary p99 / stable p99 of successful requests (TF Serving records latency for those only), from the
  summed ``request_latency`` buckets, must not exceed ``max_p99_ratio`` (else **abort**).
* **Complete evidence**: a canary instance that restarted TF Serving (its counters started over), or stopped
  reporting, during the bake lost requests the evidence cannot see: the canary is never promoted on such evidence
  (inconclusive), though it can still be aborted on what was seen.

Every outcome is one history entry of the manifest with its evidence (action ``canary-promote``, ``canary-abort`` or
``canary-inconclusive``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from model_export import versions
from model_export.constants import CANARY, STABLE
from model_export.errors import BadInput, ModelfleetError
from model_export.fleet_status import Seen, read_heartbeats
from model_export.heartbeat import TFS_LATENCY_BOUNDS_US, Delta, Sample, delta, quantile, restarted, standard_bounds
from model_export.manifest import Manifest, actor, update_manifest
from model_export.rollout import DEFAULT_TIMEOUT_SECONDS, Progress, check_timeout, wait_for_fleets
from model_export.store import Store, checked_store

DEFAULT_MAX_ERROR_RATE_INCREASE = 0.01  # one percentage point
DEFAULT_MAX_P99_RATIO = 1.5
DEFAULT_MIN_REQUESTS = 200
MAX_BAKE_SECONDS = 7 * 24 * 3600.0
ALPHA = 0.05  # one-sided
POWER = 0.8
BAKE_TICK_SECONDS = 5.0  # how often the bake checks that the canary label still names the version

PROMOTE, ABORT, INCONCLUSIVE = "promote", "abort", "inconclusive"
Evidence = dict[str, float | int | str | None]


@dataclass(frozen=True)
class CanaryOptions:
    bake_seconds: float
    max_error_rate_increase: float = DEFAULT_MAX_ERROR_RATE_INCREASE
    max_p99_ratio: float = DEFAULT_MAX_P99_RATIO
    min_requests: int = DEFAULT_MIN_REQUESTS
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS  # for the canary fleet to converge

    def validate(self) -> None:
        if not 0 < self.bake_seconds <= MAX_BAKE_SECONDS:
            raise BadInput(f"--bake {self.bake_seconds:g} is invalid: more than 0 and at most a week, in seconds")
        if not 0 < self.max_error_rate_increase < 1:
            raise BadInput(
                f"--max-error-rate-increase {self.max_error_rate_increase:g} is invalid: a fraction between 0 and 1"
                " (0.01: one percentage point)"
            )
        if not 1 <= self.max_p99_ratio < math.inf:
            raise BadInput(f"--max-p99-ratio {self.max_p99_ratio:g} is invalid: 1 or more (1.5: 50 % slower)")
        if self.min_requests < 1:
            raise BadInput(f"--min-requests {self.min_requests} is invalid: 1 or more")
        check_timeout(self.timeout_seconds)


# -- statistics ------------------------------------------------------------------------------------------------------


def _z(level: float) -> float:
    return NormalDist().inv_cdf(level)


def wilson(errors: float, n: float, z: float) -> tuple[float, float]:
    """Wilson score interval of a rate (``z``: the normal quantile of each side); counts may be expected values."""
    if n == 0:
        return 0.0, 1.0
    p = errors / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_bounds(
    errors_c: float, n_c: float, errors_s: float, n_s: float, alpha: float = ALPHA
) -> tuple[float, float, float]:
    """``(d, lower, upper)``: the canary's error rate minus stable's, and its one-sided ``1 - alpha`` lower and upper
    bounds by Newcombe's hybrid score method (Newcombe 1998, "Interval estimation for the difference between
    independent proportions", method 10)."""
    z = _z(1 - alpha)
    p_c = errors_c / n_c if n_c else 0.0
    p_s = errors_s / n_s if n_s else 0.0
    l_c, u_c = wilson(errors_c, n_c, z)
    l_s, u_s = wilson(errors_s, n_s, z)
    d = p_c - p_s
    return d, d - math.sqrt((p_c - l_c) ** 2 + (u_s - p_s) ** 2), d + math.sqrt((u_c - p_c) ** 2 + (p_s - l_s) ** 2)


def min_sample(p_stable: float, margin: float, ratio: float, alpha: float = ALPHA, power: float = POWER) -> int:
    """Canary requests with which a canary exactly as good as stable (error rate ``p_stable``), with stable getting
    ``ratio`` times its requests, passes (upper bound of the increase at most ``margin``) with ``power``: the least n
    at which the bound is at most ``margin`` for an observed increase ``z_power`` standard errors above 0 (the
    non-inferiority sample size, computed on the same Newcombe bound the decision uses, which is wider than the
    normal approximation's when errors are rare). Found by bisection."""
    k = max(ratio, 1e-9)
    p = min(max(p_stable, 0.0), 1.0)
    z_b = _z(power)

    def passes(n: float) -> bool:
        sd = math.sqrt(p * (1 - p) / n * (1 + 1 / k))
        p_c = min(1.0, p + z_b * sd)
        return difference_bounds(p_c * n, n, p * k * n, k * n, alpha)[2] <= margin

    low, high = 1.0, 1.0
    while not passes(high):
        low, high = high, high * 2
        if high > 1e12:
            return math.ceil(high)
    while high - low > 1:
        mid = (low + high) / 2
        low, high = (low, mid) if passes(mid) else (mid, high)
    return math.ceil(high)


def judge(canary: Delta, stable: Delta, bounds: tuple[float, ...], options: CanaryOptions) -> tuple[str, str, Evidence]:
    """The decision, its one-line reason, and the evidence."""
    margin = options.max_error_rate_increase
    p_s = stable.error_rate or 0.0
    p_c = canary.error_rate or 0.0
    ratio = stable.total / canary.total if canary.total else 1.0
    needed = max(options.min_requests, min_sample(p_s, margin, ratio))  # the plan: what it takes to pass
    d, lower, upper = difference_bounds(canary.error_count, canary.total, stable.error_count, stable.total)
    p99_c = quantile(0.99, bounds, canary.latency)
    p99_s = quantile(0.99, bounds, stable.latency)
    p99_ratio = p99_c / p99_s if p99_c is not None and p99_s else None
    evidence: Evidence = {
        "canary_requests": canary.total,
        "canary_errors": canary.error_count,
        "canary_error_rate": round(p_c, 6),
        "stable_requests": stable.total,
        "stable_errors": stable.error_count,
        "stable_error_rate": round(p_s, 6),
        "increase": round(d, 6),
        "increase_lower_95": round(lower, 6),
        "increase_upper_95": round(upper, 6),
        "max_error_rate_increase": margin,
        "min_sample": needed,
        "canary_p99_ms": None if p99_c is None else round(p99_c / 1000, 3),
        "stable_p99_ms": None if p99_s is None else round(p99_s / 1000, 3),
        "p99_ratio": None if p99_ratio is None else round(p99_ratio, 3),
    }
    rates = f"error rate {p_c:.2%} vs stable {p_s:.2%} (increase {d:+.2%}, 95 % bounds {lower:+.2%}..{upper:+.2%})"
    if stable.total == 0:
        return INCONCLUSIVE, "the stable fleet served no requests during the bake: nothing to compare with", evidence
    if canary.total < options.min_requests:
        return (
            INCONCLUSIVE,
            f"too little canary traffic: {canary.total} requests, fewer than --min-requests {options.min_requests}",
            evidence,
        )
    if lower > 0 and d > margin:
        return ABORT, f"{rates} > {margin:.2%}, on {canary.total} canary requests", evidence
    if p99_ratio is not None and p99_ratio > options.max_p99_ratio:
        return (
            ABORT,
            f"p99 latency {evidence['canary_p99_ms']} ms vs stable {evidence['stable_p99_ms']} ms "
            f"(x{p99_ratio:.2f} > x{options.max_p99_ratio:g})",
            evidence,
        )
    if upper > margin:
        if canary.total < needed:
            why = f"too little canary traffic: {canary.total} requests, the test needs about {needed} to tell"
            return INCONCLUSIVE, f"{why} a {margin:.2%} error-rate increase ({rates})", evidence
        return INCONCLUSIVE, f"cannot tell whether the increase is under {margin:.2%}: {rates}", evidence
    latency = f"p99 x{p99_ratio:.2f}" if p99_ratio is not None else "p99 not measured"
    return PROMOTE, f"{rates}, {latency}, {canary.total} canary requests", evidence


# -- the bake --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One instance's counters at one heartbeat, and what the reader knows of that heartbeat."""

    seen: Seen
    sample: Sample


Snapshot = dict[tuple[str, str], Point]  # (fleet, instance) -> its latest counters


def _latest(store: Store, model: str, now: float) -> tuple[Snapshot, float]:
    """Every live instance's latest counters of ``model``, and the longest heartbeat interval."""
    out: Snapshot = {}
    longest = 0.0
    for fleet in (STABLE, CANARY):
        for one in read_heartbeats(store, fleet, now).seen:
            report = one.beat.models.get(model)
            if report is None or not one.fresh(now):
                continue
            longest = max(longest, one.beat.interval)
            if report.samples:
                out[(fleet, one.beat.instance)] = Point(one, report.samples[-1])
    return out, longest


def snapshot_after(
    store: Store,
    model: str,
    when: float,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Snapshot:
    """Every live instance's latest counters of ``model``, once each has written a heartbeat the store took at or
    after ``when`` (a heartbeat from before would count requests from before the bake, or miss its last ones): at
    most two heartbeat intervals; an instance that has not by then is taken as it is, and shows as incomplete."""
    deadline: float | None = None
    while True:
        now = clock()
        points, longest = _latest(store, model, now)
        if deadline is None:
            deadline = now + 2 * longest + 1.0
        if all(p.seen.modified >= when for p in points.values()) or now >= deadline:
            return points
        sleep(min(0.25, max(0.0, deadline - now)))


@dataclass
class FleetDelta:
    delta: Delta = field(default_factory=Delta)
    incomplete: list[str] = field(default_factory=list)  # instances whose requests the evidence cannot all see


def fleet_delta(start: Snapshot, end: Snapshot, fleet: str, began: float, ended: float) -> FleetDelta:
    """The fleet's requests between the two snapshots, summed over its instances. Incomplete: an instance that
    stopped reporting, restarted TF Serving (its counters started over), or joined without a start sample although
    it ran before the bake; or whose last heartbeat predates the end."""
    out = FleetDelta()
    keys = {k for k in (*start, *end) if k[0] == fleet}
    for key in sorted(keys):
        instance = key[1]
        before, after = start.get(key), end.get(key)
        if after is None:
            out.incomplete.append(f"{instance} (stopped reporting)")
            continue
        last = after.sample
        if before is None:
            if (last.since or after.seen.beat.started) < began:
                out.incomplete.append(f"{instance} (no sample from the start)")
                continue
            out.delta.add(_comparable(delta(None, last), after))  # started during the bake: all of it is in it
            continue
        first = before.sample
        if restarted(first, last):
            out.incomplete.append(f"{instance} (TF Serving restarted: its earlier requests are not counted)")
        if after.seen.modified < ended:
            out.incomplete.append(f"{instance} (no heartbeat after the bake ended)")
        if last.at > first.at:
            out.delta.add(_comparable(delta(first, last), after))
    return out


def _comparable(d: Delta, point: Point) -> Delta:
    """Latency buckets add up only with the same bounds: another TF Serving build's count, not its latency."""
    if not standard_bounds(point.seen.beat.latency_bounds_us):
        d.latency = []
    return d


@dataclass(frozen=True)
class CanaryResult:
    model: str
    version: int
    decision: str  # promote | abort | inconclusive
    reason: str
    evidence: Mapping[str, float | int | str | None]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "decision": self.decision,
            "reason": self.reason,
            "evidence": dict(self.evidence),
        }


def record(store: Store, model: str, version: int, decision: str, reason: str, evidence: Evidence) -> Manifest:
    """Write the decision: promote (stable = version, canary cleared), abort (canary cleared) or inconclusive (no
    move); each one history entry with the reason and evidence. Only while ``canary`` still names ``version``."""
    by = actor()

    def change(m: Manifest) -> None:
        if m.labels.get(CANARY) != version:
            raise ModelfleetError(
                f"canary of {model!r} moved to {m.labels.get(CANARY)} during the analysis of v{version}; "
                f"decision not recorded: {decision}: {reason}"
            )
        if decision == PROMOTE:
            m.move_label(STABLE, version, "canary-promote", by, reason=reason, evidence=evidence)
            m.move_label(CANARY, None, "canary-promote", by)
        elif decision == ABORT:
            m.move_label(CANARY, None, "canary-abort", by, reason=reason, evidence=evidence)
        else:
            m.record_decision(CANARY, "canary-inconclusive", by, reason, evidence)

    manifest, _ = update_manifest(store, model, change, action=f"canary-{decision}")
    return manifest


def _check_still_canary(store: Store, model: str, version: int) -> None:
    now = versions.get_manifest(store, model).labels.get(CANARY)
    if now != version:
        raise ModelfleetError(f"canary of {model!r} moved to {now} during the bake of v{version}; analysis stopped")


def run_canary(
    store: str | Store,
    model: str,
    version: int,
    options: CanaryOptions,
    *,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> CanaryResult:
    """Point ``canary`` at ``version``, wait for the canary fleet, bake, judge, record. Returns the result (the
    caller maps ``promote`` to exit 0, the others to 1)."""
    options.validate()
    st = checked_store(store)
    manifest = versions.get_manifest(st, model)
    manifest.get(version)
    if manifest.labels.get(STABLE) == version:
        raise BadInput(f"version {version} of {model!r} is already stable: nothing to canary")
    versions.set_label(st, model, CANARY, version)
    waited = wait_for_fleets(st, model, {CANARY: version}, timeout=options.timeout_seconds, progress=progress)
    if not waited.ok:
        reason = f"the canary fleet did not converge on v{version}: {waited.reason}"
        record(st, model, version, ABORT, reason, {"converged": 0})
        return CanaryResult(model, version, ABORT, reason, {"converged": 0})
    began = clock()
    start = snapshot_after(st, model, began, clock=clock, sleep=sleep)
    deadline = began + options.bake_seconds
    while (left := deadline - clock()) > 0:
        if progress is not None:
            progress(f"baking v{version}: {left:.0f} s left")
        sleep(min(left, BAKE_TICK_SECONDS))
        _check_still_canary(st, model, version)
    end = snapshot_after(st, model, deadline, clock=clock, sleep=sleep)
    canary = fleet_delta(start, end, CANARY, began, deadline)
    stable = fleet_delta(start, end, STABLE, began, deadline)
    decision, reason, evidence = judge(canary.delta, stable.delta, TFS_LATENCY_BOUNDS_US, options)
    evidence["bake_seconds"] = options.bake_seconds
    evidence["canary_instances"] = sum(1 for f, _ in end if f == CANARY)
    evidence["stable_instances"] = sum(1 for f, _ in end if f == STABLE)
    evidence["incomplete"] = "; ".join([*canary.incomplete, *stable.incomplete]) or None
    if decision == PROMOTE and canary.incomplete:
        decision = INCONCLUSIVE
        reason = f"incomplete canary evidence ({'; '.join(canary.incomplete)}); otherwise: {reason}"
    record(st, model, version, decision, reason, evidence)
    return CanaryResult(model, version, decision, reason, evidence)
