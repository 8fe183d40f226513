"""Pickup latency of `modelfleet agent`: from a publish (manifest committed) to TF Serving's config naming the version.

A real small SavedModel plus a 100 MiB asset file is published 20 times as `stable` to a local moto S3 server that
this benchmark starts (tests/support/servers.py's launcher); an agent in this process polls every 1 s, downloads,
verifies, renames and writes models.config. TF Serving is not running, so each config is the steady one (no two-step
label move; that step waits on TF Serving's own load time, which is not the agent's to measure).

Reported: p50 and p95 (nearest rank) of
- pickup: publish() returned (manifest committed) -> models.config names the version;
- end to end: publish() called -> models.config names the version (adds the upload);
- fetch: the agent's download + sha256 verify + fsync + rename of the version (part of pickup).
Pickup = waiting for the next poll (uniform 0..1 s) + one conditional GET + fetch + config write.

Run: `.venv/bin/python -m bench.pickup_latency [--publishes 20] [--size-mib 100]`. Bounded: stops early after
--budget seconds (default 170) and says so.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from model_export.constants import STABLE
from model_export.manifest import VersionEntry
from model_export.publish import publish
from model_export.store import open_store
from model_export.store.base import Store
from model_export.versions import prune
from modelfleet.agent import Agent, AgentOptions
from modelfleet.agent.tfs import TfsClient
from tests.support.servers import free_port, running

MODEL = "bench"


def make_model(dest: Path, extra_mib: int) -> Path:
    """A real (tiny) Keras SavedModel, exported in a child process (TensorFlow stays out of this one), plus one
    large asset file."""
    code = (
        "import sys, keras; from model_export.export import export_model; import numpy as np;"
        "i=keras.Input((4,),name='x'); m=keras.Model(i, keras.layers.Dense(2)(i));"
        "export_model(m, sys.argv[1], sample={'x': np.ones((2,4),'float32')}, warmup=False)"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, "-c", code, str(dest)], check=True, env=env, stderr=subprocess.DEVNULL)
    (dest / "assets").mkdir(exist_ok=True)
    with (dest / "assets" / "extra.bin").open("wb") as fh:
        for _ in range(extra_mib):
            fh.write(os.urandom(1024 * 1024))
    return dest


def nearest_rank(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary(name: str, values: list[float]) -> str:
    return (
        f"{name:<11} p50 {nearest_rank(values, 50):6.3f} s   p95 {nearest_rank(values, 95):6.3f} s   "
        f"min {min(values):6.3f} s   max {max(values):6.3f} s"
    )


def config_names(path: Path, version: int) -> bool:
    try:
        return f"versions: {version}\n" in path.read_text()
    except FileNotFoundError:
        return False


def run(publishes: int, size_mib: int, budget: float, poll: float) -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mf-pickup-") as tmp, running("s3") as server:
        os.environ.update(
            AWS_ENDPOINT_URL=server.endpoint,
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
        )
        import boto3

        boto3.client("s3").create_bucket(Bucket="bench")
        model = make_model(Path(tmp) / "model", size_mib)
        total = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
        store = open_store("s3://bench/models")
        root = Path(tmp) / "root"
        options = AgentOptions(
            store=store.uri,
            models=(MODEL,),
            root=root,
            role=STABLE,
            poll_seconds=poll,
            listen=None,
            keep_local=2,
        )
        pickup: list[float] = []
        end_to_end: list[float] = []
        fetch: list[float] = []
        rng = random.Random(0)
        print(f"moto S3 at {server.endpoint}; model {total / 2**20:.1f} MiB; agent poll {poll} s")
        with Agent(options, store=store, tfs=TfsClient(f"http://127.0.0.1:{free_port()}", timeout=0.2)) as agent:
            inner_fetch = agent.cache.fetch

            def timed_fetch(store: Store, model: str, entry: VersionEntry) -> int:
                t0 = time.monotonic()
                n = inner_fetch(store, model, entry)
                fetch.append(time.monotonic() - t0)
                return n

            agent.cache.fetch = timed_fetch  # type: ignore[method-assign]
            stop = threading.Event()
            loop = threading.Thread(target=agent.run, args=(stop,), name="agent", daemon=True)
            loop.start()
            try:
                for i in range(publishes):
                    if time.monotonic() - started > budget:
                        print(f"budget of {budget:.0f} s reached after {i} publishes; stopping early")
                        break
                    time.sleep(rng.uniform(0, poll))  # land anywhere in the agent's poll cycle
                    t0 = time.monotonic()
                    version = publish(model, store, MODEL, label=STABLE).version
                    t1 = time.monotonic()
                    while not config_names(agent.config_path, version):
                        if time.monotonic() - t1 > 60:
                            raise SystemExit(f"version {version} not picked up within 60 s")
                        time.sleep(0.002)
                    t2 = time.monotonic()
                    pickup.append(t2 - t1)
                    end_to_end.append(t2 - t0)
                    print(f"  v{version}: publish {t1 - t0:5.2f} s, pickup {t2 - t1:5.3f} s")
                    prune(store, MODEL, keep=2)  # bounds moto's memory
            finally:
                stop.set()
                loop.join()
        print(f"{len(pickup)} publishes of {total / 2**20:.1f} MiB, agent poll {poll} s:")
        print(summary("pickup", pickup))
        print(summary("end to end", end_to_end))
        print(summary("fetch", fetch))
        print(f"total runtime {time.monotonic() - started:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--publishes", type=int, default=20)
    ap.add_argument("--size-mib", type=int, default=100)
    ap.add_argument("--poll", type=float, default=1.0)
    ap.add_argument("--budget", type=float, default=170.0, help="stop publishing after this many seconds")
    args = ap.parse_args()
    logging.getLogger("modelfleet.agent").setLevel(logging.ERROR)  # "no manifest yet" before the first publish
    run(args.publishes, args.size_mib, args.budget, args.poll)


if __name__ == "__main__":
    main()
