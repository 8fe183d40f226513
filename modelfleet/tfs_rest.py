"""TF Serving's REST API without numpy: the base URL, model paths, one JSON request, and model status.

The agent asks the local TF Serving for model status through this module alone (it must not import the predict
client, which needs numpy); the predict client builds its requests on the same pieces.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from model_export.constants import TFS_REST_PORT
from model_export.errors import BadInput, ServingError, one_line


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


def model_path(model: str, version: int | None, label: str | None) -> str:
    path = f"/v1/models/{urllib.parse.quote(model, safe='')}"
    if version is not None:
        path += f"/versions/{version}"
    elif label is not None:
        path += f"/labels/{urllib.parse.quote(label, safe='')}"
    return path


def check_spec(model: str, version: int | None, label: str | None) -> None:
    if not model:
        raise BadInput("the model name is empty")
    if version is not None and label is not None:
        raise BadInput(f"give a version or a label, not both (version {version}, label {label!r})")
    if version is not None and version < 0:
        raise BadInput(f"bad version {version}: TF Serving versions are integers >= 0")
    if label is not None and not label:
        raise BadInput("the label is empty")


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


def http_json(method: str, base: str, path: str, body: bytes | None, timeout: float) -> Any:
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
            f"TF Serving at {base} answered HTTP {e.code} to {method} {path}: {one_line(detail)}",
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
        if isinstance(e, http.client.BadStatusLine) and not isinstance(e, ConnectionError):
            # An HTTP/2-only server (TF Serving's gRPC port) answers an HTTP/1.1 request with binary frames. (A
            # connection closed before any answer, RemoteDisconnected, is a BadStatusLine too, and a ConnectionError:
            # a server still starting behind Docker's proxy, which the agent must see as not listening.)
            raise ServingError(
                f"{base} did not answer HTTP/1.x to {method} {path}: is it TF Serving's gRPC port? REST is on "
                f"{TFS_REST_PORT} (gRPC needs --grpc)",
                code="UNAVAILABLE",
            ) from None
        raise ServingError(
            f"cannot reach TF Serving at {base}: {e or type(e).__name__}",
            code="UNAVAILABLE",
            not_listening=isinstance(e, ConnectionError),
        ) from None
    try:
        # TF Serving writes string outputs' bytes as they are, UTF-8 or not (json_tensor.cc, `writer->String(str)`):
        # surrogateescape keeps the bytes that are not, for the client to give back as they were.
        return json.loads(raw.decode("utf-8", "surrogateescape"))
    except ValueError:
        raise ServingError(
            f"TF Serving at {base} answered {method} {path} with a body that is not JSON: {one_line(repr(raw[:80]))}",
            code="INTERNAL",
        ) from None


def _timeout(where: str, timeout: float) -> ServingError:
    return ServingError(f"TF Serving at {where} did not answer within {timeout:g} s", code="DEADLINE_EXCEEDED")


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
    check_spec(model, None, None)
    base = rest_url(url)
    doc = http_json("GET", base, model_path(model, None, None), None, timeout)
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


def label_version(url: str, model: str, label: str, *, timeout: float = 10.0) -> int:
    """The version TF Serving resolves ``label`` of ``model`` to now (``GET /v1/models/NAME/labels/LABEL/metadata``:
    its ``model_spec.version``, get_model_metadata_impl.cc). Model status ignores labels, and a label in the config
    file takes effect only when TF Serving has read it: this is the one place that says what the label serves."""
    check_spec(model, None, label)
    base = rest_url(url)
    doc = http_json("GET", base, model_path(model, None, label) + "/metadata", None, timeout)
    try:
        return int(doc["model_spec"]["version"])
    except (KeyError, TypeError, ValueError) as e:
        raise ServingError(
            f"TF Serving at {base} sent unreadable metadata for {model!r} label {label!r}: {e!r}", code="INTERNAL"
        ) from e
