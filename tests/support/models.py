"""Tiny Keras models exported by the project's own exporter, shared by the store and publish tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SAMPLE = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")


def dense_model(n_in: int, seed: int) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((n_in,), name="features")
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))


def make_savedmodels(root: Path) -> dict[str, Path]:
    from model_export.export import export_model

    out = {}
    for name, n_in, seed in (("v1", 4, 1), ("v2", 4, 2), ("wide", 5, 3)):
        x = SAMPLE if n_in == 4 else np.ones((8, n_in), "float32")
        export_model(dense_model(n_in, seed), root / name, sample={"features": x}, output_names=["probs"])
        out[name] = root / name
    return out


def predict(savedmodel: Path, x: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    fn = tf.saved_model.load(str(savedmodel)).signatures["serving_default"]
    return np.asarray(fn(features=tf.constant(x))["probs"])
