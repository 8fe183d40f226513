"""Export a Keras 3 model (or a ``tf.Module``) as a TF Serving SavedModel, validated, with warmup records.

The only module of the package that imports TensorFlow (the ``export`` extra). What it guarantees:

* The ``serving_default`` signature takes exactly the inputs named in ``sample`` (batch dimension ``None``,
  the other dimensions and the dtypes from the sample arrays) and returns a dict of named outputs.
  Preprocessing runs inside the graph, so the server is fed raw inputs; its state (normalization
  statistics, lookup tables, also those of layers a preprocessing function closes over) is saved.
* Calling convention, for the preprocessing (when given) and for the model: a Keras functional model built
  on a dict of inputs gets the dict of input tensors; anything else gets the single tensor when there is one
  input, and the dict when there are several (Keras functional models with list inputs match the dict by
  input name). The model is fed the preprocessing's result by the same rule: a tensor as is, a dict as above.
* Atomic: everything is written to a hidden temporary sibling of ``export_dir`` (a name TF Serving never
  takes for a version: it does not parse as an integer), reloaded and compared with the in-memory model,
  given its warmup records, and only then renamed to ``export_dir``. On any failure ``export_dir`` is left
  as it was (absent if it was absent) and the temporary directory is removed.
* Warmup: ``assets.extra/tf_serving_warmup_requests`` holds one ``PredictionLog`` with the whole sample
  batch and, when the batch has more than one row, a second one with its first row only (the batch-of-one
  shape online clients send), so both shapes are warm before the version reports AVAILABLE.
"""

from __future__ import annotations

import inspect
import keyword
import os
import re
import secrets
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from model_export.errors import BadInput, ExportError, one_line
from model_export.signature import SERVING_SIGNATURE

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving reads at most this many
_MESSAGE_LIMIT = 300  # characters of a TensorFlow error kept in ours
_ENDPOINT = "serve"
# Input names are the SignatureDef key, the placeholder name and the Python keyword of the reloaded
# signature. TF sanitizes names outside this set ("x-y" becomes keyword "x_y"; "a b" fails to save), so only
# names that are the same in all three places are accepted.
_INPUT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ExportResult:
    path: Path
    inputs: dict[str, str]  # input name -> dtype name, e.g. {"pixels": "float32"}
    outputs: dict[str, str]  # output name -> dtype name
    max_abs_diff: float  # worst |reloaded - in_memory| over the sample batch
    warmup_records: int  # 0 when warmup disabled


def export_model(
    model: Any,
    export_dir: str | os.PathLike[str],
    *,
    sample: Mapping[str, np.ndarray],
    preprocessing: Callable[..., Any] | None = None,
    output_names: Sequence[str] | None = None,
    warmup: bool = True,
    model_name: str = "model",
    atol: float = 1e-5,
    rtol: float = 1e-4,
    overwrite: bool = False,
) -> ExportResult:
    """Write ``model`` (with ``preprocessing`` in front) as a validated SavedModel at ``export_dir``.

    ``sample`` is a batch keyed by input name; it defines the serving signature and is the data the reloaded
    SavedModel is checked against (``np.isclose`` with ``atol``/``rtol``) and the warmup records are made of.
    Raises ``BadInput`` for invalid arguments (nothing written) and ``ExportError`` when tracing, saving,
    reloading or validation fails (nothing left at ``export_dir``).
    """
    if not callable(model):
        raise BadInput(f"model={type(model).__name__} is not callable; pass a Keras model or a tf.Module")
    if preprocessing is not None and not callable(preprocessing):
        raise BadInput(
            f"preprocessing={type(preprocessing).__name__} is not callable; pass a Keras layer or a function"
        )
    if not model_name:
        raise BadInput("model_name='' is empty; pass the name TF Serving serves the model under")
    if atol < 0 or rtol < 0:
        raise BadInput(f"atol={atol}, rtol={rtol}: tolerances must be >= 0")
    target = _check_target(export_dir, overwrite)
    tensors = _sample_tensors(sample)
    names = list(tensors)
    _check_input_names(preprocessing if preprocessing is not None else model, names)
    if output_names is not None:
        output_names = list(output_names)
        _check_output_names(output_names)

    def forward(inputs: dict[str, Any]) -> dict[str, Any]:
        x = _call(preprocessing, inputs) if preprocessing is not None else inputs
        return _name_outputs(_call(model, x), output_names)

    # The in-memory reference, computed eagerly. It also builds every layer, which tracking requires.
    try:
        expected = {k: _to_numpy(v) for k, v in forward(tensors).items()}
    except (BadInput, ExportError):
        raise
    except KeyError as e:
        key = e.args[0] if e.args else None
        if isinstance(key, str) and key not in names:  # the model (or preprocessing) wanted another input
            raise BadInput(f"the model looked up input {key!r}; sample lacks it (sample has {names})") from e
        raise ExportError(f"calling the model on the sample failed: KeyError {one_line(e, _MESSAGE_LIMIT)}") from e
    except Exception as e:
        raise ExportError(f"calling the model on the sample failed: {one_line(e, _MESSAGE_LIMIT)}") from e

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_sibling(target, "export")
    try:
        signature = [
            {k: tf.TensorSpec((None, *t.shape[1:]), t.dtype, name=k) for k, t in tensors.items()},
        ]
        _write_saved_model(tmp, forward, signature, [model, preprocessing])
        outputs, max_diff = _validate(tmp, tensors, expected, atol, rtol)
        records = _write_warmup(tmp, tensors, model_name) if warmup else 0
        _publish(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(
        path=target,
        inputs={k: t.dtype.name for k, t in tensors.items()},
        outputs=outputs,
        max_abs_diff=max_diff,
        warmup_records=records,
    )


# --- arguments -----------------------------------------------------------------------------------------


def _check_target(export_dir: str | os.PathLike[str], overwrite: bool) -> Path:
    raw = os.fspath(export_dir)
    if "://" in raw:
        raise BadInput(f"export_dir={raw!r} is a URI; export to a local directory, then publish that")
    target = Path(raw).absolute()
    if target.exists() or target.is_symlink():
        if not target.is_dir() or target.is_symlink():
            raise BadInput(f"export_dir={raw!r} exists and is not a directory; pass a new or empty directory")
        if any(target.iterdir()) and not overwrite:
            raise BadInput(f"export_dir={raw!r} is not empty; pass a new or empty directory, or overwrite=True")
    return target


def _sample_tensors(sample: Mapping[str, np.ndarray]) -> dict[str, tf.Tensor]:
    if not isinstance(sample, Mapping) or not sample:
        raise BadInput("sample is empty; pass a dict of input name -> batch array, e.g. {'pixels': x[:8]}")
    tensors: dict[str, tf.Tensor] = {}
    batch: int | None = None
    for name, value in sample.items():
        if not isinstance(name, str) or not _INPUT_NAME.match(name) or keyword.iskeyword(name):
            raise BadInput(f"input name {name!r} is invalid; use a letter then letters, digits or '_'")
        array = np.asarray(value)
        if array.dtype.kind == "U":  # TF strings are bytes
            array = np.vectorize(lambda s: s.encode(), otypes=[object])(array)
        try:
            tensor = tf.constant(array)
        except (TypeError, ValueError) as e:
            raise BadInput(
                f"sample[{name!r}] of dtype {array.dtype} is not a tensor: {one_line(e, _MESSAGE_LIMIT)}"
            ) from e
        if tensor.shape.rank == 0:
            raise BadInput(f"sample[{name!r}] is a scalar; the first dimension must be the batch")
        if batch is not None and tensor.shape[0] != batch:
            raise BadInput(f"sample[{name!r}] has batch size {tensor.shape[0]}; other inputs have {batch}")
        if tensor.shape[0] == 0:
            raise BadInput(f"sample[{name!r}] has batch size 0; pass at least one row")
        batch = int(tensor.shape[0])
        tensors[name] = tensor
    return tensors


def _keras_inputs_struct(fn: Any) -> Any:
    """The structure a Keras functional/sequential model was built on, or None when not knowable."""
    if not isinstance(fn, keras.Model):
        return None
    try:
        return fn.input
    except Exception:  # subclassed models never called symbolically have no input structure
        return None


def _check_input_names(first: Any, names: list[str]) -> None:
    """Input names must match what a functional Keras model looks its inputs up by (dict keys/input names)."""
    struct = _keras_inputs_struct(first)
    if isinstance(struct, dict):
        expected = sorted(struct)
    elif isinstance(struct, list | tuple) and len(struct) > 1:
        expected = sorted(t.name for t in struct)
    else:
        return  # a single positional input: any name will do
    for name in expected:
        if name not in names:
            raise BadInput(f"sample lacks input {name!r}; the model takes {expected}")
    for name in names:
        if name not in expected:
            raise BadInput(f"sample has input {name!r}, which the model does not take; it takes {expected}")


def _check_output_names(names: list[str]) -> None:
    for name in names:
        if not isinstance(name, str) or not name:
            raise BadInput(f"output name {name!r} is invalid; use a non-empty string")
    if len(set(names)) != len(names):
        raise BadInput(f"output_names={names} has duplicates; each output needs its own name")


# --- calling the model ---------------------------------------------------------------------------------


def _arg_for(fn: Any, inputs: dict[str, Any]) -> Any:
    """What ``fn`` is fed from the inputs dict (see the module docstring)."""
    if isinstance(_keras_inputs_struct(fn), dict) or len(inputs) > 1:
        return inputs
    return next(iter(inputs.values()))


def _call(fn: Any, x: Any) -> Any:
    if isinstance(x, dict):
        x = _arg_for(fn, x)
    if isinstance(fn, keras.layers.Layer):
        return fn(x, training=False)
    return fn(x)


def _name_outputs(result: Any, output_names: list[str] | None) -> dict[str, Any]:
    if isinstance(result, Mapping):
        named = dict(result)
        if output_names is not None and sorted(output_names) != sorted(named):
            raise BadInput(f"output_names={output_names} cannot rename dict outputs; the model returns {sorted(named)}")
    else:
        values = list(result) if isinstance(result, list | tuple) else [result]
        if output_names is None:
            output_names = [f"output_{i}" for i in range(len(values))]
        if len(output_names) != len(values):
            raise BadInput(
                f"output_names={output_names} has {len(output_names)} names; the model has {len(values)} outputs"
            )
        named = dict(zip(output_names, values, strict=True))
    for name, value in named.items():
        if not isinstance(name, str) or not name:
            raise BadInput(f"output name {name!r} is invalid; use a non-empty string")
        if isinstance(value, Mapping | list | tuple):
            raise BadInput(
                f"output {name!r} is nested ({type(value).__name__}); return a tensor, a list or a flat dict"
            )
    return {k: tf.convert_to_tensor(v) for k, v in named.items()}


def _to_numpy(value: Any) -> np.ndarray:
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


# --- writing -------------------------------------------------------------------------------------------


def _trackables(objs: Sequence[Any]) -> list[Any]:
    """Layers, modules and lookup tables reachable from ``objs``, including a function's closure and ``self``.

    ``ExportArchive`` saves the variables the endpoint reads by itself, but lookup tables (StringLookup,
    TextVectorization, tf.lookup) only when their owner is tracked; a preprocessing function that closes
    over a StringLookup would otherwise fail to save with an "untracked resource" error.
    """
    kinds = (keras.layers.Layer, tf.Module, tf.saved_model.experimental.TrackableResource)
    found: list[Any] = []
    seen: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if obj is None or id(obj) in seen or depth > 3:
            return
        seen.add(id(obj))
        if isinstance(obj, kinds):
            found.append(obj)
        elif isinstance(obj, list | tuple):
            for item in obj:
                visit(item, depth + 1)
        elif isinstance(obj, dict):
            for item in obj.values():
                visit(item, depth + 1)
        elif isinstance(obj, tf.types.experimental.GenericFunction):
            visit(getattr(obj, "python_function", None), depth + 1)  # tf.function -> its Python function
        elif inspect.ismethod(obj):
            visit(obj.__self__, depth + 1)
            visit(obj.__func__, depth + 1)
        elif inspect.isfunction(obj):
            try:
                refs = inspect.getclosurevars(obj)
            except (TypeError, ValueError):
                return
            for value in [*refs.nonlocals.values(), *refs.globals.values()]:
                visit(value, depth + 1)

    for obj in objs:
        visit(obj, 0)
    return found


def _write_saved_model(
    path: Path, forward: Callable[[dict[str, Any]], dict[str, Any]], signature: list[Any], roots: list[Any]
) -> None:
    archive = keras.export.ExportArchive()
    try:
        for obj in _trackables(roots):
            if isinstance(obj, keras.layers.Layer) and not obj.built:
                continue  # never called on the sample, so not part of the graph
            archive.track(obj)
        # One dict argument: the signature's input keys are then the TensorSpec names (without them TF would
        # use the argument name: "inputs", "inputs_1", ...). The returned dict's keys are the output keys.
        archive.add_endpoint(_ENDPOINT, forward, input_signature=signature)
        archive.write_out(str(path), verbose=False)  # the first endpoint is also saved as "serving_default"
    except (BadInput, ExportError):
        raise
    except Exception as e:
        raise ExportError(f"writing the SavedModel failed: {one_line(e, _MESSAGE_LIMIT)}") from e


def _validate(
    path: Path, tensors: dict[str, tf.Tensor], expected: dict[str, np.ndarray], atol: float, rtol: float
) -> tuple[dict[str, str], float]:
    """Reload ``path`` and compare its ``serving_default`` on the sample with the in-memory outputs."""
    try:
        loaded = tf.saved_model.load(str(path))
        fn = loaded.signatures[SERVING_SIGNATURE]
        _, kwargs = fn.structured_input_signature
        if sorted(kwargs) != sorted(tensors):
            raise ExportError(f"the saved signature takes inputs {sorted(kwargs)}, not {sorted(tensors)}")
        got = {k: _to_numpy(v) for k, v in fn(**tensors).items()}
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"reloading the SavedModel and running it failed: {one_line(e, _MESSAGE_LIMIT)}") from e
    worst = 0.0
    for name, want in expected.items():
        if name not in got:
            raise ExportError(f"output {name!r} is missing from the reloaded SavedModel; it has {sorted(got)}")
        diff = _max_abs_diff(name, got[name], want, atol, rtol)
        worst = max(worst, diff)
    extra = sorted(set(got) - set(expected))
    if extra:
        raise ExportError(f"the reloaded SavedModel has extra outputs {extra}; expected {sorted(expected)}")
    dtypes = {k: v.dtype.name for k, v in fn.structured_outputs.items()}
    return dtypes, worst


def _max_abs_diff(name: str, got: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> float:
    if got.shape != want.shape:
        raise ExportError(f"output {name!r} has shape {got.shape} after reloading; in memory {want.shape}")
    if want.dtype.kind in "OSU" or got.dtype.kind in "OSU":
        if not np.array_equal(got, want):
            raise ExportError(f"output {name!r} differs after reloading (string values do not match)")
        return 0.0
    a, b = got.astype(np.float64), want.astype(np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    diff = np.where(both_nan, 0.0, np.abs(a - b))
    worst = float(np.max(diff)) if diff.size else 0.0
    if np.isnan(worst):
        worst = float("inf")  # NaN on one side only
    if not np.all(np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)):
        raise ExportError(
            f"output {name!r} differs after reloading: max abs diff {worst:.3g} exceeds atol={atol} rtol={rtol}"
        )
    return worst


def _write_warmup(path: Path, tensors: dict[str, tf.Tensor], model_name: str) -> int:
    batches = [tensors]
    if int(next(iter(tensors.values())).shape[0]) > 1:
        batches.append({k: t[:1] for k, t in tensors.items()})
    batches = batches[:MAX_WARMUP_RECORDS]
    out = path / WARMUP_FILE
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tf.io.TFRecordWriter(str(out)) as writer:
            for batch in batches:
                request = predict_pb2.PredictRequest(
                    model_spec=model_pb2.ModelSpec(name=model_name, signature_name=SERVING_SIGNATURE),
                )
                for k, t in batch.items():
                    request.inputs[k].CopyFrom(tf.make_tensor_proto(t.numpy()))
                log = prediction_log_pb2.PredictionLog(
                    predict_log=prediction_log_pb2.PredictLog(request=request),
                )
                writer.write(log.SerializeToString())
    except Exception as e:
        raise ExportError(f"writing warmup records to {out} failed: {one_line(e, _MESSAGE_LIMIT)}") from e
    return len(batches)


def _publish(tmp: Path, target: Path) -> None:
    """Move ``tmp`` to ``target``. An existing ``target`` (empty, or overwrite=True) is replaced; kept on error."""
    old: Path | None = None
    try:
        if target.exists():
            old = _new_sibling(target, "old")
            target.replace(old)  # onto an empty directory: allowed
        tmp.replace(target)
    except OSError as e:
        if old is not None and not target.exists():
            old.replace(target)
            old = None
        raise ExportError(f"moving the export into place at {target} failed: {one_line(e, _MESSAGE_LIMIT)}") from e
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _new_sibling(target: Path, kind: str) -> Path:
    """A new empty hidden directory beside ``target``; its name never parses as a TF Serving version.

    Not ``tempfile.mkdtemp``: that makes the directory mode 0700, which the rename would carry over to the
    export, unreadable to a server running as another user. ``mkdir`` honours the umask instead.
    """
    for _ in range(100):
        path = target.parent / f".{target.name}.{kind}-{secrets.token_hex(6)}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise ExportError(f"could not create a temporary directory beside {target}")
