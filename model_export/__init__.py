"""The library a training job imports: export a SavedModel, publish it as a new immutable version, manage versions.

    from model_export import export_model, publish, promote

Layers (each imports only those before it): ``errors`` and ``constants``; ``layout`` (every store key); ``store``
(one backend per URI scheme); ``signature``, ``savedmodel``, ``manifest``; ``transfer``; ``publish``, ``versions``;
``metrics`` (numpy), ``export_inputs`` and ``export`` (the only TensorFlow users, imported on first use of
``export_model``). Nothing here imports the ``modelfleet`` apps or ``infra``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from model_export.errors import BadInput, ModelfleetError
from model_export.manifest import Manifest, VersionEntry
from model_export.publish import PublishResult, publish
from model_export.store import Store, open_store
from model_export.versions import clear_label, get_manifest, promote, prune, rollback, set_label

if TYPE_CHECKING:
    from model_export.export import ExportResult, export_model

__all__ = [
    "BadInput",
    "ExportResult",
    "Manifest",
    "ModelfleetError",
    "PublishResult",
    "Store",
    "VersionEntry",
    "clear_label",
    "export_model",
    "get_manifest",
    "open_store",
    "promote",
    "prune",
    "publish",
    "rollback",
    "set_label",
]


def __getattr__(name: str) -> Any:
    # TensorFlow takes seconds to import: only a training job that exports pays for it.
    if name in ("export_model", "ExportResult"):
        from model_export import export

        return getattr(export, name)
    raise AttributeError(f"module 'model_export' has no attribute {name!r}")
