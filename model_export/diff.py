"""``modelfleet diff``: what differs between two versions of a model (signature, files, size, source, labels)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from model_export import layout
from model_export.errors import UnknownVersion
from model_export.manifest import FileEntry, Manifest, VersionEntry
from model_export.signature import TensorSpec
from model_export.store import Store
from model_export.versions import get_manifest

T = TypeVar("T")


def resolve_version(m: Manifest, ref: str) -> int:
    """The version ``ref`` names in ``m``: a number (``7``, or ``v7`` as ``history`` prints it) or a label
    (``stable``). Digits are always a number, so a label spelled in digits cannot shadow a version."""
    text = ref.strip()
    number = layout.version_number(text)
    if number is None and text.startswith("v") and text not in m.labels:
        number = layout.version_number(text[1:])
    if number is not None:
        return m.get(number).version  # UnknownVersion lists the versions
    if text in m.labels:
        return m.labels[text]
    known = ", ".join(map(str, sorted(m.versions))) or "none"
    labels = ", ".join(f"{k}=v{v}" for k, v in sorted(m.labels.items())) or "none"
    raise UnknownVersion(f"model {m.model!r} has no version or label {ref!r} (versions: {known}; labels: {labels})")


@dataclass(frozen=True)
class Change:
    """One name that differs between two versions: ``added`` (only in b), ``removed`` (only in a) or ``changed``."""

    name: str
    change: str
    a: dict[str, Any] | None
    b: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _changes(
    a: Mapping[str, T], b: Mapping[str, T], as_json: Callable[[T], dict[str, Any]]
) -> tuple[list[Change], int]:
    """Per name, what differs from ``a`` to ``b`` (sorted by name), and how many names are the same in both."""
    out: list[Change] = []
    same = 0
    for name in sorted(set(a) | set(b)):
        before, after = a.get(name), b.get(name)
        if before == after:
            same += 1
            continue
        kind = "added" if before is None else "removed" if after is None else "changed"
        out.append(
            Change(name, kind, None if before is None else as_json(before), None if after is None else as_json(after))
        )
    return out, same


def _file_json(f: FileEntry) -> dict[str, Any]:
    return {"size": f.size, "sha256": f.sha256}


@dataclass(frozen=True)
class VersionDiff:
    """What differs from version ``a`` to version ``b`` of a model (``modelfleet diff``)."""

    model: str
    a: VersionEntry
    b: VersionEntry
    labels_a: list[str]
    labels_b: list[str]
    inputs: list[Change]
    outputs: list[Change]
    files: list[Change]
    unchanged_files: int
    source: list[Change]  # a and b hold {"value": ...}

    @property
    def same(self) -> bool:
        return not (self.inputs or self.outputs or self.files or self.source or self.method_changed)

    @property
    def method_changed(self) -> bool:
        return self.a.signature.method != self.b.signature.method

    def to_json(self) -> dict[str, Any]:
        def side(e: VersionEntry, labels: list[str]) -> dict[str, Any]:
            return {"version": e.version, "labels": labels, "created": e.created, "bytes": e.total_bytes}

        return {
            "model": self.model,
            "a": side(self.a, self.labels_a),
            "b": side(self.b, self.labels_b),
            "same": self.same,
            "signature": {
                "method": {"a": self.a.signature.method, "b": self.b.signature.method},
                "inputs": [c.to_json() for c in self.inputs],
                "outputs": [c.to_json() for c in self.outputs],
            },
            "files": {"changes": [c.to_json() for c in self.files], "unchanged": self.unchanged_files},
            "bytes": {
                "a": self.a.total_bytes,
                "b": self.b.total_bytes,
                "change": self.b.total_bytes - self.a.total_bytes,
            },
            "source": [c.to_json() for c in self.source],
        }


def diff(store: str | Store, model: str, a: str, b: str) -> VersionDiff:
    """Compare two versions (numbers or labels) of ``model``: signature per tensor name, files per path, size,
    source metadata, and the labels each holds."""
    m = get_manifest(store, model)
    ea, eb = m.get(resolve_version(m, a)), m.get(resolve_version(m, b))
    inputs, _ = _changes(ea.signature.inputs, eb.signature.inputs, TensorSpec.to_json)
    outputs, _ = _changes(ea.signature.outputs, eb.signature.outputs, TensorSpec.to_json)
    files, unchanged = _changes(ea.files, eb.files, _file_json)
    source, _ = _changes(ea.source, eb.source, lambda v: {"value": v})
    return VersionDiff(
        m.model, ea, eb, m.labels_of(ea.version), m.labels_of(eb.version), inputs, outputs, files, unchanged, source
    )
