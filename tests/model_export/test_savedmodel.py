"""The TensorFlow-free SavedModel check, compared with TensorFlow's own loader."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import tensorflow as tf

from model_export.errors import NotASavedModel
from model_export.savedmodel import inspect_savedmodel
from model_export.signature import Signature, TensorSpec


def _tf_signature(path: Path) -> Signature:
    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    _, kwargs = fn.structured_input_signature

    def spec(t: tf.TensorSpec) -> TensorSpec:
        return TensorSpec(t.dtype.name, tuple(-1 if d is None else d for d in t.shape.as_list()))

    return Signature(
        "tensorflow/serving/predict",
        {k: spec(v) for k, v in kwargs.items()},
        {k: spec(v) for k, v in fn.structured_outputs.items()},
    )


def test_signature_matches_tensorflows_loader(savedmodels: dict[str, Path]) -> None:
    for path in savedmodels.values():
        info = inspect_savedmodel(path)
        assert info.signature == _tf_signature(path)
        assert info.has_variables
        assert "saved_model.pb" in info.files and "variables/variables.index" in info.files


class _Strings(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"length": tf.strings.length(text), "upper": tf.strings.upper(text)}


def test_model_without_variables_needs_no_variables_index(tmp_path: Path) -> None:
    module = _Strings()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.serve})
    want = _tf_signature(tmp_path / "sm")
    shutil.rmtree(tmp_path / "sm" / "variables", ignore_errors=True)  # TF Serving needs none for this graph
    info = inspect_savedmodel(tmp_path / "sm")
    assert not info.has_variables
    assert info.signature == want
    assert info.signature.inputs == {"text": TensorSpec("string", (-1,))}


def test_missing_serving_default_is_refused(tmp_path: Path) -> None:
    module = _Strings()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"other": module.serve})
    with pytest.raises(NotASavedModel, match=r"has no 'serving_default' signature \(it has: other\)"):
        inspect_savedmodel(tmp_path / "sm")


def test_garbage_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(NotASavedModel, match="is not a directory"):
        inspect_savedmodel(tmp_path / "absent")
    (tmp_path / "d").mkdir()
    with pytest.raises(NotASavedModel, match=r"no saved_model\.pb"):
        inspect_savedmodel(tmp_path / "d")
    (tmp_path / "d" / "saved_model.pb").write_bytes(b"\xff\xff\xff")
    with pytest.raises(NotASavedModel, match="is not a valid SavedModel protobuf"):
        inspect_savedmodel(tmp_path / "d")


@pytest.mark.parametrize(
    ("old", "new", "problems"),
    [
        ((-1, 4), (-1, 4), []),
        ((-1, 4), (8, 4), []),
        ((-1, 4), (-1, 5), ["input 'x' changed from float32[-1, 4] to float32[-1, 5]"]),
        ((-1, 4), (-1, 4, 1), ["input 'x' changed from float32[-1, 4] to float32[-1, 4, 1]"]),
    ],
)
def test_input_compatibility(old: tuple[int, ...], new: tuple[int, ...], problems: list[str]) -> None:
    a = Signature("p", {"x": TensorSpec("float32", old)}, {})
    b = Signature("p", {"x": TensorSpec("float32", new)}, {})
    assert a.input_incompatibilities(b) == problems


def test_renamed_and_retyped_inputs() -> None:
    a = Signature("p", {"x": TensorSpec("float32", (-1,)), "y": TensorSpec("int64", (-1,))}, {})
    b = Signature("p", {"x": TensorSpec("float64", (-1,)), "z": TensorSpec("int64", (-1,))}, {})
    assert a.input_incompatibilities(b) == [
        "input 'x' changed from float32[-1] to float64[-1]",
        "input 'y' removed",
        "input 'z' added",
    ]
