"""What a fleet should serve, and the next config step towards it (pure functions, no I/O).

The rules (also in docs/agent.md). TF Serving checks a config's labels BEFORE it loads anything, against the versions
AVAILABLE at that moment, and refuses the whole config (or, for its first config at start-up, exits) when a label
names any other version (server_core.cc: ``ReloadConfig`` calls ``UpdateModelVersionLabelMap`` before adding models).

* The desired version of a role: ``stable`` serves the ``stable`` label; ``canary`` serves the ``canary`` label, or
  ``stable`` when no canary is set.
* A label only ever names a version TF Serving has reported AVAILABLE. The config that first loads a version keeps
  the labels where they are (on the version still serving); the labels move, and the old version is dropped, in the
  config written once TF Serving reports the target AVAILABLE. A model TF Serving does not know yet gets no label
  until its version is AVAILABLE.
* Nothing above the target is ever newly loaded. Moving UP, the transition config holds {old, target}: the highest,
  which answers unversioned requests, is the target as soon as it is AVAILABLE. Moving DOWN (rollback), it holds
  {target, old}: the old version is not new, it keeps answering until the target is AVAILABLE (TF Serving never
  unloads before the replacement is loaded anyway), and the next config drops it.
* TF Serving not listening (connection refused or closed: stopped, or still starting, since it opens its ports only
  once every model is loaded): whatever the file says is read as its first config, so it gets the target alone and
  no label. TF Serving answering but not usefully (timeout, error): nothing it has not confirmed is assumed, the
  labels stay on the version they name.
"""

from __future__ import annotations

from collections.abc import Mapping

from model_export.constants import CANARY, ROLES, STABLE
from modelfleet.agent.tfs_config import ModelEntry


def desired_version(labels: Mapping[str, int], role: str) -> int | None:
    """The version a fleet of ``role`` should serve, from a manifest's labels; ``None`` when unlabeled."""
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if role == CANARY and CANARY in labels:
        return labels[CANARY]
    return labels.get(STABLE)


def steady_labels(role: str, target: int, manifest_labels: Mapping[str, int]) -> dict[str, int]:
    """Labels a settled fleet exposes: its own role's label, plus any other role label that names the same version
    (a canary fleet serving stable answers ``/labels/stable`` too)."""
    return {label: target for label in ROLES if label == role or manifest_labels.get(label) == target}


def next_entry(
    name: str,
    base_path: str,
    role: str,
    target: int,
    manifest_labels: Mapping[str, int],
    previous: ModelEntry | None,
    available: frozenset[int] | None,
    *,
    first_config: bool = False,
) -> ModelEntry:
    """The config entry to write now for a model whose fleet should serve ``target``.

    ``previous`` is the entry last written; ``available`` the versions TF Serving reports AVAILABLE, ``None`` when it
    could not be asked; ``first_config`` when it is not running, so that it will read the file as its first config.
    """
    if first_config:
        return ModelEntry(name, base_path, (target,), {})
    if available is None:
        # Unconfirmed: only what the labels named when they were written (then AVAILABLE) is assumed still loaded.
        available = frozenset(previous.labels.values()) if previous is not None else frozenset()
    if target in available:
        return ModelEntry(name, base_path, (target,), steady_labels(role, target, manifest_labels))
    # The target is not AVAILABLE yet: load it, and keep the labels on what they point at while that still serves.
    kept = {} if previous is None else {k: v for k, v in previous.labels.items() if v in available}
    versions = tuple(sorted({target, *kept.values()}))
    return ModelEntry(name, base_path, versions, kept)
