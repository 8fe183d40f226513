"""The predict client (modelfleet.client, `modelfleet predict|smoke`) against the TF Serving stand-in.

The stand-in (tests/support/tfserving_standin.py) decodes gRPC tensors with TensorFlow's own ``tf.make_ndarray``, so
every gRPC test also checks the client's encoding against TensorFlow. Its own behaviour (config files, labels) is
tested at the end.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_export.errors import BadInput
from model_export.signature import TensorSpec
from modelfleet import client
from modelfleet.client.prediction import _cast
from modelfleet.client.rest import _rest_request_body
from modelfleet.tfs_rest import http_json
from tests.support import REPO_ROOT
from tests.support.cli import run_cli
from tests.support.tfserving_standin import ConfigError, Status, TFServingStandIn

X = np.array([[1, 2, 3], [4, 5, 6]], np.float32)  # default stand-in model: y = version * x.sum(-1) = version * [6, 15]


def y(version: int) -> list[float]:
    return [6.0 * version, 15.0 * version]


@pytest.fixture
def tfs(server: TFServingStandIn) -> TFServingStandIn:
    """Model ``m``: versions 1 and 2 AVAILABLE, 3 still LOADING; label stable -> 1."""
    server.reset()
    server.tensor_content_responses = False
    server.set_model("m", versions={1: "AVAILABLE", 2: "AVAILABLE", 3: "LOADING"}, labels={"stable": 1})
    return server


def url_of(tfs: TFServingStandIn, protocol: str) -> str:
    return tfs.grpc_target if protocol == "grpc" else tfs.rest_url


run = run_cli


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- REST ------------------------------------------------------------------------------------------------------


def test_rest_columnar_is_the_default(tfs: TFServingStandIn) -> None:
    out = client.predict(tfs.rest_url, "m", {"x": X})
    # Version 2 answered (3 is LOADING). TF Serving's JSON does not name the only output: its name, the signature's,
    # comes from the metadata, asked after the predict, for the same version spec.
    assert list(out) == ["y"]
    assert out["y"].tolist() == y(2)
    assert [(c.method, c.request_format) for c in tfs.calls] == [("predict", "columnar"), ("metadata", None)]


@pytest.mark.parametrize("row_format", [False, True])
@pytest.mark.parametrize("spec", [{}, {"version": 1}, {"label": "stable"}])
def test_rest_single_output_keeps_the_signature_name(
    tfs: TFServingStandIn, row_format: bool, spec: dict[str, Any]
) -> None:
    tfs.set_model(
        "m", outputs={"probabilities": ("float32", (-1,))}, predict=lambda x, v: {"probabilities": v * x["x"].sum(-1)}
    )
    rest = client.predict(tfs.rest_url, "m", {"x": X}, row_format=row_format, **spec)
    grpc = client.predict(tfs.grpc_target, "m", {"x": X}, grpc=True, **spec)
    assert list(rest) == list(grpc) == ["probabilities"]
    assert rest["probabilities"].tolist() == grpc["probabilities"].tolist() == y(1 if spec else 2)
    metadata = [c for c in tfs.calls if c.protocol == "rest" and c.method == "metadata"]
    assert [(c.version, c.label) for c in metadata] == [(spec.get("version"), spec.get("label"))]


def test_rest_multi_output_answers_need_no_metadata(tfs: TFServingStandIn) -> None:
    tfs.set_model(
        "m",
        outputs={"y": ("float32", (-1,)), "z": ("float32", (-1,))},
        predict=lambda x, v: {"y": x["x"].sum(-1), "z": x["x"].max(-1)},
    )
    out = client.predict(tfs.rest_url, "m", {"x": X})
    assert {k: v.tolist() for k, v in out.items()} == {"y": [6.0, 15.0], "z": [3.0, 6.0]}
    assert [c.method for c in tfs.calls] == ["predict"]


def test_rest_output_naming_fails_when_the_served_signature_changed(tfs: TFServingStandIn) -> None:
    """A predict answered by a single-output version 2, then metadata from a two-output version 3 that loaded in
    between: the output cannot be named, and guessing would print values under a wrong name."""

    def single_then_load_v3(inputs: dict[str, np.ndarray[Any, Any]], version: int) -> dict[str, Any]:
        tfs.set_model("m", outputs={"a": ("float32", (-1,)), "b": ("float32", (-1,))})
        tfs.set_state("m", 3, "AVAILABLE")
        return {"y": inputs["x"].sum(-1)}

    tfs.set_model("m", predict=single_then_load_v3)
    with pytest.raises(
        client.ServingError,
        match=r"answered 'm' with one unnamed output, but version 3's signature "
        r"'serving_default' has outputs \['a', 'b'\]: the served version changed in between; try again",
    ):
        client.predict(tfs.rest_url, "m", {"x": X})


def test_rest_output_naming_reports_a_failing_metadata_request(tfs: TFServingStandIn) -> None:
    def single_then_unload(inputs: dict[str, np.ndarray[Any, Any]], version: int) -> dict[str, Any]:
        tfs.set_model("m", versions={})
        return {"y": inputs["x"].sum(-1)}

    tfs.set_model("m", predict=single_then_unload)
    with pytest.raises(
        client.ServingError, match=r"^'m' answered, but naming its output needs its metadata: TF Serving"
    ):
        client.predict(tfs.rest_url, "m", {"x": X})


def test_rest_row_format_with_named_outputs(tfs: TFServingStandIn) -> None:
    def two(inputs: dict[str, np.ndarray[Any, Any]], version: int) -> dict[str, Any]:
        a, b = inputs["a"], inputs["b"]
        return {"total": (a * b).sum(axis=1), "argmax": a.argmax(axis=1).astype(np.int64)}

    tfs.set_model(
        "two",
        versions={1: "AVAILABLE"},
        predict=two,
        inputs={"a": ("float32", (-1, 2)), "b": ("float32", (-1, 2))},
        outputs={"total": ("float32", (-1,)), "argmax": ("int64", (-1,))},
    )
    inputs = {"a": np.array([[1.0, 5.0], [7.0, 2.0]]), "b": np.array([[2.0, 2.0], [1.0, 3.0]])}
    out = client.predict(tfs.rest_url, "two", inputs, row_format=True)
    assert tfs.calls[-1].request_format == "row"
    assert out["total"].tolist() == [12.0, 13.0]
    assert out["argmax"].tolist() == [1, 0] and out["argmax"].dtype == np.int64
    columnar = client.predict(tfs.rest_url, "two", inputs)
    assert {k: v.tolist() for k, v in columnar.items()} == {k: v.tolist() for k, v in out.items()}


def test_row_format_refuses_mismatched_batches(tfs: TFServingStandIn) -> None:
    with pytest.raises(BadInput, match=r"row format needs inputs with the same batch size; got \{'a': 2, 'b': 3\}"):
        client.predict(tfs.rest_url, "m", {"a": np.zeros((2, 1)), "b": np.zeros((3, 1))}, row_format=True)


TEXT = np.array([b"abc", b"\xff\x00\xfe", "h\u00e9".encode()], dtype=object)


def text_model(tfs: TFServingStandIn) -> list[np.ndarray[Any, Any]]:
    seen: list[np.ndarray[Any, Any]] = []

    def fn(inputs: dict[str, np.ndarray[Any, Any]], version: int) -> dict[str, Any]:
        seen.append(inputs["text"])
        text = inputs["text"]
        return {
            "echo_bytes": text,
            "upper": np.array([t.decode("utf-8", "replace").upper() for t in text], dtype=object),
            "length": np.array([len(t) for t in text], np.int64),
        }

    tfs.set_model(
        "text",
        versions={1: "AVAILABLE"},
        predict=fn,
        inputs={"text": ("string", (-1,))},
        outputs={"echo_bytes": ("string", (-1,)), "upper": ("string", (-1,)), "length": ("int64", (-1,))},
    )
    return seen


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_bytes_round_trip(tfs: TFServingStandIn, protocol: str) -> None:
    seen = text_model(tfs)
    out = client.predict(url_of(tfs, protocol), "text", {"text": TEXT}, grpc=protocol == "grpc")
    assert list(seen[0]) == list(TEXT)  # the server got the exact bytes (b64 on REST)
    assert out["echo_bytes"].dtype == object and list(out["echo_bytes"]) == list(TEXT)
    assert list(out["upper"]) == [b"ABC", "\ufffd\x00\ufffd".encode(), "H\u00c9".encode()]
    assert out["length"].tolist() == [3, 3, 3]


def test_rest_sends_b64_for_bytes_and_text_for_str() -> None:
    body = json.loads(_rest_request_body({"b": TEXT[:2], "s": np.array(["h\u00e9"])}, False, ""))
    assert body == {"inputs": {"b": [{"b64": "YWJj"}, {"b64": "/wD+"}], "s": ["h\u00e9"]}}


# --- versions and labels ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_version_and_label_routing(tfs: TFServingStandIn, protocol: str) -> None:
    url, grpc = url_of(tfs, protocol), protocol == "grpc"
    assert client.predict(url, "m", {"x": X}, version=1, grpc=grpc).popitem()[1].tolist() == y(1)
    assert client.predict(url, "m", {"x": X}, version=2, grpc=grpc).popitem()[1].tolist() == y(2)
    assert client.predict(url, "m", {"x": X}, label="stable", grpc=grpc).popitem()[1].tolist() == y(1)
    assert client.predict(url, "m", {"x": X}, grpc=grpc).popitem()[1].tolist() == y(2)
    assert [(c.version, c.label, c.served) for c in tfs.calls if c.method == "predict"] == [
        (1, None, 1),
        (2, None, 2),
        (None, "stable", 1),
        (None, None, 2),
    ]


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_unversioned_follows_the_highest_available_version(tfs: TFServingStandIn, protocol: str) -> None:
    url, grpc = url_of(tfs, protocol), protocol == "grpc"
    tfs.set_state("m", 3, "AVAILABLE")
    assert client.predict(url, "m", {"x": X}, grpc=grpc).popitem()[1].tolist() == y(3)
    tfs.set_state("m", 3, "END")
    assert client.predict(url, "m", {"x": X}, grpc=grpc).popitem()[1].tolist() == y(2)


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
@pytest.mark.parametrize(
    ("model", "kwargs", "code", "http", "message"),
    [
        ("m", {"version": 3}, "NOT_FOUND", 404, "Servable not found for request: Specific(m, 3)"),  # LOADING
        ("m", {"version": 7}, "NOT_FOUND", 404, "Servable not found for request: Specific(m, 7)"),
        ("m", {"label": "nope"}, "INVALID_ARGUMENT", 400, "Unrecognized servable version label: nope"),
        ("ghost", {}, "NOT_FOUND", 404, "Servable not found for request: Latest(ghost)"),
    ],
)
def test_unknown_version_label_or_model(
    tfs: TFServingStandIn, protocol: str, model: str, kwargs: dict[str, Any], code: str, http: int, message: str
) -> None:
    with pytest.raises(client.ServingError) as info:
        client.predict(url_of(tfs, protocol), model, {"x": X}, grpc=protocol == "grpc", **kwargs)
    assert info.value.code == code
    assert str(info.value).endswith(": " + message)
    assert info.value.http_status == (http if protocol == "rest" else None)


def test_version_and_label_together_are_refused(tfs: TFServingStandIn) -> None:
    with pytest.raises(BadInput, match=r"^give a version or a label, not both \(version 1, label 'stable'\)$"):
        client.predict(tfs.rest_url, "m", {"x": X}, version=1, label="stable")


# --- gRPC ------------------------------------------------------------------------------------------------------

BIG = np.random.default_rng(0).random((1300, 1024), dtype=np.float32)  # 5.3 MB: over gRPC's 4 MB default


@pytest.mark.parametrize("tensor_content", [False, True], ids=["typed-fields", "tensor-content"])
def test_grpc_moves_tensors_over_4_mb(tfs: TFServingStandIn, tensor_content: bool) -> None:
    tfs.tensor_content_responses = tensor_content
    tfs.set_model(
        "echo",
        versions={1: "AVAILABLE"},
        predict=lambda inputs, version: {"y": inputs["x"] * 2},
        outputs={"y": ("float32", (-1, -1))},
    )
    out = client.predict(tfs.grpc_target, "echo", {"x": BIG}, grpc=True)
    assert out["y"].dtype == np.float32 and out["y"].shape == BIG.shape
    np.testing.assert_array_equal(out["y"], BIG * 2)


def test_grpc_default_message_limit_would_refuse_the_answer(tfs: TFServingStandIn) -> None:
    """The control for the test above: without the client's channel options the same answer is refused."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    tfs.set_model("echo", versions={1: "AVAILABLE"}, predict=lambda inputs, version: {"y": inputs["x"]})
    request = client.make_predict_request("echo", {"x": BIG})
    with grpc.insecure_channel(tfs.grpc_target) as channel, pytest.raises(grpc.RpcError) as info:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_grpc_names_an_unnamed_input_from_the_metadata(tfs: TFServingStandIn) -> None:
    out = client.predict(tfs.grpc_target, "m", X, grpc=True, label="stable")
    assert out["y"].tolist() == y(1)
    assert [c.method for c in tfs.calls] == ["metadata", "predict"]


def test_grpc_casts_json_numbers_to_the_signature(tfs: TFServingStandIn) -> None:
    as_json = X.astype(np.float64)  # what a JSON file gives
    with pytest.raises(client.ServingError, match="Expects arg\\[0\\] to be float32 but float64 is provided"):
        client.predict(tfs.grpc_target, "m", {"x": as_json}, grpc=True)
    out = client.predict(tfs.grpc_target, "m", {"x": as_json}, grpc=True, cast_to_signature=True)
    assert out["y"].tolist() == y(2)


@pytest.mark.parametrize(
    ("values", "dtype", "message"),
    [
        (np.array([1.5]), "int64", "input 'v': float64 values cannot feed a int64 input"),
        (np.array([1]), "bool", "input 'v': int64 values cannot feed a bool input"),
        (np.array([1]), "string", "input 'v': int64 values cannot feed a string input"),
    ],
)
def test_casts_that_would_change_values_are_refused(values: np.ndarray[Any, Any], dtype: str, message: str) -> None:
    with pytest.raises(BadInput, match=f"^{message}$"):
        _cast("v", values, TensorSpec(dtype, (-1,)))


def test_unreachable_grpc_server() -> None:
    with pytest.raises(client.ServingError, match=r"^cannot reach TF Serving at 127\.0\.0\.1:\d+: ") as info:
        client.predict(f"127.0.0.1:{closed_port()}", "m", {"x": X}, grpc=True, timeout=5)
    assert info.value.code == "UNAVAILABLE"


# --- tensors ---------------------------------------------------------------------------------------------------

DTYPES = ["float32", "float64", "int32", "int64", "uint8", "bool", "float16", "string"]
SHAPES = [(), (0,), (5,), (2, 3, 4)]


def sample(dtype: str, shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    n = int(np.prod(shape))
    if dtype == "string":
        items = [bytes([i % 256, 255 - i % 256]) + b"x" * (i % 3) for i in range(n)]
        out = np.empty(n, dtype=object)
        out[:] = items
        return out.reshape(shape)
    values = np.arange(n) * 7 % 11 - 3
    return (values % 2 == 0).reshape(shape) if dtype == "bool" else (values * 0.5).astype(dtype).reshape(shape)


def assert_same(actual: np.ndarray[Any, Any], expected: np.ndarray[Any, Any]) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert actual.tolist() == expected.tolist()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_tensor_round_trip_matches_tensorflow(dtype: str, shape: tuple[int, ...]) -> None:
    import tensorflow as tf

    a = sample(dtype, shape)
    ours = client.make_tensor_proto(a)
    assert_same(tf.make_ndarray(ours), a)  # TensorFlow reads what we write
    assert_same(client.tensor_to_numpy(ours), a)
    assert_same(client.tensor_to_numpy(tf.make_tensor_proto(a)), a)  # we read what TensorFlow writes
    assert list(ours.tensor_shape.dim) == list(tf.make_tensor_proto(a).tensor_shape.dim)
    if dtype == "string":
        assert list(ours.string_val) == a.ravel().tolist()
    else:  # the buffer, not per-element fields
        assert ours.tensor_content == a.tobytes()
        assert not any(getattr(ours, f) for f in ("float_val", "double_val", "int_val", "int64_val", "bool_val"))


TYPED = {
    "float32": "float_val",
    "float64": "double_val",
    "int32": "int_val",
    "uint8": "int_val",
    "int64": "int64_val",
    "bool": "bool_val",
    "float16": "half_val",
}


@pytest.mark.parametrize("count", [1, 6, 5000], ids=["broadcast", "exact", "fast-path"])
@pytest.mark.parametrize("dtype", list(TYPED))
def test_typed_fields_decode_like_tf_make_ndarray(dtype: str, count: int) -> None:
    """TF Serving answers in typed fields by default; a single value fills the whole shape."""
    import tensorflow as tf

    shape = (2, 3) if count in (1, 6) else (5000,)
    values = sample(dtype, (count,))
    proto = tf.make_tensor_proto(np.zeros(0, dtype))
    proto.ClearField("tensor_content")
    proto.tensor_shape.CopyFrom(tf.TensorShape(shape).as_proto())
    stored = values.view(np.uint16) if dtype == "float16" else values
    getattr(proto, TYPED[dtype]).extend(stored.tolist())
    assert_same(client.tensor_to_numpy(proto), tf.make_ndarray(proto))


def test_string_tensor_content_is_decoded() -> None:
    """--enable_serialization_as_tensor_content answers strings as TF's EncodeStringList (varint lengths, data)."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    items = [b"a", b"", b"\xff" * 200]
    content = bytes([1, 0]) + bytes([0xC8, 0x01]) + b"".join(items)  # 200 = varint C8 01
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=3)])
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape, tensor_content=content)
    assert client.tensor_to_numpy(proto).tolist() == items


def test_decoded_tensor_content_is_a_read_only_view() -> None:
    proto = client.make_tensor_proto(BIG)
    arr = client.tensor_to_numpy(proto)
    assert not arr.flags.writeable and arr.base is not None  # np.frombuffer over the message's bytes: no copy
    np.testing.assert_array_equal(arr, BIG)


@pytest.mark.parametrize(
    "array",
    [np.arange(12, dtype=">f8").reshape(3, 4), np.arange(24, dtype=np.int32).reshape(4, 6)[:, ::2]],
    ids=["big-endian", "strided"],
)
def test_any_memory_layout_is_encoded_by_value(array: np.ndarray[Any, Any]) -> None:
    import tensorflow as tf

    expected = array.astype(array.dtype.newbyteorder("="))
    for proto in (client.make_tensor_proto(array), client.make_predict_request("m", {"a": array}).inputs["a"]):
        assert_same(tf.make_ndarray(proto), expected)


@pytest.mark.parametrize(
    "spec",
    [{}, {"version": 0}, {"version": 300}, {"label": "canary"}, {"version": 2, "signature_name": "sig"}],
    ids=str,
)
def test_serialized_request_equals_the_proto_request(spec: dict[str, Any]) -> None:
    from tensorflow_serving.apis import predict_pb2

    inputs = {"f": BIG[:3], "s": TEXT, "b": np.array([True, False]), "e": np.zeros((0, 3), np.int64), "n": 1.5}
    wire = client.serialize_predict_request("m", inputs, **spec)
    assert predict_pb2.PredictRequest.FromString(wire) == client.make_predict_request("m", inputs, **spec)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "no inputs given"),
        ({"c": np.array([1 + 2j])}, "input 'c': complex values cannot be sent as JSON; use gRPC"),
        ({"o": np.array([1, "a"], dtype=object)}, "input 'o': object arrays must hold str or bytes, not int"),
        ({"d": np.array(["2024-01-01"], dtype="datetime64[D]")}, "input 'd': dtype datetime64[D] is not supported"),
    ],
)
def test_bad_inputs_are_refused_before_sending(tfs: TFServingStandIn, inputs: dict[str, Any], message: str) -> None:
    with pytest.raises(BadInput, match="^" + re.escape(message)):
        client.predict(tfs.rest_url, "m", inputs)
    assert tfs.calls == []


def test_the_rest_path_does_not_import_tensorflow(tfs: TFServingStandIn) -> None:
    code = (
        "import sys, numpy as np\n"
        "from modelfleet import client\n"
        f"out = client.predict({tfs.rest_url!r}, 'm', {{'x': np.ones((1, 2), np.float32)}})\n"
        "client.smoke(" + repr(tfs.rest_url) + ", 'm')\n"
        "print(out['y'].tolist(), sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'tensorflow_serving', 'grpc')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[4.0] []"


# --- status and smoke ------------------------------------------------------------------------------------------


def test_model_status_lists_loading_versions(tfs: TFServingStandIn) -> None:
    tfs.set_model("loading", versions={1: "LOADING"})
    assert client.model_status(tfs.rest_url, "loading") == [client.VersionStatus(1, "LOADING")]
    tfs.set_state("loading", 1, "END", error_code="NOT_FOUND", error_message="no saved_model.pb")
    assert client.model_status(tfs.rest_url, "loading") == [
        client.VersionStatus(1, "END", "NOT_FOUND: no saved_model.pb")
    ]
    with pytest.raises(client.ServingError, match=r"HTTP 404 .*: Could not find any versions of model ghost$"):
        client.model_status(tfs.rest_url, "ghost")


def test_smoke_ok(tfs: TFServingStandIn) -> None:
    result = client.smoke(tfs.rest_url, "m")
    assert (result.ok, result.reason, result.version) == (True, "", 2)
    assert (result.inputs, result.outputs) == ({"x": [1, 1]}, {"y": [1]})  # a row of zeros from the metadata
    # The metadata smoke reads names the output too: no second metadata request.
    assert [c.method for c in tfs.calls] == ["status", "metadata", "predict"]
    assert client.smoke(tfs.rest_url, "m", label="stable").version == 1
    assert client.smoke(tfs.rest_url, "m", {"x": X}, version=1).inputs == {"x": [2, 3]}


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({}, "no version of 'm' is AVAILABLE (version 1: LOADING, version 2: END)"),
        ({"version": 1}, "version 1 of 'm' is not AVAILABLE (version 1: LOADING, version 2: END)"),
        ({"version": 5}, "version 5 of 'm' is not AVAILABLE (TF Serving does not know it; version 1: LOADING, "),
    ],
)
def test_smoke_fails_without_an_available_version(tfs: TFServingStandIn, kwargs: dict[str, Any], reason: str) -> None:
    tfs.set_model("m", versions={1: "LOADING", 2: "END"})
    result = client.smoke(tfs.rest_url, "m", **kwargs)
    assert not result.ok and result.reason.startswith(reason)
    assert [c.method for c in tfs.calls] == ["status"]  # it never tried to predict


def test_smoke_reports_a_failing_predict(tfs: TFServingStandIn) -> None:
    def broken(inputs: dict[str, np.ndarray[Any, Any]], version: int) -> dict[str, Any]:
        raise Status("INVALID_ARGUMENT", "Incompatible shapes: [1,1] vs. [1,4]")

    tfs.set_model("m", predict=broken)
    result = client.smoke(tfs.rest_url, "m")
    assert not result.ok and result.version == 2
    assert result.reason.startswith("predict failed: TF Serving at http://127.0.0.1:")
    assert result.reason.endswith(
        "answered HTTP 400 to POST /v1/models/m:predict: Incompatible shapes: [1,1] vs. [1,4]"
    )


def test_cli_smoke(tfs: TFServingStandIn, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "smoke", "--url", tfs.rest_url, "--model", "m")
    assert (code, err) == (0, "")
    assert out.startswith("ok: m version 2 answered in ") and out.endswith("(inputs x[1, 1]; outputs y[1])\n")

    tfs.set_model("loading", versions={1: "LOADING"})
    code, out, err = run(capsys, "smoke", "--url", tfs.rest_url, "--model", "loading")
    assert (code, out) == (1, "")
    assert err == (
        f"modelfleet: error: smoke test of 'loading' at {tfs.rest_url} failed: "
        "no version of 'loading' is AVAILABLE (version 1: LOADING)\n"
    )
    code, out, _ = run(capsys, "smoke", "--url", tfs.rest_url, "--model", "loading", "--json")
    assert code == 1 and json.loads(out)["ok"] is False


def test_cli_smoke_needs_an_input_when_the_metadata_cannot_make_one(
    tfs: TFServingStandIn, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    tfs.set_model("m", inputs={"x": ("float32", None)})
    code, _, err = run(capsys, "smoke", "--url", tfs.rest_url, "--model", "m")
    assert code == 2
    assert err == (
        "modelfleet: error: cannot make a sample for 'm' from its metadata (input 'x' has an unknown rank): "
        "give one (--input FILE)\n"
    )
    (tmp_path / "sample.json").write_text(json.dumps({"instances": [[1, 2, 3]]}))
    code, out, err = run(
        capsys, "smoke", "--url", tfs.rest_url, "--model", "m", "--input", str(tmp_path / "sample.json")
    )
    assert (code, err) == (0, "") and "inputs inputs[1, 3]" in out


# --- CLI predict -----------------------------------------------------------------------------------------------


def test_cli_predict_json_file(tfs: TFServingStandIn, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"inputs": {"x": X.tolist()}}))
    code, out, err = run(capsys, "predict", "--url", tfs.rest_url, "--model", "m", "--version", "1", str(request))
    assert (code, err) == (0, "")
    assert json.loads(out) == {"outputs": {"y": y(1)}}


def test_cli_predict_stdin_row_format(
    tfs: TFServingStandIn, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    body = json.dumps({"instances": [{"x": [1, 2, 3]}, {"x": [4, 5, 6]}]}).encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(body)))
    code, out, err = run(capsys, "predict", "--url", tfs.rest_url, "--model", "m", "--label", "stable", "-")
    assert (code, err) == (0, "")
    assert json.loads(out) == {"outputs": {"y": y(1)}}
    assert tfs.calls[-2].request_format == "row"


def test_cli_predict_grpc_with_npz_and_json(
    tfs: TFServingStandIn, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    np.savez(tmp_path / "batch.npz", x=X)
    code, out, err = run(
        capsys, "predict", "--url", tfs.grpc_target, "--grpc", "--model", "m", str(tmp_path / "batch.npz")
    )
    assert (code, err) == (0, "")
    assert json.loads(out) == {"outputs": {"y": y(2)}}
    # JSON numbers are float64 for numpy; the CLI casts them to the signature's float32 for gRPC.
    (tmp_path / "r.json").write_text(json.dumps({"instances": X.astype(int).tolist()}))
    code, out, err = run(
        capsys, "predict", "--url", tfs.grpc_target, "--grpc", "--model", "m", str(tmp_path / "r.json")
    )
    assert (code, err) == (0, "")
    assert json.loads(out) == {"outputs": {"y": y(2)}}


def test_cli_predict_prints_strings(tfs: TFServingStandIn, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text_model(tfs)
    request = {"inputs": {"text": [{"b64": "YWJj"}, {"b64": "/wD+"}]}}
    (tmp_path / "r.json").write_text(json.dumps(request))
    code, out, err = run(capsys, "predict", "--url", tfs.rest_url, "--model", "text", str(tmp_path / "r.json"))
    assert (code, err) == (0, "")
    assert json.loads(out)["outputs"] == {
        "echo_bytes": [{"b64": "YWJj"}, {"b64": "/wD+"}],
        "length": [3, 3],
        "upper": ["ABC", "\ufffd\x00\ufffd"],
    }


REST_PORT = "TF Serving's REST port is 8501"
GRPC_PORT = "TF Serving's gRPC port is 8500"
NO_KEYS = 'has neither "instances" nor "inputs" (TF Serving\'s predict request JSON)'
BOTH_KEYS = 'has both "instances" and "inputs"; TF Serving accepts one of them'
GHOST = "answered HTTP 404 to POST /v1/models/ghost:predict: Servable not found for request: Latest(ghost)"


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--url", "localhost:8501", "{ok}"], 2, f"bad URL 'localhost:8501': expected http://HOST:PORT ({REST_PORT})"),
        (["--url", "http://h:85o1", "{ok}"], 2, f"bad URL 'http://h:85o1': expected http://HOST:PORT ({REST_PORT})"),
        (["--url", "http://h:8500", "--grpc", "{ok}"], 2,
         f"bad gRPC target 'http://h:8500': expected HOST:PORT ({GRPC_PORT})"),
        (["{dir}/missing.json"], 2, "cannot read input file '{dir}/missing.json': No such file or directory"),
        (["{dir}/empty.json"], 2,
         "input file '{dir}/empty.json' is not JSON: Expecting value: line 1 column 1 (char 0)"),
        (["{dir}/keys.json"], 2, f"input file '{{dir}}/keys.json' {NO_KEYS}"),
        (["{dir}/both.json"], 2, f"input file '{{dir}}/both.json' {BOTH_KEYS}"),
        (["{dir}/ragged.json"], 2, "input file '{dir}/ragged.json': the values do not form a regular array ("),
        (["{dir}/bad.npy"], 2, "input file '{dir}/bad.npy' is not a valid .npy file: "),
        (["--model", "ghost", "{ok}"], 1, f"TF Serving at {{rest}} {GHOST}"),
        (["--url", "http://127.0.0.1:{closed}", "{ok}"], 1,
         "cannot reach TF Serving at http://127.0.0.1:{closed}: Connection refused"),
    ],
)  # fmt: skip
def test_cli_predict_errors(
    tfs: TFServingStandIn,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    argv: list[str],
    code: int,
    message: str,
) -> None:
    """Exit 2 and one line naming the bad value for bad input; exit 1 when the server fails or is unreachable."""
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "keys.json").write_text('{"signature_name": "x"}')
    (tmp_path / "both.json").write_text('{"inputs": [1], "instances": [1]}')
    (tmp_path / "ragged.json").write_text('{"instances": [[1, 2], [3]]}')
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    (tmp_path / "ok.json").write_text(json.dumps({"inputs": {"x": X.tolist()}}))
    values = {"dir": str(tmp_path), "ok": str(tmp_path / "ok.json"), "rest": tfs.rest_url, "closed": closed_port()}
    args = [a.format(**values) for a in argv]
    defaults = [opt for opt in (["--url", tfs.rest_url], ["--model", "m"]) if opt[0] not in args]
    got, out, err = run(capsys, "predict", *(a for opt in defaults for a in opt), *args)
    assert (got, out) == (code, "")
    assert err.startswith("modelfleet: error: " + message.format(**values))
    assert err.endswith("\n") and err.count("\n") == 1


def test_cli_version_and_label_are_exclusive(tfs: TFServingStandIn, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "predict", "--url", tfs.rest_url, "--model", "m", "--version", "1", "--label", "s", "-")
    assert code == 2 and "argument --label: not allowed with argument --version" in err


# --- the stand-in itself ---------------------------------------------------------------------------------------


def model_dir(root: Path, *versions: int, complete: bool = True) -> Path:
    for v in versions:
        (root / str(v)).mkdir(parents=True)
        if complete:
            (root / str(v) / "saved_model.pb").write_bytes(b"")
    return root


def config(path: Path, base: Path, versions: list[int], labels: dict[str, int] | None = None) -> Path:
    lines = ["model_config_list {", "  config {", '    name: "m"', f'    base_path: "{base}"']
    lines += ['    model_platform: "tensorflow"', "    model_version_policy { specific {"]
    lines += [f"      versions: {v}" for v in versions] + ["    } }"]
    lines += [f'    version_labels {{ key: "{k}" value: {v} }}' for k, v in (labels or {}).items()]
    path.write_text("\n".join([*lines, "  }", "}", ""]))
    return path


def test_config_labels_need_a_version_that_is_already_available(tmp_path: Path) -> None:
    base = model_dir(tmp_path / "m", 1, 2)
    with TFServingStandIn(grpc=False) as tfs:
        # First config: nothing is loaded yet, so TF Serving refuses the label and applies nothing.
        with pytest.raises(ConfigError) as info:
            tfs.load_config(config(tmp_path / "c", base, [1, 2], {"stable": 1}))
        assert info.value.code == "FAILED_PRECONDITION"
        assert info.value.message == (
            "Request to assign label to version 1 of model m, which is not currently available for inference"
        )
        assert tfs.versions("m") == {}
        # Two steps: load, then label.
        tfs.load_config(config(tmp_path / "c", base, [1, 2]))
        tfs.load_config(config(tmp_path / "c", base, [1, 2], {"stable": 1, "canary": 2}))
        assert (tfs.versions("m"), tfs.labels("m")) == ({1: "AVAILABLE", 2: "AVAILABLE"}, {"stable": 1, "canary": 2})
        # Dropping version 1 unloads it; the label moved with it in the same config.
        tfs.load_config(config(tmp_path / "c", base, [2], {"stable": 2}))
        assert (tfs.versions("m"), tfs.labels("m")) == ({1: "END", 2: "AVAILABLE"}, {"stable": 2})
        # A new version and a label on it in one config: refused, and version 3 is not loaded either.
        model_dir(base, 3)
        with pytest.raises(ConfigError, match="label to version 3 of model m"):
            tfs.load_config(config(tmp_path / "c", base, [2, 3], {"stable": 2, "canary": 3}))
        assert tfs.versions("m") == {1: "END", 2: "AVAILABLE"}


def test_config_flag_allows_new_labels_on_unavailable_versions(tmp_path: Path) -> None:
    base = model_dir(tmp_path / "m", 1, 2)
    with TFServingStandIn(grpc=False, allow_version_labels_for_unavailable_models=True) as tfs:
        tfs.load_config(config(tmp_path / "c", base, [1], {"stable": 1}))
        assert tfs.labels("m") == {"stable": 1}
        with pytest.raises(ConfigError, match="label to version 2 of model m"):  # moving a label is not covered
            tfs.load_config(config(tmp_path / "c", base, [1, 2], {"stable": 2}))


def test_config_versions_come_from_disk(tmp_path: Path) -> None:
    base = model_dir(tmp_path / "m", 1)
    model_dir(base, 2, complete=False)
    with TFServingStandIn(grpc=False) as tfs:
        tfs.load_config(config(tmp_path / "c", base, [1, 2, 3]))  # 3 has no directory: not loaded at all
        assert tfs.versions("m") == {1: "AVAILABLE", 2: "END"}
        assert client.model_status(tfs.rest_url, "m")[1] == client.VersionStatus(
            2, "END", f"NOT_FOUND: Could not find SavedModel .pb or .pbtxt at supplied export directory path: {base}/2"
        )
    with TFServingStandIn(grpc=False, require_version_dirs=False) as tfs:
        tfs.load_config(config(tmp_path / "c", tmp_path / "nowhere", [4]))
        assert tfs.versions("m") == {4: "AVAILABLE"}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('    model_platform: "tensorflow"\n', ""), "Illegal setting neither ModelServerConfig::model_type"),
        (('base_path: "/', 'base_path: "'), "Expected model m to have an absolute path or URI; got base_path()="),
        (("  config {", '  config { name: "m" base_path: "/x" }\n  config {'), "Illegal to list model m multiple"),
        (("versions: 1", "versions: one"), "Failed to parse ModelServerConfig file"),
    ],
)
def test_config_errors(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    path = config(tmp_path / "c", model_dir(tmp_path / "m", 1), [1])
    path.write_text(path.read_text().replace(*edit, 1))
    with TFServingStandIn(grpc=False) as tfs, pytest.raises(ConfigError, match=re.escape(message)):
        tfs.load_config(path)


def test_config_poll(tmp_path: Path) -> None:
    base = model_dir(tmp_path / "m", 1, 2)
    path = config(tmp_path / "c", base, [1])
    with TFServingStandIn(grpc=False, model_config_file=path, model_config_file_poll_wait_seconds=0.02) as tfs:
        assert tfs.versions("m") == {1: "AVAILABLE"}  # read before the ports open
        config(path, base, [1, 2])
        tfs.wait_reload()
        tfs.wait_reload()  # one full poll after the write
        assert tfs.versions("m") == {1: "AVAILABLE", 2: "AVAILABLE"}
        path.write_text("model_config_list { config { nonsense: 1 } }")
        tfs.wait_reload()
        tfs.wait_reload()
        assert tfs.config_errors and "Failed to parse ModelServerConfig file" in tfs.config_errors[-1]
        assert tfs.versions("m") == {1: "AVAILABLE", 2: "AVAILABLE"}  # a bad file changes nothing


def test_status_ignores_labels_and_grpc_status_matches_rest(tfs: TFServingStandIn) -> None:
    import grpc
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    rest = http_json("GET", tfs.rest_url, "/v1/models/m/labels/stable", None, 5)
    assert [s["version"] for s in rest["model_version_status"]] == ["3", "2", "1"]  # as TF Serving: all versions
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "m"
    with grpc.insecure_channel(tfs.grpc_target) as channel:
        answer = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=5)
    assert json_format.MessageToDict(answer, always_print_fields_with_no_presence=True) == rest


def test_grpc_reload_config_request(tfs: TFServingStandIn, tmp_path: Path) -> None:
    import grpc
    from google.protobuf import text_format
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    base = model_dir(tmp_path / "m", 4)
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(config(tmp_path / "c", base, [4]).read_text(), request.config)
    with grpc.insecure_channel(tfs.grpc_target) as channel:
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=5)
        assert tfs.versions("m") == {1: "END", 2: "END", 3: "END", 4: "AVAILABLE"}
        request.config.model_config_list.config[0].version_labels["stable"] = 5
        with pytest.raises(grpc.RpcError) as info:
            model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "label to version 5 of model m" in info.value.details()
