"""Pickup latency of `modelfleet agent`: from a publish (manifest committed) to TF Serving being told to load the
version, and to TF Serving answering the `stable` label with it.

A real small SavedModel plus a 100 MiB asset file is published 20 times as `stable` to a local moto S3 server that
this benchmark starts (tests/support/servers.py's launcher); an agent in this process polls every 1 s, downloads,
verifies, renames and writes models.config. TF Serving runs, as on a VM: the TF Serving stand-in as a process
(tests/support/tfserving_standin.py, started like the bootstrap starts TF Serving: the empty placeholder config, the
bootstrap's --allow_version_labels_for_unavailable_models), re-reading the config every --tfs-poll s. It must run:
with TF Serving not running, the agent's config names only versions TF Serving has loaded on the VM before (docs/
agent.md, transition rule 4), so a new version would never appear in it. Each publish waits for the label to answer
with the version before the next one, so every publish starts from a settled VM.

Reported: p50 and p95 (nearest rank) of
- pickup: publish() returned (manifest committed) -> models.config names the version (the agent's target; TF
  Serving is asked to load it, beside the version its labels still name);
- labeled: publish() returned -> models.config labels the version (TF Serving reported it AVAILABLE, the agent moved
  the label at its next tick, at most 1 s during a transition);
- serving: publish() returned -> a `/labels/stable` predict is answered by the version (labeled + TF Serving's next
  config poll);
- end to end: publish() called -> serving (adds the upload);
- fetch: the agent's download + sha256 verify + fsync + rename of the version (part of pickup).
Pickup = waiting for the next poll (uniform 0..1 s) + one conditional GET + fetch + one status request + config
write: the agent's part. Labeled and serving add TF Serving's config polls and load; the stand-in loads at once, a
real TF Serving adds its load time (and warmup) to both.

Run: `.venv/bin/python -m bench.pickup_latency [--publishes 20] [--size-mib 100] [--poll 1] [--tfs-poll 1]`.
Bounded: stops early after --budget seconds (default 170) and says so.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path

from infra.bootstrap import TFS_LOAD_RETRY_INTERVAL_SECONDS, TFS_MAX_LOAD_RETRIES, initial_model_config
from model_export.constants import STABLE
from model_export.manifest import VersionEntry
from model_export.publish import publish
from model_export.store import open_store
from model_export.store.base import Store
from model_export.versions import prune
from modelfleet.agent import Agent, AgentOptions
from modelfleet.agent.tfs import TfsClient
from tests.support.servers import running, use_s3
from tests.support.tfserving_standin import StandInProcess

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


def config_step(path: Path) -> tuple[set[int], dict[str, int]]:
    """The versions and labels models.config gives MODEL (the agent's rendering: one ``versions: N`` line per
    version, ``key``/``value`` lines per label)."""
    try:
        lines = [line.strip() for line in path.read_text().splitlines()]
    except FileNotFoundError:
        return set(), {}
    versions = {int(line.split(":")[1]) for line in lines if line.startswith("versions:")}
    keys = [json.loads(line.split(":", 1)[1]) for line in lines if line.startswith("key:")]
    values = [int(line.split(":")[1]) for line in lines if line.startswith("value:")]
    return versions, dict(zip(keys, values, strict=True))


def config_names(path: Path, version: int) -> bool:
    return version in config_step(path)[0]


def config_labels(path: Path, version: int) -> bool:
    return config_step(path)[1].get(STABLE) == version


def label_answers(rest_url: str, label: str, version: int) -> bool:
    """Whether ``version`` answers a predict through ``label`` (the stand-in's model answers version x sum(x))."""
    body = json.dumps({"instances": [[1.0, 2.0]]}).encode()
    request = urllib.request.Request(f"{rest_url}/v1/models/{MODEL}/labels/{label}:predict", body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:
            return round(float(json.loads(answer.read())["predictions"][0]) / 3.0) == version
    except (OSError, ValueError, KeyError, http.client.HTTPException):
        return False


def wait_for(what: str, check: Callable[[], bool], since: float, every: float = 0.002) -> float:
    """Poll ``check`` until true; the time it became so (``SystemExit`` after 60 s)."""
    while not check():
        if time.monotonic() - since > 60:
            raise SystemExit(f"{what}: not within 60 s")
        time.sleep(every)
    return time.monotonic()


def run(publishes: int, size_mib: int, budget: float, poll: float, tfs_poll: float) -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mf-pickup-") as tmp, running("s3") as server:
        use_s3(server, bucket="bench")
        model = make_model(Path(tmp) / "model", size_mib)
        total = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
        store = open_store("s3://bench/models")
        root = Path(tmp) / "root"
        root.mkdir()
        config = root / "models.config"
        config.write_text(initial_model_config())  # as the bootstrap's first boot leaves it
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
        labeled: list[float] = []
        serving: list[float] = []
        end_to_end: list[float] = []
        fetch: list[float] = []
        rng = random.Random(0)
        tfs = StandInProcess(
            config,
            poll_seconds=tfs_poll,
            max_num_load_retries=TFS_MAX_LOAD_RETRIES,
            load_retry_interval_micros=TFS_LOAD_RETRY_INTERVAL_SECONDS * 1_000_000,
            allow_version_labels_for_unavailable_models=True,  # as infra/bootstrap.py runs TF Serving
        )
        print(
            f"moto S3 at {server.endpoint}; model {total / 2**20:.1f} MiB; agent poll {poll} s; "
            f"TF Serving stand-in at {tfs.rest_url}, config poll {tfs_poll} s"
        )
        with tfs, Agent(options, store=store, tfs=TfsClient(tfs.rest_url, timeout=2.0)) as agent:
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
                    t2 = wait_for(f"v{version} in models.config", partial(config_names, config, version), t1)
                    t3 = wait_for(f"v{version} labeled", partial(config_labels, config, version), t1)
                    answers = partial(label_answers, tfs.rest_url, STABLE, version)
                    t4 = wait_for(f"v{version} answering /labels/{STABLE}", answers, t1, every=0.01)
                    pickup.append(t2 - t1)
                    labeled.append(t3 - t1)
                    serving.append(t4 - t1)
                    end_to_end.append(t4 - t0)
                    print(
                        f"  v{version}: publish {t1 - t0:5.2f} s, pickup {t2 - t1:5.3f} s, labeled {t3 - t1:5.3f} s, "
                        f"serving {t4 - t1:5.3f} s"
                    )
                    prune(store, MODEL, keep=2)  # bounds moto's memory
            finally:
                stop.set()
                loop.join()
            refused = [line for line in tfs.output.splitlines() if "failed to ReloadConfig" in line]
        if refused:  # the agent wrote a config TF Serving would not take: a broken transition rule, not a figure
            raise SystemExit("TF Serving refused configs:\n" + "\n".join(refused))
        print(f"{len(pickup)} publishes of {total / 2**20:.1f} MiB, agent poll {poll} s, TF Serving poll {tfs_poll} s:")
        print(summary("pickup", pickup))
        print(summary("labeled", labeled))
        print(summary("serving", serving))
        print(summary("end to end", end_to_end))
        print(summary("fetch", fetch))
        print(f"total runtime {time.monotonic() - started:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--publishes", type=int, default=20)
    ap.add_argument("--size-mib", type=int, default=100)
    ap.add_argument("--poll", type=float, default=1.0, help="the agent's --poll")
    ap.add_argument("--tfs-poll", type=float, default=1.0, help="TF Serving's --model_config_file_poll_wait_seconds")
    ap.add_argument("--budget", type=float, default=170.0, help="stop publishing after this many seconds")
    args = ap.parse_args()
    logging.getLogger("modelfleet.agent").setLevel(logging.ERROR)  # "no manifest yet" before the first publish
    run(args.publishes, args.size_mib, args.budget, args.poll, args.tfs_poll)


if __name__ == "__main__":
    main()
