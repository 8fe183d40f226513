"""``smoke``: does TF Serving serve a model? Status, metadata, then one predict with a sample."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from model_export.errors import BadInput, ServingError
from model_export.signature import Signature
from modelfleet.client.dtypes import _ENUM_BY_NUMPY, _numpy_dtype
from modelfleet.client.metadata import model_metadata
from modelfleet.client.prediction import _rest_predict
from modelfleet.client.tensors import Inputs, NDArray
from modelfleet.tfs_rest import VersionStatus, check_spec, model_status, rest_url


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
    check_spec(model, version, label)
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
        outputs = _rest_predict(base, model, inputs, version, label, False, "", timeout, meta)
    except ServingError as e:
        return dataclasses.replace(failed, reason=f"predict failed: {e}", seconds=time.perf_counter() - start)
    seconds = time.perf_counter() - start
    if not outputs:
        return dataclasses.replace(failed, reason="predict answered without outputs", seconds=seconds)
    return dataclasses.replace(
        failed, ok=True, outputs={k: list(v.shape) for k, v in sorted(outputs.items())}, seconds=seconds
    )
