"""Predict over gRPC; the channel options and the errors of every gRPC call.

``grpc`` and ``tensorflow_serving`` are imported inside the calls, never at import time (they import TensorFlow).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from model_export.errors import ServingError, one_line
from modelfleet.client.tensors import NDArray, tensor_to_numpy
from modelfleet.client.wire import serialize_predict_request

# gRPC Python refuses messages over 4 MB by default (tensorflow/serving#1382); TF Serving itself allows INT_MAX.
GRPC_MAX_MESSAGE_BYTES = 1 << 30
_PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"


def _grpc_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
    ]


def _grpc_error(target: str, error: Any, timeout: float) -> ServingError:
    code = error.code().name if callable(getattr(error, "code", None)) else "UNKNOWN"
    details = one_line(error.details() or "") if callable(getattr(error, "details", None)) else str(error)
    if code == "DEADLINE_EXCEEDED":
        return ServingError(f"TF Serving at {target} did not answer within {timeout:g} s", code=code)
    if code == "UNAVAILABLE":
        return ServingError(f"cannot reach TF Serving at {target}: {details}", code=code)
    return ServingError(f"TF Serving at {target} answered {code}: {details}", code=code)


def _grpc_predict(
    target: str,
    model: str,
    inputs: Mapping[str, Any],
    version: int | None,
    label: str | None,
    signature_name: str,
    timeout: float,
) -> dict[str, NDArray]:
    import grpc
    from tensorflow_serving.apis import predict_pb2

    payload = serialize_predict_request(model, inputs, version=version, label=label, signature_name=signature_name)
    with grpc.insecure_channel(target, options=_grpc_options()) as channel:
        call = channel.unary_unary(
            _PREDICT_METHOD, request_serializer=None, response_deserializer=predict_pb2.PredictResponse.FromString
        )
        try:
            response = call(payload, timeout=timeout)
        except grpc.RpcError as e:
            raise _grpc_error(target, e, timeout) from None
    return {name: tensor_to_numpy(tensor) for name, tensor in response.outputs.items()}
