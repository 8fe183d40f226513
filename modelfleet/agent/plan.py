"""What a fleet should serve, and the next config step towards it (pure functions, no I/O).

The rules (also in docs/agent.md). TF Serving checks a config's labels BEFORE it loads anything, against the versions
AVAILABLE at that moment, and refuses the whole config (or, for its first config at start-up, exits) when a label
names any other version (server_core.cc: ``ReloadConfig`` calls ``UpdateModelVersionLabelMap`` before adding models).
At start-up it also exits when any configured version fails to load (``WaitUntilModelsAvailable``); after start-up
a version that fails to load only ends ``END`` with its error, and the versions already loaded keep serving.

* The desired version of a role: ``stable`` serves the ``stable`` label; ``canary`` serves the ``canary`` label, or
  ``stable`` when no canary is set.
* A label only ever names a version TF Serving has reported AVAILABLE. The config that first loads a version keeps
  the labels where they are (on the version still serving); the labels move, and the old version is dropped, in the
  config written once TF Serving reports the target AVAILABLE. A model TF Serving does not know yet gets no label
  until its version is AVAILABLE.
* The version that serves is never dropped before its replacement is AVAILABLE: when no label names it (the
  config TF Serving started with has none), it is kept as ``keep``.
* Nothing above the target is ever newly loaded. Moving UP, the transition config holds {old, target}: the highest,
  which answers unversioned requests, is the target as soon as it is AVAILABLE. Moving DOWN (rollback), it holds
  {target, old}: the old version is not new, it keeps answering until the target is AVAILABLE (TF Serving never
  unloads before the replacement is loaded anyway), and the next config drops it.
* TF Serving not listening (connection refused or closed: stopped, or still starting, since it opens its ports only
  once every model is loaded): whatever the file says may be read as its first config. It then holds one version
  that TF Serving has already loaded on this VM (``startup_version``), or nothing of that model, and no label: a
  version never loaded here is only ever added by a reload, where a failure is not fatal. TF Serving answering but
  not usefully (timeout, error): it is running, nothing it has not confirmed is assumed, the labels stay on the
  version they name.
* A version TF Serving failed to load is not listed again; the fleet keeps the version that served, and a VM that
  has none falls back to the most recent earlier stable version (``fallback_versions``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

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
    keep: int | None = None,
) -> ModelEntry:
    """The config entry to write now for a model whose fleet should serve ``target``.

    ``previous`` is the entry last written; ``available`` the versions TF Serving reports AVAILABLE, ``None`` when it
    could not be asked; ``first_config`` when it is not running, so that it may read the file as its first config:
    then ``target`` must be a version it has loaded on this VM before (see :func:`startup_version`). ``keep``: the
    version serving now (the last one TF Serving reported AVAILABLE), kept beside a target that is not AVAILABLE yet
    when no label names it (after a start-up config, which has no labels).
    """
    if first_config:
        return ModelEntry(name, base_path, (target,), {})
    if available is None:
        # Unconfirmed: only what the labels named when they were written (then AVAILABLE) is assumed still loaded.
        available = frozenset(previous.labels.values()) if previous is not None else frozenset()
    if keep is not None and keep not in available and (previous is None or keep not in previous.versions):
        keep = None  # neither loaded nor listed: keeping it would load it anew (maybe above the target)
    if target in available:
        return ModelEntry(name, base_path, (target,), steady_labels(role, target, manifest_labels))
    # The target is not AVAILABLE yet: load it, and keep the labels on what they point at while that still serves.
    kept = {} if previous is None else {k: v for k, v in previous.labels.items() if v in available}
    if not kept and keep is not None and keep != target:
        # No label names the version serving (TF Serving started from a config without labels, or the target moved
        # before the agent's first labeled config): keep it until the target is AVAILABLE, labeled when it can be.
        kept = steady_labels(role, keep, manifest_labels) if keep in available else {}
        return ModelEntry(name, base_path, tuple(sorted({target, keep})), kept)
    versions = tuple(sorted({target, *kept.values()}))
    return ModelEntry(name, base_path, versions, kept)


def startup_version(target: int | None, last_good: int | None, proven: Collection[int]) -> int | None:
    """The one version a config TF Serving may read at start-up names: the last version that served, else the target
    if TF Serving has loaded it on this VM before (``proven``); ``None`` (the model left out) when neither is proven.
    A version never loaded here could fail, and a start-up load that fails makes TF Serving exit. The last good one
    goes first: it is the one most recently loaded here; a target it is not is reached by a reload after start-up."""
    for version in (last_good, target):
        if version is not None and version in proven:
            return version
    return None


def fallback_versions(
    role: str, desired: int, manifest_labels: Mapping[str, int], stable_lineage: Sequence[int], known: Collection[int]
) -> list[int]:
    """Versions to serve instead of ``desired`` when it cannot be loaded and nothing has served on this VM yet, best
    first: for a canary fleet, the stable version; then the earlier stable versions, most recent first (the manifest's
    ``stable_lineage()``); only versions still in the manifest (``known``), never ``desired`` itself."""
    candidates: list[int] = []
    if role == CANARY and STABLE in manifest_labels:
        candidates.append(manifest_labels[STABLE])
    candidates.extend(reversed(stable_lineage))
    return [v for v in dict.fromkeys(candidates) if v != desired and v in known]
