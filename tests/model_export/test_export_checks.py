"""Export checks what it serves: no preprocessing twice, a served score equal to the in-memory one, recorded in the
manifest; the signature's names and dtypes from the model, the sample cast to them or refused."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from model_export import metrics
from model_export.errors import BadInput, ExportError, NotASavedModel
from model_export.export import export_model
from model_export.manifest import load_manifest
from model_export.publish import publish
from model_export.savedmodel import METADATA_FILE, inspect_savedmodel
from model_export.store import open_store
from tests.support.cli import run_cli

pytestmark = pytest.mark.slow

SCALES = np.array([1.0, 10.0, 100.0, 1000.0])
OFFSETS = np.array([0.0, 50.0, -500.0, 5000.0])


def _measurements(seed: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Three well separated classes in four features of very different scales, float64 as scikit-learn returns."""
    rng = np.random.default_rng(seed)
    y = np.arange(rows) % 3
    centers = np.array([[-1.0, 0.0, 1.0, 0.0], [1.0, -1.0, 0.0, 1.0], [0.0, 1.0, -1.0, -1.0]])
    z = centers[y] + rng.normal(scale=0.25, size=(rows, 4))
    return z * SCALES + OFFSETS, y


def _classifier(inputs: Any, x: Any) -> keras.Model:
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="probs")(x))


def _fit(model: keras.Model, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray) -> float:
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=12, batch_size=32, verbose=0)
    # What history.history["val_accuracy"][-1] would be with validation_data, without scoring every epoch.
    return float(model.evaluate(x_val, y_val, verbose=0)[1])


@dataclass
class Trained:
    x_val: np.ndarray  # float64, raw
    y_val: np.ndarray
    norm: keras.layers.Normalization  # adapted on the training data
    inside: keras.Model  # Normalization inside: takes raw measurements
    inside_accuracy: float
    separate: keras.Model  # trained on norm(x): takes normalised measurements
    separate_accuracy: float


@pytest.fixture(scope="module")
def trained() -> Trained:
    keras.utils.set_random_seed(7)
    x, y = _measurements(0, 240)
    x_val, y_val = _measurements(1, 90)
    norm = keras.layers.Normalization(name="norm")
    norm.adapt(x.astype("float32"))

    raw = keras.Input((4,), name="measurements")
    inside = _classifier(raw, norm(raw))
    inside_accuracy = _fit(inside, x, y, x_val, y_val)

    scaled = keras.Input((4,), name="measurements")
    separate = _classifier(scaled, keras.layers.Dense(8, activation="relu")(scaled))
    separate_accuracy = _fit(separate, norm(x).numpy(), y, norm(x_val).numpy(), y_val)
    # The premise of every test below: both are good models, and a wrong normalisation would not be.
    assert inside_accuracy > 0.9 and separate_accuracy > 0.9
    return Trained(x_val, y_val, norm, inside, inside_accuracy, separate, separate_accuracy)


def _nothing_at(path: Path) -> None:
    assert not path.exists()
    if path.parent.exists():
        assert [p.name for p in path.parent.iterdir()] == []  # no temporary directory left behind either


def _column(table: str, name: str, row: int) -> str:
    """The value in column ``name`` of data row ``row`` (0-based) of a printed table (cells may hold spaces)."""
    lines = [line for line in table.splitlines() if line.strip()]
    header = next(i for i, line in enumerate(lines) if name in line.split())
    return lines[header + 1 + row][lines[header].index(name) :].split()[0]


def _served(path: Path, **inputs: np.ndarray) -> np.ndarray:
    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    return np.asarray(next(iter(fn(**{k: tf.constant(v) for k, v in inputs.items()}).values())))


# --- the common patterns export and validate ---------------------------------------------------------------------


def test_keras_pattern_normalization_inside_exports_validated(trained: Trained, tmp_path: Path) -> None:
    target = tmp_path / "out" / "1"
    result = export_model(
        trained.inside,
        target,
        sample=trained.x_val[:8],  # a bare float64 array: keyed by the model's input, cast to its float32
        validation=(trained.x_val, trained.y_val),
        metric="accuracy",
    )
    assert result.inputs == {"measurements": "float32"}
    info = inspect_savedmodel(target)
    assert info.signature.inputs["measurements"].dtype == "float32"
    assert info.signature.inputs["measurements"].shape == (-1, 4)
    assert result.validation is not None and info.validation == result.validation
    assert result.validation.metric == "accuracy" and result.validation.rows == 90
    # The reference is the in-memory model on the raw data, which is what fit measured as val_accuracy.
    assert result.reference_score == pytest.approx(trained.inside_accuracy, abs=1e-6)
    assert result.validation.value == pytest.approx(trained.inside_accuracy, abs=1 / 90)
    assert json.loads((target / METADATA_FILE).read_text())["validation"]["rows"] == 90
    # What clients send: raw float32 measurements, normalised exactly once.
    got = _served(target, measurements=trained.x_val.astype("float32"))
    assert np.mean(got.argmax(-1) == trained.y_val) > 0.9


def test_separate_preprocessing_pattern_exports_validated(trained: Trained, tmp_path: Path) -> None:
    target = tmp_path / "out" / "1"
    result = export_model(
        trained.separate,
        target,
        sample={"measurements": trained.x_val[:8].astype("float32")},
        preprocessing=trained.norm,
        validation=({"measurements": trained.x_val}, trained.y_val),
        metric="accuracy",
        expected_metric=trained.separate_accuracy,
    )
    assert result.validation is not None
    assert result.validation.value == pytest.approx(trained.separate_accuracy, abs=1 / 90)
    assert result.reference_score == trained.separate_accuracy
    got = _served(target, measurements=trained.x_val.astype("float32"))
    assert np.mean(got.argmax(-1) == trained.y_val) > 0.9


# --- the same preprocessing twice ----------------------------------------------------------------------------------


def test_normalization_inside_and_as_preprocessing_is_refused(trained: Trained, tmp_path: Path) -> None:
    target = tmp_path / "out" / "1"
    with pytest.raises(BadInput) as e:
        export_model(trained.inside, target, sample={"measurements": trained.x_val[:8]}, preprocessing=trained.norm)
    assert str(e.value) == (
        "preprocessing would run twice: its Normalization layer 'norm' is also a layer of the model; "
        "drop preprocessing= (the model already does it) or take the layer out of the model"
    )
    _nothing_at(target)


def test_separate_but_equal_normalization_is_refused(trained: Trained, tmp_path: Path) -> None:
    x, _ = _measurements(0, 240)
    twin = keras.layers.Normalization(name="twin")
    twin.adapt(x.astype("float32"))  # adapted on the same data: the same mean and variance
    target = tmp_path / "out" / "1"
    with pytest.raises(BadInput, match="its Normalization layer 'twin' has the same mean and variance as the model's"):
        export_model(trained.inside, target, sample={"measurements": trained.x_val[:8]}, preprocessing=twin)
    _nothing_at(target)


def test_equal_rescaling_in_a_preprocessing_function_is_refused(tmp_path: Path) -> None:
    pixels = keras.Input((3,), name="pixels")
    model = _classifier(pixels, keras.layers.Rescaling(1 / 255, name="to_unit")(pixels))
    again = keras.layers.Rescaling(1 / 255, name="again")

    def preprocess(x: tf.Tensor) -> tf.Tensor:
        return again(x)  # a function closing over the layer: found all the same

    with pytest.raises(BadInput, match="its Rescaling layer 'again' has the same scale and offset as the model's"):
        export_model(model, tmp_path / "out", sample={"pixels": np.ones((2, 3), "float32")}, preprocessing=preprocess)
    assert not (tmp_path / "out").exists()


# --- a wrong composition fails on the metric -----------------------------------------------------------------------


def test_preprocessing_adapted_on_other_data_fails_validation(trained: Trained, tmp_path: Path) -> None:
    other = keras.layers.Normalization(name="other")
    other.adapt((_measurements(2, 240)[0] * 3).astype("float32"))  # not what the model was trained behind
    target = tmp_path / "out" / "1"
    with pytest.raises(ExportError) as e:
        export_model(
            trained.separate,
            target,
            sample={"measurements": trained.x_val[:8]},
            preprocessing=other,
            validation=(trained.x_val, trained.y_val),
            metric="accuracy",
            expected_metric=trained.separate_accuracy,
        )
    message = str(e.value)
    assert message.startswith("validation failed: the served SavedModel scores accuracy=")
    assert f"on 90 rows; expected_metric {trained.separate_accuracy:.4g} (metric_tolerance=0.01)" in message
    served = float(message.split("accuracy=")[1].split(" ")[0])
    assert served < trained.separate_accuracy - 0.1
    assert "\n" not in message
    _nothing_at(target)


def test_double_scaling_by_a_custom_function_fails_validation(tmp_path: Path) -> None:
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    y = np.arange(150) % 3
    x = rng.uniform(0, 60, size=(150, 3))
    x[np.arange(150), y] += 190  # the brightest channel is the class
    pixels = keras.Input((3,), name="pixels")
    model = _classifier(pixels, keras.layers.Rescaling(1 / 255)(pixels))
    accuracy = _fit(model, x[:100], y[:100], x[100:], y[100:])
    assert accuracy > 0.9

    def also_scales(batch: tf.Tensor) -> tf.Tensor:
        return batch / 255.0  # the model already does this

    target = tmp_path / "out"
    with pytest.raises(ExportError, match=r"validation failed: .* scores accuracy=0\.[0-6]\d* on 50 rows"):
        export_model(
            model,
            target,
            sample={"pixels": x[:4]},
            preprocessing=also_scales,
            validation=(x[100:], y[100:]),
            metric="accuracy",
            expected_metric=accuracy,
        )
    assert not target.exists()
    # Without the custom function, the same call exports and records the score.
    result = export_model(model, target, sample=x[:4], validation=(x[100:], y[100:]), metric="accuracy")
    assert result.validation is not None and result.validation.value > 0.9


# --- the metric is recorded: manifest, versions, show ---------------------------------------------------------------


def test_validation_recorded_in_manifest_and_shown(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = tmp_path / "export"
    result = export_model(
        trained.inside, export, sample=trained.x_val[:8], validation=(trained.x_val, trained.y_val), metric="accuracy"
    )
    assert result.validation is not None
    (tmp_path / "store").mkdir()
    uri = f"file://{tmp_path / 'store'}"
    published = publish(export, uri, "wine", label="canary")
    entry = load_manifest(open_store(uri), "wine")[0].get(published.version)
    assert entry.validation == result.validation
    raw = json.loads((tmp_path / "store" / "wine" / "manifest.json").read_text())
    assert raw["versions"][0]["validation"] == {"metric": "accuracy", "value": result.validation.value, "rows": 90}

    code, out, err = run_cli(capsys, "versions", "--store", uri, "--model", "wine")
    assert (code, err) == (0, "")
    assert _column(out, "VALIDATION", 0) == f"accuracy={result.validation.value:.4g}"

    code, out, _ = run_cli(capsys, "versions", "--store", uri, "--model", "wine", "--json")
    assert code == 0
    assert json.loads(out)["versions"][0]["validation"] == result.validation.to_json()

    code, out, _ = run_cli(capsys, "show", "--store", uri, "--model", "wine", "1")
    assert code == 0
    assert f"validation at export: accuracy={result.validation.value:.4g} on 90 rows" in out.splitlines()
    code, out, _ = run_cli(capsys, "show", "--store", uri, "--model", "wine", "1", "--json")
    assert json.loads(out)["validation"]["rows"] == 90


def test_a_score_copied_or_edited_is_refused_before_uploading(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The record is bound to what export scored: a score edited by hand, or a file copied onto another export, is
    refused by publish (exit 2, nothing uploaded); deleting the file publishes without a score."""
    scored, other = tmp_path / "scored", tmp_path / "other"
    export_model(
        trained.inside, scored, sample=trained.x_val[:8], validation=(trained.x_val, trained.y_val), metric="accuracy"
    )
    export_model(trained.separate, other, sample={"measurements": trained.x_val[:8].astype("float32")})
    (tmp_path / "store").mkdir()
    uri = f"file://{tmp_path / 'store'}"

    edited = tmp_path / "edited"
    shutil.copytree(scored, edited)
    doc = json.loads((edited / METADATA_FILE).read_text())
    doc["validation"]["value"] = 0.999
    (edited / METADATA_FILE).write_text(json.dumps(doc))
    (other / METADATA_FILE).parent.mkdir(exist_ok=True)
    shutil.copy(scored / METADATA_FILE, other / METADATA_FILE)
    for path in (edited, other):
        code, _, err = run_cli(capsys, "publish", str(path), "--store", uri, "--model", "wine")
        assert code == 2 and "records a score export_model did not give this SavedModel" in err, err
        assert list((tmp_path / "store").iterdir()) == []

    (other / METADATA_FILE).unlink()
    assert publish(other, uri, "wine").version == 1
    assert load_manifest(open_store(uri), "wine")[0].get(1).validation is None
    assert publish(scored, uri, "wine").version == 2  # the untouched export still publishes with its score


def test_version_without_validation_shows_a_dash(
    savedmodels: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "store").mkdir()
    uri = f"file://{tmp_path / 'store'}"
    publish(savedmodels["v1"], uri, "digits")
    raw = json.loads((tmp_path / "store" / "digits" / "manifest.json").read_text())
    assert "validation" not in raw["versions"][0]  # written only when there is one
    code, out, _ = run_cli(capsys, "versions", "--store", uri, "--model", "digits")
    assert code == 0 and _column(out, "VALIDATION", 0) == "-"
    code, out, _ = run_cli(capsys, "versions", "--store", uri, "--model", "digits", "--json")
    assert json.loads(out)["versions"][0]["validation"] is None


# --- signatures from the model, not the sample ---------------------------------------------------------------------


def _typed_model(dtype: str) -> keras.Model:
    inp = keras.Input((2,), name="counts", dtype=dtype)
    return keras.Model(inp, keras.layers.Dense(1)(keras.ops.cast(inp, "float32")))


@pytest.mark.parametrize(
    ("dtype", "sample", "src"),
    [
        ("float32", np.ones((2, 2), "float64"), "float64"),
        ("float32", np.array([[1, 2], [3, 4]], "int64"), "int64"),  # small integers are exact in float32
        ("float32", np.array([[True, False]] * 2), "bool"),
        ("int32", np.array([[1, 2], [3, 4]], "int64"), "int64"),  # every value fits
    ],
)
def test_safe_sample_casts_give_the_models_dtype(dtype: str, sample: np.ndarray, src: str, tmp_path: Path) -> None:
    assert sample.dtype.name == src
    result = export_model(_typed_model(dtype), tmp_path / "m", sample={"counts": sample}, warmup=False)
    assert result.inputs == {"counts": dtype}
    assert inspect_savedmodel(tmp_path / "m").signature.inputs["counts"].dtype == dtype


@pytest.mark.parametrize(
    ("dtype", "sample", "message"),
    [
        ("int32", np.full((2, 2), 1.5), "sample['counts'] is float64 but the model's input 'counts' is int32"),
        ("int32", np.ones((2, 2)), "is float64 but the model's input 'counts' is int32, and the cast is unsafe"),
        ("float32", np.array([["a", "b"]] * 2), "sample['counts'] is string but the model's input 'counts' is float32"),
        ("int32", np.full((2, 2), 2**40), "is int64 but the model's input 'counts' is int32, and the cast is unsafe"),
        (
            "float32",
            np.full((2, 2), 2**25 + 1),
            "int64 but the model's input 'counts' is float32, and the cast is unsafe",
        ),
        (
            "float32",
            np.full((2, 2), 1e300),
            "float64 but the model's input 'counts' is float32, and the cast is unsafe",
        ),
        ("bool", np.ones((2, 2), "int64"), "int64 but the model's input 'counts' is bool"),
    ],
)
def test_unsafe_sample_casts_are_refused(dtype: str, sample: np.ndarray, message: str, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=re.escape(message)):
        export_model(_typed_model(dtype), tmp_path / "m", sample={"counts": sample})
    assert list(tmp_path.iterdir()) == []


def test_numbers_boxed_as_objects_are_cast_as_numbers(tmp_path: Path) -> None:
    boxed = np.array([[1.5, 2.0], [3.0, 4.0]], dtype=object)  # what a mixed pandas frame's .values gives
    result = export_model(_typed_model("float32"), tmp_path / "m", sample={"counts": boxed}, warmup=False)
    assert result.inputs == {"counts": "float32"}
    with pytest.raises(
        BadInput, match=re.escape("sample['counts'] is float64 but the model's input 'counts' is int32")
    ):
        export_model(_typed_model("int32"), tmp_path / "n", sample={"counts": boxed})


def test_string_sample_for_string_input_and_number_refused(tmp_path: Path) -> None:
    words = keras.Input((), name="word", dtype="string")
    lookup = keras.layers.StringLookup(vocabulary=["a", "b"], output_mode="one_hot")
    model = keras.Model(words, keras.layers.Dense(1)(lookup(words)))
    result = export_model(model, tmp_path / "ok", sample=np.array(["a", "zz"]), warmup=False)
    assert result.inputs == {"word": "string"}
    with pytest.raises(BadInput, match=r"sample\['word'\] is float64 but the model's input 'word' is string"):
        export_model(model, tmp_path / "bad", sample=np.ones(2))
    assert not (tmp_path / "bad").exists()


def test_sample_names_must_be_the_models(trained: Trained, tmp_path: Path) -> None:
    with pytest.raises(BadInput) as e:
        export_model(trained.inside, tmp_path / "m", sample={"x": trained.x_val[:8]})
    assert str(e.value) == (
        "sample has inputs ['x']; the model's inputs are ['measurements'] (key the sample by the model's input names)"
    )
    assert list(tmp_path.iterdir()) == []


def test_bare_array_for_multi_input_model_is_refused(tmp_path: Path) -> None:
    a, b = keras.Input((2,), name="a"), keras.Input((2,), name="b")
    model = keras.Model([a, b], keras.layers.Add()([a, b]))
    with pytest.raises(BadInput) as e:
        export_model(model, tmp_path / "m", sample=np.ones((2, 2), "float32"))
    assert (
        str(e.value)
        == "sample is a bare array but the model takes 2 inputs ['a', 'b']; pass a dict keyed by those names"
    )


def test_unnamed_keras_input_takes_the_samples_name_but_not_a_bare_array(tmp_path: Path) -> None:
    inp = keras.Input((2,))  # Keras names it keras_tensor_N: the name is left to the sample
    model = keras.Model(inp, keras.layers.Dense(1)(inp))
    result = export_model(model, tmp_path / "m", sample={"x": np.ones((2, 2))}, warmup=False)
    assert result.inputs == {"x": "float32"}  # the dtype is still the model's
    with pytest.raises(BadInput, match="sample is a bare array and the model does not name its input"):
        export_model(model, tmp_path / "n", sample=np.ones((2, 2)))


def test_tf_module_input_signature_decides(tmp_path: Path) -> None:
    class Scale(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="q")])
        def __call__(self, x: tf.Tensor) -> tf.Tensor:
            return 2.0 * x

    result = export_model(Scale(), tmp_path / "m", sample=np.arange(6.0).reshape(2, 3), warmup=False)
    assert result.inputs == {"q": "float32"}
    with pytest.raises(BadInput, match=r"sample\['q'\] has shape \(2, 4\); the model's input 'q' takes \(None, 3\)"):
        export_model(Scale(), tmp_path / "n", sample={"q": np.ones((2, 4), "float32")})


def test_sample_that_is_not_a_batch(trained: Trained, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="sample is empty"):
        export_model(trained.inside, tmp_path / "m", sample={})
    with pytest.raises(BadInput, match=r"sample=None is not a batch"):
        export_model(trained.inside, tmp_path / "m", sample=None)
    with pytest.raises(BadInput, match=r"sample\['measurements'\] is a scalar"):
        export_model(trained.inside, tmp_path / "m", sample=np.float64(3.0))


# --- validation arguments ------------------------------------------------------------------------------------------


def test_validation_arguments_are_checked_before_anything_runs(trained: Trained, tmp_path: Path) -> None:
    model, x, y = trained.inside, trained.x_val, trained.y_val
    cases: list[tuple[dict[str, Any], str]] = [
        ({"validation": (x, y)}, "validation=(x, y) needs metric=: one of accuracy, mae, mse, or a callable"),
        ({"validation": (x, y), "metric": "acc"}, "metric='acc' is unknown; use one of accuracy, mae, mse"),
        ({"metric": "accuracy"}, "metric= needs validation=(x, y)"),
        ({"validation": x, "metric": "accuracy"}, "validation=ndarray is not (x, y)"),
        ({"validation": (x, y[:5]), "metric": "accuracy"}, "validation y has shape (5,); x has 90 rows"),
        ({"validation": ({"x": x}, y), "metric": "accuracy"}, "validation x has inputs ['x']; the model's inputs"),
        ({"validation": (x, y), "metric": "mae", "metric_tolerance": -1}, "metric_tolerance=-1 is invalid"),
        (
            {"validation": (x, y), "metric": "accuracy", "preprocessing": lambda t: t},
            "validation with preprocessing= needs expected_metric=: the accuracy the model scored in training",
        ),
        (
            {"validation": (x, y), "metric": "accuracy", "metric_output": "nope"},
            "metric_output='nope' is not an output",
        ),
    ]
    for kwargs, message in cases:
        with pytest.raises(BadInput, match=re.escape(message)):
            export_model(model, tmp_path / "m", sample={"measurements": x[:4]}, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_callable_metric_on_a_regression_and_metric_output(tmp_path: Path) -> None:
    inp = keras.Input((2,), name="x")
    model = keras.Model(inp, {"y": keras.layers.Dense(1)(inp), "z": keras.layers.Dense(2)(inp)})
    x = np.random.default_rng(5).normal(size=(20, 2))
    y = np.asarray(model(x.astype("float32"))["y"])[:, 0] + 0.5  # every prediction is off by exactly 0.5

    def max_error(y_true: np.ndarray, y_pred: np.ndarray) -> float:
        return float(np.max(np.abs(y_true - y_pred.reshape(-1))))

    with pytest.raises(BadInput, match=r"the model has outputs \['y', 'z'\]; pass metric_output="):
        export_model(model, tmp_path / "a", sample=x[:2], validation=(x, y), metric=max_error)
    result = export_model(model, tmp_path / "b", sample=x[:2], validation=(x, y), metric=max_error, metric_output="y")
    assert result.validation is not None
    assert (result.validation.metric, result.validation.rows) == ("max_error", 20)
    assert result.validation.value == pytest.approx(0.5, abs=1e-5)
    result = export_model(model, tmp_path / "c", sample=x[:2], validation=(x, y), metric="mae", metric_output="y")
    assert result.validation is not None and result.validation.value == pytest.approx(0.5, abs=1e-5)
    # A wrong expected_metric fails even though the composition is right: the reference is the caller's.
    with pytest.raises(ExportError, match=r"scores mae=0\.5 on 20 rows; expected_metric 0\.1 "):
        export_model(
            model, tmp_path / "d", sample=x[:2], validation=(x, y), metric="mae", metric_output="y", expected_metric=0.1
        )
    assert not (tmp_path / "d").exists()


# --- the recorded metadata and the named metrics, without TensorFlow ----------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "is not valid: Expecting property name"),
        (b"[]", "is not valid: the top level is not a JSON object"),
        (b'{"validation": {"metric": "accuracy", "value": NaN, "rows": 3}}', "validation.value: expected a finite"),
        (b'{"validation": {"metric": "accuracy", "value": 0.9, "rows": true}}', "validation.rows: expected an integer"),
    ],
)
def test_a_malformed_metadata_file_refuses_the_savedmodel(
    savedmodels: dict[str, Path], tmp_path: Path, content: bytes, message: str
) -> None:
    copy = tmp_path / "m"
    shutil.copytree(savedmodels["v1"], copy)
    (copy / METADATA_FILE).write_bytes(content)
    with pytest.raises(NotASavedModel) as e:
        inspect_savedmodel(copy)
    assert message in str(e.value) and str(e.value).endswith("; re-export the model")
    (copy / METADATA_FILE).write_bytes(b'{"later": 1}')  # fields it does not know: no validation, not an error
    assert inspect_savedmodel(copy).validation is None


def test_accuracy_reads_probabilities_one_hot_and_binary_outputs() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    assert metrics.accuracy(np.array([0, 1, 2, 2]), probs) == 0.75
    assert metrics.accuracy(np.array([[0], [1], [2], [2]]), probs) == 0.75
    assert metrics.accuracy(np.eye(3)[[0, 1, 2, 2]], probs) == 0.75
    assert metrics.accuracy(np.array([1, 0, 1]), np.array([[0.9], [0.2], [0.4]])) == pytest.approx(2 / 3)
    with pytest.raises(BadInput, match=r"y has shape \(3,\); accuracy needs one label per row \(4 rows\)"):
        metrics.accuracy(np.array([0, 1, 2]), probs)
    with pytest.raises(BadInput, match="accuracy of a single-column output needs 0/1 labels"):
        metrics.accuracy(np.array([0.5, 2.0]), np.array([[0.9], [0.2]]))
    assert metrics.mse(np.array([1.0, 3.0]), np.array([[2.0], [1.0]])) == 2.5
    assert metrics.within(0.994, 0.99, 0.01) and not metrics.within(0.399, 0.994, 0.01)
    assert metrics.within(1010.0, 1000.0, 0.01) and not metrics.within(1011.0, 1000.0, 0.01)  # relative above 1
