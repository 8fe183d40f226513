"""TF Serving's REST API: one JSON request, the JSON body of a predict request, and the arrays of its answer."""

from __future__ import annotations

import base64
import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import numpy as np

from model_export.client.tensors import Inputs, NDArray, _named_arrays
from model_export.errors import BadInput, ServingError

# The key of the output of a single-output model in a REST answer (TF Serving's JSON leaves that output unnamed).
UNNAMED_OUTPUT = "output"

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
        raise ServingError(
            f"cannot reach TF Serving at {base}: {reason}",
            code="UNAVAILABLE",
            not_listening=isinstance(e.reason, ConnectionError),
        ) from None
    except TimeoutError:
        raise _timeout(base, timeout) from None
    except (OSError, http.client.HTTPException) as e:
        raise ServingError(
            f"cannot reach TF Serving at {base}: {e or type(e).__name__}",
            code="UNAVAILABLE",
            not_listening=isinstance(e, ConnectionError),
        ) from None
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
