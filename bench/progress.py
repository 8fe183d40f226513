"""Byte progress: what the progress bar costs a transfer. The same upload and download with the bar on (the tqdm bar
publish draws on a terminal, here drawn into /dev/null) against the same transfer with it off, the anchor, in the
same run, alternating, on each store: file://, S3 (moto server) and GCS (fake-gcs-server) on 127.0.0.1.

Two shapes: one large file (a variables shard, where the bar moves within the file) and many small files (where a
callback per file dominates). Goal: ratio on/off <= 1.10 (the bar may cost at most a tenth). Run:
`python -m bench.progress [--big-mib 128] [--small 1000] [--small-kib 4] [--runs 3] [--only file|s3|gcs]`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from model_export.manifest import FileEntry
from model_export.store import Store, open_store
from model_export.transfer import download_tree, upload_tree
from tests.support.servers import running, use_s3

GOAL = 1.10
MIB = 1024 * 1024


@contextlib.contextmanager
def _stderr_to_devnull() -> Iterator[None]:
    """The bar writes to stderr; it is drawn (and paid for) all the same, but not shown."""
    saved = sys.stderr
    with open(os.devnull, "w") as sink:
        sys.stderr = sink
        try:
            yield
        finally:
            sys.stderr = saved


def _tree(root: Path, big_mib: int, small: int, small_kib: int) -> dict[str, list[str]]:
    (root / "big").mkdir(parents=True)
    with (root / "big" / "variables.data-00000-of-00001").open("wb") as fh:
        for _ in range(big_mib):
            fh.write(os.urandom(MIB))
    (root / "small").mkdir()
    for i in range(small):
        (root / "small" / f"f{i:05}.bin").write_bytes(os.urandom(small_kib * 1024))
    return {
        shape: sorted(p.relative_to(root / shape).as_posix() for p in (root / shape).rglob("*") if p.is_file())
        for shape in ("big", "small")
    }


def _round(store: Store, root: Path, files: list[str], progress: bool, scratch: Path) -> tuple[float, float]:
    """Seconds to upload ``files`` and to download them back, with or without the bar."""
    prefix = f"bench/{uuid.uuid4().hex}"
    with _stderr_to_devnull():
        t0 = time.perf_counter()
        entries: dict[str, FileEntry] = upload_tree(store, root, files, prefix, progress=progress)
        t1 = time.perf_counter()
        download_tree(store, prefix, entries, scratch / prefix, progress=progress)
        t2 = time.perf_counter()
    store.delete([f"{prefix}/{f}" for f in files])
    return t1 - t0, t2 - t1


def _compare(store: Store, root: Path, shapes: dict[str, list[str]], runs: int, scratch: Path) -> list[float]:
    ratios = []
    for shape, files in shapes.items():
        times: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        _round(store, root / shape, files, False, scratch)  # warm-up: connections, caches
        for i in range(runs):
            for progress in (bool(i % 2), not i % 2):  # alternate which goes first
                times[progress].append(_round(store, root / shape, files, progress, scratch))
        for what, k in (("upload", 0), ("download", 1)):
            on = statistics.median(t[k] for t in times[True])
            off = statistics.median(t[k] for t in times[False])
            ratio = on / off
            ratios.append(ratio)
            mark = "ok" if ratio <= GOAL else "OVER GOAL"
            print(f"  {shape:5} {what:8} bar on {on:6.2f} s  off (anchor) {off:6.2f} s  ratio {ratio:.2f}  {mark}")
    return ratios


@contextlib.contextmanager
def _with_store(kind: str, work: Path) -> Iterator[Store]:
    if kind == "file":
        (work / "store").mkdir(parents=True)
        yield open_store(f"file://{work / 'store'}")
        return
    with running(kind) as server:
        if kind == "s3":
            use_s3(server, bucket="bench")
            yield open_store("s3://bench/progress")
        else:
            os.environ.update(STORAGE_EMULATOR_HOST=server.endpoint, GOOGLE_CLOUD_PROJECT="bench")
            from google.cloud import storage

            storage.Client().create_bucket("bench")
            yield open_store("gs://bench/progress")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big-mib", type=int, default=128)
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--small-kib", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", choices=("file", "s3", "gcs"))
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shapes = _tree(work / "src", args.big_mib, args.small, args.small_kib)
        print(f"one {args.big_mib} MiB file; {args.small} files of {args.small_kib} KiB; median of {args.runs}")
        for kind in ("file", "s3", "gcs"):
            if args.only and kind != args.only:
                continue
            print(kind, flush=True)
            with _with_store(kind, work / kind) as store:
                worst = max(worst, *_compare(store, work / "src", shapes, args.runs, work / kind / "down"))
    print(f"load average at end: {os.getloadavg()[0]:.1f}; worst ratio {worst:.2f} (goal <= {GOAL})")


if __name__ == "__main__":
    main()
