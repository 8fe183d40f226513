"""Check a SavedModel directory before it is published, without importing TensorFlow.

``saved_model.pb`` is read with a small protobuf wire-format walker (:mod:`model_export.protowire`) over the few
fields we need (field numbers from tensorflow/core/protobuf/{saved_model,meta_graph,saved_object_graph}.proto and
framework/{graph,node_def,function,tensor_shape}.proto). Publishing then needs neither TensorFlow's 3 s import nor its
600 MB, and neither does the agent.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

from model_export.errors import NotASavedModel, one_line
from model_export.protowire import fields
from model_export.signature import SERVING_SIGNATURE, SERVING_TAG, Signature, TensorSpec

# Ops that hold variables in TF1 graphs and in the TF2 graphs SavedModel writes beside its object graph.
_VARIABLE_OPS = frozenset({"VarHandleOp", "VariableV2", "Variable", "AutoReloadVariable"})
# tensorflow/core/framework/types.proto
_DTYPES = {
    1: "float32",
    2: "float64",
    3: "int32",
    4: "uint8",
    5: "int16",
    6: "int8",
    7: "string",
    8: "complex64",
    9: "int64",
    10: "bool",
    14: "bfloat16",
    17: "uint16",
    18: "complex128",
    19: "float16",
    20: "resource",
    21: "variant",
    22: "uint32",
    23: "uint64",
}


# What export_model knows about the model and TF Serving does not: written beside the warmup records (TF Serving
# ignores the other files of assets.extra/), read back by publish into the version's manifest entry.
METADATA_FILE = "assets.extra/modelfleet.json"


_METRIC_NAME_MAX = 64
_METRIC_RANGES = {"accuracy": (0.0, 1.0), "mae": (0.0, math.inf), "mse": (0.0, math.inf)}  # metrics.NAMED's values
_INT64_MAX = 2**63 - 1  # what the manifest holds


def is_metric_name(name: object) -> TypeGuard[str]:
    """A name a validation record may carry: an identifier of at most 64 characters (one word in a table cell)."""
    return isinstance(name, str) and name.isidentifier() and len(name) <= _METRIC_NAME_MAX


@dataclass(frozen=True)
class Validation:
    """How the served signature scored on the labelled data export_model was given (see ``export_model``)."""

    metric: str  # "accuracy", "mae", "mse" or a callable's name
    value: float
    rows: int

    def to_json(self) -> dict[str, object]:
        return {"metric": self.metric, "value": self.value, "rows": self.rows}

    @classmethod
    def from_json(cls, data: object) -> Validation:
        """The inverse of :meth:`to_json`; ``ValueError`` names the field that is wrong (nothing is coerced)."""
        if not isinstance(data, dict):
            raise ValueError(f"validation: expected an object, got {type(data).__name__}")
        metric, value, rows = data.get("metric"), data.get("value"), data.get("rows")
        if not is_metric_name(metric):
            raise ValueError(f"validation.metric: expected an identifier of at most {_METRIC_NAME_MAX} characters")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError("validation.value: expected a finite number")
        low, high = _METRIC_RANGES.get(metric, (-math.inf, math.inf))
        if not low <= value <= high:
            raise ValueError(f"validation.value: {value} is outside [{low}, {high}], the range of {metric}")
        if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= _INT64_MAX:
            raise ValueError(f"validation.rows: expected an integer in [1, {_INT64_MAX}]")
        return cls(metric, float(value), rows)

    def text(self) -> str:
        """``accuracy=0.994``: how commands show it."""
        return f"{self.metric}={self.value:.4g}"


@dataclass(frozen=True)
class SavedModelInfo:
    path: Path
    files: tuple[str, ...]  # relative posix paths of every regular file: what publish uploads (see _regular_files)
    signature: Signature
    has_variables: bool
    validation: Validation | None = None  # from METADATA_FILE, when export_model validated with labelled data


# --- protobuf wire format -------------------------------------------------------------------------------------


def _sub(buf: bytes, number: int) -> Iterator[bytes]:
    for n, v in fields(buf):
        if n == number and isinstance(v, bytes):
            yield v


def _int(buf: bytes, number: int, default: int = 0) -> int:
    value = default
    for n, v in fields(buf):
        if n == number and isinstance(v, int):
            value = v
    return value


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _map(buf: bytes, number: int) -> dict[str, bytes]:
    out = {}
    for entry in _sub(buf, number):
        key = b"".join(_sub(entry, 1)).decode()
        out[key] = b"".join(_sub(entry, 2))
    return out


def _tensor_spec(info: bytes) -> TensorSpec:
    dtype = _int(info, 2)
    shape_msgs = list(_sub(info, 3))
    shape: tuple[int, ...] | None = None
    if shape_msgs and not _int(shape_msgs[0], 3):
        shape = tuple(_signed(_int(dim, 1)) for dim in _sub(shape_msgs[0], 2))
    return TensorSpec(_DTYPES.get(dtype, f"dtype_{dtype}"), shape)


def _tags(meta_graph: bytes) -> list[str]:
    return [t.decode(errors="replace") for info in _sub(meta_graph, 1) for t in _sub(info, 4)]


def _graph_has_variables(graph_def: bytes) -> bool:
    nodes = list(_sub(graph_def, 1))
    for library in _sub(graph_def, 2):
        for function in _sub(library, 1):
            nodes += _sub(function, 3)
    return any(b"".join(_sub(node, 2)).decode() in _VARIABLE_OPS for node in nodes)


def _object_graph_has_variables(object_graph: bytes) -> bool:
    return any(any(n == 7 for n, _ in fields(node)) for node in _sub(object_graph, 1))


# --- the directory walk ---------------------------------------------------------------------------------------

_COPY_HINT = "copy the files in instead of linking: cp -rL"
_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _symlink_problem(root: Path, link: Path) -> str:
    real_root = Path(os.path.realpath(root))
    target = Path(os.path.realpath(link))
    broken = "" if target.exists() else "broken "
    if target != real_root and real_root not in target.parents:
        where = "outside the SavedModel directory"
    else:
        where = "inside the SavedModel directory (symlinks are not published)"
    return (
        f"{str(link)!r} is a {broken}symlink to {str(target)!r}, {where}; "
        f"{_COPY_HINT} {str(root)!r} <new directory>, and publish that"
    )


def _regular_files(root: Path) -> tuple[str, ...]:
    """Every regular file under ``root`` as a sorted relative posix path, from one walk that follows no link.

    The same list is what the check below looks in (``saved_model.pb``, ``variables/variables.index``) and what
    publish uploads, so nothing can pass the check that the upload then skips. Anything else refuses the directory
    with ``NotASavedModel``:

    * A symlink, file or directory, wherever it points. One pointing outside the directory would publish files
      the SavedModel does not contain (or, as a linked ``variables/``, none at all). One pointing inside is refused
      too, rather than followed: TensorFlow never writes links, the store has none (a followed link would store
      its target twice, and a linked directory can form a cycle), and "inside" is a property of the moment of the
      check that a later rename can change. One rule with one fix (``cp -rL``) is simpler and safer.
    * A FIFO, socket or device: not something TF Serving reads, and reading a FIFO would block the upload.
    * A directory that cannot be read: skipping it would publish a version without its files.
    """
    files: list[str] = []
    pending: list[tuple[Path, str]] = [(root, "")]
    while pending:
        directory, rel_dir = pending.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            raise NotASavedModel(f"cannot read {str(directory)!r}: {e.strerror}; fix its permissions") from e
        for entry in entries:
            path = Path(entry.path)
            rel = f"{rel_dir}{entry.name}"
            try:
                if entry.is_symlink():
                    raise NotASavedModel(_symlink_problem(root, path))
                if entry.is_dir(follow_symlinks=False):
                    pending.append((path, f"{rel}/"))
                    continue
                if entry.is_file(follow_symlinks=False):
                    files.append(rel)
                    continue
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError as e:
                raise NotASavedModel(f"cannot read {str(path)!r}: {e.strerror}") from e
            kind = next((name for test, name in _SPECIAL_KINDS if test(mode)), "a special file")
            raise NotASavedModel(
                f"{str(path)!r} is {kind}, not a regular file; a SavedModel holds only files and directories — "
                "remove it or copy the SavedModel without it"
            )
    return tuple(sorted(files))


# --- the check ------------------------------------------------------------------------------------------------


def inspect_savedmodel(path: str | Path) -> SavedModelInfo:
    """Validate a SavedModel directory for serving; ``NotASavedModel`` says what is missing."""
    root = Path(path)
    if not root.is_dir():
        raise NotASavedModel(f"{str(root)!r} is not a directory; pass the SavedModel directory (with saved_model.pb)")
    pb = root / "saved_model.pb"
    # A cheap look first, so a wrong directory gets this message without a walk of everything under it; whether
    # saved_model.pb is a regular file (not a link) is then up to the walk.
    if not (pb.is_symlink() or pb.exists()):
        hint = " (saved_model.pbtxt is not supported; re-export)" if (root / "saved_model.pbtxt").exists() else ""
        raise NotASavedModel(f"{str(root)!r} is not a SavedModel: no saved_model.pb{hint}")
    files = _regular_files(root)
    if "saved_model.pb" not in files:
        raise NotASavedModel(f"{str(pb)!r} is not a regular file; pass the SavedModel directory TensorFlow wrote")
    try:
        meta_graphs = list(_sub(pb.read_bytes(), 2))
        serving = [mg for mg in meta_graphs if SERVING_TAG in _tags(mg)]
        if not serving:
            raise NotASavedModel(f"{str(pb)!r} has no meta graph tagged {SERVING_TAG!r}; export with the serve tag")
        meta = serving[0]
        signatures = _map(meta, 5)
        if SERVING_SIGNATURE not in signatures:
            known = ", ".join(sorted(k for k in signatures if not k.startswith("__"))) or "none"
            raise NotASavedModel(f"{str(pb)!r} has no {SERVING_SIGNATURE!r} signature (it has: {known})")
        sig = signatures[SERVING_SIGNATURE]
        signature = Signature(
            method=b"".join(_sub(sig, 3)).decode(),
            inputs={k: _tensor_spec(v) for k, v in _map(sig, 1).items()},
            outputs={k: _tensor_spec(v) for k, v in _map(sig, 2).items()},
        )
        has_variables = any(_graph_has_variables(g) for g in _sub(meta, 2)) or any(
            _object_graph_has_variables(g) for g in _sub(meta, 7)
        )
    except (ValueError, UnicodeDecodeError) as e:
        raise NotASavedModel(f"{str(pb)!r} is not a valid SavedModel protobuf: {e}") from e
    # Looked up in the walk's list, not on disk: the file that satisfies the check is one that will be uploaded.
    if has_variables and "variables/variables.index" not in files:
        raise NotASavedModel(
            f"{str(root)!r} has variables but no variables/variables.index; TF Serving would load it without "
            "weights — copy the whole SavedModel directory"
        )
    return SavedModelInfo(root, files, signature, has_variables, _validation(root, files))


def _validation(root: Path, files: tuple[str, ...]) -> Validation | None:
    """The validation export_model recorded, if any. A file that does not parse refuses the directory: publishing
    it would drop (or invent) the record a reader of the manifest relies on."""
    if METADATA_FILE not in files:
        return None
    path = root / METADATA_FILE
    try:
        doc = json.loads(path.read_bytes())
        if not isinstance(doc, dict):
            raise ValueError("the top level is not a JSON object")
        raw = doc.get("validation")
        validation = None if raw is None else Validation.from_json(raw)
        scored = doc.get("scored")
        current = scored_digest(root, validation) if validation is not None else None
    except (OSError, ValueError, RecursionError) as e:
        raise NotASavedModel(f"{str(path)!r} is not valid: {one_line(e, 200)}; re-export the model") from e
    if validation is not None and scored != current:
        # Copied from another export, or the graph or weights changed since: the score is not this model's.
        raise NotASavedModel(
            f"{str(path)!r} records a score export_model did not give this SavedModel (the score was edited, or "
            "saved_model.pb or the variables differ from what it scored); re-export the model, or delete the file to "
            "publish without a score"
        )
    return validation


# What a recorded score is bound to: the graph, and the variables' index, which holds a checksum of every tensor's
# bytes in the data shards (TensorFlow's BundleEntryProto.crc32c), so new weights change it too.
SCORED_FILES = ("saved_model.pb", "variables/variables.index")


def scored_digest(root: Path, validation: Validation) -> str:
    """sha256 over the score and ``SCORED_FILES`` (those present), names included: what ``METADATA_FILE``'s
    ``scored`` holds. Not a signature (anyone can recompute it), but a copied file or an edited score is caught."""
    h = hashlib.sha256(json.dumps(validation.to_json(), sort_keys=True).encode())
    for name in SCORED_FILES:
        path = root / name
        if path.is_file():
            h.update(name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()
