"""20 agents on one S3 server (issue 10): publish -> every agent serving, p50/p95, and the store requests each agent
makes per minute when nothing changes (goal: one conditional GET per model per poll).

One local moto S3 server (tests/support/servers.py). ``--agents`` in-process ``Agent`` objects, each with its own
root, its own S3 store client (``open_store``) wrapped in ``tests.support.agent.CountingStore`` (counts every Store
call: ``read_if_changed`` is one conditional GET, 304 when unchanged), and its own faithful TF Serving stand-in
(``TFServingStandIn(faithful=True, grpc=False)``, REST only, loads in ``--load-seconds``, re-reads models.config
every ``--tfs-poll`` s as ``--model_config_file_poll_wait_seconds``). Agents poll every ``--poll`` s, started at
random offsets within one poll (a fleet is not in lockstep). Everything shares the machine's two cores with moto.

Pickup: ``--publishes`` times, a real tiny SavedModel plus a ``--size-mib`` MiB asset is published as ``stable``;
"serving" for an agent = its TF Serving answers ``/labels/stable`` with the version (the agent fetched it, TF
Serving loaded it, the agent moved the label, TF Serving re-read the config). Reported: per publish, publish
returned -> the LAST of the agents serves (the fleet), and over every (publish, agent) pair the time to that agent
serving; p50/p95 nearest rank.

Idle: after the last publish, counters reset, ``--idle`` s with nothing published: store calls per agent per minute,
against the ideal of 60 / poll conditional GETs per model.

Run: `.venv/bin/python -m bench.fleet_poll [--agents 20] [--publishes 8] [--size-mib 4] [--idle 30]`.
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from bench.pickup_latency import make_model, nearest_rank
from infra.bootstrap import initial_model_config
from model_export.constants import STABLE
from model_export.publish import publish
from model_export.store import open_store
from model_export.versions import prune
from modelfleet.agent import Agent, AgentOptions
from modelfleet.agent.tfs import TfsClient
from tests.support.agent import CountingStore
from tests.support.servers import free_port, running, use_s3
from tests.support.tfserving_standin import TFServingStandIn

MODEL = "bench"


def serves(tfs: TFServingStandIn, version: int) -> bool:
    """What a ``/labels/stable`` predict would answer with: the label names the version and it is AVAILABLE."""
    return tfs.labels(MODEL).get(STABLE) == version and tfs.versions(MODEL).get(version) == "AVAILABLE"


def summary(name: str, values: list[float]) -> str:
    return (
        f"{name:<30} p50 {nearest_rank(values, 50):6.2f} s   p95 {nearest_rank(values, 95):6.2f} s   "
        f"max {max(values):6.2f} s   (n={len(values)})"
    )


def run(agents: int, publishes: int, size_mib: int, poll: float, tfs_poll: float, load: float, idle: float) -> None:
    started = time.monotonic()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory(prefix="mf-fleet-poll-") as tmp, running("s3") as server, ExitStack() as stack:
        use_s3(server, bucket="bench")
        model = make_model(Path(tmp) / "model", size_mib)
        total = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
        publisher = open_store("s3://bench/models")
        v1 = publish(model, publisher, MODEL, label=STABLE).version
        stores: list[CountingStore] = []
        fleet: list[tuple[Agent, TFServingStandIn]] = []
        for i in range(agents):
            root = Path(tmp) / f"vm{i}"
            root.mkdir()
            config = root / "models.config"
            config.write_text(initial_model_config())
            store = CountingStore(open_store(publisher.uri))
            options = AgentOptions(
                store=publisher.uri, models=(MODEL,), root=root, role=STABLE, poll_seconds=poll, listen=None
            )
            port = free_port()
            tfs = TFServingStandIn(
                faithful=True,
                grpc=False,
                rest_api_port=port,
                model_config_file=config,
                model_config_file_poll_wait_seconds=tfs_poll,
                allow_version_labels_for_unavailable_models=True,  # as infra/bootstrap.py runs TF Serving
                load_seconds=load,
                unload_seconds=load,
                load_retry_interval_micros=100_000,
            )
            agent = stack.enter_context(
                Agent(options, store=store, tfs=TfsClient(f"http://127.0.0.1:{port}", timeout=2.0))
            )
            agent.run_once()  # a first sync before TF Serving runs (as `--once` by hand)
            stack.enter_context(tfs)
            stores.append(store)
            fleet.append((agent, tfs))
        stop = threading.Event()
        threads = []
        for agent, _ in fleet:
            thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
            threads.append(thread)

        def stop_agents() -> None:
            stop.set()
            for thread in threads:
                thread.join(30)

        stack.callback(stop_agents)
        for thread in threads:
            time.sleep(rng.uniform(0, poll / agents * 2))  # spread over about two polls
            thread.start()
        print(
            f"moto S3 at {server.endpoint}; {agents} agents (poll {poll} s) each with a faithful TF Serving stand-in "
            f"(config poll {tfs_poll} s, load {load} s); model {total / 2**20:.1f} MiB; setup "
            f"{time.monotonic() - started:.1f} s",
            flush=True,
        )
        deadline = time.monotonic() + 60
        while not all(serves(tfs, v1) for _, tfs in fleet):
            if time.monotonic() > deadline:
                raise SystemExit(f"v{v1} not served by every agent within 60 s")
            time.sleep(0.05)

        fleet_times: list[float] = []
        agent_times: list[float] = []
        for _ in range(publishes):
            time.sleep(rng.uniform(0, poll))
            version = publish(model, publisher, MODEL, label=STABLE).version
            t1 = time.monotonic()
            when: dict[int, float] = {}
            while len(when) < agents:
                if time.monotonic() - t1 > 60:
                    raise SystemExit(f"v{version}: {len(when)} of {agents} agents serving after 60 s")
                for i, (_, tfs) in enumerate(fleet):
                    if i not in when and serves(tfs, version):
                        when[i] = time.monotonic() - t1
                time.sleep(0.01)
            fleet_times.append(max(when.values()))
            agent_times.extend(when.values())
            print(
                f"  v{version}: first agent serving after {min(when.values()):5.2f} s, last after "
                f"{max(when.values()):5.2f} s",
                flush=True,
            )
            prune(publisher, MODEL, keep=2)  # bounds moto's memory

        time.sleep(2 * tfs_poll + 1)  # the last transition's label move and TF Serving's re-read are over
        before = [(Counter(s.calls), s.unchanged) for s in stores]
        t0 = time.monotonic()
        time.sleep(idle)
        minutes = (time.monotonic() - t0) / 60
        deltas = [
            (s.calls - counted, s.unchanged - unchanged) for s, (counted, unchanged) in zip(stores, before, strict=True)
        ]
        calls: Counter[str] = Counter()
        for counted, _ in deltas:
            calls.update(counted)
        unchanged = sum(u for _, u in deltas)
        per_agent = [sum(counted.values()) / minutes for counted, _ in deltas]
        print(f"\n{len(fleet_times)} publishes of {total / 2**20:.1f} MiB to {agents} agents:")
        print(summary("publish -> every agent serving", fleet_times))
        print(summary("publish -> one agent serving", agent_times))
        ideal = 60 / poll
        mean = sum(per_agent) / len(per_agent)
        print(
            f"idle {idle:.0f} s: store calls per agent per minute: mean {mean:.1f} (min {min(per_agent):.1f}, max "
            f"{max(per_agent):.1f}); ideal {ideal:.0f} (one conditional GET per model per {poll:g} s poll); "
            f"ratio {mean / ideal:.2f}"
        )
        print(f"  by call, whole fleet: {dict(calls)}; read_if_changed answered 'unchanged' (304): {unchanged}")
    print(f"total runtime {time.monotonic() - started:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=20)
    ap.add_argument("--publishes", type=int, default=8)
    ap.add_argument("--size-mib", type=int, default=4)
    ap.add_argument("--poll", type=float, default=1.0, help="the agents' --poll")
    ap.add_argument("--tfs-poll", type=float, default=1.0, help="TF Serving's --model_config_file_poll_wait_seconds")
    ap.add_argument("--load-seconds", type=float, default=0.1, help="the stand-in's load time")
    ap.add_argument("--idle", type=float, default=30.0, help="seconds with nothing published")
    args = ap.parse_args()
    logging.getLogger("modelfleet.agent").setLevel(logging.ERROR)
    run(args.agents, args.publishes, args.size_mib, args.poll, args.tfs_poll, args.load_seconds, args.idle)


if __name__ == "__main__":
    main()
