"""Parallel, verified directory transfers, written once above the :class:`Store` interface."""

from __future__ import annotations

import contextlib
import hashlib
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from model_export.errors import TransferError
from model_export.manifest import FileEntry
from model_export.store.base import ProgressFn, Store

# Files uploaded (or downloaded) at once. Measured on two cores shared with a local server (docs/benchmarks.md), 4, 8
# and 16 were equally fast (the CPU is the limit there); 8 keeps a real link's latency covered with half the memory.
DEFAULT_WORKERS = 8
_BLOCK = 1024 * 1024


def sha256_file(path: Path) -> FileEntry:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_BLOCK):
            h.update(chunk)  # hashlib releases the GIL on large buffers, so workers hash in parallel
            size += len(chunk)
    return FileEntry(h.hexdigest(), size)


def show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


def _bar(stack: contextlib.ExitStack, total: int, what: str) -> ProgressFn:
    """A progress bar on stderr for ``total`` bytes, closed with ``stack``; its update may be called from any thread."""
    from tqdm import tqdm  # only when shown: importing it would cost every publish ~30 ms of start-up

    bar = stack.enter_context(tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=what))
    lock = threading.Lock()

    def tick(n: int) -> None:
        with lock:
            bar.update(n)

    return tick


def _listeners(bar: ProgressFn | None, also: ProgressFn | None) -> ProgressFn | None:
    """One callback for the bar and ``also``; ``None`` when nobody listens, so the stores take their fastest path."""
    if bar is None or also is None:
        return bar or also

    def both(n: int) -> None:
        bar(n)
        also(n)

    return both


def _run_all(
    jobs: Mapping[str, Callable[[ProgressFn | None], object]],
    *,
    workers: int,
    total: int,
    progress: bool,
    what: str,
    on_bytes: ProgressFn | None = None,
) -> None:
    """Run one job per file; each reports the bytes it moves as it moves them (to the bar when ``progress``, and to
    ``on_bytes``). All failures are collected and reported together."""
    failed: dict[str, Exception] = {}
    with contextlib.ExitStack() as stack:
        tick = _listeners(_bar(stack, total, what) if progress else None, on_bytes)
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=max(1, workers)))
        futures = {pool.submit(job, tick): name for name, job in jobs.items()}
        for fut in as_completed(futures):
            try:
                fut.result()
            except Exception as e:
                failed[futures[fut]] = e
    if failed:
        first = sorted(failed)[0]
        raise TransferError(
            f"{what}: {len(failed)} of {len(jobs)} files failed; first {first}: {failed[first]}"
        ) from failed[first]


def upload_tree(
    store: Store,
    root: Path,
    files: Sequence[str],
    key_prefix: str,
    *,
    workers: int = DEFAULT_WORKERS,
    progress: bool = False,
) -> dict[str, FileEntry]:
    """Upload ``files`` (relative to ``root``) to ``key_prefix/<file>``, each created only if absent and read once;
    return each file's entry: the sha256 and size of the bytes the server verified it stored."""
    entries: dict[str, FileEntry] = {}

    def job(rel: str) -> Callable[[ProgressFn | None], None]:
        def run(tick: ProgressFn | None) -> None:
            stored = store.put_file(f"{key_prefix}/{rel}", root / rel, progress=tick)
            entries[rel] = FileEntry(stored.sha256, stored.size)

        return run

    sizes = {f: (root / f).stat().st_size for f in files}
    # Largest first: a large file started last would finish alone, long after the small ones, on one connection.
    order = sorted(files, key=lambda f: -sizes[f])
    _run_all({f: job(f) for f in order}, workers=workers, total=sum(sizes.values()), progress=progress, what="upload")
    return entries


def verify_uploaded(store: Store, key_prefix: str, entries: Mapping[str, FileEntry]) -> None:
    """One listing confirms every object is still present with its size (each was checksummed by the server as it
    was stored; this catches a deletion since, e.g. by a prune that judged the publish dead)."""
    listed = {o.key[len(key_prefix) + 1 :]: o.size for o in store.list(f"{key_prefix}/")}
    bad = [rel for rel, e in sorted(entries.items()) if listed.get(rel) != e.size]
    if bad:
        raise TransferError(
            f"{len(bad)} uploaded files missing or of the wrong size under {store.uri}/{key_prefix}; first {bad[0]}"
        )


def download_tree(
    store: Store,
    key_prefix: str,
    entries: Mapping[str, FileEntry],
    dest: Path,
    *,
    workers: int = DEFAULT_WORKERS,
    progress: bool = False,
    on_bytes: ProgressFn | None = None,
) -> None:
    """Download every file to ``dest/<file>`` and check its size and sha256; ``TransferError`` names the bad ones.
    The bytes received are shown on a bar when ``progress`` and told to ``on_bytes``, as they arrive."""

    def job(rel: str, want: FileEntry) -> Callable[[ProgressFn | None], None]:
        def run(tick: ProgressFn | None) -> None:
            path = dest / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            store.download_file(f"{key_prefix}/{rel}", path, progress=tick)
            got = sha256_file(path)
            if got != want:
                raise TransferError(
                    f"checksum mismatch: want sha256 {want.sha256[:12]}… {want.size} B, "
                    f"got {got.sha256[:12]}… {got.size} B"
                )

        return run

    total = sum(e.size for e in entries.values())
    jobs = {rel: job(rel, e) for rel, e in entries.items()}
    _run_all(jobs, workers=workers, total=total, progress=progress, what="download", on_bytes=on_bytes)
