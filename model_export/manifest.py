"""A model's manifest (its key is :func:`model_export.layout.manifest_key`): the one object servers trust, and its
compare-and-swap update.

Schema (documented in docs/manifest.md): complete versions with every file's digest and size, the serving signature,
labels, an append-only history of label moves, the version numbers prune abandoned, and the ids of the latest
writes. A version appears here only after all its files are uploaded and verified, so anything that follows the
manifest never sees a partial version.

Two layers: the wire schema is a set of strict pydantic models (``Wire*``), the one validator of what is read (and of
what is about to be written); the rest of the code works on the plain dataclasses below (``Manifest``,
``VersionEntry``, ``FileEntry``, ``LabelMove``, ...). Every problem becomes one ``ManifestError`` line that names the
field, e.g. ``versions[2].files['../x']: unsafe path (relative POSIX path without '..')``.
"""

from __future__ import annotations

import datetime as dt
import difflib
import getpass
import json
import os
import random
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from model_export.constants import ROLES, STABLE
from model_export.errors import (
    BadInput,
    ConflictRetriesExhausted,
    InvalidName,
    ManifestError,
    ModelfleetError,
    ObjectNotFound,
    PreconditionFailed,
    StoreError,
    UnknownVersion,
    one_line,
)
from model_export.layout import manifest_key
from model_export.savedmodel import Validation
from model_export.signature import Signature, TensorSpec
from model_export.store.base import Store

SCHEMA_VERSION = 2  # what this module writes
READABLE_SCHEMA_VERSIONS = (1, 2)
# \A...\Z, not ^...$: "$" also matches before a trailing newline, which let "canary\n" through.
NAME_RE = re.compile(r"\A[A-Za-z0-9_]+\Z")  # TF Serving's rule for labels
MODEL_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
OPERATIONS_KEPT = 100  # the ids of this many most recent writes stay in the manifest
IDEMPOTENCY_KEY_MAX = 256
INT64_MAX = 2**63 - 1  # TF Serving's version numbers are int64
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


def label_typo(labels: Iterable[str], label: str) -> str | None:
    """When a label a model does not have yet is one typo away from one it has, or from a fleet's role (``stabel``),
    the one-line refusal naming the likely meant label; ``None`` for a label that exists or resembles none. Setting
    such a label would move nothing any fleet serves while the user believes it did."""
    known = set(labels) | set(ROLES)
    if label in labels or label in ROLES:
        return None
    close = difflib.get_close_matches(label, sorted(known - {label}), n=2, cutoff=0.75)
    if not close:
        return None
    meant = " or ".join(repr(c) for c in close)
    return f"label {label!r} is new to this model; did you mean {meant}? (--new-label creates it)"


def relpath_problem(rel: str) -> str | None:
    """Why ``rel`` is not a safe relative POSIX path, or ``None`` when it is. The one rule for a version's file paths:
    the manifest's validator refuses a manifest that breaks it, and the agent checks it again before it writes a file
    under its model root. Safe: not empty, no leading ``/``, no backslash, no NUL, no empty, ``.`` or ``..`` segment.
    """
    if not rel:
        return "unsafe path (empty)"
    if rel.startswith("/"):
        return "unsafe path (absolute; a relative POSIX path is expected)"
    if "\\" in rel:
        return "unsafe path (backslash; a relative POSIX path with '/' is expected)"
    if "\0" in rel:
        return "unsafe path (NUL character)"
    segments = rel.split("/")
    if ".." in segments:
        return "unsafe path (relative POSIX path without '..')"
    if "" in segments or "." in segments:
        return "unsafe path (empty or '.' segment)"
    return None


def is_safe_relpath(rel: str) -> bool:
    return relpath_problem(rel) is None


def idempotency_key_problem(key: str) -> str | None:
    if not 0 < len(key) <= IDEMPOTENCY_KEY_MAX or not key.isprintable() or key != key.strip():
        return f"use 1-{IDEMPOTENCY_KEY_MAX} printable characters, without leading or trailing spaces"
    return None


def check_idempotency_key(key: str) -> str:
    problem = idempotency_key_problem(key)
    if problem:
        raise BadInput(f"idempotency key {key!r} is invalid; {problem}")
    return key


# -- the Python API --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    sha256: str  # hex
    size: int


@dataclass(frozen=True)
class VersionEntry:
    version: int
    created: str
    files: dict[str, FileEntry]
    signature: Signature
    source: dict[str, str] = field(default_factory=dict)
    # Set by a publish given one: a retry with the same key finds this version instead of publishing another.
    idempotency_key: str | None = None
    # How the served signature scored at export (export_model's validation=), when the SavedModel recorded it.
    validation: Validation | None = None

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "version": self.version,
            "created": self.created,
            "total_bytes": self.total_bytes,
            "files": {k: {"digest": f"sha256:{f.sha256}", "size": f.size} for k, f in sorted(self.files.items())},
            "signature": self.signature.to_json(),
            "source": dict(sorted(self.source.items())),
        }
        if self.idempotency_key is not None:
            d["idempotency_key"] = self.idempotency_key
        if self.validation is not None:
            d["validation"] = self.validation.to_json()
        return d


ROLLBACK_ACTIONS = ("rollback", "auto-rollback")  # history actions that go back to an earlier stable
# The operation of `delete --all`: it empties the manifest but keeps it (``Manifest.deleted``); a publish ends that.
DELETE_MODEL = "delete-model"
PUBLISH = "publish"


@dataclass(frozen=True)
class LabelMove:
    time: str
    label: str
    from_version: int | None
    to_version: int | None
    action: str  # publish | label | unlabel | promote | rollback | prune | auto-rollback | canary-*
    by: str | None = None
    # Why, when a tool decided rather than a person: "auto-rollback: 3/4 instances failed to load v7: ...".
    reason: str | None = None
    # The numbers a decision rested on (canary analysis: requests, errors, rates, p99s, z, p-value).
    evidence: dict[str, float | int | str | None] | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "time": self.time,
            "label": self.label,
            "from": self.from_version,
            "to": self.to_version,
            "action": self.action,
            "by": self.by,
        }
        if self.reason is not None:
            doc["reason"] = self.reason
        if self.evidence is not None:
            doc["evidence"] = dict(self.evidence)
        return doc


@dataclass(frozen=True)
class AbandonedEntry:
    """A version number prune judged dead (its publish stopped heartbeating): never committed, never reused."""

    version: int
    time: str
    by: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "time": self.time, "by": self.by}


@dataclass(frozen=True)
class Operation:
    """One write of the manifest by :func:`update_manifest`: lets a writer whose reply was lost see that it landed."""

    id: str  # uuid4 hex
    action: str
    time: str
    by: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "action": self.action, "time": self.time, "by": self.by}


@dataclass
class Manifest:
    model: str
    versions: dict[int, VersionEntry] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    history: list[LabelMove] = field(default_factory=list)
    # The highest version ever published or abandoned: numbers are never reused, even after prune, because TF Serving
    # never reloads a version number it has loaded once.
    last_version: int = 0
    abandoned: dict[int, AbandonedEntry] = field(default_factory=dict)
    operations: list[Operation] = field(default_factory=list)  # oldest first, the last OPERATIONS_KEPT

    # -- queries ---------------------------------------------------------------------------------------------------

    def get(self, version: int) -> VersionEntry:
        if version not in self.versions:
            known = ", ".join(map(str, sorted(self.versions))) or "none"
            raise UnknownVersion(f"model {self.model!r} has no version {version} (versions: {known})")
        return self.versions[version]

    def labels_of(self, version: int) -> list[str]:
        return sorted(label for label, v in self.labels.items() if v == version)

    def find_by_idempotency_key(self, key: str) -> VersionEntry | None:
        """The version a publish with this idempotency key committed, if any."""
        for entry in self.versions.values():
            if entry.idempotency_key == key:
                return entry
        return None

    def has_operation(self, op_id: str) -> bool:
        return any(op.id == op_id for op in self.operations)

    @property
    def deleted(self) -> bool:
        """A whole-model delete's tombstone: no versions, no labels, and a ``DELETE_MODEL`` since the last publish.
        It keeps ``last_version`` and the fence, so a model published again under the name goes on from the next
        number: a VM whose TF Serving still holds an old ``N`` would never load a new ``N``."""
        # The latest delete or publish decides: a later write that changes nothing (a prune, an auto-rollback's undo
        # racing the delete) must not bring the model back.
        last = next((op.action for op in reversed(self.operations) if op.action in (DELETE_MODEL, PUBLISH)), None)
        return not self.versions and not self.labels and last == DELETE_MODEL

    def stable_lineage(self) -> list[int]:
        """The stack of stable versions in force over time; a rollback pops back to its target."""
        stack: list[int] = []
        for move in self.history:
            if move.label != STABLE or move.to_version is None:
                continue
            target = move.to_version
            if move.action in ROLLBACK_ACTIONS and target in stack:
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

    # -- changes (label moves are recorded in the history) ---------------------------------------------------------

    def move_label(
        self,
        label: str,
        to: int | None,
        action: str,
        by: str | None = None,
        *,
        reason: str | None = None,
        evidence: Mapping[str, float | int | str | None] | None = None,
    ) -> None:
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
        self.history.append(
            LabelMove(now(), label, old, to, action, by, reason, None if evidence is None else dict(evidence))
        )

    def record_decision(
        self, label: str, action: str, by: str | None, reason: str, evidence: Mapping[str, float | int | str | None]
    ) -> None:
        """A decision that moved no label (a canary analysis that was inconclusive), in the history all the same."""
        at = self.labels.get(label)
        self.history.append(LabelMove(now(), label, at, at, action, by, reason, dict(evidence)))

    def abandon(self, version: int, by: str | None = None) -> None:
        """Fence ``version``: a publish still holding it can no longer commit it, and the number is never reused
        (``last_version`` covers it). Abandoning a number twice keeps the first record."""
        if version in self.versions:
            raise ModelfleetError(f"version {version} of {self.model!r} is published; it cannot be abandoned")
        if not 0 <= version <= INT64_MAX:
            raise ModelfleetError(f"cannot abandon version {version} of {self.model!r}: not a version number")
        if version not in self.abandoned:
            self.abandoned[version] = AbandonedEntry(version, now(), by)
        self.last_version = max(self.last_version, version)

    def record_operation(self, op_id: str, action: str, by: str | None = None) -> None:
        self.operations.append(Operation(op_id, action, now(), by))
        del self.operations[:-OPERATIONS_KEPT]

    # -- (de)serialisation -----------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "last_version": self.last_version,
            "versions": [self.versions[v].to_json() for v in sorted(self.versions)],
            "labels": dict(sorted(self.labels.items())),
            "history": [m.to_json() for m in self.history],
            "abandoned": [self.abandoned[v].to_json() for v in sorted(self.abandoned)],
            "operations": [op.to_json() for op in self.operations],
        }

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), indent=1).encode() + b"\n"

    @classmethod
    def loads(cls, data: bytes, where: str, *, model: str | None = None) -> Manifest:
        """Parse and validate a manifest read from ``where``; with ``model``, its ``model`` field must name it (the
        model of the key it was read from). Every problem is one ``ManifestError`` line naming the field."""
        try:
            doc = json.loads(data)
        except RecursionError:
            raise ManifestError(f"{where} is malformed: JSON nested too deeply") from None
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer too long to convert
            raise ManifestError(f"{where} is malformed: {type(e).__name__}: {one_line(e)}") from None
        if not isinstance(doc, dict):
            raise ManifestError(f"{where} is malformed: the top level is not a JSON object")
        schema = doc.get("schema_version")
        if type(schema) is not int or schema not in READABLE_SCHEMA_VERSIONS:
            readable = " and ".join(map(str, READABLE_SCHEMA_VERSIONS))
            shown = one_line(repr(schema), 80)
            raise ManifestError(f"{where} has schema_version {shown}; this modelfleet reads {readable} (upgrade it)")
        wire = _check(doc, model)
        if isinstance(wire, str):
            raise ManifestError(f"{where} is malformed: {wire}")
        return _from_wire(wire)


# -- the wire schema (pydantic) --------------------------------------------------------------------------------------
#
# Strict: no coercion (no "3" for 3, no true for 1, no 1.0 for 1). Unknown fields are ignored, so a later writer of the
# same schema_version may add a field that is safe to ignore; writers do not keep fields they do not know, so a field
# that must survive a rewrite by older code needs a new schema_version (which older readers refuse).


def _wire_rule(kind: str, problem: Callable[[str], str | None]) -> AfterValidator:
    def check(value: str) -> str:
        reason = problem(value)
        if reason is not None:
            raise PydanticCustomError(kind, reason)
        return value

    return AfterValidator(check)


_SafePath = Annotated[str, _wire_rule("unsafe_path", relpath_problem)]
_LabelName = Annotated[
    str, _wire_rule("label_name", lambda s: None if NAME_RE.match(s) else "not a label name ([A-Za-z0-9_]+)")
]
_ModelName = Annotated[
    str,
    _wire_rule(
        "model_name",
        lambda s: None if MODEL_RE.match(s) else "not a model name (1-128 of [A-Za-z0-9_.-], starting alphanumeric)",
    ),
]
_IdempotencyKey = Annotated[str, _wire_rule("idempotency_key", idempotency_key_problem)]
_Version = Annotated[int, Field(ge=0, le=INT64_MAX)]
_Size = Annotated[int, Field(ge=0, le=INT64_MAX)]
_Dim = Annotated[int, Field(ge=-1, le=INT64_MAX)]  # -1: unknown
_Text = Annotated[str, Field(min_length=1)]
# UTC or with an offset, as now() writes: 2026-11-25T07:53:36.179Z. ("$" ends the string in pydantic's regex engine.)
_TIME_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$"
_Time = Annotated[str, Field(pattern=_TIME_PATTERN)]


class _Wire(BaseModel):
    # defer_build: the validators are compiled on first use, so importing this module (every CLI command) stays cheap.
    model_config = ConfigDict(strict=True, extra="ignore", defer_build=True)


class WireFileV1(_Wire):
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    size: _Size


class WireFileV2(_Wire):
    digest: Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]  # "<algorithm>:<lowercase hex>"
    size: _Size


class WireTensor(_Wire):
    dtype: _Text
    shape: list[_Dim] | None  # null: unknown rank


class WireSignature(_Wire):
    method: str
    inputs: dict[str, WireTensor]
    outputs: dict[str, WireTensor]


class WireValidation(_Wire):
    metric: _Text
    value: Annotated[float, Field(allow_inf_nan=False)]
    rows: Annotated[int, Field(ge=1, le=INT64_MAX)]


class _WireVersion(_Wire):
    version: _Version
    created: _Time
    total_bytes: _Size | None = None  # derived from files; written for readers' convenience, not trusted
    signature: WireSignature
    source: dict[str, str] = Field(default_factory=dict)


class WireVersionV1(_WireVersion):
    files: dict[_SafePath, WireFileV1]


class WireVersionV2(_WireVersion):
    files: dict[_SafePath, WireFileV2]
    idempotency_key: _IdempotencyKey | None = None
    validation: WireValidation | None = None  # absent in manifests written before it existed


class WireLabelMove(_Wire):
    time: _Time
    label: _LabelName
    from_: _Version | None = Field(default=None, alias="from")
    to: _Version | None = None
    action: _Text
    by: str | None = None
    reason: str | None = None
    evidence: dict[str, int | float | str | None] | None = None


class WireAbandoned(_Wire):
    version: _Version
    time: _Time
    by: str | None = None


class WireOperation(_Wire):
    id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    action: _Text
    time: _Time
    by: str | None = None


class _WireManifest(_Wire):
    model: _ModelName
    last_version: _Version
    labels: dict[_LabelName, _Version]
    history: list[WireLabelMove]


class WireManifestV1(_WireManifest):
    schema_version: Literal[1]
    versions: list[WireVersionV1]


class WireManifestV2(_WireManifest):
    schema_version: Literal[2]
    versions: list[WireVersionV2]
    abandoned: list[WireAbandoned] = Field(default_factory=list)
    operations: list[WireOperation] = Field(default_factory=list)


_WIRE: dict[int, type[WireManifestV1] | type[WireManifestV2]] = {1: WireManifestV1, 2: WireManifestV2}
_DICT_FIELDS = frozenset({"files", "source", "labels", "inputs", "outputs"})  # their next location part is a key


def field_path(loc: Sequence[int | str]) -> str:
    """A pydantic error location as the manifest's reader sees it: ``versions[2].files['../x'].size``."""
    out: list[str] = []
    key_next = False
    for part in loc:
        if key_next:
            out.append(f"[{part!r}]")
            key_next = False
        elif isinstance(part, int):
            out.append(f"[{part}]")
        elif part != "[key]":  # pydantic's marker for an error in the key itself, which is already shown
            out.append(f".{part}" if out else part)
            key_next = part in _DICT_FIELDS
    return "".join(out) or "(top level)"


# pydantic's words for Python types, said in JSON's (and without naming our internal classes)
_JSON_TYPE_MESSAGES = {
    "model_type": "Input should be a JSON object",
    "model_attributes_type": "Input should be a JSON object",
    "dict_type": "Input should be a JSON object",
    "list_type": "Input should be a JSON array",
}


def _describe(errors: list[ErrorDetails]) -> str:
    first = errors[0]
    text = f"{field_path(first['loc'])}: {_JSON_TYPE_MESSAGES.get(first['type'], first['msg'])}"
    value = first.get("input")
    shown_in_path = bool(first["loc"]) and first["loc"][-1] == "[key]"
    if first["type"] != "missing" and not shown_in_path and (value is None or isinstance(value, str | int | float)):
        text += f" (got {one_line(repr(value), 80)})"
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return text


def _check(doc: dict[str, Any], model: str | None) -> WireManifestV1 | WireManifestV2 | str:
    """Validate a decoded manifest whose ``schema_version`` is readable: its wire form, or the first problem as one
    line naming the field."""
    try:
        wire = _WIRE[doc["schema_version"]].model_validate(doc)
    except ValidationError as e:
        return _describe(e.errors(include_url=False))
    except RecursionError:
        return "nested too deeply"
    return _cross_check(wire, model) or wire


def _cross_check(w: WireManifestV1 | WireManifestV2, model: str | None) -> str | None:
    """The rules between fields, each reported at the field that breaks it."""
    if model is not None and w.model != model:
        return f"model: names {w.model!r}, but the manifest is stored under model {model!r}"
    listed: dict[int, int] = {}
    for i, v in enumerate(w.versions):
        if v.version in listed:
            return f"versions[{i}].version: version {v.version} is listed twice (also versions[{listed[v.version]}])"
        listed[v.version] = i
        if v.version > w.last_version:
            return f"last_version: {w.last_version} is below listed version {v.version} (versions[{i}])"
    for label, version in w.labels.items():
        if version not in listed:
            return f"labels[{label!r}]: points at version {version}, which is not listed"
    if isinstance(w, WireManifestV2):
        abandoned: set[int] = set()
        for i, a in enumerate(w.abandoned):
            if a.version in listed:
                return f"abandoned[{i}].version: version {a.version} is also listed in versions"
            if a.version in abandoned:
                return f"abandoned[{i}].version: version {a.version} is abandoned twice"
            abandoned.add(a.version)
            if a.version > w.last_version:
                return f"last_version: {w.last_version} is below abandoned version {a.version} (abandoned[{i}])"
        keys: dict[str, int] = {}
        for i, v in enumerate(w.versions):
            if v.idempotency_key is None:
                continue
            if v.idempotency_key in keys:
                return (
                    f"versions[{i}].idempotency_key: {v.idempotency_key!r} is also the key of version "
                    f"{keys[v.idempotency_key]}"
                )
            keys[v.idempotency_key] = v.version
    return None


def _signature(w: WireSignature) -> Signature:
    def specs(raw: dict[str, WireTensor]) -> dict[str, TensorSpec]:
        return {k: TensorSpec(t.dtype, None if t.shape is None else tuple(t.shape)) for k, t in raw.items()}

    return Signature(w.method, specs(w.inputs), specs(w.outputs))


def _from_wire(w: WireManifestV1 | WireManifestV2) -> Manifest:
    versions: dict[int, VersionEntry] = {}
    if isinstance(w, WireManifestV2):
        for v2 in w.versions:
            files = {p: FileEntry(f.digest[7:], f.size) for p, f in v2.files.items()}  # strip "sha256:"
            wv = v2.validation
            validation = None if wv is None else Validation(wv.metric, wv.value, wv.rows)
            versions[v2.version] = VersionEntry(
                v2.version, v2.created, files, _signature(v2.signature), dict(v2.source), v2.idempotency_key, validation
            )
        abandoned = {a.version: AbandonedEntry(a.version, a.time, a.by) for a in w.abandoned}
        operations = [Operation(o.id, o.action, o.time, o.by) for o in w.operations]
    else:
        for v1 in w.versions:
            files = {p: FileEntry(f.sha256, f.size) for p, f in v1.files.items()}
            versions[v1.version] = VersionEntry(
                v1.version, v1.created, files, _signature(v1.signature), dict(v1.source)
            )
        abandoned, operations = {}, []
    return Manifest(
        model=w.model,
        versions=versions,
        labels=dict(w.labels),
        history=[LabelMove(h.time, h.label, h.from_, h.to, h.action, h.by, h.reason, h.evidence) for h in w.history],
        last_version=w.last_version,
        abandoned=abandoned,
        operations=operations,
    )


# -- reading and compare-and-swap ------------------------------------------------------------------------------------


def load_manifest(store: Store, model: str) -> tuple[Manifest, str | None]:
    """The current manifest and its token; an empty manifest and ``None`` when the model has none yet."""
    key = manifest_key(model)
    try:
        blob = store.read(key)
    except ObjectNotFound:
        return Manifest(model), None
    return Manifest.loads(blob.data, f"{store.uri}/{key}", model=model), blob.token


def new_operation_id() -> str:
    return uuid.uuid4().hex


def update_manifest(
    store: Store,
    model: str,
    change: Callable[[Manifest], T],
    *,
    action: str = "update",
    attempts: int = 30,
    base_delay: float = 0.02,
) -> tuple[Manifest, T]:
    """Apply ``change`` to the latest manifest and write it back only if nobody wrote in between; retry otherwise.

    ``change`` mutates the manifest it gets and may raise to abort (nothing is written then). It may run several
    times, so it must not have side effects outside the manifest.

    Each call has one operation id, written into ``operations`` with every attempt. When a conditional write fails
    with ``PreconditionFailed`` (which is also what an SDK's retry of a write whose reply was lost gets) or a
    ``StoreError`` (a timeout after which the write may have landed), the manifest is read again: if it holds our id,
    our write landed and its result is returned, without applying ``change`` again.
    """
    key = manifest_key(model)
    where = f"{store.uri}/{key}"
    op_id = new_operation_id()
    by = actor()
    previous: tuple[T] | None = None  # the last attempt's result
    for attempt in range(attempts):
        manifest, token = load_manifest(store, model)
        if previous is not None and manifest.has_operation(op_id):
            # An earlier attempt's write landed after all (its conditional request arrived late). Attempts that could
            # land read the same manifest, so their results are the same as the last one's.
            return manifest, previous[0]
        result = change(manifest)
        previous = (result,)
        manifest.record_operation(op_id, action, by)
        doc = manifest.to_json()
        problem = _check(doc, model)  # never write what readers would refuse
        if isinstance(problem, str):
            raise ManifestError(f"{where} not written: the update would make it malformed: {problem}")
        try:
            store.write(key, json.dumps(doc, indent=1).encode() + b"\n", if_token=token, if_absent=token is None)
            return manifest, result
        except PreconditionFailed:
            landed = _landed(store, model, op_id)
            if landed is not None:
                return landed, result
        except StoreError:
            try:
                landed = _landed(store, model, op_id)
            except ModelfleetError:
                landed = None
            if landed is not None:
                return landed, result
            raise
        # Full jitter keeps many publishers from retrying in lockstep.
        time.sleep(random.uniform(0, base_delay * 2 ** min(attempt, 6)))  # noqa: S311 - not crypto
    raise ConflictRetriesExhausted(f"{where} kept changing under {attempts} attempts to update it; retry the command")


def _landed(store: Store, model: str, op_id: str) -> Manifest | None:
    """The current manifest when it holds operation ``op_id`` (our write landed), else ``None``."""
    manifest, _ = load_manifest(store, model)
    return manifest if manifest.has_operation(op_id) else None
