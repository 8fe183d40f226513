"""Automated canary analysis (``modelfleet canary``): point ``canary`` at a version, wait for the canary fleet, bake,
compare the canary fleet with the stable fleet, then promote, abort, or call it inconclusive.

The comparison, over the bake window, from the fleets' heartbeats (``model_export.heartbeat``):

* **Errors**: a one-sided two-proportion z-test (pooled) of "the canary's error rate is higher than stable's". The
  canary fails when the test rejects at ``alpha`` AND the observed increase exceeds ``max_error_rate_increase``: a
  difference too small to matter never fails it, however many requests made it significant.
* **Minimum sample**: the canary requests needed for that test to detect an increase of exactly
  ``max_error_rate_increase`` over stable's observed rate with ``power``, at the observed stable:canary traffic ratio
  (Fleiss' unequal-allocation formula); at least ``min_requests``. Fewer canary requests by the end of the bake is
  **inconclusive**: the canary stays in place, nothing is promoted.
* **Latency**: canary p99 / stable p99 of successful requests (TF Serving records latency for those only), from the
  summed ``request_latency`` buckets, must not exceed ``max_p99_ratio``.

Every outcome is one history entry of the manifest with its evidence (action ``canary-promote``, ``canary-abort`` or
``canary-inconclusive``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from model_export import versions
from model_export.constants import CANARY, STABLE
from model_export.errors import BadInput, ModelfleetError
from model_export.fleet_status import read_heartbeats
from model_export.heartbeat import TFS_LATENCY_BOUNDS_US, Delta, Heartbeat, Sample, delta, quantile
from model_export.manifest import Manifest, actor, update_manifest
from model_export.rollout import DEFAULT_TIMEOUT_SECONDS, Progress, check_timeout, wait_for_fleets
from model_export.store import Store, checked_store

DEFAULT_MAX_ERROR_RATE_INCREASE = 0.01  # one percentage point
DEFAULT_MAX_P99_RATIO = 1.5
DEFAULT_MIN_REQUESTS = 200
ALPHA = 0.05
POWER = 0.8

PROMOTE, ABORT, INCONCLUSIVE = "promote", "abort", "inconclusive"


class CanaryFailed(ModelfleetError):
    """The canary was aborted or inconclusive (exit 1); the history says why."""


@dataclass(frozen=True)
class CanaryOptions:
    bake_seconds: float
    max_error_rate_increase: float = DEFAULT_MAX_ERROR_RATE_INCREASE
    max_p99_ratio: float = DEFAULT_MAX_P99_RATIO
    min_requests: int = DEFAULT_MIN_REQUESTS
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS  # for the canary fleet to converge

    def validate(self) -> None:
        if not 0 < self.bake_seconds <= 7 * 24 * 3600:
            raise BadInput(f"--bake {self.bake_seconds:g} is invalid: more than 0 and at most a week, in seconds")
        if not 0 < self.max_error_rate_increase < 1:
            raise BadInput(
                f"--max-error-rate-increase {self.max_error_rate_increase:g} is invalid: a fraction between 0 and 1"
                " (0.01: one percentage point)"
            )
        if not self.max_p99_ratio >= 1:
            raise BadInput(f"--max-p99-ratio {self.max_p99_ratio:g} is invalid: 1 or more (1.5: 50 % slower)")
        if self.min_requests < 1:
            raise BadInput(f"--min-requests {self.min_requests} is invalid: 1 or more")
        check_timeout(self.timeout_seconds)


def two_proportion_z(errors_a: int, n_a: int, errors_b: int, n_b: int) -> tuple[float, float]:
    """``(z, one-sided p)`` of "a's rate is higher than b's", pooled; ``(0, 1)`` when there is no variance."""
    if n_a == 0 or n_b == 0:
        return 0.0, 1.0
    pooled = (errors_a + errors_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return 0.0, 1.0
    z = (errors_a / n_a - errors_b / n_b) / se
    return z, 1 - NormalDist().cdf(z)


def min_sample(p_stable: float, increase: float, ratio: float, alpha: float = ALPHA, power: float = POWER) -> int:
    """Canary requests needed to detect a canary error rate of ``p_stable + increase`` with ``power`` by a one-sided
    test at ``alpha``, when stable gets ``ratio`` times the canary's requests (Fleiss, Tytun & Ury 1980)."""
    p1 = min(1.0, p_stable + increase)
    p2 = p_stable
    k = max(ratio, 1e-9)
    p_bar = (p1 + k * p2) / (1 + k)
    z_a, z_b = NormalDist().inv_cdf(1 - alpha), NormalDist().inv_cdf(power)
    root = z_a * math.sqrt(p_bar * (1 - p_bar) * (1 + 1 / k)) + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2) / k)
    return math.ceil((root / increase) ** 2)


Snapshot = dict[tuple[str, str], tuple[Heartbeat, Sample]]  # (fleet, instance) -> its heartbeat and latest sample


def snapshot_after(
    store: Store,
    model: str,
    when: float,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Snapshot:
    """Every instance's latest sample of ``model``, once each live instance has written one taken at or after
    ``when`` (a heartbeat written before it would count requests from before the bake, or miss its last ones): at
    most two heartbeat intervals; an instance that has not by then is left out."""
    deadline: float | None = None
    while True:
        out: Snapshot = {}
        waiting = False
        longest = 0.0
        now = clock()
        for fleet in (STABLE, CANARY):
            beats, _ = read_heartbeats(store, fleet)
            for b in beats:
                report = b.models.get(model)
                if report is None or not report.samples or not b.fresh(now):
                    continue
                longest = max(longest, b.interval)
                if report.samples[-1].at >= when:
                    out[(fleet, b.instance)] = (b, report.samples[-1])
                else:
                    waiting = True
        if deadline is None:
            deadline = now + 2 * longest + 1.0
        if not waiting or now >= deadline:
            return out
        sleep(min(0.25, max(0.0, deadline - now)))


def fleet_delta(start: Snapshot, end: Snapshot, fleet: str, since: float) -> tuple[Delta, list[str]]:
    """The fleet's requests between the two snapshots, summed over its instances; and the instances left out: no
    sample from the start though they were running then (an instance started during the bake counts from zero)."""
    total = Delta()
    skipped: list[str] = []
    for (f, instance), (beat, last) in end.items():
        if f != fleet:
            continue
        before: Sample | None = start[(f, instance)][1] if (f, instance) in start else None
        if before is None and (last.since or beat.started) < since:
            skipped.append(instance)
            continue
        if before is not None and before.at >= last.at:
            continue
        total.add(delta(before, last))
    return total, skipped


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


def judge(
    canary: Delta, stable: Delta, bounds: tuple[float, ...], options: CanaryOptions
) -> tuple[str, str, dict[str, float | int | str | None]]:
    """The decision, its one-line reason, and the evidence."""
    p_s = stable.error_rate or 0.0
    p_c = canary.error_rate or 0.0
    ratio = stable.total / canary.total if canary.total else 0.0
    needed = options.min_requests
    if stable.total:
        needed = max(needed, min_sample(p_s, options.max_error_rate_increase, max(ratio, 1e-9)))
    z, p_value = two_proportion_z(canary.error_count, canary.total, stable.error_count, stable.total)
    p99_c = quantile(0.99, bounds, canary.latency)
    p99_s = quantile(0.99, bounds, stable.latency)
    p99_ratio = p99_c / p99_s if p99_c is not None and p99_s else None
    evidence: dict[str, float | int | str | None] = {
        "canary_requests": canary.total,
        "canary_errors": canary.error_count,
        "canary_error_rate": round(p_c, 6),
        "stable_requests": stable.total,
        "stable_errors": stable.error_count,
        "stable_error_rate": round(p_s, 6),
        "min_sample": needed,
        "z": round(z, 4),
        "p_value": round(p_value, 6),
        "canary_p99_ms": None if p99_c is None else round(p99_c / 1000, 3),
        "stable_p99_ms": None if p99_s is None else round(p99_s / 1000, 3),
        "p99_ratio": None if p99_ratio is None else round(p99_ratio, 3),
    }
    if stable.total == 0:
        return INCONCLUSIVE, "the stable fleet served no requests during the bake: nothing to compare with", evidence
    if canary.total < needed:
        return (
            INCONCLUSIVE,
            f"too little canary traffic: {canary.total} requests, the test needs {needed} to detect a "
            f"{options.max_error_rate_increase:.2%} error-rate increase",
            evidence,
        )
    increase = p_c - p_s
    if p_value < ALPHA and increase > options.max_error_rate_increase:
        return (
            ABORT,
            f"error rate {p_c:.2%} vs stable {p_s:.2%} (+{increase:.2%} > {options.max_error_rate_increase:.2%}, "
            f"p={p_value:.2g}, {canary.total} vs {stable.total} requests)",
            evidence,
        )
    if p99_ratio is not None and p99_ratio > options.max_p99_ratio:
        return (
            ABORT,
            f"p99 latency {evidence['canary_p99_ms']} ms vs stable {evidence['stable_p99_ms']} ms "
            f"(x{p99_ratio:.2f} > x{options.max_p99_ratio:g})",
            evidence,
        )
    return (
        PROMOTE,
        f"error rate {p_c:.2%} vs stable {p_s:.2%} (p={p_value:.2g}), p99 x{p99_ratio or 1:.2f}, "
        f"{canary.total} canary requests",
        evidence,
    )


def record(
    store: Store, model: str, version: int, decision: str, reason: str, evidence: Mapping[str, float | int | str | None]
) -> Manifest:
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
        sleep(min(left, 5.0))
    end = snapshot_after(st, model, deadline, clock=clock, sleep=sleep)
    canary, skipped_c = fleet_delta(start, end, CANARY, began)
    stable, skipped_s = fleet_delta(start, end, STABLE, began)
    bounds = next((b.latency_bounds_us for b, _ in end.values()), TFS_LATENCY_BOUNDS_US)
    decision, reason, evidence = judge(canary, stable, bounds, options)
    evidence["bake_seconds"] = options.bake_seconds
    evidence["instances_without_baseline"] = len(skipped_c) + len(skipped_s)
    record(st, model, version, decision, reason, evidence)
    return CanaryResult(model, version, decision, reason, evidence)
