"""Version switch on one fleet of 4 simulated VMs, ``overlap`` vs ``drain`` (issue 10): peak memory per VM as a
multiple of the model's size, and the window in which the fleet serves with fewer than 4 VMs.

Each VM is an in-process ``Agent`` (its own root, ``holder`` and HTTP endpoint) driving its own faithful TF Serving
stand-in (tests/support/tfserving_standin.py, ``TFServingStandIn(faithful=True)``: loads before it unloads as TF
Serving's availability-preserving policy does, and accounts the memory a version holds = its files on disk,
``peak_memory_bytes``). One file store. The model is a real tiny SavedModel plus a random padding asset of
``--size-mib`` MiB, so its size is that of the asset. Per mode, a fresh fleet: publish v1 as stable, wait until every
VM serves it with ``/healthz`` 200, then ``--switches`` times: publish the next version as canary, ``promote`` it (the
clock starts), and wait until every VM answers ``/labels/stable`` with it, ``/healthz`` 200, no drain running.
``/healthz`` of the 4 agents is sampled every 20 ms by one thread for the whole switch.

Drain: ``--fleet-size 4 --max-draining-percent 25`` (one drain slot), ``--drain-wait-seconds`` 0.5, settle 0.2 s,
lease TTL 3 s: the load balancer is assumed to stop sending 0.5 s after a 503 (a real ALB needs interval x threshold,
tens of seconds, which scales the drain window 4 times over: one VM at a time). The stand-in loads in
``--load-seconds`` and unloads in 0.2 s; a real TF Serving's load time adds to the drain window, not to overlap's.

Reported per mode: peak memory per VM / model size (max and mean over the 4 VMs and the switches), the time with
fewer than 4 VMs at ``/healthz`` 200 (per switch, summed), the most VMs out at once, VM-seconds out, and the time
from promote to the whole fleet serving the new version; then drain / overlap.

Run: `.venv/bin/python -m bench.fleet_switch [--size-mib 32] [--switches 2] [--load-seconds 0.5]`.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.pickup_latency import label_answers, make_model
from model_export import layout
from model_export.constants import CANARY, HEALTH_PATH, STABLE
from model_export.manifest import Manifest
from model_export.publish import publish
from model_export.store import open_store
from model_export.versions import promote
from modelfleet.agent import Agent, AgentOptions
from modelfleet.agent.switch_options import SwitchOptions
from modelfleet.agent.tfs import TfsClient
from tests.support.agent import http_get, serving
from tests.support.servers import free_port
from tests.support.tfserving_standin import TFServingStandIn

MODEL = "bench"
VMS = 4
WAIT = 90.0


@dataclass
class VM:
    agent: Agent
    tfs: TFServingStandIn
    base: str


@dataclass
class Switch:
    peaks: list[int]  # per VM, bytes
    window: float  # seconds with fewer than VMS at 200
    most_out: int
    vm_seconds_out: float
    done: float  # promote -> every VM serves the version


@dataclass
class Result:
    mode: str
    model_bytes: int
    switches: list[Switch] = field(default_factory=list)


def healthy(base: str) -> bool:
    try:
        return http_get(base + HEALTH_PATH, timeout=1.0)[0] == 200
    except OSError:
        return False


def wait_for(what: str, check: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.02)


@contextmanager
def machine(store: str, root: Path, name: str, switch: SwitchOptions, load_seconds: float) -> Iterator[VM]:
    """A serving VM as test_switch.py builds one: the agent's boot sync, TF Serving started on its config, then
    the agent's loop and HTTP endpoint."""
    port, listen = free_port(), free_port()
    options = AgentOptions(
        store=store,
        models=(MODEL,),
        root=root,
        role=STABLE,
        poll_seconds=0.2,
        listen=("127.0.0.1", listen),
        switch=switch,
        lease_ttl_seconds=3.0,
        lease_skew_seconds=0.5,
        drain_settle_seconds=0.2,
        holder=name,
    )
    agent = Agent(options, store=open_store(store), tfs=TfsClient(f"http://127.0.0.1:{port}", timeout=1.0))
    with agent:
        agent.run_once()
        tfs = TFServingStandIn(
            faithful=True,
            grpc=False,
            rest_api_port=port,
            model_config_file=agent.config_path,
            model_config_file_poll_wait_seconds=0.05,
            load_seconds=load_seconds,
            unload_seconds=0.2,
            max_num_load_retries=0,
            load_retry_interval_micros=1000,
            file_system_poll_wait_seconds=0.1,
        )
        tfs.start()
        try:
            with serving(agent) as base:
                yield VM(agent, tfs, base)
        finally:
            tfs.stop()


class HealthLog:
    """``/healthz`` of every VM sampled every 20 ms: ``[(monotonic time, [200?, ...])]``."""

    def __init__(self, vms: list[VM]) -> None:
        self.vms = vms
        self.samples: list[tuple[float, list[bool]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="health-log", daemon=True)

    def __enter__(self) -> HealthLog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            self.samples.append((time.monotonic(), [healthy(vm.base) for vm in self.vms]))

    def out(self) -> tuple[float, int, float]:
        """Seconds with fewer than all VMs at 200, the most out at once, VM-seconds out."""
        window = vm_seconds = 0.0
        most = 0
        for (t0, up), (t1, _) in zip(self.samples, self.samples[1:], strict=False):
            down = len(up) - sum(up)
            most = max(most, down)
            if down:
                window += t1 - t0
                vm_seconds += down * (t1 - t0)
        return window, most, vm_seconds


def next_version(model: Path, dest: Path) -> Path:
    """The same SavedModel with another random padding asset of the same size (another version, same bytes)."""
    shutil.copytree(model, dest)
    pad = dest / "assets" / "extra.bin"
    size = pad.stat().st_size
    with pad.open("wb") as fh:
        for _ in range(size // (1 << 20)):
            fh.write(os.urandom(1 << 20))
    return dest


def run_mode(mode: str, model: Path, tmp: Path, switches: int, load_seconds: float) -> Result:
    work = tmp / mode
    (work / "store").mkdir(parents=True)
    store = f"file://{work / 'store'}"
    v1 = publish(model, store, MODEL, label=STABLE).version
    manifest = Manifest.loads(open_store(store).read(layout.manifest_key(MODEL)).data, "bench")
    result = Result(mode, manifest.versions[v1].total_bytes)
    switch = SwitchOptions(mode=mode, drain_wait_seconds=0.5, fleet_size=VMS, max_draining_percent=25)
    assert switch.drain_slots == 1
    with ExitStack() as stack:
        vms = [
            stack.enter_context(machine(store, work / f"vm{i}", f"vm-{i}", switch, load_seconds)) for i in range(VMS)
        ]
        wait_for(
            f"v{v1} served by every VM",
            lambda: all(label_answers(vm.tfs.rest_url, STABLE, v1) and healthy(vm.base) for vm in vms),
        )
        for n in range(switches):
            version = publish(next_version(model, work / f"v{n + 2}"), store, MODEL, label=CANARY).version
            for vm in vms:
                vm.tfs.peak_memory_bytes = vm.tfs.memory_bytes  # this switch's peak from here
            with HealthLog(vms) as log:
                started = time.monotonic()
                promote(store, MODEL)

                def switched(version: int = version) -> bool:
                    return all(
                        vm.agent.drain is None and label_answers(vm.tfs.rest_url, STABLE, version) and healthy(vm.base)
                        for vm in vms
                    )

                wait_for(f"v{version} served by every VM", switched)
                done = time.monotonic() - started
                time.sleep(0.3)  # a few samples after the end
            if any(vm.tfs.oom for vm in vms):
                raise SystemExit("a stand-in was OOM-killed (no limit was set: a bug)")
            window, most, vm_seconds = log.out()
            peaks = [vm.tfs.peak_memory_bytes for vm in vms]
            result.switches.append(Switch(peaks, window, most, vm_seconds, done))
            print(
                f"  {mode:<7} v{version}: fleet on v{version} after {done:5.2f} s; fewer than {VMS} VMs healthy for "
                f"{window:5.2f} s (at most {most} out, {vm_seconds:5.2f} VM-s); peak/model per VM "
                + " ".join(f"{p / result.model_bytes:.2f}" for p in peaks),
                flush=True,
            )
    return result


def report(results: list[Result]) -> None:
    print(f"\n{VMS} VMs, 1 drain slot; model {results[0].model_bytes / 2**20:.1f} MiB; per mode "
          f"{len(results[0].switches)} switches")  # fmt: skip
    print("| switch | peak memory / model (max, mean) | fewer than 4 VMs (per switch) | most out | VM-s out "
          "(per switch) | promote → fleet switched (per switch) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    rows: dict[str, tuple[float, float]] = {}
    for r in results:
        ratios = [p / r.model_bytes for s in r.switches for p in s.peaks]
        n = len(r.switches)
        window = sum(s.window for s in r.switches) / n
        vm_seconds = sum(s.vm_seconds_out for s in r.switches) / n
        done = sum(s.done for s in r.switches) / n
        rows[r.mode] = (max(ratios), window)
        print(
            f"| {r.mode} | {max(ratios):.2f} x, {sum(ratios) / len(ratios):.2f} x | {window:.2f} s | "
            f"{max(s.most_out for s in r.switches)} | {vm_seconds:.2f} | {done:.2f} s |"
        )
    if "overlap" in rows and "drain" in rows:
        (mo, wo), (md, wd) = rows["overlap"], rows["drain"]
        ratio = f"{wd / wo:.1f}" if wo > 0 else f"{wd:.2f} s vs 0 s"
        print(f"drain / overlap: peak memory {md / mo:.2f}; window with fewer than {VMS} VMs: {ratio}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=32, help="the padding asset: the model's size")
    ap.add_argument("--switches", type=int, default=2, help="version switches per mode")
    ap.add_argument("--load-seconds", type=float, default=0.5, help="the stand-in's load time per version")
    ap.add_argument("--modes", default="overlap,drain")
    args = ap.parse_args()
    logging.getLogger("modelfleet.agent").setLevel(logging.ERROR)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mf-fleet-switch-") as tmp:
        model = make_model(Path(tmp) / "model", args.size_mib)
        results = [run_mode(mode, model, Path(tmp), args.switches, args.load_seconds) for mode in args.modes.split(",")]
    report(results)
    print(f"total runtime {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
