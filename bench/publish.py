"""Publish speed: `modelfleet publish` of a ~1 GiB, 64-file SavedModel against the fastest known uploader, in the
same run, on the same local server.

- S3 (moto server on 127.0.0.1): anchor `s5cmd cp DIR/ s3://bucket/prefix/`.
- GCS (fake-gcs-server on 127.0.0.1): anchor `google.cloud.storage.transfer_manager.upload_many_from_filenames`.

Both sides run as fresh processes (the publish through the real CLI), alternate in order, and the server is reset
between runs so memory stays bounded. Run: `make bench` or `python -m bench.publish [--size-mib 1024] [--runs 3]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.support.servers import Server, running

HERE = Path(__file__).resolve().parent


def make_savedmodel(dest: Path, total_mib: int, files: int) -> Path:
    """A real (tiny) SavedModel plus large variable-like shards: ~total_mib over ~files files."""
    code = (
        "import sys, keras; from model_export.export import export_model; import numpy as np;"
        "i=keras.Input((4,),name='x'); m=keras.Model(i, keras.layers.Dense(2)(i));"
        "export_model(m, sys.argv[1], sample={'x': np.ones((2,4),'float32')}, warmup=False)"
    )
    subprocess.run([sys.executable, "-c", code, str(dest)], check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    shards = files - sum(1 for p in dest.rglob("*") if p.is_file())
    size = total_mib * 1024 * 1024 // shards
    block = os.urandom(size)
    (dest / "assets").mkdir(exist_ok=True)
    for i in range(shards):
        # Distinct content per file (rotated), so no layer can deduplicate.
        (dest / "assets" / f"shard-{i:03}.bin").write_bytes(block[i * 4096 :] + block[: i * 4096])
    return dest


def _publish_cmd(model: Path, store: str, *extra: str) -> list[str]:
    """Publish through the real CLI, as a training job would."""
    return [
        sys.executable,
        "-m",
        "modelfleet",
        "publish",
        str(model),
        "--store",
        store,
        "--model",
        "m",
        "--json",
        *extra,
    ]


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def _reset_s3(server: Server) -> None:
    req = urllib.request.Request(f"{server.endpoint}/moto-api/reset", method="POST")
    urllib.request.urlopen(req, timeout=30).close()


def _compare(name: str, runs: int, ours: Callable[[int], float], anchor: Callable[[int], float], label: str) -> float:
    ours(-1), anchor(-1)  # warm-up (page cache, server allocations), not counted
    t_ours: list[float] = []
    t_anchor: list[float] = []
    for i in range(runs):
        order = [(t_ours, ours), (t_anchor, anchor)] if i % 2 == 0 else [(t_anchor, anchor), (t_ours, ours)]
        for bucket, fn in order:
            bucket.append(fn(i))
    mo, ma = statistics.median(t_ours), statistics.median(t_anchor)
    print(f"{name}: modelfleet publish median {mo:.2f} s {[round(t, 2) for t in t_ours]}")
    print(f"{name}: {label} median {ma:.2f} s {[round(t, 2) for t in t_anchor]}")
    print(f"{name}: ratio publish / {label} = {mo / ma:.3f}")
    return mo / ma


def bench_s3(model: Path, runs: int, total_bytes: int) -> float:
    with running("s3") as server:
        env = {
            **os.environ,
            "AWS_ENDPOINT_URL": server.endpoint,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        import boto3

        def fresh_bucket() -> str:
            _reset_s3(server)
            boto3.client(
                "s3",
                endpoint_url=server.endpoint,
                region_name="us-east-1",
                aws_access_key_id="bench",
                aws_secret_access_key="bench",
            ).create_bucket(Bucket="bench")
            return "bench"

        s5cmd = shutil.which("s5cmd", path=str(Path(sys.executable).parent)) or "s5cmd"

        def ours(i: int) -> float:
            fresh_bucket()
            return _timed(_publish_cmd(model, "s3://bench/models"), env)

        def anchor(i: int) -> float:
            fresh_bucket()
            return _timed([s5cmd, "--endpoint-url", server.endpoint, "cp", f"{model}/", "s3://bench/anchor/m/1/"], env)

        n_files = sum(1 for p in model.rglob("*") if p.is_file())
        print(f"S3 (moto {server.endpoint}): {total_bytes / 2**20:.0f} MiB in {n_files} files")
        return _compare("s3", runs, ours, anchor, "s5cmd cp")


_GCS_ANCHOR = """
import sys
from google.cloud import storage
from google.cloud.storage import transfer_manager
root, bucket, prefix = sys.argv[1:4]
from pathlib import Path
files = [p.relative_to(root).as_posix() for p in Path(root).rglob("*") if p.is_file()]
results = transfer_manager.upload_many_from_filenames(
    storage.Client().bucket(bucket), files, source_directory=root, blob_name_prefix=prefix,
    max_workers=int(sys.argv[4]), worker_type="thread")
bad = [r for r in results if isinstance(r, Exception)]
if bad:
    raise SystemExit(f"{len(bad)} uploads failed: {bad[0]}")
"""


def bench_gcs(model: Path, runs: int, total_bytes: int, workers: int) -> float:
    results: list[str] = []
    with running("gcs") as server:
        env = {**os.environ, "STORAGE_EMULATOR_HOST": server.endpoint, "GOOGLE_CLOUD_PROJECT": "bench"}
        os.environ.update(STORAGE_EMULATOR_HOST=server.endpoint, GOOGLE_CLOUD_PROJECT="bench")
        from google.cloud import storage

        client = storage.Client()

        def fresh_bucket(i: int) -> str:
            name = f"bench-{len(results)}"
            results.append(name)
            client.create_bucket(name)
            return name

        def drop(name: str) -> None:
            bucket = client.bucket(name)
            for blob in client.list_blobs(name):
                blob.delete()
            bucket.delete()

        def ours(i: int) -> float:
            b = fresh_bucket(i)
            t = _timed(_publish_cmd(model, f"gs://{b}/models", "--workers", str(workers)), env)
            drop(b)
            return t

        def anchor(i: int) -> float:
            b = fresh_bucket(i)
            t = _timed([sys.executable, "-c", _GCS_ANCHOR, str(model), b, "anchor/m/1/", str(workers)], env)
            drop(b)
            return t

        print(f"GCS (fake-gcs-server {server.endpoint}): {total_bytes / 2**20:.0f} MiB")
        return _compare("gcs", runs, ours, anchor, f"transfer_manager.upload_many_from_filenames({workers} threads)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", choices=["s3", "gcs"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mf-bench-") as tmp:
        model = make_savedmodel(Path(tmp) / "model", args.size_mib, args.files)
        total = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
        if args.only in (None, "s3"):
            bench_s3(model, args.runs, total)
        if args.only in (None, "gcs"):
            bench_gcs(model, args.runs, total, workers=16)


if __name__ == "__main__":
    main()
