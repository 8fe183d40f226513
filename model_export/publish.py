"""Publish a SavedModel as the next immutable version of a model.

Order of events, so that a crash anywhere leaves the manifest unchanged and a rerun succeeds (the argument for why
this is safe, including a publisher paused for an hour, is in docs/manifest.md):
1. validate the SavedModel locally and the signature against ``stable`` (nothing written yet); with an idempotency
   key already in the manifest, return that version;
2. reserve version N with a create-only write of its reservation (``layout.pending_key``; two publishers never share
   N); a heartbeat rewrites it conditionally, so it never re-creates a reservation prune removed;
3. upload the files in parallel under ``layout.version_prefix``, each created only if absent and read once (the
   server checks a checksum of the bytes hashed), then confirm them with one listing;
4. add N to the manifest by compare-and-swap, unless prune abandoned N meanwhile (the fence, in the same manifest);
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
from model_export.errors import (
    BadInput,
    ModelfleetError,
    ObjectNotFound,
    PreconditionFailed,
    ReservationLost,
    SignatureChanged,
    TransferError,
)
from model_export.manifest import (
    PUBLISH,
    Manifest,
    VersionEntry,
    actor,
    check_idempotency_key,
    check_label,
    check_model_name,
    label_typo,
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
    reused: bool = False  # an earlier publish with the same idempotency key: nothing was uploaded
    idempotency_key: str | None = None

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


@dataclass
class _Reservation:
    """Version ``version`` held by this publisher: the reservation object's key and its current token (what the
    heartbeat's conditional rewrite compares against), and whether the heartbeat found it taken from us."""

    key: str
    version: int
    body: bytes
    token: str
    lost: str | None = None
    # The manifest's last_version when the number was settled. It only ever grows, so a commit that finds it lower
    # finds a manifest that was deleted or a store that was reset under the publish.
    seen_last_version: int = 0


def _reserve(store: Store, model: str, record: dict[str, Any]) -> _Reservation:
    """Claim the lowest version number above everything published, abandoned or reserved."""
    while True:
        manifest, _ = load_manifest(store, model)
        listed = (layout.reserved_version(model, o.key) for o in store.list(layout.pending_prefix(model)))
        reserved = [v for v in listed if v is not None]
        version = max([manifest.last_version, *reserved]) + 1
        while True:
            key = layout.pending_key(model, version)
            body = json.dumps({**record, "version": version}).encode()
            try:
                token = store.write(key, body, if_absent=True)
                break
            except PreconditionFailed:
                version += 1  # another publisher got there first
        # A reservation is deleted right after its version is committed (or abandoned by prune), so the create above
        # can succeed for a number used since our manifest read. Only a manifest read after the create settles it:
        # last_version covers every number ever published or abandoned.
        last_version = load_manifest(store, model)[0].last_version
        if version > last_version:
            return _Reservation(key, version, body, token, seen_last_version=last_version)
        store.delete([key])


@contextlib.contextmanager
def _heartbeat(store: Store, res: _Reservation, every: float) -> Iterator[None]:
    """Keep the reservation's modification time fresh so ``prune`` knows this publish is alive.

    Each beat is a conditional rewrite of our own reservation object: once prune has deleted it (it judged this
    publish dead), the beat fails instead of re-creating it, and the publish stops before its commit."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            try:
                res.token = store.write(res.key, res.body, if_token=res.token)
            except (PreconditionFailed, ObjectNotFound):
                res.lost = (
                    f"its reservation {store.uri}/{res.key} was removed by another process (prune or delete --all)"
                )
                return
            except Exception:  # noqa: S112 - a missed beat only makes the reservation look older
                continue

    thread = threading.Thread(target=beat, name="publish-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _still_ours(st: Store, model: str, res: _Reservation) -> None:
    """Stop before the commit when the reservation is gone or someone else's: prune judged this publish dead (it was
    paused, or its heartbeats failed, for longer than the grace). The commit's fence decides for certain; this only
    says it early and clearly."""
    problem = res.lost
    if problem is None:
        try:
            if st.read(res.key).token != res.token:
                problem = f"its reservation {st.uri}/{res.key} was replaced by another process"
        except ObjectNotFound:
            problem = f"its reservation {st.uri}/{res.key} was removed by another process (prune or delete --all)"
    if problem is not None:
        raise ReservationLost(
            f"publish of {model!r} version {res.version} stopped: {problem}, so the version was given up "
            "(no heartbeat for longer than prune's --pending-grace; was this process paused?); nothing was "
            "committed, publish again"
        )


class _AlreadyPublished(Exception):
    """The idempotency key was committed by an earlier run (found at commit time): return that version instead."""

    def __init__(self, entry: VersionEntry) -> None:
        super().__init__(entry.version)
        self.entry = entry


def _result(
    model: str, st: Store, manifest: Manifest, entry: VersionEntry, started: float, *, reused: bool
) -> PublishResult:
    return PublishResult(
        model=model,
        version=entry.version,
        store=st.uri,
        files=len(entry.files),
        bytes=entry.total_bytes,
        labels=manifest.labels_of(entry.version),
        seconds=round(time.monotonic() - started, 3),
        reused=reused,
        idempotency_key=entry.idempotency_key,
    )


def publish(
    savedmodel_dir: str | Path,
    store: str | Store,
    model: str,
    *,
    label: str | None = None,
    new_label: bool = False,
    allow_signature_change: bool = False,
    source: Mapping[str, str] | None = None,
    idempotency_key: str | None = None,
    workers: int = DEFAULT_WORKERS,
    progress: bool = False,
) -> PublishResult:
    """Upload ``savedmodel_dir`` as the next version of ``model`` and record it in the manifest.

    ``source`` is free-form provenance (``git_sha``, ``job_id``, ...); the git commit of the current directory is
    added when not given. ``label`` (e.g. ``canary``) is set in the same manifest update; a label the model does
    not have yet that is one typo away from one it has (``stabel``) is refused before anything is uploaded, unless
    ``new_label``. ``idempotency_key``
    (default: ``source["job_id"]``) makes a retry safe: if a version was already published with that key, it is
    returned (``reused=True``) and nothing is uploaded.
    """
    started = time.monotonic()
    check_model_name(model)
    if label is not None:
        check_label(label)
    meta = {k: str(v) for k, v in (source or {}).items() if v}
    if idempotency_key is None:
        idempotency_key = meta.get("job_id")
    if idempotency_key is not None:
        check_idempotency_key(idempotency_key)
    if workers < 1:
        raise BadInput(f"workers must be at least 1, got {workers}")
    info = inspect_savedmodel(savedmodel_dir)
    st = checked_store(store)
    manifest, _ = load_manifest(st, model)
    if idempotency_key is not None and (done := manifest.find_by_idempotency_key(idempotency_key)):
        return _result(model, st, manifest, done, started, reused=True)
    if not allow_signature_change and (problem := signature_problem(manifest, info)):
        raise SignatureChanged(problem)
    if label is not None and not new_label and (typo := label_typo(manifest.labels, label)):
        raise BadInput(f"model {model!r}: {typo}; nothing uploaded")

    if "git_sha" not in meta and (sha := git_sha(Path.cwd())):
        meta["git_sha"] = sha
    by = actor()
    record = {"publisher": uuid.uuid4().hex, "by": by, "started": now()}
    res = _reserve(st, model, record)
    version = res.version
    prefix = layout.version_prefix(model, version)
    try:
        with _heartbeat(st, res, HEARTBEAT_SECONDS):
            try:
                entries = upload_tree(st, info.path, info.files, prefix, workers=workers, progress=progress)
            except TransferError:
                _still_ours(st, model, res)  # prune giving the version up mid-upload fails files: say that instead
                raise
        try:
            verify_uploaded(st, prefix, entries)
        except TransferError:
            _still_ours(st, model, res)  # the likelier cause, said plainly: prune gave the version up
            raise
        # Last, right before the commit: the files were listed, and the reservation is still ours.
        _still_ours(st, model, res)
        entry = VersionEntry(
            version, now(), entries, info.signature, meta, idempotency_key=idempotency_key, validation=info.validation
        )

        def add(m: Manifest) -> None:
            # The fence: prune records a version it judged dead in the manifest before it deletes anything, and this
            # check runs inside the same compare-and-swap, so exactly one of the two wins.
            if m.last_version < res.seen_last_version:
                raise ModelfleetError(
                    f"publish of {model!r} version {version} stopped: the manifest went back from last_version "
                    f"{res.seen_last_version} to {m.last_version} (deleted, or the store was reset) while this "
                    "publish ran; nothing was committed — check the store before publishing again"
                )
            if version in m.abandoned:
                raise ReservationLost(
                    f"publish of {model!r} version {version} stopped: prune or delete --all abandoned the version at "
                    f"{m.abandoned[version].time} (no heartbeat for longer than its --pending-grace; was this "
                    "process paused?); nothing was committed, publish again"
                )
            if idempotency_key is not None and (done := m.find_by_idempotency_key(idempotency_key)):
                raise _AlreadyPublished(done)
            if version in m.versions:  # cannot happen while reservations hold; never overwrite a published entry
                raise ModelfleetError(f"version {version} of {model!r} was published by another publisher meanwhile")
            if not allow_signature_change and (problem := signature_problem(m, info)):
                raise SignatureChanged(problem)
            m.versions[version] = entry
            m.last_version = max(m.last_version, version)
            if label is not None:
                m.move_label(label, version, "publish", by)

        final, _ = update_manifest(st, model, add, action=PUBLISH)
        # Checked where it happened: the files are still there under the committed entry. A store reset or a
        # deletion in the instant between the last check and the commit would otherwise be reported as success.
        try:
            verify_uploaded(st, prefix, entries)
        except TransferError as e:
            _withdraw(st, model, version, label)
            raise ModelfleetError(
                f"publish of {model!r} version {version} failed: its files vanished from the store as it was "
                f"committed ({e}); the version was withdrawn and its number given up — check the store"
            ) from e
    except _AlreadyPublished as e:
        _discard(st, model, version, [f"{prefix}/{rel}" for rel in info.files] + [res.key])
        return _result(model, st, load_manifest(st, model)[0], e.entry, started, reused=True)
    except BaseException:
        # Best effort: leave nothing behind. If this fails too (or we are killed), prune cleans up later.
        _discard(st, model, version, [f"{prefix}/{rel}" for rel in info.files] + [res.key])
        raise
    st.delete([res.key])
    return _result(model, st, final, entry, started, reused=False)


def _withdraw(st: Store, model: str, version: int, label: str | None) -> None:
    """Take a just-committed version out of the manifest again: put back the label this publish moved (the stable
    before it, or none) and give up the number, so no agent is told to fetch files that are gone."""

    def undo(m: Manifest) -> None:
        if version not in m.versions:
            return
        del m.versions[version]
        for name, target in list(m.labels.items()):
            if target == version:
                previous = next(
                    (h.from_version for h in reversed(m.history) if h.label == name and h.to_version == version), None
                )
                m.move_label(name, previous if previous in m.versions else None, "withdraw", actor())
        m.abandon(version, actor())

    with contextlib.suppress(Exception):
        update_manifest(st, model, undo, action="withdraw")


def _discard(st: Store, model: str, version: int, keys: list[str]) -> None:
    """Delete what a publish that did not commit wrote. A commit whose reply was lost may still have landed, so only
    if the manifest surely lacks the version; the files are ours alone (create-only writes under our number)."""
    with contextlib.suppress(Exception):
        if version not in load_manifest(st, model)[0].versions:
            st.delete(keys)
