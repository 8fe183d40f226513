"""What ML engineers really pass to export_model's checks: a preprocessing that hides its layer in an object, a
``functools.partial`` or a default argument; labels the metric cannot score (regression targets, 1-based classes,
strings, NaN); NaN in the validation inputs; a Keras metric object; ``metric.result()`` as expected_metric; and a
``modelfleet.json`` edited by hand before publish. Each is refused with one line naming the value, or scored right."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from model_export import metrics
from model_export.errors import BadInput, ExportError, NotASavedModel
from model_export.export import export_model
from model_export.publish import publish
from model_export.savedmodel import METADATA_FILE, inspect_savedmodel
from tests.support.cli import run_cli

pytestmark = pytest.mark.slow

ROWS = 60


def _nothing_at(path: Path) -> None:
    assert not path.exists()
    if path.parent.exists():
        assert [p.name for p in path.parent.iterdir()] == []  # no temporary directory left behind either


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(ROWS, 4))
    return x, (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0).astype(np.int64)  # classes 0, 1, 2


def _classifier(classes: int = 3, activation: str | None = "softmax", norm: Any = None) -> keras.Model:
    keras.utils.set_random_seed(3)
    inp = keras.Input((4,), name="features")
    hidden = inp if norm is None else norm(inp)
    return keras.Model(inp, keras.layers.Dense(classes, activation=activation)(hidden))


# --- a preprocessing the model already does, hidden where the first check did not look -----------------------------


class _Preprocess:
    """A preprocessing class as people write them: the layer is an attribute its __call__ reads."""

    def __init__(self, layer: keras.layers.Layer) -> None:
        self.layer = layer

    def __call__(self, x: Any) -> Any:
        return self.layer(x)

    def transform(self, x: Any) -> Any:
        return self.layer(x)


def _default_arg(layer: keras.layers.Layer) -> Any:
    def preprocess(x: Any, layer: keras.layers.Layer = layer) -> Any:
        return layer(x)

    return preprocess


def _apply(x: Any, layer: keras.layers.Layer) -> Any:
    return layer(x)


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(_Preprocess, id="callable-object"),
        pytest.param(lambda layer: _Preprocess(layer).transform, id="bound-method"),
        pytest.param(lambda layer: functools.partial(_apply, layer=layer), id="functools-partial"),
        pytest.param(_default_arg, id="default-argument"),
    ],
)
def test_a_layer_of_the_model_reused_in_a_preprocessing_object_is_refused(wrap: Any, tmp_path: Path) -> None:
    x, _ = _data()
    norm = keras.layers.Normalization(name="norm")
    norm.adapt(x.astype("float32"))
    model = _classifier(norm=norm)  # normalises inside: the served graph would normalise twice
    target = tmp_path / "out" / "1"
    with pytest.raises(BadInput) as e:
        export_model(model, target, sample={"features": x[:4]}, preprocessing=wrap(norm))
    assert str(e.value).startswith(
        "preprocessing would run twice: its Normalization layer 'norm' is also a layer of the model;"
    )
    _nothing_at(target)


def test_a_lookup_held_by_a_preprocessing_object_is_saved(tmp_path: Path) -> None:
    """The same walk finds the lookup table the SavedModel must carry; before, saving failed on an untracked one."""
    words = np.array([["red"], ["green"], ["blue"], ["green"]])
    lookup = keras.layers.StringLookup(vocabulary=["red", "green", "blue"], output_mode="one_hot", name="colour")
    inp = keras.Input((4,), name="colour_onehot")
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(inp))
    result = export_model(
        model,
        tmp_path / "1",
        sample={"colour": words},
        preprocessing=functools.partial(_apply, layer=lookup),
    )
    assert result.inputs == {"colour": "string"}
    served = tf.saved_model.load(str(tmp_path / "1")).signatures["serving_default"]
    got = next(iter(served(colour=tf.constant(words)).values())).numpy()
    want = model(lookup(words)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)


# --- labels accuracy cannot score ----------------------------------------------------------------------------------


def test_accuracy_of_a_regression_with_integer_targets_is_refused(tmp_path: Path) -> None:
    x, y = _data()
    model = _classifier(classes=1, activation=None)  # a regression: one linear output
    target = tmp_path / "out" / "1"
    with pytest.raises(BadInput) as e:
        export_model(model, target, sample=x[:4], validation=(x, y), metric="accuracy")
    assert str(e.value) == (
        "accuracy of a single-column output needs 0/1 labels; y holds 2 (a regression? use metric='mae' or 'mse')"
    )
    _nothing_at(target)


def test_accuracy_of_a_single_column_outside_zero_one_is_refused(tmp_path: Path) -> None:
    x, y = _data()
    model = _classifier(classes=1, activation=None)  # logits (or a regression), not a probability
    target = tmp_path / "out" / "1"
    with pytest.raises(BadInput, match=r"reads it as the probability of class 1; the model outputs values in \[-"):
        export_model(model, target, sample=x[:4], validation=(x, (y > 0).astype(np.int64)), metric="accuracy")
    _nothing_at(target)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        pytest.param(
            lambda y: y + 1,
            "y holds label 3; the model has 3 classes, so labels are 0..2 (labels counted from 1? subtract 1)",
            id="one-based",
        ),
        pytest.param(
            lambda y: np.array(["a", "b", "c"])[y],
            "accuracy needs numeric class labels; y holds strings: encode the classes as 0..n-1",
            id="strings",
        ),
    ],
)
def test_accuracy_refuses_labels_that_are_not_the_model_classes(labels: Any, message: str, tmp_path: Path) -> None:
    x, y = _data()
    target = tmp_path / "out" / "1"
    with pytest.raises(BadInput) as e:
        export_model(_classifier(), target, sample=x[:4], validation=(x, labels(y)), metric="accuracy")
    assert str(e.value) == message
    _nothing_at(target)


def test_accuracy_of_class_id_outputs_compares_the_ids() -> None:
    assert metrics.accuracy(np.array([0, 2, 1, 2]), np.array([0, 2, 2, 2])) == 0.75


def test_one_hot_labels_and_a_sigmoid_column_score_as_keras_does(tmp_path: Path) -> None:
    x, y = _data()
    model = _classifier()
    want = float(np.mean(model(x.astype("float32")).numpy().argmax(axis=1) == y))
    result = export_model(model, tmp_path / "a", sample=x[:4], validation=(x, np.eye(3)[y]), metric="accuracy")
    assert result.validation is not None and result.validation.value == pytest.approx(want)
    binary = (y > 0).astype(np.float32)[:, None]  # float labels in a (n, 1) column, as Keras fits them
    sigmoid = _classifier(classes=1, activation="sigmoid")
    want = float(np.mean((sigmoid(x.astype("float32")).numpy()[:, 0] > 0.5) == (y > 0)))
    result = export_model(sigmoid, tmp_path / "b", sample=x[:4], validation=(x, binary), metric="accuracy")
    assert result.validation is not None and result.validation.value == pytest.approx(want)


# --- NaN and malformed validation data -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("x", "validation x['features'] holds NaN or inf in 1 of 60 rows (first: row 7); drop or impute those rows"),
        ("y", "validation y holds NaN or inf in 1 of 60 rows (first: row 7); drop or impute those rows"),
    ],
)
def test_nan_in_validation_data_is_refused_not_scored(where: str, message: str, tmp_path: Path) -> None:
    """Before, a NaN row counted as a prediction of class 0 (argmax of NaN), and a NaN label as a miss."""
    x, y = _data()
    y = y.astype(np.float64)
    (x if where == "x" else y)[7] = np.nan
    target = tmp_path / "out" / "1"
    with pytest.raises(BadInput) as e:
        export_model(_classifier(), target, sample=x[:4], validation=(x, y), metric="accuracy")
    assert str(e.value) == message
    _nothing_at(target)


def test_ragged_labels_are_refused_in_one_line(tmp_path: Path) -> None:
    x, _ = _data()
    target = tmp_path / "out" / "1"
    with pytest.raises(BadInput) as e:
        export_model(_classifier(), target, sample=x[:4], validation=(x, [[1], [0, 2]] * 30), metric="accuracy")
    assert str(e.value).startswith("validation y is not an array: ") and "\n" not in str(e.value)
    _nothing_at(target)


def test_predictions_of_nan_are_not_scored_as_a_class() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [np.nan, np.nan, np.nan]])
    with pytest.raises(ExportError, match=r"NaN or inf in 1 of 2 rows \(first: row 1\); accuracy cannot score them"):
        metrics.accuracy(np.array([0, 0]), probs)


# --- the metric and its reference as Keras hands them out ----------------------------------------------------------


def test_a_keras_metric_object_scores_each_model_alone(tmp_path: Path) -> None:
    """A keras.metrics object keeps state: without a reset the served score averaged in the in-memory one."""
    x, y = _data()
    model = _classifier()
    want = float(np.mean(model(x.astype("float32")).numpy().argmax(axis=1) == y))
    metric = keras.metrics.SparseCategoricalAccuracy()
    metric.update_state(np.zeros(ROWS), np.eye(3)[np.full(ROWS, 1)])  # left over from training: scores 0
    result = export_model(model, tmp_path / "1", sample=x[:4], validation=(x, y), metric=metric)
    assert result.validation is not None
    assert result.validation.metric == "sparse_categorical_accuracy"
    assert result.validation.value == pytest.approx(want, abs=1e-6)
    assert result.reference_score == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize(
    "expected",
    [
        pytest.param(lambda v: np.float32(v), id="numpy-float32"),
        pytest.param(lambda v: np.array(v), id="numpy-0d"),
        pytest.param(lambda v: tf.constant(v), id="tf-scalar"),
        pytest.param(lambda v: keras.ops.convert_to_tensor(v), id="keras-metric-result"),
    ],
)
def test_expected_metric_as_keras_and_numpy_return_it(expected: Any, tmp_path: Path) -> None:
    x, y = _data()
    model = _classifier()
    want = float(np.mean(model(x.astype("float32")).numpy().argmax(axis=1) == y))
    result = export_model(
        model, tmp_path / "1", sample=x[:4], validation=(x, y), metric="accuracy", expected_metric=expected(want)
    )
    assert result.reference_score == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.array([0.9, 0.8]), "expected_metric=ndarray of shape (2,) is not a number; pass the accuracy you measured"),
        ([0.9], "expected_metric=list of shape (1,) is not a number; pass the accuracy you measured"),
        ("0.9", "expected_metric='0.9' is not a number; pass the accuracy you measured"),
        (np.array(np.nan), "expected_metric=nan is not finite; pass the accuracy you measured"),
    ],
)
def test_expected_metric_that_is_no_number_is_refused_in_one_line(value: Any, message: str, tmp_path: Path) -> None:
    x, y = _data()
    with pytest.raises(BadInput) as e:
        export_model(
            _classifier(), tmp_path / "1", sample=x[:4], validation=(x, y), metric="accuracy", expected_metric=value
        )
    assert str(e.value) == message


# --- modelfleet.json edited by hand before publish -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("validation", "message"),
    [
        (
            {"metric": "accuracy", "value": 0.9, "rows": 10**20},
            f"validation.rows: expected an integer in [1, {2**63 - 1}]",
        ),
        ({"metric": "acc\nuracy", "value": 0.9, "rows": 3}, "validation.metric: expected an identifier of at most 64"),
        ({"metric": "x" * 65, "value": 0.9, "rows": 3}, "validation.metric: expected an identifier of at most 64"),
        ({"metric": "accuracy", "value": 7.5, "rows": 3}, "validation.value: 7.5 is outside [0.0, 1.0]"),
        ({"metric": "mse", "value": -0.5, "rows": 3}, "validation.value: -0.5 is outside [0.0, inf]"),
    ],
)
def test_publish_refuses_a_hand_edited_record_before_uploading(
    savedmodels: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    validation: dict[str, Any],
    message: str,
) -> None:
    """Before, these were published: a value no metric has, a name that breaks the versions table, or (rows beyond
    int64) a manifest update refused only after the upload."""
    copy = tmp_path / "m"
    shutil.copytree(savedmodels["v1"], copy)
    (copy / METADATA_FILE).parent.mkdir(exist_ok=True)
    (copy / METADATA_FILE).write_text(json.dumps({"validation": validation}))
    store = tmp_path / "store"
    store.mkdir()
    with pytest.raises(NotASavedModel) as e:
        inspect_savedmodel(copy)
    assert message in str(e.value) and "\n" not in str(e.value)
    code, out, err = run_cli(capsys, "publish", str(copy), "--store", store.as_uri(), "--model", "m")
    assert code == 2 and message in err and err.strip().count("\n") == 0, (code, out, err)
    assert list(store.iterdir()) == []  # nothing uploaded, no manifest
    with pytest.raises(NotASavedModel):
        publish(copy, store.as_uri(), "m")
