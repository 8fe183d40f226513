"""Every key modelfleet reads or writes in a store, relative to the store's URI (``gs://bucket/prefix`` etc.).

::

    <model>/manifest.json              the only object servers trust (:func:`manifest_key`)
    <model>/<N>/<file>                 the files of version N, immutable once committed (:func:`version_prefix`)
    <model>/_pending/<N>.json          reservation of N while a publish uploads (:func:`pending_key`)
    _agent/<sha256>/<wheel name>       the agent wheel fleet VMs install (:func:`agent_wheel_key`)
    _fleet/<fleet>/drain/<slot>.json   a drain-slot lease of fleet <fleet> (``stable``, ``canary``): which VM may take
                                       itself out of the load balancer to switch versions (:func:`drain_slot_key`,
                                       ``modelfleet.agent.lease``)
    _fleet/<fleet>/status/<id>.json    the heartbeat of instance <id> of fleet <fleet>: what it serves, its request
                                       counters (:func:`heartbeat_key`, ``model_export.heartbeat``)

The two ``_fleet/`` kinds are the only keys fleet VMs write.

Model names start alphanumeric (``manifest.MODEL_RE``), so a top-level prefix that starts with ``_`` never collides
with a model. A prefix added later (for example the fleet status of issue 11) is defined here, below the others, as
one more ``_name`` constant with a function that builds its keys; nothing else spells a key. Documented in
docs/manifest.md.
"""

from __future__ import annotations

import re

MANIFEST_NAME = "manifest.json"
PENDING_DIR = "_pending"  # inside a model's prefix: version reservations
# Top-level prefixes that are not models (each starts with "_"). Add new ones here.
AGENT_PREFIX = "_agent"  # agent wheels
FLEET_PREFIX = "_fleet"  # per-fleet coordination objects the VMs themselves write (drain-slot leases)
DRAIN_DIR = "drain"  # inside a fleet's prefix: one lease object per drain slot
STATUS_DIR = "status"  # inside a fleet's prefix: one heartbeat object per instance
# An instance id is a key part: a cloud instance name or id, or a host name. Nothing that would need escaping.
INSTANCE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_RESERVATION_SUFFIX = ".json"


def model_prefix(model: str) -> str:
    """Everything stored for ``model`` (manifest, versions, reservations) lists under this prefix."""
    return f"{model}/"


def manifest_key(model: str) -> str:
    return f"{model}/{MANIFEST_NAME}"


def version_prefix(model: str, version: int) -> str:
    """The directory of version ``version``; its files are ``<version_prefix>/<relative path>``."""
    return f"{model}/{version}"


def pending_prefix(model: str) -> str:
    return f"{model}/{PENDING_DIR}/"


def pending_key(model: str, version: int) -> str:
    return f"{pending_prefix(model)}{version}{_RESERVATION_SUFFIX}"


def version_number(name: str) -> int | None:
    """The version a directory or key part names: ASCII digits only. ``str.isdigit`` alone also admits "²" (which
    ``int`` refuses with a traceback) and other scripts' digits ("٣" is 3 to ``int``): neither is a version."""
    return int(name) if name.isascii() and name.isdigit() else None


def version_of_file(model: str, key: str) -> int | None:
    """N when ``key`` is a file of ``<model>/<N>/``, else ``None``."""
    head, sep, rest = key.removeprefix(model_prefix(model)).partition("/")
    if not key.startswith(model_prefix(model)) or not sep or not rest:
        return None
    return version_number(head)


def reserved_version(model: str, key: str) -> int | None:
    """N when ``key`` is the reservation ``<model>/_pending/<N>.json``, else ``None``."""
    name = key.removeprefix(pending_prefix(model))
    if not key.startswith(pending_prefix(model)) or not name.endswith(_RESERVATION_SUFFIX):
        return None
    number = name.removesuffix(_RESERVATION_SUFFIX)
    return version_number(number)


def agent_wheel_key(sha256: str, wheel_name: str, prefix: str = "") -> str:
    """``[<prefix>/]_agent/<sha256>/<wheel name>``: the file name stays a valid wheel name (pip needs it); the hash in
    the path makes every build its own object, so an upload never overwrites what running VMs were told to fetch."""
    return "/".join(part for part in (prefix, AGENT_PREFIX, sha256, wheel_name) if part)


def fleet_prefix(fleet: str) -> str:
    """Everything a fleet's VMs write lists under this prefix (``_fleet/<fleet>/``); the stacks grant the fleet
    identities write access to ``_fleet/`` and nothing else."""
    return f"{FLEET_PREFIX}/{fleet}/"


def drain_prefix(fleet: str) -> str:
    return f"{fleet_prefix(fleet)}{DRAIN_DIR}/"


def drain_slot_key(fleet: str, slot: int) -> str:
    """``_fleet/<fleet>/drain/<slot>.json``: the lease object of drain slot ``slot`` (0, 1, ...)."""
    if slot < 0:
        raise ValueError(f"a drain slot is 0 or more, got {slot}")
    return f"{drain_prefix(fleet)}{slot}{_RESERVATION_SUFFIX}"


def drain_slot_of(fleet: str, key: str) -> int | None:
    """N when ``key`` is the lease ``_fleet/<fleet>/drain/<N>.json``, else ``None``."""
    name = key.removeprefix(drain_prefix(fleet))
    if not key.startswith(drain_prefix(fleet)) or not name.endswith(_RESERVATION_SUFFIX):
        return None
    return version_number(name.removesuffix(_RESERVATION_SUFFIX))


def check_instance_id(instance: str) -> str:
    """``instance`` when it can name a heartbeat key (``INSTANCE_ID_RE``); ``ValueError`` naming it otherwise."""
    if not INSTANCE_ID_RE.fullmatch(instance):
        raise ValueError(
            f"instance id {instance!r} is invalid: 1 to 128 of A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )
    return instance


def heartbeat_prefix(fleet: str) -> str:
    return f"{fleet_prefix(fleet)}{STATUS_DIR}/"


def heartbeat_key(fleet: str, instance: str) -> str:
    """``_fleet/<fleet>/status/<instance>.json``: the one object instance ``instance`` of ``fleet`` overwrites at every
    heartbeat."""
    return f"{heartbeat_prefix(fleet)}{check_instance_id(instance)}{_RESERVATION_SUFFIX}"


def heartbeat_instance_of(fleet: str, key: str) -> str | None:
    """The instance id when ``key`` is a heartbeat of ``fleet``, else ``None``."""
    name = key.removeprefix(heartbeat_prefix(fleet))
    if not key.startswith(heartbeat_prefix(fleet)) or not name.endswith(_RESERVATION_SUFFIX):
        return None
    instance = name.removesuffix(_RESERVATION_SUFFIX)
    return instance if INSTANCE_ID_RE.fullmatch(instance) else None
