"""The ``PredictRequest`` wire format, written directly: each array is copied once, into the message bytes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from modelfleet.client.dtypes import _DT_STRING
from modelfleet.client.tensors import _dtype_enum, _fill_tensor, _named_arrays, _native, _string_items
from modelfleet.tfs_rest import check_spec

# predict.proto: PredictRequest{model_spec=1, inputs=2 (map entries: key=1, value=2)}; model.proto:
# ModelSpec{name=1, version=2 (Int64Value{value=1}), signature_name=3, version_label=4}; tensor.proto:
# TensorProto{dtype=1, tensor_shape=2, tensor_content=4, string_val=8}; tensor_shape.proto: {dim=2 {size=1}}.


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(number: int, wire: int) -> bytes:
    return _uvarint(number << 3 | wire)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _tag(number, 2) + _uvarint(len(payload)) + payload


def _tensor_wire(name: str, value: Any) -> list[bytes | memoryview]:
    """A serialized TensorProto in pieces; the array's own buffer is one of them (no copy here)."""
    arr = np.asarray(value)
    enum = _dtype_enum(name, arr)
    dims = b"".join(_bytes_field(2, _tag(1, 0) + _uvarint(size) if size else b"") for size in arr.shape)
    head = _tag(1, 0) + _uvarint(enum) + _bytes_field(2, dims)
    if enum == _DT_STRING:
        return [head, *(_bytes_field(8, item) for item in _string_items(name, arr))]
    if not arr.size:
        return [head]
    data = _native(arr).data.cast("B")
    return [head + _tag(4, 2) + _uvarint(data.nbytes), data]


def _model_spec_wire(model: str, version: int | None, label: str | None, signature_name: str) -> bytes:
    spec = _bytes_field(1, model.encode())
    if version is not None:
        spec += _bytes_field(2, _tag(1, 0) + _uvarint(version) if version else b"")
    if signature_name:
        spec += _bytes_field(3, signature_name.encode())
    if label is not None:
        spec += _bytes_field(4, label.encode())
    return spec


def serialize_predict_request(
    model: str,
    inputs: Mapping[str, Any],
    *,
    version: int | None = None,
    label: str | None = None,
    signature_name: str = "",
) -> bytes:
    """The serialized ``PredictRequest``, each numeric array copied once (the gRPC payload of ``predict``)."""
    check_spec(model, version, label)
    parts: list[bytes | memoryview] = [_bytes_field(1, _model_spec_wire(model, version, label, signature_name))]
    for name, arr in _named_arrays(inputs).items():
        tensor = _tensor_wire(name, arr)
        size = sum(len(p) if isinstance(p, bytes) else p.nbytes for p in tensor)
        key = _bytes_field(1, name.encode())
        entry_head = key + _tag(2, 2) + _uvarint(size)
        parts += [_tag(2, 2) + _uvarint(len(entry_head) + size) + entry_head, *tensor]
    return b"".join(parts)


def make_predict_request(
    model: str,
    inputs: Mapping[str, Any],
    *,
    version: int | None = None,
    label: str | None = None,
    signature_name: str = "",
) -> Any:
    """A ``PredictRequest`` message (tensors as in ``make_tensor_proto``); ``serialize_predict_request`` is faster."""
    from tensorflow_serving.apis import predict_pb2

    check_spec(model, version, label)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    if signature_name:
        request.model_spec.signature_name = signature_name
    for name, arr in _named_arrays(inputs).items():
        _fill_tensor(request.inputs[name], name, arr)
    return request
