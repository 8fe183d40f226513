"""Ask TF Serving for predictions over REST or gRPC, read its model status, smoke-test a deployment.

REST needs only the standard library and numpy. gRPC imports ``grpc`` and ``tensorflow_serving``'s protos on first
use (they import TensorFlow: install the ``export`` extra).

Tensors
  * ``make_tensor_proto`` fills ``TensorProto.tensor_content`` with the array's bytes (dtype and shape set); strings
    go to ``string_val``. ``tf.make_tensor_proto`` is not used (it needs TensorFlow and is slower).
  * ``serialize_predict_request`` writes the ``PredictRequest`` wire format itself: each array is copied once, straight
    into the message bytes. That is what ``predict(grpc=True)`` sends. A ``PredictRequest`` object
    (``make_predict_request``) costs a second copy, because protobuf copies every ``bytes`` value it is given.
  * ``tensor_to_numpy`` reads ``tensor_content`` with ``np.frombuffer``, so the array is READ-ONLY and shares memory
    with the message's bytes (call ``.copy()`` to write to it). It also reads the typed fields TF Serving answers
    with by default (``float_val``, ``int64_val``, ...; a short list is padded with its last value, as
    ``tf.make_ndarray`` does), and the string-list encoding of ``--enable_serialization_as_tensor_content``.
    Strings come back as object arrays of ``bytes``, like ``tf.make_ndarray``.
  * Little-endian hosts only (``tensor_content`` is the server's native byte order).

REST and JSON
  * Arrays are sent columnar (``{"inputs": ...}``) unless ``row_format`` (``{"instances": [...]}``). ``bytes``
    become ``{"b64": ...}``; ``str`` become JSON strings.
  * JSON carries no dtypes: numbers come back as float64/int64/bool arrays, strings as bytes.
  * When a model has ONE output TF Serving's JSON answer does not name it: it comes back under ``UNNAMED_OUTPUT``.
    gRPC answers always carry the output names.

Errors: ``BadInput`` (exit 2) for a malformed URL or input, ``ServingError`` (exit 1) when TF Serving answers with
an error or cannot be reached.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from model_export.constants import TFS_GRPC_PORT, TFS_REST_PORT
from model_export.errors import BadInput, ModelfleetError
from model_export.savedmodel import Signature, TensorSpec

NDArray = npt.NDArray[Any]
Inputs = Mapping[str, Any] | NDArray
TensorProto = Any  # tensorflow.core.framework.tensor_pb2.TensorProto (untyped protobuf class)

DEFAULT_SIGNATURE = "serving_default"
# The key of the output of a single-output model in a REST answer (TF Serving's JSON leaves that output unnamed).
UNNAMED_OUTPUT = "output"
# gRPC Python refuses messages over 4 MB by default (tensorflow/serving#1382); TF Serving itself allows INT_MAX.
GRPC_MAX_MESSAGE_BYTES = 1 << 30
_PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"

# tensorflow/core/framework/types.proto: enum -> (DataType name, numpy dtype name).
_DTYPES: dict[int, tuple[str, str]] = {
    1: ("DT_FLOAT", "float32"),
    2: ("DT_DOUBLE", "float64"),
    3: ("DT_INT32", "int32"),
    4: ("DT_UINT8", "uint8"),
    5: ("DT_INT16", "int16"),
    6: ("DT_INT8", "int8"),
    7: ("DT_STRING", "string"),
    8: ("DT_COMPLEX64", "complex64"),
    9: ("DT_INT64", "int64"),
    10: ("DT_BOOL", "bool"),
    14: ("DT_BFLOAT16", "bfloat16"),
    17: ("DT_UINT16", "uint16"),
    18: ("DT_COMPLEX128", "complex128"),
    19: ("DT_HALF", "float16"),
    22: ("DT_UINT32", "uint32"),
    23: ("DT_UINT64", "uint64"),
}
_DT_STRING = 7
_ENUM_BY_NUMPY = {name: num for num, (_, name) in _DTYPES.items() if name != "string"}
_ENUM_BY_DT_NAME = {dt: num for num, (dt, _) in _DTYPES.items()}
# Typed value fields of TensorProto (tensor.proto), as TF Serving fills them (Tensor::AsProtoField): the field and
# the numpy dtype of its values. Half and bfloat16 carry their 16 bits in an int32; complex numbers are pairs.
_TYPED_FIELDS: dict[int, tuple[str, str]] = {
    1: ("float_val", "<f4"),
    2: ("double_val", "<f8"),
    3: ("int_val", "int32"),
    4: ("int_val", "int32"),
    5: ("int_val", "int32"),
    6: ("int_val", "int32"),
    17: ("int_val", "int32"),
    9: ("int64_val", "int64"),
    10: ("bool_val", "bool"),
    22: ("uint32_val", "uint32"),
    23: ("uint64_val", "uint64"),
    19: ("half_val", "int32"),
    14: ("half_val", "int32"),
    8: ("scomplex_val", "<f4"),
    18: ("dcomplex_val", "<f8"),
}
# Fixed-width fields, packed on the wire: read with np.frombuffer from the serialized tensor instead of element by
# element (a 64 MiB float_val answer: ~30 ms instead of ~2 s).
_FIXED_WIDTH = {"float_val", "double_val", "scomplex_val", "dcomplex_val"}
_FAST_PATH_MIN_VALUES = 4096

_GRPC_TARGET = re.compile(r"^(?:grpc://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


class ServingError(ModelfleetError):
    """TF Serving answered with an error, or could not be reached (exit 1).

    ``code`` is the canonical gRPC status name (``NOT_FOUND``, ``INVALID_ARGUMENT``, ``UNAVAILABLE``, ...), also for
    REST answers (mapped back from the HTTP status TF Serving derived from it); ``http_status`` is set for REST.
    """

    def __init__(self, message: str, *, code: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = http_status


# --- addresses -------------------------------------------------------------------------------------------------


def rest_url(url: str) -> str:
    """``url`` checked as TF Serving's REST base URL (``http[s]://HOST[:PORT][/prefix]``), without a trailing slash."""
    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and not (parts.query or parts.fragment)
    except ValueError:
        valid = False
    if not valid:
        raise BadInput(f"bad URL {url!r}: expected http://HOST:PORT (TF Serving's REST port is {TFS_REST_PORT})")
    return url.rstrip("/")


def grpc_target(url: str) -> str:
    """``url`` checked as a gRPC target ``HOST:PORT`` (``grpc://HOST:PORT`` accepted)."""
    m = _GRPC_TARGET.match(url)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise BadInput(f"bad gRPC target {url!r}: expected HOST:PORT (TF Serving's gRPC port is {TFS_GRPC_PORT})")
    return f"{m.group(1)}:{m.group(2)}"


def _model_path(model: str, version: int | None, label: str | None) -> str:
    path = f"/v1/models/{urllib.parse.quote(model, safe='')}"
    if version is not None:
        path += f"/versions/{version}"
    elif label is not None:
        path += f"/labels/{urllib.parse.quote(label, safe='')}"
    return path


def _check_spec(model: str, version: int | None, label: str | None) -> None:
    if not model:
        raise BadInput("the model name is empty")
    if version is not None and label is not None:
        raise BadInput(f"give a version or a label, not both (version {version}, label {label!r})")
    if version is not None and version < 0:
        raise BadInput(f"bad version {version}: TF Serving versions are integers >= 0")
    if label is not None and not label:
        raise BadInput("the label is empty")


# --- REST ------------------------------------------------------------------------------------------------------

_CODE_BY_HTTP = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _http_json(method: str, base: str, path: str, body: bytes | None, timeout: float) -> Any:
    """One request to TF Serving's REST API; the parsed JSON answer, or ``ServingError``."""
    req = urllib.request.Request(  # noqa: S310 - the scheme was checked by rest_url
        base + path, data=body, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            raw: bytes = resp.read()
    except urllib.error.HTTPError as e:
        text = e.read().decode("utf-8", "replace")
        try:
            detail = str(json.loads(text)["error"])
        except (ValueError, KeyError, TypeError):
            detail = text or e.reason
        raise ServingError(
            f"TF Serving at {base} answered HTTP {e.code} to {method} {path}: {_one_line(detail)}",
            code=_CODE_BY_HTTP.get(e.code, "INTERNAL" if e.code >= 500 else "UNKNOWN"),
            http_status=e.code,
        ) from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            raise _timeout(base, timeout) from None
        reason = getattr(e.reason, "strerror", None) or str(e.reason)
        raise ServingError(f"cannot reach TF Serving at {base}: {reason}", code="UNAVAILABLE") from None
    except TimeoutError:
        raise _timeout(base, timeout) from None
    except (OSError, http.client.HTTPException) as e:
        raise ServingError(f"cannot reach TF Serving at {base}: {e or type(e).__name__}", code="UNAVAILABLE") from None
    try:
        return json.loads(raw)
    except ValueError:
        raise ServingError(
            f"TF Serving at {base} answered {method} {path} with a body that is not JSON: {_one_line(repr(raw[:80]))}",
            code="INTERNAL",
        ) from None


def _timeout(where: str, timeout: float) -> ServingError:
    return ServingError(f"TF Serving at {where} did not answer within {timeout:g} s", code="DEADLINE_EXCEEDED")


def _json_value(name: str, arr: NDArray) -> Any:
    """An array as TF Serving's JSON: nested lists; bytes as {"b64": ...}."""
    kind = arr.dtype.kind
    if kind in "biuf":
        return arr.tolist()
    if arr.dtype.name == "bfloat16":
        return arr.astype(np.float32).tolist()
    if kind == "c":
        raise BadInput(f"input {name!r}: complex values cannot be sent as JSON; use gRPC")
    if kind == "U":
        return arr.tolist()
    if kind in "SO":
        return _b64_nested(name, arr.tolist())
    raise BadInput(f"input {name!r}: dtype {arr.dtype} is not supported by TF Serving")


def _b64_nested(name: str, value: Any) -> Any:
    if isinstance(value, list):
        return [_b64_nested(name, v) for v in value]
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, str):
        return value
    raise BadInput(f"input {name!r}: object arrays must hold str or bytes, not {type(value).__name__}")


def _rest_request_body(inputs: Inputs, row_format: bool, signature_name: str) -> bytes:
    doc: dict[str, Any] = {}
    if signature_name:
        doc["signature_name"] = signature_name
    if isinstance(inputs, Mapping):
        arrays = _named_arrays(inputs)
        columns = {name: _json_value(name, arr) for name, arr in arrays.items()}
        if row_format:
            _check_batch_sizes(arrays)
            doc["instances"] = [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]
        else:
            doc["inputs"] = columns
    else:
        arr = np.asarray(inputs)
        if row_format and arr.ndim == 0:
            raise BadInput("row format needs a batch dimension; the input is a scalar")
        doc["instances" if row_format else "inputs"] = _json_value("inputs", arr)
    return json.dumps(doc, separators=(",", ":")).encode()


def _check_batch_sizes(arrays: Mapping[str, NDArray]) -> None:
    for name, arr in arrays.items():
        if not arr.ndim:
            raise BadInput(f"row format needs a batch dimension; input {name!r} is a scalar")
    sizes = {name: arr.shape[0] for name, arr in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise BadInput(f"row format needs inputs with the same batch size; got {sizes}")


def _array_from_json(value: Any, where: str) -> NDArray:
    """A JSON value of a predict answer as an array; strings and {"b64": ...} as an object array of bytes."""
    try:
        arr = np.asarray(value)
    except ValueError as e:
        raise ServingError(f"{where}: the values do not form a regular array ({e})", code="INTERNAL") from None
    if arr.dtype.kind in "biuf":
        return arr
    out = np.empty(arr.shape, dtype=object)
    for index, item in np.ndenumerate(arr):
        if isinstance(item, str):
            out[index] = item.encode()
        elif isinstance(item, dict) and set(item) == {"b64"}:
            out[index] = base64.b64decode(item["b64"])
        else:
            raise ServingError(f"{where}: unexpected value {item!r:.60} (not a number, string or b64)", code="INTERNAL")
    return out


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _rest_outputs(doc: Any, where: str) -> dict[str, NDArray]:
    if isinstance(doc, dict) and "predictions" in doc:
        rows = doc["predictions"]
        if isinstance(rows, list) and rows and all(isinstance(r, dict) and not _is_b64(r) for r in rows):
            return {name: _array_from_json([r.get(name) for r in rows], where) for name in rows[0]}
        return {UNNAMED_OUTPUT: _array_from_json(rows, where)}
    if isinstance(doc, dict) and "outputs" in doc:
        outputs = doc["outputs"]
        if isinstance(outputs, dict) and not _is_b64(outputs):
            return {name: _array_from_json(v, where) for name, v in outputs.items()}
        return {UNNAMED_OUTPUT: _array_from_json(outputs, where)}
    raise ServingError(f"{where}: the answer has neither 'predictions' nor 'outputs'", code="INTERNAL")


# --- tensors ---------------------------------------------------------------------------------------------------


def _named_arrays(inputs: Mapping[str, Any]) -> dict[str, NDArray]:
    if not inputs:
        raise BadInput("no inputs given")
    out = {}
    for name, value in inputs.items():
        if not isinstance(name, str) or not name:
            raise BadInput(f"bad input name {name!r}: input names are non-empty strings")
        out[name] = np.asarray(value)
    return out


def _dtype_enum(name: str, arr: NDArray) -> int:
    if arr.dtype.kind in "SUO":
        return _DT_STRING
    enum = _ENUM_BY_NUMPY.get(arr.dtype.name)
    if enum is None:
        raise BadInput(f"input {name!r}: dtype {arr.dtype} is not supported by TF Serving")
    return enum


def _string_items(name: str, arr: NDArray) -> list[bytes]:
    items = []
    for item in arr.ravel().tolist():
        if isinstance(item, bytes):
            items.append(item)
        elif isinstance(item, str):
            items.append(item.encode())
        else:
            raise BadInput(f"input {name!r}: object arrays must hold str or bytes, not {type(item).__name__}")
    return items


def _native(arr: NDArray) -> NDArray:
    """C-contiguous, native byte order (a copy only when the array is neither)."""
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.ascontiguousarray(arr)


def _fill_tensor(tensor: TensorProto, name: str, value: Any) -> None:
    arr = np.asarray(value)
    tensor.dtype = _dtype_enum(name, arr)
    dims = tensor.tensor_shape.dim
    for size in arr.shape:
        dims.add(size=size)
    tensor.tensor_shape.SetInParent()  # present even for a scalar, as tf.make_tensor_proto writes it
    if tensor.dtype == _DT_STRING:
        tensor.string_val.extend(_string_items(name, arr))
    elif arr.size:
        tensor.tensor_content = _native(arr).tobytes()


def make_tensor_proto(array: Any) -> TensorProto:
    """A ``TensorProto`` of ``array``: ``tensor_content`` = its bytes (numeric dtypes), ``string_val`` (strings)."""
    from tensorflow.core.framework import tensor_pb2

    tensor = tensor_pb2.TensorProto()
    _fill_tensor(tensor, "array", array)
    return tensor


def _numpy_dtype(enum: int) -> np.dtype[Any]:
    entry = _DTYPES.get(enum)
    if entry is None:
        raise ModelfleetError(f"tensor dtype {enum} is not supported by this client")
    if entry[1] == "bfloat16":
        import ml_dtypes  # TensorFlow's dependency; only bfloat16 needs it

        bfloat16: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
        return bfloat16
    return np.dtype(entry[1])


def _varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _length_delimited(buf: bytes, number: int) -> Iterator[memoryview]:
    """The payloads of top-level length-delimited fields ``number`` of a serialized message (zero-copy)."""
    view = memoryview(buf)
    pos = 0
    while pos < len(view):
        key, pos = _varint(view, pos)
        wire = key & 7
        if wire == 0:
            _, pos = _varint(view, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _varint(view, pos)
            if key >> 3 == number:
                yield view[pos : pos + size]
            pos += size
        else:
            raise ModelfleetError(f"unsupported protobuf wire type {wire} in a tensor")


def _typed_values(tensor: TensorProto, field_name: str, dtype: str) -> NDArray:
    values = getattr(tensor, field_name)
    count = len(values)
    if field_name in _FIXED_WIDTH and count >= _FAST_PATH_MIN_VALUES:
        number = tensor.DESCRIPTOR.fields_by_name[field_name].number
        chunks = list(_length_delimited(tensor.SerializeToString(), number))
        data: bytes | memoryview = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        fast = np.frombuffer(data, dtype=dtype)
        if fast.size == count:
            return fast
    return np.fromiter(values, dtype=dtype, count=count)


def _decode_string_list(content: bytes, count: int) -> list[bytes]:
    """TensorFlow's string tensor_content: ``count`` varint lengths, then the strings back to back."""
    sizes = []
    pos = 0
    for _ in range(count):
        size, pos = _varint(content, pos)
        sizes.append(size)
    items = []
    for size in sizes:
        items.append(content[pos : pos + size])
        pos += size
    if pos != len(content):
        raise ModelfleetError(f"string tensor_content has {len(content) - pos} bytes more than its {count} strings")
    return items


def _pad(values: NDArray, count: int) -> NDArray:
    """``tf.make_ndarray``'s rule for short value lists: zeros when empty, else repeat the last value."""
    if values.size == count:
        return values
    if values.size == 0:
        return np.zeros(count, dtype=values.dtype)
    if values.size > count:
        raise ModelfleetError(f"tensor has {values.size} values for {count} elements")
    return np.pad(values, (0, count - values.size), mode="edge")


def tensor_to_numpy(tensor: TensorProto) -> NDArray:
    """The array of a ``TensorProto`` (``tensor_content`` or typed fields); see the module docstring."""
    if tensor.tensor_shape.unknown_rank:
        raise ModelfleetError("tensor has an unknown rank")
    shape = tuple(int(d.size) for d in tensor.tensor_shape.dim)
    count = math.prod(shape)
    content = tensor.tensor_content
    if tensor.dtype == _DT_STRING:
        items = _decode_string_list(content, count) if content else list(tensor.string_val)
        if items and len(items) < count:
            items += [items[-1]] * (count - len(items))
        out = np.empty(count, dtype=object)
        out[:] = items if items else [b""] * count
        return out.reshape(shape)
    dtype = _numpy_dtype(tensor.dtype)
    if content:
        if len(content) != count * dtype.itemsize:
            raise ModelfleetError(f"tensor_content has {len(content)} bytes for {count} {dtype} values")
        return np.frombuffer(content, dtype=dtype).reshape(shape)
    field_name, value_dtype = _TYPED_FIELDS[tensor.dtype]
    values = _typed_values(tensor, field_name, value_dtype)
    if dtype.kind == "c":
        values = values[: values.size // 2 * 2].view(dtype)
    elif field_name == "half_val":
        values = values.astype(np.uint16).view(dtype)
    elif values.dtype != dtype:
        values = values.astype(dtype)
    return _pad(values, count).reshape(shape)


# --- the PredictRequest wire format ----------------------------------------------------------------------------
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
    _check_spec(model, version, label)
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

    _check_spec(model, version, label)
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


# --- gRPC ------------------------------------------------------------------------------------------------------


def _grpc_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
    ]


def _grpc_error(target: str, error: Any, timeout: float) -> ServingError:
    code = error.code().name if callable(getattr(error, "code", None)) else "UNKNOWN"
    details = _one_line(error.details() or "") if callable(getattr(error, "details", None)) else str(error)
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


# --- metadata --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelMetadata:
    model: str
    version: int  # the version that answered (a label or "latest" resolved by TF Serving)
    signature_name: str
    signature: Signature

    def to_json(self) -> dict[str, object]:
        return {
            "model": self.model,
            "version": self.version,
            "signature_name": self.signature_name,
            "signature": self.signature.to_json(),
        }


def _spec_from_json(info: Mapping[str, Any]) -> TensorSpec:
    enum = _ENUM_BY_DT_NAME.get(str(info.get("dtype")))
    dtype = _DTYPES[enum][1] if enum is not None else str(info.get("dtype", "DT_INVALID")).lower()
    shape = info.get("tensor_shape") or {}
    if shape.get("unknown_rank"):
        return TensorSpec(dtype, None)
    return TensorSpec(dtype, tuple(int(d.get("size", 0)) for d in shape.get("dim", [])))


def _spec_from_proto(info: Any) -> TensorSpec:
    dtype = _DTYPES[info.dtype][1] if info.dtype in _DTYPES else f"dt_{info.dtype}"
    if info.tensor_shape.unknown_rank:
        return TensorSpec(dtype, None)
    return TensorSpec(dtype, tuple(int(d.size) for d in info.tensor_shape.dim))


def _pick_signature(model: str, signatures: Mapping[str, Any], name: str) -> Any:
    if name not in signatures:
        known = ", ".join(sorted(s for s in signatures if not s.startswith("__"))) or "none"
        raise BadInput(f"model {model!r} has no signature {name!r} (it has: {known})")
    return signatures[name]


def model_metadata(
    url: str,
    model: str,
    *,
    version: int | None = None,
    label: str | None = None,
    signature_name: str = "",
    grpc: bool = False,
    timeout: float = 10.0,
) -> ModelMetadata:
    """The signature TF Serving serves (``GET /v1/models/NAME[...]/metadata`` or gRPC ``GetModelMetadata``)."""
    _check_spec(model, version, label)
    sig_name = signature_name or DEFAULT_SIGNATURE
    if grpc:
        return _grpc_metadata(grpc_target(url), model, version, label, sig_name, timeout)
    base = rest_url(url)
    doc = _http_json("GET", base, _model_path(model, version, label) + "/metadata", None, timeout)
    try:
        served = int(doc["model_spec"]["version"])
        signatures = doc["metadata"]["signature_def"]["signature_def"]
        sig = _pick_signature(model, signatures, sig_name)
        signature = Signature(
            str(sig.get("method_name", "")),
            {k: _spec_from_json(v) for k, v in sig.get("inputs", {}).items()},
            {k: _spec_from_json(v) for k, v in sig.get("outputs", {}).items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ServingError(
            f"TF Serving at {base} sent unreadable metadata for {model!r}: {e!r}", code="INTERNAL"
        ) from e
    return ModelMetadata(model, served, sig_name, signature)


def _grpc_metadata(
    target: str, model: str, version: int | None, label: str | None, sig_name: str, timeout: float
) -> ModelMetadata:
    import grpc
    from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    with grpc.insecure_channel(target, options=_grpc_options()) as channel:
        try:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(
                request, timeout=timeout
            )
        except grpc.RpcError as e:
            raise _grpc_error(target, e, timeout) from None
    signatures = get_model_metadata_pb2.SignatureDefMap()
    if not response.metadata["signature_def"].Unpack(signatures):
        raise ServingError(f"TF Serving at {target} sent metadata without signatures for {model!r}", code="INTERNAL")
    sig = _pick_signature(model, signatures.signature_def, sig_name)
    signature = Signature(
        sig.method_name,
        {k: _spec_from_proto(v) for k, v in sig.inputs.items()},
        {k: _spec_from_proto(v) for k, v in sig.outputs.items()},
    )
    return ModelMetadata(model, int(response.model_spec.version.value), sig_name, signature)


def _cast(name: str, arr: NDArray, spec: TensorSpec) -> NDArray:
    """``arr`` (parsed from JSON: bool, int64, float64 or bytes) in the dtype the signature declares.

    The casts TF Serving's JSON parser makes itself: integers into any number type, floats into floats, booleans
    into booleans, text into strings. Anything else (a float into an integer input, ...) is refused.
    """
    if spec.dtype == "string":
        if arr.dtype.kind not in "SUO":
            raise BadInput(f"input {name!r}: {arr.dtype} values cannot feed a string input")
        out = np.empty(arr.size, dtype=object)
        out[:] = _string_items(name, arr)
        return out.reshape(arr.shape)
    accepts = {"b": "b", "i": "iu", "u": "iu", "f": "iuf", "c": "iufc"}
    enum = _ENUM_BY_NUMPY.get(spec.dtype)
    target = _numpy_dtype(enum) if enum is not None else None
    target_kind = "f" if spec.dtype == "bfloat16" else target.kind if target is not None else ""
    if target is None or arr.dtype.kind not in accepts.get(target_kind, ""):
        raise BadInput(f"input {name!r}: {arr.dtype} values cannot feed a {spec.dtype} input")
    return arr.astype(target, copy=False)


# --- predict ---------------------------------------------------------------------------------------------------


def predict(
    url: str,
    model: str,
    inputs: Inputs,
    *,
    version: int | None = None,
    label: str | None = None,
    grpc: bool = False,
    row_format: bool = False,
    signature_name: str = "",
    cast_to_signature: bool = False,
    timeout: float = 30.0,
) -> dict[str, NDArray]:
    """One predict request; the outputs by name.

    ``inputs``: arrays by input name, or one array for a model with a single input. REST (``url`` =
    ``http://HOST:8501``) by default, columnar unless ``row_format``; gRPC (``url`` = ``HOST:8500``) when ``grpc``.
    Without ``version``/``label`` TF Serving answers with its highest AVAILABLE version.

    gRPC needs input names and exact dtypes: an unnamed array is named after the model's only input, and with
    ``cast_to_signature`` (for arrays parsed from JSON) each input is cast to the signature's dtype; both ask the
    server for the model's metadata first.
    """
    _check_spec(model, version, label)
    if timeout <= 0:
        raise BadInput(f"bad timeout {timeout:g}: must be more than 0 seconds")
    if not grpc:
        base = rest_url(url)
        body = _rest_request_body(inputs, row_format, signature_name)
        path = _model_path(model, version, label) + ":predict"
        return _rest_outputs(_http_json("POST", base, path, body, timeout), f"TF Serving at {base}")
    target = grpc_target(url)
    named = _named_arrays(inputs) if isinstance(inputs, Mapping) else None
    if named is None or cast_to_signature:
        meta = model_metadata(
            target, model, version=version, label=label, signature_name=signature_name, grpc=True, timeout=timeout
        )
        specs = meta.signature.inputs
        if named is None:
            if len(specs) != 1:
                raise BadInput(f"model {model!r} has inputs {sorted(specs)}: name them (an .npz file, a JSON object)")
            named = {next(iter(specs)): np.asarray(inputs)}
        if cast_to_signature:
            named = {k: (_cast(k, v, specs[k]) if k in specs else v) for k, v in named.items()}
    return _grpc_predict(target, model, named, version, label, signature_name, timeout)


# --- input files -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestInputs:
    """Inputs read from a file, with what TF Serving's request JSON said about the request."""

    arrays: dict[str, NDArray] | NDArray
    row_format: bool = False
    signature_name: str = ""
    from_json: bool = False  # dtypes are JSON's guesses (float64, int64, bytes): cast them for gRPC


def _from_request_json(value: Any, where: str) -> NDArray:
    try:
        return _array_from_json(value, where)
    except ServingError as e:
        raise BadInput(str(e)) from None


def parse_request_json(doc: Any, where: str = "the request") -> RequestInputs:
    """TF Serving's predict request JSON (``{"instances": [...]}`` or ``{"inputs": ...}``) as arrays."""
    if not isinstance(doc, dict) or ("instances" in doc) == ("inputs" in doc):
        if isinstance(doc, dict) and "instances" in doc:
            raise BadInput(f'{where} has both "instances" and "inputs"; TF Serving accepts one of them')
        raise BadInput(f'{where} has neither "instances" nor "inputs" (TF Serving\'s predict request JSON)')
    signature_name = doc.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise BadInput(f"{where}: signature_name must be a string")
    if "inputs" in doc:
        value = doc["inputs"]
        if isinstance(value, dict) and not _is_b64(value):
            arrays: dict[str, NDArray] | NDArray = {
                k: _from_request_json(v, f"{where}, input {k!r}") for k, v in value.items()
            }
        else:
            arrays = _from_request_json(value, where)
        return RequestInputs(arrays, False, signature_name, from_json=True)
    rows = doc["instances"]
    if not isinstance(rows, list) or not rows:
        raise BadInput(f'{where}: "instances" must be a non-empty list')
    if all(isinstance(r, dict) and not _is_b64(r) for r in rows):
        names = list(rows[0])
        if any(set(r) != set(names) for r in rows):
            raise BadInput(f'{where}: every "instances" object must have the same input names')
        arrays = {k: _from_request_json([r[k] for r in rows], f"{where}, input {k!r}") for k in names}
    else:
        arrays = _from_request_json(rows, where)
    return RequestInputs(arrays, True, signature_name, from_json=True)


def read_inputs(path: str, stdin: IO[bytes] | None = None) -> RequestInputs:
    """Inputs from a file: TF Serving's request JSON (``-``: read ``stdin``, by default the process's), ``.npy`` (one
    unnamed array) or ``.npz`` (arrays by input name)."""
    suffix = Path(path).suffix.lower()
    try:
        if path == "-":
            raw = (stdin or sys.stdin.buffer).read()
        elif suffix in (".npy", ".npz"):
            return _read_numpy(path, suffix)
        else:
            raw = Path(path).read_bytes()
    except OSError as e:
        raise BadInput(f"cannot read input file {path!r}: {e.strerror or e}") from None
    where = "stdin" if path == "-" else f"input file {path!r}"
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise BadInput(f"{where} is not JSON: {e}") from None
    return parse_request_json(doc, where)


def _read_numpy(path: str, suffix: str) -> RequestInputs:
    try:
        loaded = np.load(path, allow_pickle=False)
        if suffix == ".npy":
            if not isinstance(loaded, np.ndarray):
                raise ValueError("not a single array")
            return RequestInputs(loaded)
        with loaded:
            arrays = {name: loaded[name] for name in loaded.files}
    except (ValueError, EOFError) as e:
        raise BadInput(f"input file {path!r} is not a valid {suffix} file: {_one_line(str(e))}") from None
    if not arrays:
        raise BadInput(f"input file {path!r} holds no arrays")
    return RequestInputs(arrays)


# --- status and smoke test -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str  # START, LOADING, AVAILABLE, UNLOADING, END
    error: str = ""  # "CODE: message" when the version's status is not OK (e.g. a failed load)

    def to_json(self) -> dict[str, object]:
        return {"version": self.version, "state": self.state, "error": self.error}

    def __str__(self) -> str:
        return f"version {self.version}: {self.state}" + (f" ({self.error})" if self.error else "")


def model_status(url: str, model: str, *, timeout: float = 10.0) -> list[VersionStatus]:
    """Every version TF Serving knows of ``model`` (``GET /v1/models/NAME``), lowest first.

    TF Serving answers 200 as soon as it knows a version, LOADING or failed included: check ``state``.
    """
    _check_spec(model, None, None)
    base = rest_url(url)
    doc = _http_json("GET", base, _model_path(model, None, None), None, timeout)
    try:
        out = []
        for item in doc["model_version_status"]:
            status = item.get("status") or {}
            code = status.get("error_code", "OK")
            error = "" if code in ("OK", 0) else f"{code}: {status.get('error_message', '')}"
            out.append(VersionStatus(int(item["version"]), str(item["state"]), error))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ServingError(
            f"TF Serving at {base} sent an unreadable status for {model!r}: {e!r}", code="INTERNAL"
        ) from e
    return sorted(out, key=lambda s: s.version)


def sample_inputs(signature: Signature, batch: int = 1) -> dict[str, NDArray]:
    """Zeros (empty strings, False) shaped like the signature's inputs; unknown dimensions become ``batch``."""
    out: dict[str, NDArray] = {}
    for name, spec in sorted(signature.inputs.items()):
        if spec.shape is None:
            raise BadInput(f"input {name!r} has an unknown rank")
        shape = tuple(batch if d < 0 else d for d in spec.shape)
        if spec.dtype == "string":
            arr = np.empty(shape, dtype=object)
            arr.fill(b"")
            out[name] = arr
        elif spec.dtype in _ENUM_BY_NUMPY:
            out[name] = np.zeros(shape, dtype=_numpy_dtype(_ENUM_BY_NUMPY[spec.dtype]))
        else:
            raise BadInput(f"input {name!r} has dtype {spec.dtype}, which a sample cannot be made of")
    return out


@dataclass(frozen=True)
class SmokeResult:
    ok: bool
    model: str
    url: str
    reason: str  # why it failed; "" when ok
    version: int | None = None  # the version that answered (or would have)
    versions: list[VersionStatus] = field(default_factory=list)
    inputs: dict[str, list[int]] = field(default_factory=dict)  # shapes sent
    outputs: dict[str, list[int]] = field(default_factory=dict)  # shapes received
    seconds: float = 0.0  # the predict round trip

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "model": self.model,
            "url": self.url,
            "reason": self.reason,
            "version": self.version,
            "versions": [v.to_json() for v in self.versions],
            "inputs": self.inputs,
            "outputs": self.outputs,
            "seconds": round(self.seconds, 4),
        }


def smoke(
    url: str,
    model: str,
    sample: Inputs | None = None,
    *,
    version: int | None = None,
    label: str | None = None,
    timeout: float = 30.0,
) -> SmokeResult:
    """Does TF Serving at ``url`` (REST) serve ``model``? Never raises for a failing server: see ``ok``/``reason``.

    1. ``GET /v1/models/NAME`` must list an AVAILABLE version (``version`` itself when given). TF Serving ignores a
       label in a status request, so a label is checked by steps 2 and 3 only.
    2. ``GET .../metadata`` names the version that answers and the signature.
    3. One predict with ``sample``, or, when none is given, one row of zeros shaped from the signature
       (``BadInput`` when the signature cannot give one, e.g. an input of unknown rank: pass a sample).
    """
    _check_spec(model, version, label)
    base = rest_url(url)
    failed = SmokeResult(False, model, base, "")
    try:
        versions = model_status(base, model, timeout=timeout)
    except ServingError as e:
        return dataclasses.replace(failed, reason=str(e))
    failed = dataclasses.replace(failed, versions=versions)
    listing = ", ".join(str(v) for v in versions) or "none"
    available = [v.version for v in versions if v.state == "AVAILABLE"]
    if version is not None and version not in available:
        known = "" if any(v.version == version for v in versions) else "TF Serving does not know it; "
        return dataclasses.replace(failed, reason=f"version {version} of {model!r} is not AVAILABLE ({known}{listing})")
    if not available:
        return dataclasses.replace(failed, reason=f"no version of {model!r} is AVAILABLE ({listing})")
    try:
        meta = model_metadata(base, model, version=version, label=label, timeout=timeout)
    except ServingError as e:
        return dataclasses.replace(failed, reason=str(e))
    failed = dataclasses.replace(failed, version=meta.version)
    if sample is None:
        try:
            inputs: Inputs = sample_inputs(meta.signature)
        except BadInput as e:
            raise BadInput(
                f"cannot make a sample for {model!r} from its metadata ({e}): give one (--input FILE)"
            ) from None
    else:
        inputs = sample
    shapes = (
        {k: list(np.shape(v)) for k, v in inputs.items()}
        if isinstance(inputs, Mapping)
        else {"inputs": list(np.shape(inputs))}
    )
    failed = dataclasses.replace(failed, inputs=shapes)
    start = time.perf_counter()
    try:
        outputs = predict(base, model, inputs, version=version, label=label, timeout=timeout)
    except ServingError as e:
        return dataclasses.replace(failed, reason=f"predict failed: {e}", seconds=time.perf_counter() - start)
    seconds = time.perf_counter() - start
    if not outputs:
        return dataclasses.replace(failed, reason="predict answered without outputs", seconds=seconds)
    return dataclasses.replace(
        failed, ok=True, outputs={k: list(v.shape) for k, v in sorted(outputs.items())}, seconds=seconds
    )
