"""``predict``: one predict request over REST or gRPC, and the cast of JSON-parsed inputs to the signature."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from model_export.errors import BadInput, ServingError
from model_export.signature import TensorSpec
from modelfleet.client.address import grpc_target
from modelfleet.client.dtypes import _ENUM_BY_NUMPY, _numpy_dtype
from modelfleet.client.grpc_api import _grpc_predict
from modelfleet.client.metadata import ModelMetadata, model_metadata
from modelfleet.client.rest import _rest_outputs, _rest_request_body
from modelfleet.client.tensors import Inputs, NDArray, _named_arrays, _string_items
from modelfleet.tfs_rest import check_spec, http_json, model_path, rest_url


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
    Without ``version``/``label`` TF Serving answers with its highest AVAILABLE version. Outputs carry the
    signature's names over both protocols: TF Serving's JSON leaves the only output of a single-output model unnamed,
    so that answer costs one more request, for the model's metadata.

    gRPC needs input names and exact dtypes: an unnamed array is named after the model's only input, and with
    ``cast_to_signature`` (for arrays parsed from JSON) each input is cast to the signature's dtype; both ask the
    server for the model's metadata first.
    """
    check_spec(model, version, label)
    if timeout <= 0:
        raise BadInput(f"bad timeout {timeout:g}: must be more than 0 seconds")
    if not grpc:
        return _rest_predict(rest_url(url), model, inputs, version, label, row_format, signature_name, timeout)
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


def _rest_predict(
    base: str,
    model: str,
    inputs: Inputs,
    version: int | None,
    label: str | None,
    row_format: bool,
    signature_name: str,
    timeout: float,
    meta: ModelMetadata | None = None,
) -> dict[str, NDArray]:
    """Predict over REST. ``meta``: the model's metadata when the caller already has it (smoke), which saves the
    metadata request that names the output of a single-output model."""
    body = _rest_request_body(inputs, row_format, signature_name)
    where = f"TF Serving at {base}"
    outputs = _rest_outputs(
        http_json("POST", base, model_path(model, version, label) + ":predict", body, timeout), where
    )
    if isinstance(outputs, dict):
        return outputs
    if meta is None:
        try:
            meta = model_metadata(
                base, model, version=version, label=label, signature_name=signature_name, timeout=timeout
            )
        except ServingError as e:
            raise ServingError(f"{model!r} answered, but naming its output needs its metadata: {e}", code=e.code) from e
    names = sorted(meta.signature.outputs)
    if len(names) != 1:
        # The metadata request resolved to another version than the predict (a version loaded or unloaded between).
        raise ServingError(
            f"{where} answered {model!r} with one unnamed output, but version {meta.version}'s signature "
            f"{meta.signature_name!r} has outputs {names}: the served version changed in between; try again",
            code="ABORTED",
        )
    return {names[0]: outputs}
