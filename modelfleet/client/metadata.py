"""The signature TF Serving serves for a model: ``model_metadata`` over REST or gRPC."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from model_export.errors import BadInput, ServingError
from model_export.signature import SERVING_SIGNATURE, Signature, TensorSpec
from modelfleet.client.address import grpc_target
from modelfleet.client.dtypes import _DTYPES, _ENUM_BY_DT_NAME
from modelfleet.client.grpc_api import _grpc_error, _grpc_options
from modelfleet.tfs_rest import check_spec, http_json, model_path, rest_url

DEFAULT_SIGNATURE = SERVING_SIGNATURE  # what TF Serving answers when a request names no signature


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
    check_spec(model, version, label)
    sig_name = signature_name or DEFAULT_SIGNATURE
    if grpc:
        return _grpc_metadata(grpc_target(url), model, version, label, sig_name, timeout)
    base = rest_url(url)
    doc = http_json("GET", base, model_path(model, version, label) + "/metadata", None, timeout)
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
