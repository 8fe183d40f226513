"""Publish a SavedModel as the next immutable version of a model.

Order of events, so that a crash anywhere leaves the manifest unchanged and a rerun succeeds:
1. validate the SavedModel locally and the signature against ``stable`` (nothing written yet);
2. reserve version N with a create-only write of its reservation (``layout.pending_key``; two publishers never share N);
3. hash and upload the files in parallel under ``layout.version_prefix``, then verify them with one listing;
4. add N to the manifest by compare-and-swap (the signature is checked again against the stable of that moment);
5. delete the reservation. ``prune`` removes what crashed publishes leave behind.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from model_export import layout
from model_export.constants import STABLE
from model_export.errors import BadInput, ModelfleetError, PreconditionFailed, SignatureChanged
from model_export.manifest import (
    Manifest,
    VersionEntry,
    actor,
    check_label,
    check_model_name,
    load_manifest,
    now,
    update_manifest,
)
from model_export.savedmodel import SavedModelInfo, inspect_savedmodel
from model_export.store import Store, checked_store
from model_export.transfer import DEFAULT_WORKERS, upload_tree, verify_uploaded

HEARTBEAT_SECONDS = 30.0


@dataclass(frozen=True)
class PublishResult:
    model: str
    version: int
    store: str
    files: int
    bytes: int
    labels: list[str]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def signature_problem(manifest: Manifest, info: SavedModelInfo) -> str | None:
    """Why ``info`` would break clients of the current stable version, or ``None``."""
    stable = manifest.labels.get(STABLE)
    if stable is None:
        return None
    problems = manifest.get(stable).signature.input_incompatibilities(info.signature)
    if not problems:
        return None
    return (
        f"serving_default inputs differ from stable version {stable} of {manifest.model!r}: {'; '.join(problems)}; "
        "pass --allow-signature-change to publish anyway"
    )


def git_sha(cwd: Path) -> str | None:
    """The commit of the working tree the publish runs from, when there is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _reserve(store: Store, model: str, record: dict[str, Any]) -> int:
    """Claim the lowest free version number above everything published or reserved."""
    while True:
        manifest, _ = load_manifest(store, model)
        listed = (layout.reserved_version(model, o.key) for o in store.list(layout.pending_prefix(model)))
        reserved = [v for v in listed if v is not None]
        version = max([manifest.last_version, *reserved]) + 1
        while True:
            try:
                body = json.dumps({**record, "version": version}).encode()
                store.write(layout.pending_key(model, version), body, if_absent=True)
                break
            except PreconditionFailed:
                version += 1  # another publisher got there first
        # A reservation is deleted right after its version is committed, so the create above can succeed for a
        # number published since our manifest read. Only a manifest read after the reservation settles it.
        if version > load_manifest(store, model)[0].last_version:
            return version
        store.delete([layout.pending_key(model, version)])


@contextlib.contextmanager
def _heartbeat(store: Store, key: str, body: bytes, every: float) -> Iterator[None]:
    """Keep the reservation's modification time fresh so ``prune`` knows this publish is alive."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            with contextlib.suppress(Exception):  # a missed beat only makes the reservation look older
                store.write(key, body)

    thread = threading.Thread(target=beat, name="publish-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def publish(
    savedmodel_dir: str | Path,
    store: str | Store,
    model: str,
    *,
    label: str | None = None,
    allow_signature_change: bool = False,
    source: Mapping[str, str] | None = None,
    workers: int = DEFAULT_WORKERS,
    progress: bool = False,
) -> PublishResult:
    """Upload ``savedmodel_dir`` as the next version of ``model`` and record it in the manifest.

    ``source`` is free-form provenance (``git_sha``, ``job_id``, ...); the git commit of the current directory is
    added when not given. ``label`` (e.g. ``canary``) is set in the same manifest update.
    """
    started = time.monotonic()
    check_model_name(model)
    if label is not None:
        check_label(label)
    if workers < 1:
        raise BadInput(f"workers must be at least 1, got {workers}")
    info = inspect_savedmodel(savedmodel_dir)
    st = checked_store(store)
    manifest, _ = load_manifest(st, model)
    if not allow_signature_change and (problem := signature_problem(manifest, info)):
        raise SignatureChanged(problem)

    meta = {k: str(v) for k, v in (source or {}).items() if v}
    if "git_sha" not in meta and (sha := git_sha(Path.cwd())):
        meta["git_sha"] = sha
    by = actor()
    record = {"publisher": uuid.uuid4().hex, "by": by, "started": now()}
    version = _reserve(st, model, record)
    reservation = layout.pending_key(model, version)
    prefix = layout.version_prefix(model, version)
    try:
        with _heartbeat(st, reservation, json.dumps({**record, "version": version}).encode(), HEARTBEAT_SECONDS):
            entries = upload_tree(st, info.path, info.files, prefix, workers=workers, progress=progress)
            verify_uploaded(st, prefix, entries)

        entry = VersionEntry(version, now(), entries, info.signature, meta)

        def add(m: Manifest) -> None:
            if version in m.versions:  # cannot happen while reservations hold; never overwrite a published entry
                raise ModelfleetError(f"version {version} of {model!r} was published by another publisher meanwhile")
            if not allow_signature_change and (problem := signature_problem(m, info)):
                raise SignatureChanged(problem)
            m.versions[version] = entry
            m.last_version = max(m.last_version, version)
            if label is not None:
                m.move_label(label, version, "publish", by)

        final, _ = update_manifest(st, model, add)
    except BaseException:
        # Best effort: leave nothing behind. If this fails too (or we are killed), prune cleans up later. A commit
        # whose reply was lost may still have landed, so files are deleted only if the manifest surely lacks them.
        with contextlib.suppress(Exception):
            if version not in load_manifest(st, model)[0].versions:
                st.delete([f"{prefix}/{rel}" for rel in info.files] + [reservation])
        raise
    st.delete([reservation])
    return PublishResult(
        model=model,
        version=version,
        store=st.uri,
        files=len(entries),
        bytes=entry.total_bytes,
        labels=final.labels_of(version),
        seconds=round(time.monotonic() - started, 3),
    )
