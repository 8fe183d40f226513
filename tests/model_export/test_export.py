"""Tests for model_export.export: SavedModel signature, preprocessing in the graph, validation, warmup, atomicity."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from model_export import export as export_mod
from model_export.errors import BadInput, ExportError
from model_export.export import ExportResult, export_model

pytestmark = pytest.mark.slow


def _signature(path: Path) -> Any:
    return tf.saved_model.load(str(path)).signatures["serving_default"]


def _siblings(path: Path) -> list[str]:
    """Everything in the export dir's parent: must be just the export dir (no temp dirs left behind)."""
    return sorted(p.name for p in path.parent.iterdir())


def _dense_model(n_in: int, n_out: int, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inp = keras.Input((n_in,), name="features")
    hidden = keras.layers.Dense(8, activation="relu")(inp)
    return keras.Model(inp, keras.layers.Dense(n_out, activation="softmax")(hidden))


def test_functional_model_with_adapted_normalization(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(64, 4)) * [1, 10, 100, 1000] + [0, 5, -50, 500]).astype("float32")
    norm = keras.layers.Normalization()
    norm.adapt(data)
    model = _dense_model(4, 3)
    sample = {"pixels": data[:8]}
    target = tmp_path / "models" / "digits" / "1"

    result = export_model(model, target, sample=sample, preprocessing=norm, output_names=["probs"])

    assert isinstance(result, ExportResult)
    assert result.path == target
    assert result.inputs == {"pixels": "float32"}
    assert result.outputs == {"probs": "float32"}
    assert result.max_abs_diff <= 1e-5
    assert result.warmup_records == 2
    assert (target / "saved_model.pb").is_file()
    assert (target / "variables" / "variables.index").is_file()
    assert _siblings(target) == ["1"]
    # Readable like any directory made under the umask (a 0700 temp dir would hide it from the server).
    (tmp_path / "plain").mkdir()
    assert target.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777

    sig = _signature(target)
    args, kwargs = sig.structured_input_signature
    assert args == ()
    assert list(kwargs) == ["pixels"]
    assert kwargs["pixels"].shape.as_list() == [None, 4]
    assert kwargs["pixels"].dtype == tf.float32
    assert list(sig.structured_outputs) == ["probs"]

    # Fresh data, another batch size: the normalization statistics are inside the graph.
    x = (rng.normal(size=(5, 4)) * [1, 10, 100, 1000]).astype("float32")
    want = model(norm(x), training=False).numpy()
    got = sig(pixels=tf.constant(x))["probs"].numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
    # ...and without them the answer would differ: the test would notice a missing preprocessing step.
    assert not np.allclose(got, model(x, training=False).numpy(), atol=1e-3)


def test_rescaling_in_model_and_string_lookup_preprocessing(tmp_path: Path) -> None:
    keras.utils.set_random_seed(1)
    lookup = keras.layers.StringLookup(vocabulary=["red", "green", "blue"], output_mode="one_hot")

    def preprocess(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        # A plain function closing over the layer: its lookup table must still be saved.
        return {"image": inputs["image"], "color": lookup(inputs["color"])}

    image = keras.Input((6,), name="image")
    color = keras.Input((4,), name="color")  # one-hot of 3 colours + OOV
    scaled = keras.layers.Rescaling(1.0 / 255)(image)
    joined = keras.layers.Concatenate()([scaled, color])
    model = keras.Model({"image": image, "color": color}, {"score": keras.layers.Dense(2)(joined)})

    rng = np.random.default_rng(1)
    sample = {
        "image": rng.integers(0, 256, size=(4, 6)).astype("float32"),
        "color": np.array([b"red", b"blue", b"green", b"purple"], dtype=object),
    }
    target = tmp_path / "colors" / "7"
    result = export_model(model, target, sample=sample, preprocessing=preprocess)

    assert result.inputs == {"image": "float32", "color": "string"}
    assert result.outputs == {"score": "float32"}  # dict outputs keep their keys

    sig = _signature(target)
    _, kwargs = sig.structured_input_signature
    assert sorted(kwargs) == ["color", "image"]
    assert kwargs["color"].dtype == tf.string
    assert kwargs["color"].shape.as_list() == [None]

    images = rng.integers(0, 256, size=(3, 6)).astype("float32")
    colors = np.array([b"blue", b"unknown", b"red"], dtype=object)
    got = sig(image=tf.constant(images), color=tf.constant(colors))["score"].numpy()
    want = model(preprocess({"image": tf.constant(images), "color": tf.constant(colors)}))["score"].numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
    # Different colours give different scores, so the lookup really happens in the served graph.
    only_red = sig(image=tf.constant(images), color=tf.constant([b"red"] * 3))["score"].numpy()
    assert not np.allclose(got, only_red)


def test_plain_tf_module(tmp_path: Path) -> None:
    class Affine(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable([[2.0], [-1.0], [0.5]])
            self.b = tf.Variable([3.0])

        @tf.function
        def __call__(self, x: tf.Tensor) -> tf.Tensor:
            return tf.matmul(x, self.w) + self.b

    module = Affine()
    sample = {"x": np.arange(6, dtype="float32").reshape(2, 3)}
    target = tmp_path / "affine" / "1"

    result = export_model(module, target, sample=sample, output_names=["y"], warmup=False)

    assert result.outputs == {"y": "float32"}
    assert result.warmup_records == 0
    assert not (target / "assets.extra").exists()
    sig = _signature(target)
    assert list(sig.structured_outputs) == ["y"]
    got = sig(x=tf.constant([[1.0, 1.0, 1.0]]))["y"].numpy()
    np.testing.assert_allclose(got, [[4.5]])
    # The variable values were saved, not re-initialised: change them in memory, the export keeps the old ones.
    module.w.assign([[0.0], [0.0], [0.0]])
    np.testing.assert_allclose(_signature(target)(x=tf.constant([[1.0, 1.0, 1.0]]))["y"].numpy(), [[4.5]])


def test_subclassed_keras_model_with_two_inputs(tmp_path: Path) -> None:
    class Scorer(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.dense = keras.layers.Dense(1)
            self.dropout = keras.layers.Dropout(0.5)

        def call(self, inputs: dict[str, Any], training: bool = False) -> dict[str, Any]:
            joined = keras.ops.concatenate([inputs["left"], inputs["right"]], axis=-1)
            score = self.dense(self.dropout(joined, training=training))
            return {"score": score, "doubled": 2 * score}

    keras.utils.set_random_seed(3)
    model = Scorer()
    rng = np.random.default_rng(3)
    sample = {"left": rng.normal(size=(4, 2)).astype("float32"), "right": rng.normal(size=(4, 3)).astype("float32")}
    result = export_model(model, tmp_path / "sub", sample=sample, warmup=False)
    assert result.outputs == {"score": "float32", "doubled": "float32"}
    sig = _signature(tmp_path / "sub")
    got = sig(left=tf.constant(sample["left"]), right=tf.constant(sample["right"]))
    want = model(sample)  # inference mode: no dropout
    for name in ("score", "doubled"):
        np.testing.assert_allclose(got[name].numpy(), want[name].numpy(), atol=1e-5)


def test_default_output_names_for_list_outputs(tmp_path: Path) -> None:
    inp = keras.Input((2,))
    model = keras.Model(inp, [keras.layers.Dense(1)(inp), keras.layers.Dense(3)(inp)])
    result = export_model(model, tmp_path / "m", sample={"x": np.ones((2, 2), "float32")}, warmup=False)
    assert result.outputs == {"output_0": "float32", "output_1": "float32"}
    assert sorted(_signature(tmp_path / "m").structured_outputs) == ["output_0", "output_1"]


def test_warmup_records_parse_and_carry_the_sample(tmp_path: Path) -> None:
    model = _dense_model(3, 2)
    sample = {"features": np.random.default_rng(2).normal(size=(5, 3)).astype("float32")}
    target = tmp_path / "w" / "3"

    result = export_model(model, target, sample=sample, model_name="digits")

    path = target / "assets.extra" / "tf_serving_warmup_requests"
    records = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    assert len(records) == result.warmup_records == 2
    batches = []
    for raw in records:
        log = prediction_log_pb2.PredictionLog.FromString(raw)
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        assert request.model_spec.name == "digits"
        assert request.model_spec.signature_name == "serving_default"
        assert list(request.inputs) == ["features"]
        batches.append(tf.make_ndarray(request.inputs["features"]))
    np.testing.assert_array_equal(batches[0], sample["features"])
    np.testing.assert_array_equal(batches[1], sample["features"][:1])
    # The records are valid requests for the exported signature.
    sig = _signature(target)
    for batch in batches:
        assert sig(features=tf.constant(batch))["output_0"].shape[0] == batch.shape[0]


def test_warmup_with_string_input_round_trips(tmp_path: Path) -> None:
    class Length(tf.Module):
        @tf.function
        def __call__(self, s: tf.Tensor) -> tf.Tensor:
            return tf.strings.length(s)

    sample = {"text": np.array(["héllo", "a"])}  # unicode numpy array: sent as UTF-8 bytes
    result = export_model(Length(), tmp_path / "s", sample=sample)
    assert result.inputs == {"text": "string"}
    assert result.outputs == {"output_0": "int32"}
    raw = next(iter(tf.data.TFRecordDataset(str(tmp_path / "s/assets.extra/tf_serving_warmup_requests"))))
    request = prediction_log_pb2.PredictionLog.FromString(raw.numpy()).predict_log.request
    assert list(tf.make_ndarray(request.inputs["text"])) == ["héllo".encode(), b"a"]


class _Drifting(tf.Module):
    """Its Python-side offset changes on every trace/eager call: the traced graph bakes in a stale constant."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        self.calls += 1
        return x + float(self.calls)


def test_validation_failure_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "bad" / "1"
    with pytest.raises(ExportError, match=r"output 'output_0' differs after reloading: max abs diff [1-9]"):
        export_model(_Drifting(), target, sample={"x": np.zeros((2, 2), "float32")})
    assert not target.exists()
    assert _siblings(target) == []  # no temp dirs either


def test_validation_failure_keeps_previous_contents_with_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "1"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(ExportError):
        export_model(_Drifting(), target, sample={"x": np.zeros((2, 2), "float32")}, overwrite=True)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert _siblings(target) == ["1"]


def test_missing_output_after_reload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = export_mod._name_outputs
    calls: list[int] = []

    def one_more_output_in_memory(result: Any, names: list[str] | None) -> dict[str, Any]:
        out = real(result, names)
        calls.append(1)
        if len(calls) == 1:  # the eager, in-memory call comes first; the trace for the graph comes later
            out["extra"] = out["output_0"]
        return out

    monkeypatch.setattr(export_mod, "_name_outputs", one_more_output_in_memory)
    target = tmp_path / "m"
    with pytest.raises(ExportError, match="output 'extra' is missing from the reloaded SavedModel"):
        export_model(_dense_model(2, 2), target, sample={"features": np.ones((2, 2), "float32")})
    assert not target.exists()
    assert _siblings(target) == []


def test_tolerances_are_applied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1e-3 drift passes with atol=1e-2 and fails with the default atol (tolerances are honoured)."""
    real = export_mod._to_numpy
    first = [True]

    def nudged(value: Any) -> np.ndarray:
        out = real(value)
        if first[0]:  # the in-memory reference
            first[0] = False
            return out + 1e-3
        return out

    monkeypatch.setattr(export_mod, "_to_numpy", nudged)
    result = export_model(
        _dense_model(2, 2), tmp_path / "ok", sample={"features": np.ones((2, 2), "float32")}, atol=1e-2
    )
    assert result.max_abs_diff == pytest.approx(1e-3, rel=1e-2)
    first[0] = True
    with pytest.raises(ExportError, match=r"max abs diff 0\.001 exceeds"):
        export_model(_dense_model(2, 2), tmp_path / "bad", sample={"features": np.ones((2, 2), "float32")})
    assert not (tmp_path / "bad").exists()


def test_non_empty_export_dir_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "1"
    target.mkdir()
    (target / "saved_model.pb").write_bytes(b"previous")
    with pytest.raises(BadInput, match=r"is not empty.*overwrite=True"):
        export_model(_dense_model(2, 2), target, sample={"features": np.ones((1, 2), "float32")})
    assert [p.name for p in target.iterdir()] == ["saved_model.pb"]
    assert (target / "saved_model.pb").read_bytes() == b"previous"
    assert _siblings(target) == ["1"]


def test_overwrite_replaces_and_empty_dir_is_accepted(tmp_path: Path) -> None:
    target = tmp_path / "1"
    target.mkdir()
    export_model(_dense_model(2, 2), target, sample={"features": np.ones((1, 2), "float32")}, warmup=False)
    (target / "stale.txt").write_text("x")
    export_model(_dense_model(2, 2), os.fspath(target), sample={"features": np.ones((1, 2), "float32")}, overwrite=True)
    assert not (target / "stale.txt").exists()
    assert (target / "assets.extra" / "tf_serving_warmup_requests").is_file()
    assert _siblings(target) == ["1"]


def test_bad_arguments(tmp_path: Path) -> None:
    a = keras.Input((2,), name="a")
    b = keras.Input((2,), name="b")
    two_inputs = keras.Model([a, b], keras.layers.Add()([a, b]))
    ones = np.ones((2, 2), "float32")
    with pytest.raises(BadInput, match=r"sample has inputs \['a'\]; the model's inputs are \['a', 'b'\]"):
        export_model(two_inputs, tmp_path / "m", sample={"a": ones})
    with pytest.raises(BadInput, match="input name 'x-y' is invalid"):
        export_model(two_inputs, tmp_path / "m", sample={"x-y": ones})
    with pytest.raises(BadInput, match="batch size 3"):
        export_model(two_inputs, tmp_path / "m", sample={"a": ones, "b": np.ones((3, 2), "float32")})
    with pytest.raises(BadInput, match="output_names=\\['p', 'q'\\] has 2 names; the model has 1 outputs"):
        export_model(two_inputs, tmp_path / "m", sample={"a": ones, "b": ones}, output_names=["p", "q"])
    with pytest.raises(BadInput, match="the model looked up input 'c'; sample lacks it"):
        export_model(two_inputs, tmp_path / "m", sample={"a": ones, "b": ones}, preprocessing=lambda d: d["c"])
    with pytest.raises(BadInput, match="is a URI"):
        export_model(two_inputs, "gs://bucket/m/1", sample={"a": ones, "b": ones})
    assert list(tmp_path.iterdir()) == []

    # Multi-input Keras models are fed the dict and match it by input name.
    result = export_model(two_inputs, tmp_path / "m", sample={"b": 2 * ones, "a": ones}, warmup=False)
    assert result.inputs == {"b": "float32", "a": "float32"}
    got = _signature(tmp_path / "m")(a=tf.constant(ones), b=tf.constant(10 * ones))["output_0"].numpy()
    np.testing.assert_allclose(got, 11 * ones)


def test_export_model_is_importable_from_the_package() -> None:
    import model_export
    from model_export import export_model as lazy

    assert lazy is export_model
    assert model_export.ExportResult is ExportResult
