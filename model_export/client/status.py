"""The versions TF Serving knows of a model and their states (``GET /v1/models/NAME``)."""

from __future__ import annotations

from dataclasses import dataclass

from model_export.client.address import _check_spec, _model_path, rest_url
from model_export.client.rest import _http_json
from model_export.errors import ServingError


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
