"""Building a gRPC PredictRequest for a 64 MiB float32 array: ``modelfleet.client`` against ``tf.make_tensor_proto``,
with ``ndarray.tobytes()`` (one copy of the array into a new ``bytes``) as the anchor, all in the same run.

Two measurements per way:
- build: a ready-to-use ``PredictRequest`` (or, for the client's wire path, the serialized request itself);
- build+serialize: what a gRPC call needs, the request's bytes.

A protobuf message copies every ``bytes`` value it is given, so a ``PredictRequest`` object holding the array costs
two copies whatever builds it; ``client.serialize_predict_request`` writes the wire format with one copy, and that is
what ``client.predict(grpc=True)`` sends. Goal: within 1.5x of ``tobytes()``. Each figure is the best of ``--runs``
(median shown too). Run: ``python -m bench.predict_request [--mib 64] [--runs 5]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

GOAL = 1.5


def _measure(fn: Callable[[], Any], runs: int) -> tuple[float, float]:
    """(best, median) seconds of ``fn``; the result is dropped before the next run so memory stays bounded."""
    times = []
    for _ in range(runs):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
        del result
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.predict_request", description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64, help="array size in MiB (default 64)")
    parser.add_argument("--runs", type=int, default=5, help="runs per way; the best counts (default 5)")
    args = parser.parse_args(sys.argv[1:])

    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from modelfleet import client

    side = int((args.mib * 1024 * 1024 // 4) ** 0.5)
    array = np.random.default_rng(0).random((side, side), dtype=np.float32)
    inputs = {"x": array}

    def tf_request() -> Any:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "m"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(array))
        return request

    def client_request() -> Any:
        return client.make_predict_request("m", inputs)

    def client_wire() -> bytes:
        return client.serialize_predict_request("m", inputs)

    # The three ways must produce the same request.
    reference = tf_request()
    assert client_request() == reference
    assert predict_pb2.PredictRequest.FromString(client_wire()) == reference
    del reference

    ways: list[tuple[str, str, Callable[[], Any]]] = [
        ("anchor", "ndarray.tobytes()", array.tobytes),
        ("build", "tf.make_tensor_proto -> PredictRequest", tf_request),
        ("build", "client.make_predict_request", client_request),
        ("build", "client.serialize_predict_request (bytes)", client_wire),
        ("build+serialize", "tf.make_tensor_proto -> PredictRequest", lambda: tf_request().SerializeToString()),
        ("build+serialize", "client.make_predict_request", lambda: client_request().SerializeToString()),
        ("build+serialize", "client.serialize_predict_request", client_wire),
    ]
    for _, _, fn in ways:  # warm-up: imports, allocator, page cache
        fn()

    print(f"PredictRequest for a {array.nbytes / 2**20:.0f} MiB float32 array {array.shape}, best of {args.runs}")
    print(f"{'':16} {'way':42} {'best ms':>8} {'median ms':>10} {'x tobytes':>10}")
    anchor = 0.0
    results: dict[tuple[str, str], float] = {}
    for phase, name, fn in ways:
        best, median = _measure(fn, args.runs)
        anchor = anchor or best
        results[(phase, name)] = best / anchor
        print(f"{phase:16} {name:42} {best * 1000:8.1f} {median * 1000:10.1f} {best / anchor:9.2f}x")
    for phase in ("build", "build+serialize"):
        name = "client.serialize_predict_request" + (" (bytes)" if phase == "build" else "")
        ratio = results[(phase, name)]
        verdict = "met" if ratio <= GOAL else "MISSED"
        print(f"goal <= {GOAL}x tobytes, {phase}, client wire path: {ratio:.2f}x ({verdict})")


if __name__ == "__main__":
    main()
