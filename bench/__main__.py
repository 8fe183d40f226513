"""`make bench`: every benchmark, one after another; each prints its figures and ratios against its anchor."""

from __future__ import annotations

import importlib
import sys
import time

BENCHMARKS = (
    "bench.publish",
    "bench.progress",
    "bench.predict_request",
    "bench.pickup_latency",
    "bench.fleet_switch",
    "bench.fleet_poll",
    "bench.fleet_status",
)


def main() -> None:
    only = sys.argv[1:]
    for name in BENCHMARKS:
        if only and name.removeprefix("bench.") not in only:
            continue
        print(f"== {name} ==", flush=True)
        started = time.monotonic()
        sys.argv = [name]
        importlib.import_module(name).main()
        print(f"== {name}: {time.monotonic() - started:.0f} s ==\n", flush=True)


if __name__ == "__main__":
    main()
