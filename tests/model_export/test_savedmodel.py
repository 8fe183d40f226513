"""The TensorFlow-free SavedModel check, compared with TensorFlow's own loader."""

from __future__ import annotations

import os
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


# --- what is uploaded is what was checked: links and special files ------------------------------------------------


def _copy(savedmodels: dict[str, Path], tmp_path: Path) -> Path:
    sm = tmp_path / "sm"
    shutil.copytree(savedmodels["v1"], sm)
    return sm


def test_listing_is_every_regular_file(savedmodels: dict[str, Path], tmp_path: Path) -> None:
    sm = _copy(savedmodels, tmp_path)
    (sm / "assets" / "deep" / "er").mkdir(parents=True, exist_ok=True)
    (sm / "assets" / "deep" / "er" / ".hidden").write_text("x")
    (sm / "assets" / "empty").mkdir()
    info = inspect_savedmodel(sm)
    on_disk = sorted(p.relative_to(sm).as_posix() for p in sm.rglob("*") if p.is_file())
    assert list(info.files) == on_disk
    assert "assets/deep/er/.hidden" in info.files


def test_symlinked_variables_directory_is_refused(savedmodels: dict[str, Path], tmp_path: Path) -> None:
    """Regression: the check found variables/variables.index through the link, the upload list did not descend into
    it, and publish stored a version without its weights."""
    sm = _copy(savedmodels, tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (sm / "variables").rename(tmp_path / "elsewhere" / "vars")
    (sm / "variables").symlink_to(tmp_path / "elsewhere" / "vars", target_is_directory=True)
    with pytest.raises(NotASavedModel) as e:
        inspect_savedmodel(sm)
    message = str(e.value)
    assert "\n" not in message
    assert f"{str(sm / 'variables')!r} is a symlink to {str(tmp_path / 'elsewhere' / 'vars')!r}" in message
    assert "outside the SavedModel directory" in message and "cp -rL" in message


def test_symlinked_file_pointing_outside_is_refused(savedmodels: dict[str, Path], tmp_path: Path) -> None:
    """Regression: ``assets/x -> /etc/hostname`` was uploaded silently as part of the model."""
    sm = _copy(savedmodels, tmp_path)
    secret = tmp_path / "outside.txt"
    secret.write_text("not part of the model")
    (sm / "assets").mkdir(exist_ok=True)
    (sm / "assets" / "x").symlink_to(secret)
    with pytest.raises(NotASavedModel, match=r"assets/x' is a symlink to .*outside\.txt', outside the SavedModel"):
        inspect_savedmodel(sm)


@pytest.mark.parametrize(
    ("link", "target"),
    [
        ("assets/alias", "../variables/variables.index"),  # a file inside
        ("vars2", "variables"),  # a directory inside
        ("assets.extra/loop", ".."),  # a cycle
        ("assets/dangling", "nope"),  # broken
    ],
)
def test_symlinks_inside_the_directory_are_refused_too(
    savedmodels: dict[str, Path], tmp_path: Path, link: str, target: str
) -> None:
    sm = _copy(savedmodels, tmp_path)
    (sm / link).parent.mkdir(exist_ok=True)
    (sm / link).symlink_to(target)
    with pytest.raises(NotASavedModel, match=r"symlink to .*, inside the SavedModel directory.*cp -rL"):
        inspect_savedmodel(sm)


def test_symlinked_saved_model_pb_is_refused(savedmodels: dict[str, Path], tmp_path: Path) -> None:
    sm = _copy(savedmodels, tmp_path)
    (sm / "saved_model.pb").rename(tmp_path / "real.pb")
    (sm / "saved_model.pb").symlink_to(tmp_path / "real.pb")
    with pytest.raises(NotASavedModel, match=r"saved_model\.pb' is a symlink to .*real\.pb', outside"):
        inspect_savedmodel(sm)


def test_the_directory_itself_may_be_a_symlink(savedmodels: dict[str, Path], tmp_path: Path) -> None:
    sm = _copy(savedmodels, tmp_path)
    (tmp_path / "latest").symlink_to(sm, target_is_directory=True)
    assert inspect_savedmodel(tmp_path / "latest").files == inspect_savedmodel(sm).files


def test_fifo_is_refused(savedmodels: dict[str, Path], tmp_path: Path) -> None:
    sm = _copy(savedmodels, tmp_path)
    (sm / "assets").mkdir(exist_ok=True)
    os.mkfifo(sm / "assets" / "pipe")
    with pytest.raises(NotASavedModel, match=r"assets/pipe' is a FIFO, not a regular file"):
        inspect_savedmodel(sm)
