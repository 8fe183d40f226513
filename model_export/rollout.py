"""Label changes that wait for the fleets (``--wait``) and undo themselves when the fleet cannot serve the new stable
(``--rollback-on-failure``).

A change affects the fleets whose desired version it moved (:func:`affected_fleets`). Waiting reads the heartbeats
every ``poll`` seconds until every live instance of each affected fleet, and at least one, serves its new version
AVAILABLE (``fleet_status.FleetStatus.converged``); an instance that reports the version failed ends the wait at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from model_export.constants import ROLES, STABLE
from model_export.errors import BadInput, ModelfleetError, one_line
from model_export.fleet_status import FAILED, SERVING, FleetStatus, fleet_desired, fleet_status
from model_export.manifest import Manifest, actor, update_manifest
from model_export.store import Store, checked_store

DEFAULT_TIMEOUT_SECONDS = 600.0
POLL_SECONDS = 1.0

Progress = Callable[[str], None]


class RolloutFailed(ModelfleetError):
    """The fleets did not converge on the new version (exit 1)."""


def affected_fleets(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """Per fleet whose desired version the change moved, the new one (a fleet left with none is not waited on)."""
    out: dict[str, int] = {}
    for fleet in ROLES:
        new = fleet_desired(after, fleet)
        if new is not None and new != fleet_desired(before, fleet):
            out[fleet] = new
    return out


MAX_TIMEOUT_SECONDS = 7 * 24 * 3600.0


def check_timeout(timeout: float) -> float:
    if not 0 < timeout <= MAX_TIMEOUT_SECONDS:
        raise BadInput(f"--timeout {timeout:g} is invalid: more than 0 and at most a week, in seconds")
    return timeout


@dataclass(frozen=True)
class WaitOutcome:
    ok: bool
    fleets: Mapping[str, FleetStatus]
    reason: str  # one line: what converged, or which instances did not and why
    failed_instances: int = 0  # instances that reported the version failed (0 on a timeout)


def _lagging(f: FleetStatus) -> str:
    bad = [i for i in f.live if i.state != SERVING]
    unknown = ""
    if f.unreadable:
        newer = f", {f.newer} of a newer agent: upgrade modelfleet here" if f.newer else ""
        unknown = f"; {len(f.unreadable)} heartbeats unreadable{newer}"
    if not f.live:
        return f"{f.fleet} fleet: no live instance reported (heartbeats: {len(f.instances)} stale or stopped{unknown})"
    parts = [f"{i.id} {i.state}" + (f" ({i.detail})" if i.detail else "") for i in bad[:5]]
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    return f"{f.fleet} fleet v{f.desired}: {len(bad)}/{len(f.live)} not serving: {'; '.join(parts)}{more}{unknown}"


def wait_for_fleets(
    store: str | Store,
    model: str,
    targets: Mapping[str, int],
    *,
    required: Collection[str] = ROLES,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    poll: float = POLL_SECONDS,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> WaitOutcome:
    """Wait until every live instance of each fleet in ``targets`` serves its version there, with at least one live
    instance in each ``required`` fleet (the canary fleet following stable may not exist: it is not required)."""
    check_timeout(timeout)
    st = checked_store(store)
    deadline = clock() + timeout
    store_error: str | None = None
    while True:
        fleets: dict[str, FleetStatus] = {}
        try:
            for fleet, version in targets.items():
                # fleet_desired reads the label the fleet follows: both name the target
                fleets[fleet] = fleet_status(st, model, fleet, {fleet: version, STABLE: version}, window=60.0)
        except BadInput:
            raise
        except ModelfleetError as e:  # the store failed this poll: try again until the deadline
            store_error = one_line(str(e))
            if clock() >= deadline:
                return WaitOutcome(False, {}, f"not converged after {timeout:g} s: the store failed: {store_error}")
            time.sleep(min(poll, max(0.0, deadline - clock())))
            continue
        failed = {f.fleet: bad for f in fleets.values() if (bad := [i for i in f.live if i.state == FAILED])}
        if failed:
            parts = []
            count = 0
            for fleet, bad in failed.items():
                f = fleets[fleet]
                count += len(bad)
                first = bad[0].detail or ""
                parts.append(
                    f"{len(bad)}/{len(f.live)} instances of the {fleet} fleet failed to load "
                    f"{first} ({', '.join(i.id for i in bad[:5])})"
                )
            return WaitOutcome(False, fleets, "; ".join(parts), count)
        if all(f.converged or (f.fleet not in required and not f.live and not f.newer) for f in fleets.values()):
            summary = ", ".join(f"{f.fleet} v{f.desired} on {len(f.live)} instances" for f in fleets.values())
            return WaitOutcome(True, fleets, f"serving: {summary}")
        if progress is not None:
            counts = (
                f"{f.fleet} v{f.desired} {sum(i.state == SERVING for i in f.live)}/{len(f.live)}"
                for f in fleets.values()
            )
            progress(f"waiting: {'; '.join(counts)} live instances serve it")
        if clock() >= deadline:
            lagging = "; ".join(
                _lagging(f) for f in fleets.values() if not f.converged and (f.fleet in required or f.live or f.newer)
            )
            if store_error is not None:
                lagging += f" (a store error on the way: {store_error})"
            return WaitOutcome(False, fleets, f"not converged after {timeout:g} s: {lagging}")
        time.sleep(min(poll, max(0.0, deadline - clock())))


def _wait_or_fail(
    store: Store, model: str, before: Mapping[str, int], after: Manifest, timeout: float, progress: Progress | None
) -> WaitOutcome:
    targets = affected_fleets(before, after.labels)
    if not targets:
        return WaitOutcome(True, {}, "no fleet's version changed")
    required = {f for f in targets if f == STABLE or f in after.labels}  # a fleet whose own label moved
    return wait_for_fleets(store, model, targets, required=required, timeout=timeout, progress=progress)


def wait_after(
    store: Store,
    model: str,
    before: Mapping[str, int],
    after: Manifest,
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    rollback_on_failure: bool = False,
    progress: Progress | None = None,
) -> WaitOutcome:
    """Wait for the fleets a label change from ``before`` to ``after`` (the labels before it, and the manifest it
    wrote) affects.

    With ``rollback_on_failure``, when the stable fleet does not converge (an instance failed to load the new stable,
    or the timeout), ``stable`` moves back to the version it had before, in a history entry that says why (action
    ``auto-rollback``); only if ``stable`` still names the version this change set. Raises ``RolloutFailed`` (exit 1)
    when the fleets did not converge, after the rollback if there was one.
    """
    check_timeout(timeout)
    st = store
    outcome = _wait_or_fail(st, model, before, after, timeout, progress)
    if outcome.ok:
        return outcome
    new_stable, old_stable = after.labels.get(STABLE), before.get(STABLE)
    if rollback_on_failure and STABLE in affected_fleets(before, after.labels) and old_stable is not None:
        reason = f"auto-rollback: {outcome.reason}"

        def undo(m: Manifest) -> bool:
            if m.labels.get(STABLE) != new_stable:
                return False  # someone moved stable meanwhile: theirs stands
            m.move_label(STABLE, old_stable, "auto-rollback", actor(), reason=reason)
            return True

        try:
            rolled, done = update_manifest(st, model, undo, action="auto-rollback")
        except ModelfleetError as e:
            raise RolloutFailed(
                f"{outcome.reason}; rolling stable back to v{old_stable} failed ({one_line(str(e))}): stable is still "
                f"v{new_stable}, run `modelfleet rollback`"
            ) from e
        if done:
            raise RolloutFailed(f"{outcome.reason}; rolled stable back to v{old_stable}")
        now_stable = rolled.labels.get(STABLE)
        raise RolloutFailed(f"{outcome.reason}; stable moved to v{now_stable} meanwhile, not rolled back")
    raise RolloutFailed(outcome.reason)
