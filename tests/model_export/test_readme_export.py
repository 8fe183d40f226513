"""The README's "Publishing from a training job" snippets run as written (on a local store instead of a bucket) and
do what the README says: the common Keras pattern and the separate-preprocessing pattern both export, validate and
publish with their score; the pattern the README used to show (the model's own Normalization passed again as
preprocessing) is refused."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from model_export.errors import BadInput
from model_export.export import export_model
from model_export.manifest import load_manifest
from model_export.store import open_store
from tests.support import REPO_ROOT

pytestmark = pytest.mark.slow

README_STORE = "gs://acme-models/prod"


def snippets() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    section = text[text.index("## Publishing from a training job") : text.index("## Operations")]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def wine_like(seed: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Three separable classes in 13 features of very different scales, float64 as scikit-learn's load_wine gives."""
    rng = np.random.default_rng(seed)
    y = np.arange(rows) % 3
    centers = rng.normal(size=(3, 13))
    scales = np.logspace(-1, 3, 13)
    return (centers[y] + rng.normal(scale=0.3, size=(rows, 13))) * scales + scales, y


@pytest.fixture
def data() -> dict[str, Any]:
    x_train, y_train = wine_like(1, 150)
    x_val, y_val = wine_like(1, 60)  # same centres (seed), new noise
    return {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val}


def run_snippet(code: str, namespace: dict[str, Any], workdir: Path, store: str) -> dict[str, Any]:
    assert README_STORE in code or "publish(" not in code
    code = code.replace(README_STORE, store).replace("epochs=50", "epochs=30")
    cwd = Path.cwd()
    os.chdir(workdir)
    try:
        exec(compile(code, "README.md", "exec"), namespace)  # the README's own example, run as written
    finally:
        os.chdir(cwd)
    return namespace


def test_the_keras_pattern_exports_validates_and_publishes_its_score(
    data: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keras.utils.set_random_seed(3)
    (tmp_path / "store").mkdir()
    store = f"file://{tmp_path / 'store'}"
    first = snippets()[0]
    ns = run_snippet(first, {**data, "__name__": "readme"}, tmp_path, store)
    assert capsys.readouterr().out.strip().endswith("1")  # print(result.version)
    m, _ = load_manifest(open_store(store), "wine")
    entry = m.get(1)
    assert m.labels == {"canary": 1}
    assert entry.signature.inputs["measurements"].dtype == "float32"  # the model's, not the float64 sample's
    assert entry.validation is not None and entry.validation.metric == "accuracy"
    assert entry.validation.value > 0.9 and entry.validation.rows == len(data["y_val"])

    # What the README showed before: the model's own Normalization passed again as preprocessing. Refused.
    with pytest.raises(BadInput, match="preprocessing would run twice"):
        export_model(
            ns["model"], tmp_path / "twice", sample={"measurements": data["x_val"][:32]}, preprocessing=ns["norm"]
        )
    assert not (tmp_path / "twice").exists()


def test_the_separate_preprocessing_pattern_exports_and_validates(data: dict[str, Any], tmp_path: Path) -> None:
    keras.utils.set_random_seed(3)
    second = snippets()[1]
    norm = keras.layers.Normalization()
    norm.adapt(data["x_train"])
    inputs = keras.Input((13,), name="measurements")
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy", metrics=["accuracy"])
    # It goes on from the first snippet: its imports, and a model trained on normalised data.
    ns = run_snippet(second, {**data, "norm": norm, "model": model, "export_model": export_model}, tmp_path, "unused")
    assert "history" in ns
    saved = tmp_path / "export"
    assert (saved / "saved_model.pb").is_file() and (saved / "assets.extra" / "modelfleet.json").is_file()
