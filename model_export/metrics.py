"""The scores ``export_model`` validates a SavedModel with: a few named metrics, callables, and the rule "the served
model scores the same as the in-memory one". Plain numpy, no TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from model_export.errors import BadInput, ExportError, one_line
from model_export.savedmodel import is_metric_name

MetricFn = Callable[[np.ndarray, np.ndarray], float]  # (y_true, y_pred) -> score


def _labels_like(y_true: np.ndarray, rows: int, what: str) -> np.ndarray:
    """Integer labels as a 1-D array of ``rows`` (an ``(n, 1)`` column is accepted)."""
    if y_true.size != rows:
        raise BadInput(f"y has shape {y_true.shape}; {what} needs one label per row ({rows} rows)")
    return y_true.reshape(rows)


def _kind(array: np.ndarray) -> str:
    return "strings" if array.dtype.kind in "SUO" else array.dtype.name


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of rows whose predicted class is the label.

    Predictions with a class axis (last dimension > 1: probabilities or logits) predict their argmax; the labels are
    integers ``0..classes-1``, or one-hot/probabilities of the predictions' shape (then their argmax). A single column
    (or 1-D) of integers holds class ids; of floats, a binary probability in [0, 1]: class 1 when > 0.5, labels 0/1.
    Anything else (labels out of range, strings, a regression's or logits' output) is refused rather than scored: the
    score would mean nothing.
    """
    pred, true = np.asarray(y_pred), np.asarray(y_true)
    if true.dtype.kind not in "biuf":
        raise BadInput(f"accuracy needs numeric class labels; y holds {_kind(true)}: encode the classes as 0..n-1")
    rows = pred.shape[0] if pred.ndim else 0
    if pred.dtype.kind in "fc" and rows and not np.all(np.isfinite(pred)):
        bad = (~np.isfinite(pred)).reshape(rows, -1).any(axis=1)
        raise ExportError(
            f"the predictions hold NaN or inf in {int(bad.sum())} of {rows} rows (first: row {int(np.argmax(bad))}); "
            "accuracy cannot score them"
        )
    if pred.ndim >= 2 and pred.shape[-1] > 1:
        classes = pred.shape[-1]
        predicted = pred.argmax(axis=-1).reshape(rows, -1)
        labels = true.argmax(axis=-1) if true.shape == pred.shape else true
        labels = _labels_like(np.asarray(labels), predicted.size, "accuracy")
        outside = ~np.isin(labels, np.arange(classes))
        if np.any(outside):
            raise BadInput(
                f"y holds label {labels[outside][0].item()!r}; the model has {classes} classes, so labels are "
                f"0..{classes - 1} (labels counted from 1? subtract 1)"
            )
        return float(np.mean(predicted.reshape(-1) == labels))
    if pred.dtype.kind in "iu":  # class ids: the model takes the argmax itself
        labels = _labels_like(true, pred.size, "accuracy")
        return float(np.mean(pred.reshape(-1) == labels))
    outside = ~np.isin(true, (0, 1))
    if np.any(outside):
        raise BadInput(
            f"accuracy of a single-column output needs 0/1 labels; y holds {true[outside][0].item()!r} "
            "(a regression? use metric='mae' or 'mse')"
        )
    if pred.size and (float(np.min(pred)) < 0 or float(np.max(pred)) > 1):
        raise BadInput(
            "accuracy of a single-column output reads it as the probability of class 1; the model outputs values in "
            f"[{float(np.min(pred)):.4g}, {float(np.max(pred)):.4g}] (logits or a regression?): "
            "use metric='mae' or 'mse', or a callable"
        )
    predicted = (pred.reshape(rows, -1) > 0.5).astype(np.int64)
    labels = _labels_like(true, predicted.size, "accuracy").astype(np.int64)
    return float(np.mean(predicted.reshape(-1) == labels))


def _aligned(y_true: np.ndarray, y_pred: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    if np.asarray(y_true).dtype.kind not in "biuf":
        raise BadInput(f"{name} needs numeric y; y holds {_kind(np.asarray(y_true))}")
    pred, true = np.asarray(y_pred, np.float64), np.asarray(y_true, np.float64)
    if true.size != pred.size:
        raise BadInput(f"y has shape {true.shape}; {name} compares it with predictions of shape {pred.shape}")
    return true.reshape(pred.shape), pred


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean absolute error."""
    true, pred = _aligned(y_true, y_pred, "mae")
    return float(np.mean(np.abs(true - pred)))


def mse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean squared error."""
    true, pred = _aligned(y_true, y_pred, "mse")
    return float(np.mean((true - pred) ** 2))


NAMED: dict[str, MetricFn] = {"accuracy": accuracy, "mae": mae, "mse": mse}


def resolve(metric: str | MetricFn) -> tuple[str, MetricFn]:
    """``(name, function)`` of a metric given by name or as a callable (named after the function or the Keras metric,
    else "custom")."""
    if isinstance(metric, str):
        if metric not in NAMED:
            raise BadInput(
                f"metric={metric!r} is unknown; use one of {', '.join(NAMED)} or a callable (y_true, y_pred) -> float"
            )
        return metric, NAMED[metric]
    if not callable(metric):
        raise BadInput(f"metric={type(metric).__name__} is not a metric; use one of {', '.join(NAMED)} or a callable")
    name = getattr(metric, "__name__", None) or getattr(metric, "name", None)  # a function, or a keras.metrics object
    return (name if is_metric_name(name) else "custom"), metric


def score(name: str, fn: MetricFn, y_true: np.ndarray, y_pred: np.ndarray, of: str) -> float:
    """``fn(y_true, y_pred)`` as a finite float; ``of`` says whose predictions, for the error."""
    try:
        reset = getattr(fn, "reset_state", None)
        if callable(reset):  # a stateful keras.metrics object would average this call with the previous one
            reset()
        value = fn(y_true, y_pred)
    except BadInput:
        raise
    except Exception as e:
        raise ExportError(f"metric {name!r} failed on {of}: {one_line(e, 200)}") from e
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise ExportError(f"metric {name!r} returned {type(value).__name__} on {of}; it must return a number") from None
    if not math.isfinite(result):
        raise ExportError(f"metric {name!r} is {result} on {of}; a validation score must be a finite number")
    return result


def within(served: float, reference: float, tolerance: float) -> bool:
    """The one rule: ``|served - reference| <= tolerance * max(1, |reference|)`` (absolute for scores up to 1, such as
    accuracy; relative for larger ones, such as the mse of prices)."""
    return abs(served - reference) <= tolerance * max(1.0, abs(reference))
