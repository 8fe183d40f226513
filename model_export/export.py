"""Export a Keras 3 model (or a ``tf.Module``) as a TF Serving SavedModel, validated, with warmup records.

With :mod:`model_export.export_inputs`, the only modules of the package that import TensorFlow (the ``export``
extra). What it guarantees:

* The ``serving_default`` signature takes the inputs the model declares (names, dtypes, shapes with batch ``None``;
  see ``export_inputs``), or, when it declares none, those of ``sample``; it returns a dict of named outputs.
  Preprocessing runs inside the graph, so the server is fed raw inputs; its state (normalization
  statistics, lookup tables, also those of layers a preprocessing function closes over) is saved.
* Calling convention, for the preprocessing (when given) and for the model: a Keras functional model built
  on a dict of inputs gets the dict of input tensors; anything else gets the single tensor when there is one
  input, and the dict when there are several (Keras functional models with list inputs match the dict by
  input name). The model is fed the preprocessing's result by the same rule: a tensor as is, a dict as above.
* Atomic: everything is written to a hidden temporary sibling of ``export_dir`` (a name TF Serving never
  takes for a version: it does not parse as an integer), reloaded and compared with the in-memory model,
  scored on the validation data, given its warmup records, and only then renamed to ``export_dir``. On any
  failure ``export_dir`` is left as it was (absent if it was absent) and the temporary directory is removed.
* Warmup: ``assets.extra/tf_serving_warmup_requests`` holds one ``PredictionLog`` with the whole sample
  batch and, when the batch has more than one row, a second one with its first row only (the batch-of-one
  shape online clients send), so both shapes are warm before the version reports AVAILABLE.
* The validation score, when there is one, is in ``assets.extra/modelfleet.json`` (``savedmodel.METADATA_FILE``);
  ``publish`` copies it into the version's manifest entry.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from model_export import metrics
from model_export.errors import BadInput, ExportError, one_line
from model_export.export_inputs import (
    Declared,
    declared_inputs,
    double_preprocessing,
    input_tensors,
    keras_inputs_struct,
    trackables,
)
from model_export.savedmodel import METADATA_FILE, Validation, scored_digest
from model_export.signature import SERVING_SIGNATURE

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving reads at most this many
_MESSAGE_LIMIT = 300  # characters of a TensorFlow error kept in ours
_ENDPOINT = "serve"
_VALIDATION_BATCH = 1024  # rows per call when scoring validation data: memory stays bounded for large sets


@dataclass(frozen=True)
class ExportResult:
    path: Path
    inputs: dict[str, str]  # input name -> dtype name, e.g. {"pixels": "float32"}
    outputs: dict[str, str]  # output name -> dtype name
    max_abs_diff: float  # worst |reloaded - in_memory| over the sample batch
    warmup_records: int  # 0 when warmup disabled
    validation: Validation | None = None  # the served signature's score on ``validation``, when given
    reference_score: float | None = None  # what it was compared with (expected_metric, or the in-memory model's)


@dataclass(frozen=True)
class _Check:
    """The labelled-data check: the metric, the data as signature inputs, and the reference when the user gave it."""

    name: str
    fn: metrics.MetricFn
    x: dict[str, tf.Tensor]
    y: np.ndarray
    expected: float | None
    tolerance: float
    output: str | None


def export_model(
    model: Any,
    export_dir: str | os.PathLike[str],
    *,
    sample: Mapping[str, Any] | Any,
    preprocessing: Callable[..., Any] | None = None,
    output_names: Sequence[str] | None = None,
    validation: tuple[Any, Any] | None = None,
    metric: str | metrics.MetricFn | None = None,
    expected_metric: float | None = None,
    metric_tolerance: float = 0.01,
    metric_output: str | None = None,
    warmup: bool = True,
    model_name: str = "model",
    atol: float = 1e-5,
    rtol: float = 1e-4,
    overwrite: bool = False,
) -> ExportResult:
    """Write ``model`` (with ``preprocessing`` in front) as a validated SavedModel at ``export_dir``.

    Inputs. The serving signature's input names, dtypes and shapes come from the model's declared inputs (a Keras
    ``Input``, a ``tf.function`` ``input_signature`` of ``tf.TensorSpec``), or from the preprocessing's when one is
    given and declares them; otherwise (a ``Normalization`` layer, a plain function, a subclassed model) from
    ``sample``. ``sample`` is a batch keyed by input name, or a bare array for a model with one named input. Its
    names must be the model's; its dtypes are cast to the model's when no value changes (float64 -> float32,
    int -> float within the float's exact range, ...; the rule is in ``export_inputs``), else refused. The reloaded
    SavedModel must give the in-memory outputs on it (``np.isclose`` with ``atol``/``rtol``); the warmup records
    are made of it.

    Preprocessing. Pass ``preprocessing`` only when the model was trained on already preprocessed data. A
    preprocessing layer that is already inside the model, or one of the same kind and state (a ``Normalization``
    with the same mean and variance, a lookup with the same vocabulary, a ``Rescaling`` with the same scale), would
    run twice and is refused (``BadInput``).

    Validation. With ``validation=(x_raw, y)`` (``x_raw`` like ``sample``: raw inputs, as clients send them) and
    ``metric`` ("accuracy", "mae", "mse", or a callable ``(y_true, y_pred) -> float``), the reloaded SavedModel is
    called through ``serving_default`` on ``x_raw`` and scored. The score must equal the reference within
    ``|served - reference| <= metric_tolerance * max(1, |reference|)``. The reference is what the model scores on
    the data it was trained on, which only the caller knows when a preprocessing is in front:

    * ``expected_metric``, when given: the score you measured in training (``history.history["val_accuracy"][-1]``,
      or ``model.evaluate`` on the validation data as you fed it to ``fit``). Required with ``preprocessing``: the
      served graph is preprocessing then model, so computing the reference through the same preprocessing would
      compare the composition with itself and pass a wrong one (a preprocessing adapted on other data, a scaling
      the model also does).
    * otherwise, the in-memory model alone on ``x_raw`` (with no preprocessing, the model takes raw inputs).

    ``metric_output`` names the output to score when there are several. The score is recorded in the SavedModel
    and, by ``publish``, in the manifest (``modelfleet versions`` shows it).

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
    declared = declared_inputs(preprocessing if preprocessing is not None else model)
    tensors = input_tensors(sample, declared, "sample")
    names = list(tensors)
    if preprocessing is not None and (twice := double_preprocessing(preprocessing, model)):
        raise BadInput(
            f"preprocessing would run twice: {twice}; drop preprocessing= (the model already does it) "
            "or take the layer out of the model"
        )
    specs = _signature_specs(tensors, declared)
    check = _validation_check(
        validation, metric, expected_metric, metric_tolerance, metric_output, preprocessing is not None, specs
    )
    if output_names is not None:
        output_names = list(output_names)
        _check_output_names(output_names)

    def forward(inputs: dict[str, Any]) -> dict[str, Any]:
        x = _call(preprocessing, inputs) if preprocessing is not None else inputs
        return _name_outputs(_call(model, x), output_names)

    # The in-memory reference, computed eagerly. It also builds every layer, which tracking requires.
    expected = _run_in_memory(forward, tensors, names)
    reference = None
    if check is not None:
        check = _with_output(check, sorted(expected))
        reference = check.expected
        if reference is None:
            predictions = _predict(
                lambda b: _run_in_memory(forward, b, names, "the validation data"), check.x, check.output
            )
            reference = metrics.score(check.name, check.fn, check.y, predictions, "the in-memory model")

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_sibling(target, "export")
    try:
        _write_saved_model(tmp, forward, [specs], [model, preprocessing])
        loaded = _reload(tmp, tensors)
        outputs, max_diff = _validate(loaded, tensors, expected, atol, rtol)
        scored = None if check is None or reference is None else _score_served(loaded, check, reference)
        if scored is not None:
            _write_metadata(tmp, scored)
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
        validation=scored,
        reference_score=reference,
    )


def _run_in_memory(
    forward: Callable[[dict[str, Any]], dict[str, Any]],
    tensors: dict[str, tf.Tensor],
    names: list[str],
    what: str = "the sample",
) -> dict[str, np.ndarray]:
    try:
        return {k: _to_numpy(v) for k, v in forward(tensors).items()}
    except (BadInput, ExportError):
        raise
    except KeyError as e:
        key = e.args[0] if e.args else None
        if isinstance(key, str) and key not in names:  # the model (or preprocessing) wanted another input
            raise BadInput(f"the model looked up input {key!r}; sample lacks it (sample has {names})") from e
        raise ExportError(f"calling the model on {what} failed: KeyError {one_line(e, _MESSAGE_LIMIT)}") from e
    except Exception as e:
        raise ExportError(f"calling the model on {what} failed: {one_line(e, _MESSAGE_LIMIT)}") from e


def _signature_specs(tensors: dict[str, tf.Tensor], declared: Declared | None) -> dict[str, tf.TensorSpec]:
    """The serving signature's inputs: the declared specs (renamed to the sample's key when the model leaves the name
    open), else the sample's dtypes and shapes with a ``None`` batch."""
    specs = {}
    for name, t in tensors.items():
        if declared is None:
            specs[name] = tf.TensorSpec((None, *t.shape[1:]), t.dtype, name=name)
        else:
            spec = declared.specs[name if declared.named else ""]
            specs[name] = tf.TensorSpec(spec.shape, spec.dtype, name=name)
    return specs


# --- validation on labelled data ------------------------------------------------------------------------------


def _validation_check(
    validation: tuple[Any, Any] | None,
    metric: str | metrics.MetricFn | None,
    expected_metric: float | None,
    tolerance: float,
    output: str | None,
    has_preprocessing: bool,
    specs: dict[str, tf.TensorSpec],
) -> _Check | None:
    """The validation arguments, checked before anything runs; None when there is no labelled data."""
    if validation is None:
        for given, arg in ((metric, "metric"), (expected_metric, "expected_metric"), (output, "metric_output")):
            if given is not None:
                raise BadInput(f"{arg}= needs validation=(x, y): the labelled data to score the served model on")
        return None
    if not isinstance(validation, tuple | list) or len(validation) != 2:
        raise BadInput(f"validation={type(validation).__name__} is not (x, y); pass validation=(x_raw, y)")
    if metric is None:
        raise BadInput(f"validation=(x, y) needs metric=: one of {', '.join(metrics.NAMED)}, or a callable")
    name, fn = metrics.resolve(metric)
    if (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, int | float | np.number)
        or not 0 <= tolerance < math.inf
    ):
        raise BadInput(f"metric_tolerance={tolerance!r} is invalid; pass a number >= 0, e.g. 0.01")
    if expected_metric is not None:
        expected_metric = _number(expected_metric, name)
    elif has_preprocessing:
        raise BadInput(
            f"validation with preprocessing= needs expected_metric=: the {name} the model scored in training on "
            "this data (e.g. history.history['val_...'][-1]); export cannot know what the model was trained on"
        )
    x_raw, y_raw = validation
    x = input_tensors(x_raw, Declared(specs, named=True), "validation x")
    for key, tensor in x.items():
        _check_finite(f"validation x[{key!r}]", tensor.numpy())
    try:
        y = _to_numpy(y_raw)
    except (TypeError, ValueError) as e:
        raise BadInput(f"validation y is not an array: {one_line(e, 200)}; pass one label (or row) per row of x") from e
    rows = int(next(iter(x.values())).shape[0])
    if y.ndim == 0 or y.shape[0] != rows:
        raise BadInput(f"validation y has shape {y.shape}; x has {rows} rows, y needs one label per row")
    _check_finite("validation y", y)
    expected = None if expected_metric is None else float(expected_metric)
    return _Check(name, fn, x, y, expected, float(tolerance), output)


def _number(value: Any, metric: str) -> float:
    """``expected_metric`` as a finite float: a Python or numpy number, a 0-d array or tensor (``metric.result()``)."""
    try:
        array = _to_numpy(value)
    except (TypeError, ValueError):
        array = np.asarray(None)
    if array.shape != () or array.dtype.kind not in "iuf":
        shown = f"{type(value).__name__} of shape {array.shape}" if array.shape else repr(value)
        raise BadInput(f"expected_metric={one_line(shown, 100)} is not a number; pass the {metric} you measured")
    number = float(array)
    if not math.isfinite(number):
        raise BadInput(f"expected_metric={number} is not finite; pass the {metric} you measured")
    return number


def _check_finite(what: str, array: np.ndarray) -> None:
    """Refuse NaN or inf in validation data: a row scored on them tells nothing about the model (argmax of NaN is
    class 0, a NaN label is never matched)."""
    if array.dtype.kind not in "fc" or array.ndim == 0:
        return
    bad = (~np.isfinite(array)).reshape(array.shape[0], -1).any(axis=1)
    if bad.any():
        raise BadInput(
            f"{what} holds NaN or inf in {int(bad.sum())} of {bad.size} rows (first: row {int(np.argmax(bad))}); "
            "drop or impute those rows"
        )


def _with_output(check: _Check, outputs: list[str]) -> _Check:
    """``check`` with the output to score settled: the only one, or ``metric_output``, which must exist."""
    if check.output is None:
        if len(outputs) > 1:
            raise BadInput(f"the model has outputs {outputs}; pass metric_output= to say which one {check.name} scores")
        return _Check(check.name, check.fn, check.x, check.y, check.expected, check.tolerance, outputs[0])
    if check.output not in outputs:
        raise BadInput(f"metric_output={check.output!r} is not an output; the model has {outputs}")
    return check


def _batches(tensors: dict[str, tf.Tensor]) -> Iterator[dict[str, tf.Tensor]]:
    rows = int(next(iter(tensors.values())).shape[0])
    for start in range(0, rows, _VALIDATION_BATCH):
        yield {k: t[start : start + _VALIDATION_BATCH] for k, t in tensors.items()}


def _predict(
    run: Callable[[dict[str, tf.Tensor]], Mapping[str, Any]], x: dict[str, tf.Tensor], output: str | None
) -> np.ndarray:
    assert output is not None  # settled by _with_output
    return np.concatenate([_to_numpy(run(batch)[output]) for batch in _batches(x)], axis=0)


def _score_served(loaded: Any, check: _Check, reference: float) -> Validation:
    """Score ``serving_default`` of the reloaded SavedModel on the raw validation inputs against ``reference``."""
    fn = loaded.signatures[SERVING_SIGNATURE]
    try:
        predictions = _predict(lambda batch: fn(**batch), check.x, check.output)
    except Exception as e:
        raise ExportError(f"running the reloaded SavedModel on the validation data failed: {one_line(e, 200)}") from e
    served = metrics.score(check.name, check.fn, check.y, predictions, "the served SavedModel")
    rows = int(predictions.shape[0])
    if not metrics.within(served, reference, check.tolerance):
        source = "expected_metric" if check.expected is not None else "the in-memory model scores"
        raise ExportError(
            f"validation failed: the served SavedModel scores {check.name}={served:.4g} on {rows} rows; "
            f"{source} {reference:.4g} (metric_tolerance={check.tolerance}) — the served graph runs preprocessing "
            "then the model: is the preprocessing the one the model was trained with, and not also inside it?"
        )
    return Validation(check.name, served, rows)


def _write_metadata(path: Path, validation: Validation) -> None:
    out = path / METADATA_FILE
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        doc = {"validation": validation.to_json(), "scored": scored_digest(path, validation)}
        out.write_text(json.dumps(doc, indent=1) + "\n")
    except OSError as e:
        raise ExportError(f"writing {out} failed: {one_line(e, _MESSAGE_LIMIT)}") from e


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


def _check_output_names(names: list[str]) -> None:
    for name in names:
        if not isinstance(name, str) or not name:
            raise BadInput(f"output name {name!r} is invalid; use a non-empty string")
    if len(set(names)) != len(names):
        raise BadInput(f"output_names={names} has duplicates; each output needs its own name")


# --- calling the model ---------------------------------------------------------------------------------


def _arg_for(fn: Any, inputs: dict[str, Any]) -> Any:
    """What ``fn`` is fed from the inputs dict (see the module docstring)."""
    if isinstance(keras_inputs_struct(fn), dict) or len(inputs) > 1:
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


def _write_saved_model(
    path: Path, forward: Callable[[dict[str, Any]], dict[str, Any]], signature: list[Any], roots: list[Any]
) -> None:
    archive = keras.export.ExportArchive()
    try:
        for obj in trackables(roots):
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


def _reload(path: Path, tensors: dict[str, tf.Tensor]) -> Any:
    """The SavedModel at ``path``, loaded afresh; its signature must take exactly the sample's inputs."""
    try:
        loaded = tf.saved_model.load(str(path))
        _, kwargs = loaded.signatures[SERVING_SIGNATURE].structured_input_signature
    except Exception as e:
        raise ExportError(f"reloading the SavedModel failed: {one_line(e, _MESSAGE_LIMIT)}") from e
    if sorted(kwargs) != sorted(tensors):
        raise ExportError(f"the saved signature takes inputs {sorted(kwargs)}, not {sorted(tensors)}")
    return loaded


def _validate(
    loaded: Any, tensors: dict[str, tf.Tensor], expected: dict[str, np.ndarray], atol: float, rtol: float
) -> tuple[dict[str, str], float]:
    """Compare the reloaded ``serving_default`` on the sample with the in-memory outputs."""
    fn = loaded.signatures[SERVING_SIGNATURE]
    try:
        got = {k: _to_numpy(v) for k, v in fn(**tensors).items()}
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
