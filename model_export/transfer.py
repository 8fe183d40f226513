"""Parallel, verified directory transfers, written once above the :class:`Store` interface."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from model_export.errors import TransferError
from model_export.manifest import FileEntry
from model_export.store.base import Store

DEFAULT_WORKERS = 16
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


def _run_all(
    jobs: Mapping[str, Callable[[], int]], *, workers: int, total: int, progress: bool, what: str
) -> dict[str, int]:
    """Run one job per file; each returns the bytes it moved. All failures are collected and reported together."""
    done: dict[str, int] = {}
    failed: dict[str, Exception] = {}
    with (
        tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=what, disable=not progress) as bar,
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
    ):
        futures = {pool.submit(job): name for name, job in jobs.items()}
        for fut in as_completed(futures):
            name = futures[fut]
            try:
                done[name] = fut.result()
                bar.update(done[name])
            except Exception as e:
                failed[name] = e
    if failed:
        first = sorted(failed)[0]
        raise TransferError(
            f"{what}: {len(failed)} of {len(jobs)} files failed; first {first}: {failed[first]}"
        ) from failed[first]
    return done


def upload_tree(
    store: Store,
    root: Path,
    files: Sequence[str],
    key_prefix: str,
    *,
    workers: int = DEFAULT_WORKERS,
    progress: bool = False,
) -> dict[str, FileEntry]:
    """Hash and upload ``files`` (relative to ``root``) to ``key_prefix/<file>``; return each file's entry."""
    entries: dict[str, FileEntry] = {}

    def job(rel: str) -> Callable[[], int]:
        def run() -> int:
            path = root / rel
            entries[rel] = sha256_file(path)  # read once here; the upload then reads from the page cache
            store.upload_file(f"{key_prefix}/{rel}", path)
            return entries[rel].size

        return run

    total = sum((root / f).stat().st_size for f in files)
    _run_all({f: job(f) for f in files}, workers=workers, total=total, progress=progress, what="upload")
    return entries


def verify_uploaded(store: Store, key_prefix: str, entries: Mapping[str, FileEntry]) -> None:
    """One listing confirms every object is present with its size (content was checksummed in transit)."""
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
) -> None:
    """Download every file to ``dest/<file>`` and check its size and sha256; ``TransferError`` names the bad ones."""

    def job(rel: str, want: FileEntry) -> Callable[[], int]:
        def run() -> int:
            path = dest / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            store.download_file(f"{key_prefix}/{rel}", path)
            got = sha256_file(path)
            if got != want:
                raise TransferError(
                    f"checksum mismatch: want sha256 {want.sha256[:12]}… {want.size} B, "
                    f"got {got.sha256[:12]}… {got.size} B"
                )
            return got.size

        return run

    total = sum(e.size for e in entries.values())
    jobs = {rel: job(rel, e) for rel, e in entries.items()}
    _run_all(jobs, workers=workers, total=total, progress=progress, what="download")
