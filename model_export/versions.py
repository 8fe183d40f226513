"""Version operations on a model's manifest: list models, list, label, promote, rollback, prune.

Each label change is one compare-and-swap of the manifest and one entry in its history; servers follow it
without a redeploy.
"""

from __future__ import annotations

import datetime as dt
import difflib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from model_export import layout
from model_export.constants import CANARY, ROLES, STABLE
from model_export.errors import BadInput, UnknownModel
from model_export.manifest import (
    MODEL_RE,
    LabelMove,
    Manifest,
    actor,
    check_label,
    check_model_name,
    label_typo,
    load_manifest,
    update_manifest,
)
from model_export.store import Store, checked_store

T = TypeVar("T")

DEFAULT_PENDING_GRACE_SECONDS = 600.0
# A heartbeat not rewritten for this long is a VM that no longer exists (scaled in, replaced): prune deletes it, so
# autoscaling churn does not grow what every `status` lists and reads.
HEARTBEAT_GONE_SECONDS = 7 * 24 * 3600.0
MAX_PENDING_GRACE_SECONDS = 10 * 365 * 24 * 3600.0


def open_store(store: str | Store, model: str) -> Store:
    check_model_name(model)
    return checked_store(store)


def model_names(store: str | Store) -> list[str]:
    """The models in a store, sorted: each top-level prefix with a manifest. ``_``-prefixes (``layout``) are not models.

    One listing of the whole store: the store API has no delimiter listing, so this reads every key once.
    """
    st = checked_store(store)
    names = set()
    for obj in st.list(""):
        name, sep, rest = obj.key.partition("/")
        if sep and rest == layout.MANIFEST_NAME and not name.startswith("_") and MODEL_RE.fullmatch(name):
            names.add(name)
    return sorted(names)


def unknown_model(st: Store, model: str) -> UnknownModel:
    """The error for a model nothing was published under (or deleted): the store's models and the closest names."""
    known = [s.model for s in list_models(st)]
    if not known:
        return UnknownModel(f"no model {model!r} in {st.uri} (nothing published under that name)")
    close = difflib.get_close_matches(model, known, n=3)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return UnknownModel(f"no model {model!r} in {st.uri} (models: {', '.join(known)}{hint})")


def existing(st: Store, model: str) -> Manifest:
    """The model's manifest; ``UnknownModel`` when nothing was published under the name, or the model was deleted."""
    manifest, token = load_manifest(st, model)
    if token is None or manifest.deleted:
        raise unknown_model(st, model)
    return manifest


@dataclass(frozen=True)
class ModelSummary:
    """One line of ``list_models``: a model's labels and its newest version (``None`` when prune left none)."""

    model: str
    labels: dict[str, int]
    latest_version: int | None
    versions: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def list_models(store: str | Store) -> list[ModelSummary]:
    """Every model in the store (sorted by name) with its labels and latest version."""
    st = checked_store(store)
    summaries = []
    for name in model_names(st):
        manifest, token = load_manifest(st, name)
        if token is None or manifest.deleted:  # deleted (a tombstone, or gone between the listing and the read)
            continue
        latest = max(manifest.versions, default=None)
        summaries.append(ModelSummary(name, dict(sorted(manifest.labels.items())), latest, len(manifest.versions)))
    return summaries


def history(store: str | Store, model: str) -> list[LabelMove]:
    """The model's label history as the manifest records it, oldest first."""
    return list(get_manifest(store, model).history)


def get_manifest(store: str | Store, model: str) -> Manifest:
    """The model's manifest; ``UnknownModel`` when nothing was ever published under that name."""
    return existing(open_store(store, model), model)


def _change(store: str | Store, model: str, change: Callable[[Manifest], None], action: str) -> Manifest:
    st = open_store(store, model)
    existing(st, model)  # UnknownModel rather than an empty manifest's "no version N"
    manifest, _ = update_manifest(st, model, change, action=action)
    return manifest


def set_label(store: str | Store, model: str, label: str, version: int, *, new_label: bool = False) -> Manifest:
    """Point ``label`` at ``version`` (which must be in the manifest). A label the model does not have yet that is
    one typo away from one it has (``stabel``) is refused unless ``new_label``."""
    check_label(label)

    def change(m: Manifest) -> None:
        if not new_label and (typo := label_typo(m.labels, label)):
            raise BadInput(f"model {model!r}: {typo}")
        m.move_label(label, version, "label", actor())

    return _change(store, model, change, "label")


def clear_label(store: str | Store, model: str, label: str) -> Manifest:
    check_label(label)

    def change(m: Manifest) -> None:
        if label not in m.labels:
            close = difflib.get_close_matches(label, sorted(m.labels), n=2)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            labels = ", ".join(sorted(m.labels)) or "none"
            raise BadInput(f"model {model!r} has no label {label!r} (labels: {labels}){hint}")
        m.move_label(label, None, "unlabel", actor())

    return _change(store, model, change, "unlabel")


def promote(store: str | Store, model: str) -> Manifest:
    """Make the canary version stable and clear the canary label."""

    def change(m: Manifest) -> None:
        if CANARY not in m.labels:
            raise BadInput(f"model {model!r} has no {CANARY!r} label to promote; set one with `modelfleet label`")
        by = actor()
        m.move_label(STABLE, m.labels[CANARY], "promote", by)
        m.move_label(CANARY, None, "promote", by)

    return _change(store, model, change, "promote")


def rollback(store: str | Store, model: str, to: int | None = None) -> Manifest:
    """Move ``stable`` back to the previous stable from the history, or to version ``to``."""

    def change(m: Manifest) -> None:
        target = to
        if target is None:
            target = m.previous_stable()
            if target is None:
                raise BadInput(f"model {model!r} has no previous stable version to roll back to; use --to N")
        m.get(target)
        if m.labels.get(STABLE) == target:
            raise BadInput(f"version {target} of {model!r} is already stable")
        m.move_label(STABLE, target, "rollback", actor())

    return _change(store, model, change, "rollback")


@dataclass
class PrunePlan:
    model: str
    versions: list[int] = field(default_factory=list)  # published versions removed from the manifest
    leftovers: list[int] = field(default_factory=list)  # crashed publishes, now abandoned (never in the manifest)
    in_progress: list[int] = field(default_factory=list)  # reservations still alive: left alone
    objects: int = 0
    bytes: int = 0
    partial_uploads: int = 0  # incomplete uploads aborted (S3 multipart, file-store temp files)
    heartbeats: int = 0  # heartbeats of instances gone for over HEARTBEAT_GONE_SECONDS, deleted
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _kept(m: Manifest, keep: int) -> set[int]:
    newest = sorted(m.versions, reverse=True)[:keep]
    previous = m.previous_stable()
    return set(newest) | set(m.labels.values()) | ({previous} if previous is not None else set())


def prune(
    store: str | Store,
    model: str,
    keep: int,
    *,
    dry_run: bool = False,
    pending_grace_seconds: float = DEFAULT_PENDING_GRACE_SECONDS,
) -> PrunePlan:
    """Delete all but the ``keep`` newest versions, never a labeled one or the previous stable; also remove what
    crashed publishes left (files not in the manifest whose reservation is older than the grace period), and the
    heartbeats of instances gone for over ``HEARTBEAT_GONE_SECONDS``.
    """
    if keep < 0:
        raise BadInput(f"--keep must be 0 or more, got {keep}")
    # Also refuses nan, inf and spans no clock can subtract (timedelta overflows past 999999999 days).
    if not 0 <= pending_grace_seconds <= MAX_PENDING_GRACE_SECONDS:
        raise BadInput(
            f"pending grace must be 0 to {MAX_PENDING_GRACE_SECONDS:g} seconds (10 years), got {pending_grace_seconds}"
        )
    st = open_store(store, model)
    # List before reading the manifest: a version committed after the listing still has its reservation in it.
    objects: dict[int, list[tuple[str, int]]] = defaultdict(list)
    reservations: dict[int, dt.datetime] = {}
    for obj in st.list(layout.model_prefix(model)):
        if (version := layout.version_of_file(model, obj.key)) is not None:
            objects[version].append((obj.key, obj.size))
        elif (version := layout.reserved_version(model, obj.key)) is not None:
            reservations[version] = obj.modified
    manifest = existing(st, model)

    cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=pending_grace_seconds)
    plan = PrunePlan(model, dry_run=dry_run)
    dead: list[int] = []
    for version in sorted(set(objects) | set(reservations)):
        if version in manifest.versions:
            continue
        if version in reservations and reservations[version] > cutoff:
            plan.in_progress.append(version)
        else:
            dead.append(version)

    gone_before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=HEARTBEAT_GONE_SECONDS)
    old_beats = [
        obj.key
        for fleet in ROLES
        for obj in st.list(layout.heartbeat_prefix(fleet))
        if layout.heartbeat_instance_of(fleet, obj.key) is not None and obj.modified < gone_before
    ]
    plan.heartbeats = len(old_beats)
    if dry_run:
        plan.versions = sorted(set(manifest.versions) - _kept(manifest, keep))
        plan.leftovers = dead
    else:
        by = actor()

        def drop(m: Manifest) -> tuple[list[int], list[int]]:
            gone = sorted(set(m.versions) - _kept(m, keep))
            for v in gone:
                del m.versions[v]
            # The fence: a version judged dead is recorded as abandoned in the same compare-and-swap, before any of
            # its files is deleted. Its publisher's commit checks this and fails, so a publisher that was only
            # paused can never commit a version whose files are gone; the number is never used again.
            fenced = [v for v in dead if v not in m.versions]
            for v in fenced:
                m.abandon(v, by)
            return gone, fenced

        _, (plan.versions, plan.leftovers) = update_manifest(st, model, drop, action="prune")

    doomed = plan.versions + plan.leftovers
    keys = [key for v in doomed for key, _ in objects.get(v, [])]
    plan.objects = len(keys)
    plan.bytes = sum(size for v in doomed for _, size in objects.get(v, []))
    if not dry_run:
        st.delete(keys)
        # What listings never show: incomplete multipart uploads, temp files of a killed writer.
        plan.partial_uploads = st.abort_partial_uploads(layout.model_prefix(model), cutoff)
        # Reservations go last, so an interrupted prune still sees the leftovers next time.
        st.delete([layout.pending_key(model, v) for v in plan.leftovers if v in reservations])
        st.delete(old_beats)
    return plan
