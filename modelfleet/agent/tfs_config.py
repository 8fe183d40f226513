"""TF Serving's model config file (``ModelServerConfig`` in protobuf text format), rendered as plain text.

No protobuf import: the agent must run without TensorFlow, and ``tensorflow_serving``'s protos import it. The tests
parse what this writes with the official protos.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from model_export.manifest import MODEL_RE, NAME_RE

HEADER = "# Written by `modelfleet agent`; it is rewritten on every change, do not edit.\n"


@dataclass(frozen=True)
class ModelEntry:
    """One ``config { ... }`` block: the versions TF Serving must load and the labels that point at them."""

    name: str
    base_path: str
    versions: tuple[int, ...]
    labels: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not MODEL_RE.match(self.name):
            raise ValueError(f"model name {self.name!r} is not valid in a TF Serving config")
        if not self.versions or any(v < 1 for v in self.versions) or len(set(self.versions)) != len(self.versions):
            raise ValueError(f"model {self.name!r}: versions {self.versions} must be distinct positive integers")
        for label, version in self.labels.items():
            if not NAME_RE.match(label):
                raise ValueError(f"model {self.name!r}: label {label!r} is not [A-Za-z0-9_]+")
            if version not in self.versions:
                raise ValueError(f"model {self.name!r}: label {label!r} points at {version}, which is not loaded")

    def to_json(self) -> dict[str, object]:
        return {"versions": list(self.versions), "labels": dict(sorted(self.labels.items()))}


def quote(text: str) -> str:
    """A protobuf text-format string literal (C escapes; non-ASCII as UTF-8 octal escapes)."""
    out = []
    for byte in text.encode():
        ch = chr(byte)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= byte < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def render(entries: Sequence[ModelEntry]) -> str:
    """The whole ``ModelServerConfig``: every model with a ``specific`` version policy and its labels."""
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"model names repeat in {names}")
    lines = [HEADER.rstrip("\n"), "model_config_list {"]
    for e in sorted(entries, key=lambda e: e.name):
        lines += [
            "  config {",
            f"    name: {quote(e.name)}",
            f"    base_path: {quote(e.base_path)}",
            '    model_platform: "tensorflow"',
            "    model_version_policy {",
            "      specific {",
            *(f"        versions: {v}" for v in sorted(e.versions)),
            "      }",
            "    }",
        ]
        for label, version in sorted(e.labels.items()):
            lines += ["    version_labels {", f"      key: {quote(label)}", f"      value: {version}", "    }"]
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"
