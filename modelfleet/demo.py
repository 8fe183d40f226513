"""The local demo: train a small digits classifier, export it with its preprocessing, publish two versions to a
file store, then canary → promote → rollback. No network, no cloud account (scikit-learn ships the digits data).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_export.constants import CANARY, STABLE
from model_export.manifest import Manifest
from model_export.publish import PublishResult, publish
from model_export.store import open_store
from model_export.versions import get_manifest, promote, rollback

MODEL = "digits"


@dataclass
class DemoReport:
    store: str
    published: list[PublishResult] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    final: Manifest | None = None


def _train(hidden: int, epochs: int, seed: int) -> tuple[Any, Any, dict[str, Any], float, tuple[Any, Any]]:
    """A Keras classifier on 8x8 digit images; pixel scaling is a Normalization layer exported with it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    from sklearn.datasets import load_digits

    keras.utils.set_random_seed(seed)
    x, y = load_digits(return_X_y=True)
    x = x.astype("float32")
    split = int(len(x) * 0.8)
    norm = keras.layers.Normalization(name="pixel_normalization")
    norm.adapt(x[:split])
    inputs = keras.Input((64,), name="pixels")
    h = keras.layers.Dense(hidden, activation="relu")(inputs) if hidden else inputs
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="probabilities")(h))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(norm(x[:split]), y[:split], epochs=epochs, batch_size=64, verbose=0)
    _, accuracy = model.evaluate(norm(x[split:]), y[split:], verbose=0)
    return model, norm, {"pixels": np.asarray(x[split : split + 16])}, float(accuracy), (x[split:], y[split:])


def run_demo(
    store_uri: str, workdir: Path, say: Callable[[str], None] = print, show: Callable[[Manifest], None] | None = None
) -> DemoReport:
    from model_export.export import export_model

    store = open_store(store_uri)
    if store_uri.startswith("file://"):
        Path(store_uri.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    report = DemoReport(store_uri)
    run = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}"
    for n, (hidden, epochs, label) in enumerate([(0, 40, STABLE), (32, 40, CANARY)], start=1):
        model, norm, sample, accuracy, held_out = _train(hidden, epochs, seed=n)
        out = workdir / f"export-{os.getpid()}-{n}"
        export_model(
            model,
            out,
            sample=sample,
            preprocessing=norm,
            output_names=["probabilities"],
            # The served graph (raw pixels -> normalisation -> model) must score what training measured.
            validation=held_out,
            metric="accuracy",
            expected_metric=accuracy,
            model_name=MODEL,
            overwrite=True,
        )
        # A job id per run: it is the publish's idempotency key, and a second demo on the same store must publish
        # new versions, not get the first run's back (a retried publish never moves labels again).
        result = publish(out, store, MODEL, label=label, source={"job_id": f"demo-{run}-{n}"})
        report.published.append(result)
        report.accuracy.append(accuracy)
        say(f"trained {MODEL} (held-out accuracy {accuracy:.3f}), published version {result.version} as {label}")
    if show:
        show(get_manifest(store, MODEL))
    m = promote(store, MODEL)
    say(f"promoted canary: stable is now version {m.labels[STABLE]}")
    m = rollback(store, MODEL)
    say(f"rolled back: stable is version {m.labels[STABLE]} again")
    report.final = get_manifest(store, MODEL)
    if show:
        show(report.final)
    return report
