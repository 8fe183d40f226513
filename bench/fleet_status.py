"""Fleet status (issue 11): 20 agents on one S3 server, `publish --label stable --wait` against what TF Serving really
serves; `status` over 100 heartbeats; store requests and dollars per VM with nothing changing, heartbeats included.

One local moto S3 server (tests/support/servers.py), everything on the machine's two cores.

1. publish -> --wait. ``--agents`` real agent processes (``python -m modelfleet agent --heartbeat H --instance-id
   sNN``, the CLI's defaults otherwise: ``--switch auto``, which overlaps for this tiny model), each next to its own
   faithful TF Serving stand-in in this process (``TFServingStandIn(faithful=True)``, REST only, started from the
   bootstrap's empty config with its ``--allow_version_labels_for_unavailable_models``, re-reading models.config every
   ``--tfs-poll`` s, loading in ``--load-seconds``). ``--rounds`` times: publish a tiny real SavedModel (plus a 1 MiB
   asset) as ``stable`` from the library, then, from the moment publish() returned, time in parallel:
   - wait: what ``publish --label stable --wait`` does after its upload: read the manifest, then
     ``rollout.wait_after`` (heartbeats read every second until every live instance of the stable fleet serves it);
   - anchor: every stand-in serves the version under ``stable`` (its label names it and it is AVAILABLE: what a
     ``/labels/stable`` predict gets), polled in process every 25 ms;
   - labels written: every agent's models.config labels the version (what the agent's heartbeat reports as serving).
   p50/p95 nearest rank (with 7 rounds, p95 is the slowest round) and wait / anchor.
2. status over 100 heartbeats. 100 heartbeats as an agent at the default 30 s interval writes them after 15 minutes
   (one model, 30 samples of TF Serving's counters with its 34 latency buckets) under ``_fleet/stable/status/vm-N.json``
   of a second prefix, then ``fleet_status.model_status`` (manifest GET, one listing per fleet, 100 GETs on 16 threads,
   parse, traffic arithmetic) against anchors measured in the same loop, in rotating order: the least any status can do
   (one listing + one GET), the same listing + 100 GETs on 16 threads without parsing, and one after the other.
3. Idle requests. One in-process ``Agent`` (CLI defaults, ``--heartbeat``) whose S3 client counts every HTTP request
   it sends (botocore ``before-send``) by the agent thread that sent it, polling every ``--idle-poll`` s and beating
   every ``--idle-heartbeat`` s for ``--idle`` s with nothing published. Requests per poll and per heartbeat are scaled
   to the defaults (poll 10 s, heartbeat 30 s): requests per VM per hour by kind, and dollars per VM per month (730 h)
   at list price (S3 Standard us-east-1; GCS Standard in a region), against the poll alone as the anchor.

Run: `.venv/bin/python -m bench.fleet_status [--agents 20] [--rounds 7] [--poll 10] [--tfs-poll 5] [--heartbeat 30]`.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.pickup_latency import config_labels, make_model, nearest_rank
from infra.bootstrap import initial_model_config
from model_export import layout
from model_export.constants import AGENT_POLL_SECONDS, MODEL_CONFIG_POLL_SECONDS, STABLE
from model_export.fleet_status import model_status
from model_export.heartbeat import (
    DEFAULT_INTERVAL_SECONDS,
    SAMPLES_SECONDS,
    TFS_LATENCY_BOUNDS_US,
    Heartbeat,
    ModelReport,
    Sample,
)
from model_export.publish import publish
from model_export.rollout import RolloutFailed, WaitOutcome, wait_after
from model_export.store import open_store
from model_export.store.base import Store
from model_export.store.s3 import S3Store
from model_export.versions import get_manifest
from modelfleet import __version__
from modelfleet.agent import Agent, AgentOptions
from modelfleet.agent.switch_options import SwitchOptions
from modelfleet.agent.tfs import TfsClient
from tests.support.agent import CountingStore
from tests.support.servers import free_port, running, use_s3
from tests.support.tfserving_standin import TFServingStandIn

MODEL = "bench"
REPO = Path(__file__).resolve().parents[1]
HOURS_PER_MONTH = 730
# List prices per 1,000 requests (docs/benchmarks.md "Fleet status (issue 11)" cites the pages).
S3_TIER1_PER_1000 = 0.005  # S3 Standard, us-east-1: PUT, COPY, POST, LIST
S3_TIER2_PER_1000 = 0.0004  # S3 Standard, us-east-1: GET, SELECT and all other requests (a 304 is billed as a GET)
GCS_CLASS_A_PER_1000 = 0.005  # GCS Standard in a region: objects.insert, objects.list
GCS_CLASS_B_PER_1000 = 0.0004  # GCS Standard in a region: objects.get
TIER1 = frozenset({"PUT", "POST", "LIST"})  # the expensive kinds on both clouds (GCS: class A)


def standin(port: int, config: Path, tfs_poll: float, load: float) -> TFServingStandIn:
    """TF Serving as the bootstrap runs it (the flags that matter here), REST only."""
    return TFServingStandIn(
        faithful=True,
        grpc=False,
        rest_api_port=port,
        model_config_file=config,
        model_config_file_poll_wait_seconds=tfs_poll,
        allow_version_labels_for_unavailable_models=True,
        load_seconds=load,
        unload_seconds=load,
        load_retry_interval_micros=100_000,
    )


def serves(tfs: TFServingStandIn, version: int) -> bool:
    """What a ``/labels/stable`` predict would answer with: the label names the version and it is AVAILABLE."""
    return tfs.labels(MODEL).get(STABLE) == version and tfs.versions(MODEL).get(version) == "AVAILABLE"


def p50_p95(values: list[float]) -> tuple[float, float]:
    return nearest_rank(values, 50), nearest_rank(values, 95)


# --- 1. publish -> --wait -------------------------------------------------------------------------------------------


@dataclass
class VM:
    """One serving VM: TF Serving (the stand-in, in this process) and ``modelfleet agent`` (a child process)."""

    root: Path
    tfs: TFServingStandIn
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def config(self) -> Path:
        return self.root / "models.config"


@contextmanager
def fleet(
    store: str, tmp: Path, agents: int, poll: float, heartbeat: float, tfs_poll: float, load: float
) -> Iterator[list[VM]]:
    """``agents`` VMs of the stable fleet, each agent started with the CLI as a VM's unit starts it."""
    with ExitStack() as stack:
        vms: list[VM] = []
        for i in range(agents):
            root = tmp / f"s{i:02d}" / "models"
            root.mkdir(parents=True)
            (root / "models.config").write_text(initial_model_config())  # as the bootstrap's first boot leaves it
            port = free_port()
            tfs = stack.enter_context(standin(port, root / "models.config", tfs_poll, load))
            argv = [
                sys.executable, "-m", "modelfleet", "agent", "--store", store, "--models", MODEL, "--root", str(root),
                "--role", STABLE, "--poll", f"{poll:g}", "--tfs-url", f"http://127.0.0.1:{port}",
                "--listen", f"127.0.0.1:{free_port()}", "--heartbeat", f"{heartbeat:g}", "--instance-id", f"s{i:02d}",
            ]  # fmt: skip
            log = tmp / f"s{i:02d}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(argv, stdout=out, stderr=out, cwd=REPO)
            vm = VM(root, tfs, proc, log)
            stack.callback(stop_agent, vm)
            vms.append(vm)
        yield vms


def stop_agent(vm: VM) -> None:
    if vm.proc.poll() is None:
        vm.proc.terminate()
        try:
            vm.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            vm.proc.kill()
            vm.proc.wait(timeout=30)


def check_alive(vms: list[VM]) -> None:
    for vm in vms:
        if vm.proc.poll() is not None:
            tail = vm.log.read_text(errors="replace").splitlines()[-10:]
            raise SystemExit(f"agent {vm.root.parent.name} exited with {vm.proc.returncode}:\n" + "\n".join(tail))


def wait_until(what: str, check: Callable[[], bool], timeout: float, vms: list[VM], every: float = 0.1) -> float:
    started = time.monotonic()
    while not check():
        check_alive(vms)
        if time.monotonic() - started > timeout:
            raise SystemExit(f"{what}: not within {timeout:g} s")
        time.sleep(every)
    return time.monotonic() - started


@dataclass
class Round:
    version: int
    publish: float  # seconds publish() took
    wait: float  # publish returned -> wait_after returned
    anchor: float  # publish returned -> every stand-in serves the version under stable
    labeled: float  # publish returned -> every agent's config labels it
    live: int  # live instances the wait counted


def one_round(store: Store, model: Path, vms: list[VM], timeout: float) -> Round:
    before = dict(get_manifest(store, MODEL).labels)
    t0 = time.monotonic()
    version = publish(model, store, MODEL, label=STABLE).version
    t1 = time.monotonic()
    waited: dict[str, Any] = {}

    def wait() -> None:  # cmd_publish after its upload: the manifest, then wait_after
        try:
            after = get_manifest(store, MODEL)
            waited["outcome"] = wait_after(store, MODEL, before, after, timeout=timeout)
        except RolloutFailed as e:
            waited["error"] = str(e)
        waited["t"] = time.monotonic() - t1

    waiter = threading.Thread(target=wait, name="bench-wait", daemon=True)
    waiter.start()
    served: dict[int, float] = {}
    labeled: dict[int, float] = {}
    while len(served) < len(vms) or len(labeled) < len(vms):
        now = time.monotonic() - t1
        if now > timeout:
            raise SystemExit(f"v{version}: {len(served)}/{len(vms)} serving after {timeout:g} s")
        for i, vm in enumerate(vms):
            if i not in labeled and config_labels(vm.config, version):
                labeled[i] = now
            if i not in served and serves(vm.tfs, version):
                served[i] = now
        time.sleep(0.025)
    waiter.join(timeout + 10)
    if "error" in waited or "outcome" not in waited:
        raise SystemExit(f"v{version}: --wait failed: {waited.get('error', 'did not return')}")
    outcome: WaitOutcome = waited["outcome"]
    live = len(outcome.fleets[STABLE].live)
    return Round(version, t1 - t0, waited["t"], max(served.values()), max(labeled.values()), live)


def publish_rounds(args: argparse.Namespace, store: Store, model: Path, tmp: Path, budget_end: float) -> list[Round]:
    rng = random.Random(0)
    started = time.monotonic()
    v1 = publish(model, store, MODEL, label=STABLE).version
    rounds: list[Round] = []
    with fleet(store.uri, tmp, args.agents, args.poll, args.heartbeat, args.tfs_poll, args.load_seconds) as vms:

        def fleet_serves_v1() -> bool:
            if not all(serves(vm.tfs, v1) for vm in vms):
                return False
            stable = model_status(store, MODEL).fleets[STABLE]
            return stable.converged and len(stable.live) == len(vms)

        settle = wait_until("the fleet serving v1", fleet_serves_v1, 180, vms, every=0.5)
        print(
            f"{len(vms)} agent processes (poll {args.poll:g} s, heartbeat {args.heartbeat:g} s), TF Serving stand-ins "
            f"(config poll {args.tfs_poll:g} s, load {args.load_seconds:g} s): all serving v{v1} and reporting it "
            f"{settle:.1f} s after start ({time.monotonic() - started:.1f} s with the first publish)",
            flush=True,
        )
        for _ in range(args.rounds):
            if time.monotonic() > budget_end:
                print(f"budget reached after {len(rounds)} rounds; stopping early", flush=True)
                break
            time.sleep(rng.uniform(0.5, 1.5))  # the last switch's old version unloads; land anywhere in the polls
            r = one_round(store, model, vms, args.timeout)
            check_alive(vms)
            rounds.append(r)
            print(
                f"  v{r.version}: publish {r.publish:4.2f} s; then every config labels it {r.labeled:5.2f} s, every "
                f"TF Serving serves it {r.anchor:5.2f} s, --wait returned {r.wait:5.2f} s ({r.live} live)",
                flush=True,
            )
    return rounds


def report_rounds(rounds: list[Round], args: argparse.Namespace) -> None:
    wait = [r.wait for r in rounds]
    anchor = [r.anchor for r in rounds]
    labeled = [r.labeled for r in rounds]
    early = sum(r.wait < r.anchor for r in rounds)
    print(
        f"\n1. publish -> --wait, {args.agents} agents (poll {args.poll:g} s, heartbeat {args.heartbeat:g} s, "
        f"TF Serving config poll {args.tfs_poll:g} s), {len(rounds)} publishes, from publish() returned:"
    )
    print(f"   {'':<44} {'p50':>7} {'p95':>7}")
    for name, values in (
        ("--wait returned (wait_after)", wait),
        ("anchor: every TF Serving serves it (label)", anchor),
        ("every agent's config labels it", labeled),
    ):
        p50, p95 = p50_p95(values)
        print(f"   {name:<44} {p50:6.2f}s {p95:6.2f}s")
    (w50, w95), (a50, a95) = p50_p95(wait), p50_p95(anchor)
    per_round = statistics.median(r.wait / r.anchor for r in rounds)
    extra = statistics.median(r.wait - r.labeled for r in rounds)
    print(
        f"   wait / anchor: p50 {w50 / a50:.2f}, p95 {w95 / a95:.2f} (median per round {per_round:.2f}); --wait "
        f"returned before every TF Serving served the version in {early} of {len(rounds)} rounds; wait - labels "
        f"written (heartbeat + wait polling): median {extra:.2f} s"
    )


# --- 2. status over 100 heartbeats ----------------------------------------------------------------------------------


def realistic_heartbeat(i: int, version: int, now: float, rng: random.Random) -> Heartbeat:
    """What an agent writes after 15 minutes at the default interval: one model, 30 samples of its counters."""
    interval = DEFAULT_INTERVAL_SECONDS
    at = now - rng.uniform(0, interval)
    started = at - 86_400.0
    count = int(SAMPLES_SECONDS / interval)
    rate = rng.uniform(20, 60)  # requests per second on this VM
    weights = [0.0] * (len(TFS_LATENCY_BOUNDS_US) + 1)
    for b, w in zip(range(10, 17), (0.02, 0.08, 0.25, 0.35, 0.2, 0.08, 0.02), strict=True):
        weights[b] = w
    samples = []
    ok = int(rng.uniform(1e6, 5e6))
    errors = int(rng.uniform(0, 500))
    for k in range(count):
        t = at - (count - 1 - k) * interval
        ok += int(rate * interval)
        errors += rng.randrange(3)
        latency = tuple(int(ok * w) for w in weights)
        samples.append(Sample(t, started, ok, {"INTERNAL": errors} if errors else {}, latency))
    report = ModelReport(
        desired=version,
        target=version,
        serving=version,
        states={version: "AVAILABLE"},
        cache_bytes=2 * 1_048_576 + 6_000,
        samples=tuple(samples),
    )
    return Heartbeat(
        instance=f"vm-{i}",
        fleet=STABLE,
        started=started,
        at=at,
        interval=interval,
        zone=f"us-east1-{'bcd'[i % 3]}",
        agent_version=__version__,
        models={MODEL: report},
    )


class HttpCounter:
    """Every HTTP request an S3 client sends (retries included), by kind and by the thread that sent it."""

    def __init__(self, store: Store) -> None:
        if not isinstance(store, S3Store):
            raise SystemExit(f"{store.uri}: counting HTTP requests needs an S3 store")
        self.counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        store.client.meta.events.register("before-send.s3", self._on_send)

    def _on_send(self, **kwargs: Any) -> None:
        request = kwargs["request"]
        method = str(request.method)
        kind = "LIST" if method == "GET" and "list-type=" in str(request.url) else method
        with self._lock:
            self.counts[(threading.current_thread().name, kind)] += 1

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()

    def by_kind(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for (_, kind), n in self.counts.items():
            out[kind] += n
        return out


def status_timing(args: argparse.Namespace, model: Path) -> None:
    store = open_store("s3://bench/status")
    counter = HttpCounter(store)
    version = publish(model, store, MODEL, label=STABLE).version
    rng = random.Random(1)
    now = time.time()
    beats = [realistic_heartbeat(i, version, now, rng) for i in range(args.heartbeats)]
    sizes = [len(b.dumps()) for b in beats]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda b: store.write(layout.heartbeat_key(STABLE, b.instance), b.dumps()), beats))
    prefix = layout.heartbeat_prefix(STABLE)
    one_key = layout.heartbeat_key(STABLE, beats[0].instance)

    def status() -> None:
        f = model_status(store, MODEL).fleets[STABLE]
        if len(f.live) != len(beats) or not f.converged or f.traffic is None or f.traffic.requests == 0:
            raise SystemExit(f"status saw {len(f.live)} live instances, converged {f.converged}")

    def floor() -> None:  # the least any status can do
        keys = [o.key for o in store.list(prefix)]
        if len(keys) != len(beats):
            raise SystemExit(f"listed {len(keys)} heartbeats")
        store.read(one_key)

    def parallel_raw() -> None:
        keys = [o.key for o in store.list(prefix)]
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(store.read, keys))

    def sequential_raw() -> None:
        for o in list(store.list(prefix)):
            store.read(o.key)

    variants: dict[str, Callable[[], None]] = {
        "model_status (what `status` computes)": status,
        "anchor: 1 LIST + 1 GET": floor,
        "1 LIST + 100 GETs, 16 threads, no parse": parallel_raw,
        "1 LIST + 100 GETs one after the other": sequential_raw,
    }
    counter.reset()
    status()
    per_status = dict(counter.by_kind())
    for fn in variants.values():  # warm-up: connections, imports
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for k in range(args.status_calls):
        for name in names[k % len(names) :] + names[: k % len(names)]:
            t0 = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - t0)
    datas = [store.read(layout.heartbeat_key(STABLE, b.instance)).data for b in beats]
    t0 = time.perf_counter()
    for data in datas:
        Heartbeat.loads(data, "bench")
    parse = time.perf_counter() - t0
    medians = {name: statistics.median(t) for name, t in times.items()}
    anchor = medians["anchor: 1 LIST + 1 GET"]
    print(
        f"\n2. status over {len(beats)} heartbeats ({statistics.median(sizes) / 1024:.1f} KiB each: one model, "
        f"{len(beats[0].models[MODEL].samples)} samples), median of {args.status_calls} calls each, in rotating order:"
    )
    print(f"   {'':<44} {'median':>8} {'x anchor':>9}")
    for name, m in medians.items():
        print(f"   {name:<44} {m * 1000:6.1f}ms {m / anchor:8.1f}")
    status_ms = medians["model_status (what `status` computes)"]
    print(
        f"   parsing 100 heartbeats alone (Heartbeat.loads): {parse * 1000:.1f} ms; status / parallel raw reads "
        f"{status_ms / medians['1 LIST + 100 GETs, 16 threads, no parse']:.2f}, / sequential "
        f"{status_ms / medians['1 LIST + 100 GETs one after the other']:.2f}"
    )
    print(f"   requests of one status call: {dict(sorted(per_status.items()))}")
    cli = []
    for _ in range(3):
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "modelfleet", "status", "--store", store.uri, "--model", MODEL, "--json"],
            cwd=REPO,
            capture_output=True,
            check=False,
        )
        cli.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise SystemExit(f"modelfleet status exited {done.returncode}: {done.stderr.decode(errors='replace')}")
    print(f"   `modelfleet status --json`, a fresh process (start-up included): median {statistics.median(cli):.2f} s")


# --- 3. idle requests per VM ----------------------------------------------------------------------------------------


@dataclass
class Idle:
    seconds: float
    polls: int
    heartbeats: int
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    unchanged: int = 0
    store_calls: Counter[str] = field(default_factory=Counter)
    heartbeat_bytes: int = 0


def idle_requests(args: argparse.Namespace, tmp: Path) -> Idle:
    inner = open_store("s3://bench/models")
    counter = HttpCounter(inner)
    store = CountingStore(inner)
    root = tmp / "idle" / "models"
    root.mkdir(parents=True)
    config = root / "models.config"
    config.write_text(initial_model_config())
    port = free_port()
    version = get_manifest(inner, MODEL).labels[STABLE]
    options = AgentOptions(
        store=inner.uri,
        models=(MODEL,),
        root=root,
        role=STABLE,
        poll_seconds=args.idle_poll,
        tfs_url=f"http://127.0.0.1:{port}",
        listen=None,
        switch=SwitchOptions(),  # the CLI's default (auto)
        heartbeat_seconds=args.idle_heartbeat,
        instance_id="idle-0",
    )
    stop = threading.Event()
    with (
        standin(port, config, args.tfs_poll, args.load_seconds) as tfs,
        Agent(options, store=store, tfs=TfsClient(f"http://127.0.0.1:{port}", timeout=2.0)) as agent,
    ):
        loop = threading.Thread(target=agent.run, args=(stop,), name="agent-reconcile", daemon=True)
        loop.start()
        try:
            deadline = time.monotonic() + 60
            while not (serves(tfs, version) and agent.settled()):
                if time.monotonic() > deadline:
                    raise SystemExit(f"idle agent: v{version} not served within 60 s")
                time.sleep(0.1)
            time.sleep(2 + args.idle_heartbeat)  # the heartbeat written on the switch is out
            assert agent.heartbeat is not None
            store.reset()
            counter.reset()
            beats0 = agent.heartbeat.writes
            t0 = time.monotonic()
            time.sleep(args.idle)
            seconds = time.monotonic() - t0
            counts = Counter(counter.counts)
            calls, unchanged = Counter(store.calls), store.unchanged
            heartbeats = agent.heartbeat.writes - beats0
        finally:
            stop.set()
            loop.join(60)
    beat = inner.read(layout.heartbeat_key(STABLE, "idle-0")).data
    return Idle(seconds, calls["read_if_changed"], heartbeats, counts, unchanged, calls, len(beat))


def report_idle(idle: Idle, args: argparse.Namespace) -> None:
    poll_thread, beat_thread = "modelfleet-store-poll", "modelfleet-heartbeat"
    print(
        f"\n3. one idle agent, nothing published: poll {args.idle_poll:g} s, heartbeat {args.idle_heartbeat:g} s, "
        f"{idle.seconds:.0f} s: {idle.polls} polls, {idle.heartbeats} heartbeats; store calls {dict(idle.store_calls)}"
        f" ({idle.unchanged} conditional GETs answered 304)"
    )
    print(f"   {'HTTP requests (thread, kind)':<40} {'count':>6} {'per poll/beat':>14}")
    for (thread, kind), n in sorted(idle.counts.items()):
        per = n / idle.polls if thread == poll_thread else n / idle.heartbeats if thread == beat_thread else 0.0
        print(f"   {thread + ' ' + kind:<40} {n:6d} {per:14.2f}")
    # per hour at the defaults (whatever part 1 used): the poll thread's requests per poll x polls per hour, the
    # heartbeat thread's per beat x beats per hour; any other thread's at the measured rate
    per_hour: dict[str, float] = {}
    for (thread, kind), n in idle.counts.items():
        if thread == poll_thread:
            rate = n / idle.polls * 3600 / AGENT_POLL_SECONDS
        elif thread == beat_thread:
            rate = n / idle.heartbeats * 3600 / DEFAULT_INTERVAL_SECONDS
        else:
            rate = n / idle.seconds * 3600
        per_hour[kind] = per_hour.get(kind, 0.0) + rate
    poll_only: dict[str, float] = {}
    for (thread, kind), n in idle.counts.items():
        if thread == poll_thread:
            poll_only[kind] = poll_only.get(kind, 0.0) + n / idle.polls * 3600 / AGENT_POLL_SECONDS

    def dollars(hourly: dict[str, float], tier1: float, tier2: float) -> float:
        return sum(n * HOURS_PER_MONTH / 1000 * (tier1 if kind in TIER1 else tier2) for kind, n in hourly.items())

    total, polls = sum(per_hour.values()), sum(poll_only.values())
    s3, gcs = (
        dollars(per_hour, S3_TIER1_PER_1000, S3_TIER2_PER_1000),
        dollars(per_hour, GCS_CLASS_A_PER_1000, GCS_CLASS_B_PER_1000),
    )
    s3_poll = dollars(poll_only, S3_TIER1_PER_1000, S3_TIER2_PER_1000)
    gcs_poll = dollars(poll_only, GCS_CLASS_A_PER_1000, GCS_CLASS_B_PER_1000)
    kinds = ", ".join(f"{kind} {n:.0f}" for kind, n in sorted(per_hour.items()))
    print(
        f"   scaled to the defaults, poll {AGENT_POLL_SECONDS:g} s and heartbeat {DEFAULT_INTERVAL_SECONDS:g} s: "
        f"{total:.0f} requests per VM per hour ({kinds}); the poll alone (anchor) {polls:.0f}; x{total / polls:.2f}"
    )
    print(
        f"   per VM per month ({HOURS_PER_MONTH} h), list price: S3 Standard us-east-1 ${s3:.3f} (poll alone "
        f"${s3_poll:.3f}, x{s3 / s3_poll:.1f}); GCS Standard regional ${gcs:.3f} (poll alone ${gcs_poll:.3f}, "
        f"x{gcs / gcs_poll:.1f}); per 100 VMs: ${100 * s3:.0f} / ${100 * gcs:.0f}"
    )
    print(f"   heartbeat object of the idle agent: {idle.heartbeat_bytes} bytes")


def run(args: argparse.Namespace) -> None:
    started = time.monotonic()
    print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="mf-fleet-status-") as tmp_dir, running("s3") as server:
        tmp = Path(tmp_dir)
        use_s3(server, bucket="bench")
        model = make_model(tmp / "model", 1)
        print(f"moto S3 at {server.endpoint}; model made in {time.monotonic() - started:.1f} s", flush=True)
        store = open_store("s3://bench/models")
        rounds = publish_rounds(args, store, model, tmp, started + args.budget)
        status_timing(args, model)
        idle = idle_requests(args, tmp)
        report_rounds(rounds, args)
        report_idle(idle, args)
    print(f"load average at end: {os.getloadavg()[0]:.1f}; total runtime {time.monotonic() - started:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--poll", type=float, default=float(AGENT_POLL_SECONDS), help="the agents' --poll (default)")
    ap.add_argument(
        "--heartbeat", type=float, default=DEFAULT_INTERVAL_SECONDS, help="the agents' --heartbeat (default)"
    )
    ap.add_argument(
        "--tfs-poll",
        type=float,
        default=float(MODEL_CONFIG_POLL_SECONDS),
        help="TF Serving's --model_config_file_poll_wait_seconds (the bootstrap's)",
    )
    ap.add_argument("--load-seconds", type=float, default=0.1, help="the stand-in's load and unload time")
    ap.add_argument("--timeout", type=float, default=120.0, help="per round")
    ap.add_argument("--budget", type=float, default=210.0, help="no new round after this many seconds")
    ap.add_argument("--heartbeats", type=int, default=100)
    ap.add_argument("--status-calls", type=int, default=15)
    ap.add_argument("--idle", type=float, default=30.0, help="seconds the idle agent is counted")
    ap.add_argument("--idle-poll", type=float, default=1.0)
    ap.add_argument("--idle-heartbeat", type=float, default=3.0)
    args = ap.parse_args()
    logging.getLogger("modelfleet.agent").setLevel(logging.ERROR)
    run(args)


if __name__ == "__main__":
    main()
