"""``modelfleet delete``: one version (out of the manifest first, then its files) or a whole model."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from model_export import layout
from model_export.constants import ROLES
from model_export.errors import BadInput, ConflictRetriesExhausted
from model_export.manifest import DELETE_MODEL, Manifest, actor, load_manifest, update_manifest
from model_export.store import Store
from model_export.versions import existing, open_store, unknown_model

# Rounds of `delete --all`'s fence before it gives up: each round is needed only by a publish that reserved its
# number in the instant between the previous round's listing and its write.
FENCE_ROUNDS = 5


@dataclass
class Deletion:
    """What ``delete_version`` / ``delete_model`` removed (or, for ``confirm``, is about to remove)."""

    model: str
    versions: list[int] = field(default_factory=list)  # taken out of the manifest by this call
    objects: int = 0
    bytes: int = 0
    labels: dict[str, int] = field(default_factory=dict)  # delete_model: the labels the model had
    manifest: bool = True  # delete_model: a manifest existed (False: a re-run cleaning up what a crash left)
    leftover: bool = False  # delete_version: the version was already out of the manifest; only its files went

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _version_objects(st: Store, model: str, version: int) -> list[tuple[str, int]]:
    # The prefix "m/1" also lists "m/10/...": keep only the keys that are files of this version.
    listed = st.list(layout.version_prefix(model, version) + "/")
    return [(o.key, o.size) for o in listed if layout.version_of_file(model, o.key) == version]


def _reserved(st: Store, model: str, version: int) -> bool:
    return any(o.key == layout.pending_key(model, version) for o in st.list(layout.pending_prefix(model)))


def protected_reason(m: Manifest, version: int) -> str | None:
    """Why ``version`` must not be deleted (a label names it, or it is the rollback target), or ``None``."""
    labels = m.labels_of(version)
    if labels:
        return f"it is labelled {', '.join(labels)}; move or clear the label first (`modelfleet label`)"
    if m.previous_stable() == version:
        return "it is the rollback target (the previous stable); `modelfleet rollback` would go back to it"
    return None


def delete_version(store: str | Store, model: str, version: int) -> Deletion:
    """Delete one version: out of the manifest first (one compare-and-swap, so the label checks see the latest
    labels and a server never sees a listed version without files), then its files.

    A crash between the two leaves files no manifest lists: a re-run deletes them, and so does ``prune`` (it fences
    the number and deletes the files like a crashed publish's). A number above ``last_version`` is never touched: it
    may be a publish in flight.
    """
    st = open_store(store, model)
    existing(st, model)

    def drop(m: Manifest) -> bool:
        if m.deleted:  # `delete --all` landed since the check above: writing now would revive the tombstone
            raise unknown_model(st, model)
        if version not in m.versions:
            if version > m.last_version or not _version_objects(st, model, version):
                m.get(version)  # UnknownVersion, listing the versions
            if _reserved(st, model, version):
                # A publish of N still uploads while a later number committed (last_version passed N): its files.
                raise BadInput(
                    f"version {version} of {model!r} is not in the manifest and a publish holds it "
                    f"({layout.pending_key(model, version)}); nothing deleted — `modelfleet prune` removes it if that "
                    "publish crashed"
                )
            return False  # deleted earlier, files left behind: finish the job
        reason = protected_reason(m, version)
        if reason is not None:
            raise BadInput(f"version {version} of {model!r} was not deleted: {reason}")
        del m.versions[version]
        return True

    _, removed = update_manifest(st, model, drop, action="delete")
    objects = _version_objects(st, model, version)
    st.delete([key for key, _ in objects])
    return Deletion(
        model,
        [version] if removed else [],
        len(objects),
        sum(size for _, size in objects),
        leftover=not removed,
    )


def live_followers(st: Store, model: str) -> list[str]:
    """``fleet/instance`` of every live agent (fresh heartbeat) that follows ``model``, sorted."""
    from model_export.fleet_status import read_heartbeats  # it imports this module

    found = []
    now = dt.datetime.now(dt.timezone.utc).timestamp()
    for fleet in ROLES:
        for seen in read_heartbeats(st, fleet, now).seen:
            if seen.fresh(now) and model in seen.beat.models:
                found.append(f"{fleet}/{seen.beat.instance}")
    return sorted(found)


def delete_model(
    store: str | Store, model: str, *, force: bool = False, confirm: Callable[[Deletion], bool] | None = None
) -> Deletion:
    """Delete a whole model. One compare-and-swap empties its manifest (no versions, no labels: agents stop seeing
    any version) and fences every number a publish holds (listed after ``confirm``; a publish that reserved in the
    instant before that write is fenced by one more round); then every other key under the model's prefix
    (versions, reservations) and its incomplete uploads are deleted. ``confirm`` sees what will go and may say no
    (``BadInput``, nothing deleted). Refused while a live agent follows the model, unless ``force``.

    The emptied manifest stays as a tombstone (``Manifest.deleted``): ``models`` no longer lists the model and every
    command calls it unknown, but a model published again under the name continues from ``last_version`` + 1, so no
    version number is ever reused (TF Serving never reloads a number it holds). A publish running meanwhile fails at
    its commit (its number is fenced). A run cut short is finished by running it again.
    """
    st = open_store(store, model)
    manifest_key = layout.manifest_key(model)
    listed = [o for o in st.list(layout.model_prefix(model)) if o.key != manifest_key]
    manifest, token = load_manifest(st, model)
    if (token is None or manifest.deleted) and not listed:
        raise unknown_model(st, model)
    plan = Deletion(
        model,
        sorted(manifest.versions),
        len(listed),
        sum(o.size for o in listed),
        labels=dict(sorted(manifest.labels.items())),
        manifest=token is not None and not manifest.deleted,
    )
    if plan.manifest and not force and (followers := live_followers(st, model)):
        raise BadInput(
            f"model {model!r} was not deleted: live agents follow it ({', '.join(followers)}); take it out of their "
            "--models first, or pass --force"
        )
    if confirm is not None and not confirm(plan):
        raise BadInput(f"model {model!r} was not deleted: not confirmed")
    by = actor()

    def empty(reserved: set[int]) -> Callable[[Manifest], list[int]]:
        def change(m: Manifest) -> list[int]:
            gone = sorted(m.versions)
            for label in sorted(m.labels):
                m.move_label(label, None, DELETE_MODEL, by)
            m.versions.clear()
            for v in sorted(reserved - set(m.abandoned)):  # the fence: a publish holding v can no longer commit it
                m.abandon(v, by)
            return gone

        return change

    # Listed after the confirmation, which may have waited minutes at a prompt: a publish that reserved its number
    # meanwhile is fenced too, or the next publish would be handed its number while it still uploads.
    rest = [o for o in st.list(layout.model_prefix(model)) if o.key != manifest_key]
    seen = {o.key: o.size for o in listed}
    plan.versions = []
    for _ in range(FENCE_ROUNDS if token is not None else 1):
        reserved = {v for o in rest if (v := layout.reserved_version(model, o.key)) is not None}
        if token is not None:
            emptied, gone = update_manifest(st, model, empty(reserved), action=DELETE_MODEL)
            plan.versions = sorted(set(plan.versions) | set(gone))
        seen |= {o.key: o.size for o in rest}
        # Listed again after the manifest was emptied: this catches files written meanwhile. A reservation made
        # between the fence's listing and its write is fenced by one more round, and so is a version committed in
        # that instant (it is emptied again) — nothing listed here is deleted while a publish could still commit it.
        rest = [o for o in st.list(layout.model_prefix(model)) if o.key != manifest_key]
        if token is None:
            break
        late = {v for o in rest if (v := layout.reserved_version(model, o.key)) is not None} - set(emptied.abandoned)
        if not late and not load_manifest(st, model)[0].versions:
            break
    else:
        raise ConflictRetriesExhausted(
            f"model {model!r}: publishes kept starting under `delete --all`; its manifest is emptied, nothing else "
            "was deleted — stop them and run it again"
        )
    st.delete([o.key for o in rest])
    st.abort_partial_uploads(layout.model_prefix(model), dt.datetime.now(dt.timezone.utc))
    seen |= {o.key: o.size for o in rest}
    plan.objects, plan.bytes = len(seen), sum(seen.values())
    return plan
