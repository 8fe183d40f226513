"""Commands that read what the fleets report: status, canary."""

from __future__ import annotations

import argparse
import sys

from model_export.canary import (
    DEFAULT_MAX_ERROR_RATE_INCREASE,
    DEFAULT_MAX_P99_RATIO,
    DEFAULT_MIN_REQUESTS,
    PROMOTE,
    CanaryOptions,
    run_canary,
)
from model_export.fleet_status import DEFAULT_WINDOW_SECONDS, FleetStatus, model_status
from model_export.heartbeat import SAMPLES_SECONDS
from model_export.rollout import DEFAULT_TIMEOUT_SECONDS
from modelfleet.cli.common import (
    command,
    emit_json,
    human_bytes,
    int_at_least,
    json_arg,
    positive_seconds,
    progress_line,
    store_args,
    table,
)


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} ms"


def _print_fleet(f: FleetStatus) -> None:
    live = len(f.live)
    verdict = "converged" if f.converged else "NOT converged"
    print(f"{f.fleet} fleet: v{f.desired if f.desired is not None else '-'}, {verdict} ({live} live instances)")
    if not f.instances:
        print("  no instance has reported: no agent of this fleet runs, or none can write to the store")
    else:
        rows = [["  INSTANCE", "ZONE", "SERVING", "STATE", "HEARTBEAT", "CACHE", "DETAIL"]]
        for i in f.instances:
            report = i.heartbeat.models if i.heartbeat is not None else {}
            cache = next((m.cache_bytes for m in report.values() if m.cache_bytes is not None), None)
            rows.append(
                [
                    f"  {i.id}",
                    i.zone or "-",
                    "-" if i.serving is None else f"v{i.serving}",
                    i.state,
                    f"{i.age_seconds:.0f} s ago",
                    "-" if cache is None else human_bytes(cache),
                    (i.detail or "")[:100],
                ]
            )
        print(table(rows))
    t = f.traffic
    if t is None:
        print("  traffic: no counters yet (an instance reports them from its second heartbeat on)")
    else:
        rate = "-" if t.error_rate is None else f"{t.error_rate:.2%}"
        print(
            f"  last {t.seconds:.0f} s: {t.rate:.2f} req/s, {t.requests} requests, errors {rate}, "
            f"p50 {_ms(t.p50_ms)}, p99 {_ms(t.p99_ms)}"
        )
    if f.gone:
        print(f"  {f.gone} heartbeats of instances gone for over an hour not shown")
    if f.newer:
        print(f"  {f.newer} heartbeats written by a newer agent: upgrade modelfleet here to read them")
    for problem in f.unreadable:
        print(f"  unreadable: {problem}")


def cmd_status(args: argparse.Namespace) -> int:
    """Show what the fleets serve: live instances, versions, states, convergence and traffic.

    Per fleet: its live instances, which version each serves and in what state, whether the fleet has converged on
    its label's version, and request rate, error rate and p50/p99 latency over --window.

    Reads the heartbeats the agents write to the store (a heartbeat older than 3 intervals is stale). Exit 0 whether
    or not the fleets have converged; --json for scripts.

    Example:
      modelfleet status --store gs://acme-models/prod --model digits
      modelfleet status --store s3://acme-models/prod --model digits --json --window 60
    """
    status = model_status(args.store, args.model, window=args.window)
    if args.json:
        emit_json(status.to_json())
        return 0
    labels = ", ".join(f"{k}=v{v}" for k, v in sorted(status.labels.items())) or "none"
    print(f"model {status.model}  labels: {labels}")
    for f in status.fleets.values():
        _print_fleet(f)
    return 0


def cmd_canary(args: argparse.Namespace) -> int:
    """Canary a version: point canary at it, wait for the canary fleet, bake, compare with stable, promote or abort.

    Over --bake seconds the canary fleet's error rate is compared with the stable fleet's (one-sided two-proportion
    z-test at 5 %, failing only above --max-error-rate-increase) and its p99 latency (ratio at most --max-p99-ratio).
    Exit 0: promoted. Exit 1: aborted (canary cleared) or inconclusive (too few canary requests for the test's
    minimum sample or --min-requests; the canary stays). The decision and its evidence go into the history.

    Example:
      modelfleet canary --store gs://acme-models/prod --model digits 8 --bake 1800
    """
    options = CanaryOptions(
        bake_seconds=args.bake,
        max_error_rate_increase=args.max_error_rate_increase,
        max_p99_ratio=args.max_p99_ratio,
        min_requests=args.min_requests,
        timeout_seconds=args.timeout,
    )
    show = progress_line(args.json)
    result = run_canary(args.store, args.model, args.version, options, progress=show)
    if show is not None:
        sys.stderr.write("\r\033[K")
    if args.json:
        emit_json(result.to_json())
    else:
        print(f"{result.model} v{result.version}: {result.decision}: {result.reason}")
    return 0 if result.decision == PROMOTE else 1


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1 (0.01: one percentage point)")
    return value


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more (1.5: 50 % slower)")
    return value


def _window(text: str) -> float:
    value = positive_seconds(text)
    if value > SAMPLES_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r} must be at most {SAMPLES_SECONDS:g} (what heartbeats keep)")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = command(sub, "status", cmd_status, cmd_status.__doc__)
    store_args(p)
    p.add_argument(
        "--window",
        type=_window,
        default=DEFAULT_WINDOW_SECONDS,
        metavar="SECONDS",
        help="traffic over the last SECONDS (default: %(default)g)",
    )
    json_arg(p)

    p = command(sub, "canary", cmd_canary, cmd_canary.__doc__)
    store_args(p)
    p.add_argument("version", metavar="VERSION", type=int_at_least(1))
    p.add_argument("--bake", type=positive_seconds, required=True, metavar="SECONDS", help="how long to compare")
    p.add_argument(
        "--max-error-rate-increase",
        type=_fraction,
        default=DEFAULT_MAX_ERROR_RATE_INCREASE,
        metavar="F",
        help="abort when the canary's error rate is significantly higher by more than F (default: %(default)g)",
    )
    p.add_argument(
        "--max-p99-ratio",
        type=_ratio,
        default=DEFAULT_MAX_P99_RATIO,
        metavar="F",
        help="abort when canary p99 / stable p99 exceeds F (default: %(default)g)",
    )
    p.add_argument(
        "--min-requests",
        type=int_at_least(1),
        default=DEFAULT_MIN_REQUESTS,
        metavar="N",
        help="fewer canary requests is inconclusive (default: %(default)s; the test may need more)",
    )
    p.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help="for the canary fleet to serve the version (default: %(default)g)",
    )
    json_arg(p)
