"""A model's manifest (its key is :func:`model_export.layout.manifest_key`): the one object servers trust, and its
compare-and-swap update.

Schema (documented in docs/manifest.md): complete versions with every file's sha256 and size, the serving signature,
labels, and an append-only history of label moves. A version appears here only after all its files are uploaded and
verified, so anything that follows the manifest never sees a partial version.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import random
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from model_export.constants import STABLE
from model_export.errors import (
    BadInput,
    ConflictRetriesExhausted,
    InvalidName,
    ManifestError,
    ObjectNotFound,
    PreconditionFailed,
    UnknownVersion,
)
from model_export.layout import manifest_key
from model_export.signature import Signature
from model_export.store.base import Store

SCHEMA_VERSION = 1
# \A...\Z, not ^...$: "$" also matches before a trailing newline, which let "canary\n" through.
NAME_RE = re.compile(r"\A[A-Za-z0-9_]+\Z")  # TF Serving's rule for labels
MODEL_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
T = TypeVar("T")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def actor() -> str | None:
    """Who is acting, for the history: ``MODELFLEET_ACTOR`` or ``user@host``."""
    explicit = os.environ.get("MODELFLEET_ACTOR")
    if explicit:
        return explicit
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except (KeyError, OSError):
        return None


def check_model_name(model: str) -> str:
    if not MODEL_RE.match(model):
        raise InvalidName(f"model name {model!r} is invalid; use 1-128 of [A-Za-z0-9_.-], starting alphanumeric")
    return model


def check_model_names(models: Sequence[str]) -> tuple[str, ...]:
    """A list of models to serve: at least one, each a valid name, none twice. The one rule for the agent's
    ``--models``, the stack's ``modelfleet:models`` and a VM's bootstrap; callers prefix the message with their field.
    """
    if isinstance(models, str):
        raise BadInput(f"expected a list of model names, not the string {models!r}")
    names = tuple(models)
    if not names:
        raise BadInput("list at least one model name")
    for model in names:
        check_model_name(model)
    if len(set(names)) != len(names):
        raise BadInput(f"names a model twice: {','.join(names)}")
    return names


def check_label(label: str) -> str:
    if not NAME_RE.match(label):
        raise InvalidName(f"label {label!r} is invalid; labels are [A-Za-z0-9_]+ (e.g. stable, canary)")
    return label


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class VersionEntry:
    version: int
    created: str
    files: dict[str, FileEntry]
    signature: Signature
    source: dict[str, str] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "created": self.created,
            "total_bytes": self.total_bytes,
            "files": {k: {"sha256": f.sha256, "size": f.size} for k, f in sorted(self.files.items())},
            "signature": self.signature.to_json(),
            "source": dict(sorted(self.source.items())),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VersionEntry:
        return cls(
            version=int(d["version"]),
            created=str(d["created"]),
            files={str(k): FileEntry(str(v["sha256"]), int(v["size"])) for k, v in d["files"].items()},
            signature=Signature.from_json(d["signature"]),
            source={str(k): str(v) for k, v in d.get("source", {}).items()},
        )


@dataclass(frozen=True)
class LabelMove:
    time: str
    label: str
    from_version: int | None
    to_version: int | None
    action: str  # publish | label | unlabel | promote | rollback | prune
    by: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "label": self.label,
            "from": self.from_version,
            "to": self.to_version,
            "action": self.action,
            "by": self.by,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LabelMove:
        return cls(str(d["time"]), str(d["label"]), d.get("from"), d.get("to"), str(d["action"]), d.get("by"))


@dataclass
class Manifest:
    model: str
    versions: dict[int, VersionEntry] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    history: list[LabelMove] = field(default_factory=list)
    # The highest version ever published: numbers are never reused, even after prune, because TF Serving never
    # reloads a version number it has loaded once.
    last_version: int = 0

    # -- queries ---------------------------------------------------------------------------------------------------

    def get(self, version: int) -> VersionEntry:
        if version not in self.versions:
            known = ", ".join(map(str, sorted(self.versions))) or "none"
            raise UnknownVersion(f"model {self.model!r} has no version {version} (versions: {known})")
        return self.versions[version]

    def labels_of(self, version: int) -> list[str]:
        return sorted(label for label, v in self.labels.items() if v == version)

    def stable_lineage(self) -> list[int]:
        """The stack of stable versions in force over time; a rollback pops back to its target."""
        stack: list[int] = []
        for move in self.history:
            if move.label != STABLE or move.to_version is None:
                continue
            target = move.to_version
            if move.action == "rollback" and target in stack:
                # Pop back to the most recent time the target was stable: the first one would also drop the
                # versions made stable after it and before the rollback (1→2→3→2→4: the second rollback goes to 3).
                del stack[len(stack) - stack[::-1].index(target) :]
            elif not stack or stack[-1] != target:
                stack.append(target)
        return stack

    def previous_stable(self) -> int | None:
        """The stable before the current one that still exists (what ``rollback`` goes back to)."""
        current = self.labels.get(STABLE)
        lineage = [v for v in self.stable_lineage() if v in self.versions]
        while lineage and lineage[-1] == current:
            lineage.pop()
        return lineage[-1] if lineage else None

    # -- changes (all recorded in the history) ---------------------------------------------------------------------

    def move_label(self, label: str, to: int | None, action: str, by: str | None = None) -> None:
        check_label(label)
        if to is not None:
            self.get(to)
        old = self.labels.get(label)
        if old == to:
            return
        if to is None:
            self.labels.pop(label, None)
        else:
            self.labels[label] = to
        self.history.append(LabelMove(now(), label, old, to, action, by))

    # -- (de)serialisation -----------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "last_version": self.last_version,
            "versions": [self.versions[v].to_json() for v in sorted(self.versions)],
            "labels": dict(sorted(self.labels.items())),
            "history": [m.to_json() for m in self.history],
        }

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), indent=1).encode() + b"\n"

    @classmethod
    def loads(cls, data: bytes, where: str) -> Manifest:
        try:
            d = json.loads(data)
            if not isinstance(d, dict):
                raise TypeError("top level is not an object")
            schema = d.get("schema_version")
            if schema != SCHEMA_VERSION:
                raise ManifestError(
                    f"{where} has schema_version {schema!r}; this modelfleet reads {SCHEMA_VERSION} (upgrade it)"
                )
            versions = [VersionEntry.from_json(v) for v in d["versions"]]
            m = cls(
                model=str(d["model"]),
                versions={v.version: v for v in versions},
                labels={str(k): int(v) for k, v in d["labels"].items()},
                history=[LabelMove.from_json(h) for h in d["history"]],
                last_version=int(d["last_version"]),
            )
        except ManifestError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ManifestError(f"{where} is malformed: {type(e).__name__}: {e}") from e
        if m.versions and max(m.versions) > m.last_version:
            raise ManifestError(f"{where} is malformed: last_version {m.last_version} is below a listed version")
        dangling = {k: v for k, v in m.labels.items() if v not in m.versions}
        if dangling:
            raise ManifestError(f"{where} is malformed: labels point at missing versions {dangling}")
        return m


def load_manifest(store: Store, model: str) -> tuple[Manifest, str | None]:
    """The current manifest and its token; an empty manifest and ``None`` when the model has none yet."""
    key = manifest_key(model)
    try:
        blob = store.read(key)
    except ObjectNotFound:
        return Manifest(model), None
    return Manifest.loads(blob.data, f"{store.uri}/{key}"), blob.token


def update_manifest(
    store: Store,
    model: str,
    change: Callable[[Manifest], T],
    *,
    attempts: int = 30,
    base_delay: float = 0.02,
) -> tuple[Manifest, T]:
    """Apply ``change`` to the latest manifest and write it back only if nobody wrote in between; retry otherwise.

    ``change`` mutates the manifest it gets and may raise to abort (nothing is written then). It may run several
    times, so it must not have side effects outside the manifest.
    """
    key = manifest_key(model)
    for attempt in range(attempts):
        manifest, token = load_manifest(store, model)
        result = change(manifest)
        try:
            store.write(key, manifest.dumps(), if_token=token, if_absent=token is None)
            return manifest, result
        except PreconditionFailed:
            # Full jitter keeps many publishers from retrying in lockstep.
            time.sleep(random.uniform(0, base_delay * 2 ** min(attempt, 6)))  # noqa: S311 - not crypto
    raise ConflictRetriesExhausted(
        f"{store.uri}/{key} kept changing under {attempts} attempts to update it; retry the command"
    )
