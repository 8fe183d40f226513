"""TF Serving's REST API: one JSON request, the JSON body of a predict request, and the arrays of its answer."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from model_export.errors import BadInput, ServingError
from modelfleet.client.tensors import Inputs, NDArray, _named_arrays


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


def _array_from_json(value: Any, where: str, *, answer: bool = False) -> NDArray:
    """A JSON value (of a request file, or of TF Serving's ``answer``) as an array; strings and {"b64": ...} as an
    object array of bytes."""
    try:
        arr = np.asarray(value)
    except ValueError as e:
        raise ServingError(f"{where}: the values do not form a regular array ({e})", code="INTERNAL") from None
    if arr.dtype.kind in "biuf":
        return arr
    out = np.empty(arr.shape, dtype=object)
    for index, item in np.ndenumerate(arr):
        if isinstance(item, str):
            out[index] = _utf8(item, where, answer=answer)
        elif _is_b64(item):
            out[index] = _b64decode(item["b64"], where)
        else:
            raise ServingError(f"{where}: unexpected value {item!r:.60} (not a number, string or b64)", code="INTERNAL")
    return out


def _utf8(text: str, where: str, *, answer: bool = False) -> bytes:
    """A JSON string's bytes: its UTF-8, and in TF Serving's ``answer`` the bytes that were not UTF-8 as it sent them
    (``http_json`` decodes with surrogateescape); a lone surrogate escape (``"\\ud83d"``, half an emoji) has none."""
    try:
        return text.encode("utf-8", "surrogateescape" if answer else "strict")
    except UnicodeEncodeError:
        raise ServingError(
            f"{where}: string {str(text)!r:.60} is not valid Unicode (a lone surrogate escape)", code="INTERNAL"
        ) from None


def _b64decode(text: Any, where: str) -> bytes:
    """``{"b64": text}`` decoded as TF Serving decodes it (absl::Base64Unescape: standard alphabet, padding optional,
    any other character refused), never silently shortened."""
    if isinstance(text, str):
        try:
            return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            pass
    raise ServingError(f'{where}: {{"b64": {text!r:.60}}} is not base64 text', code="INTERNAL")


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _rest_outputs(doc: Any, where: str) -> dict[str, NDArray] | NDArray:
    """The outputs of a REST predict answer by name, or the one array of a single-output model: TF Serving's JSON
    names outputs only when there are several (json_tensor.cc: ``elements_are_objects = tensor_map.size() > 1``)."""
    if isinstance(doc, dict) and "predictions" in doc:
        rows = doc["predictions"]
        if isinstance(rows, list) and rows and all(isinstance(r, dict) and not _is_b64(r) for r in rows):
            return {name: _array_from_json([r.get(name) for r in rows], where, answer=True) for name in rows[0]}
        return _array_from_json(rows, where, answer=True)
    if isinstance(doc, dict) and "outputs" in doc:
        outputs = doc["outputs"]
        if isinstance(outputs, dict) and not _is_b64(outputs):
            return {name: _array_from_json(v, where, answer=True) for name, v in outputs.items()}
        return _array_from_json(outputs, where, answer=True)
    raise ServingError(f"{where}: the answer has neither 'predictions' nor 'outputs'", code="INTERNAL")
