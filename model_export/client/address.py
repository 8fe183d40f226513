"""TF Serving addresses: the REST base URL, the gRPC target, and the model path of a REST request."""

from __future__ import annotations

import re
import urllib.parse

from model_export.constants import TFS_GRPC_PORT, TFS_REST_PORT
from model_export.errors import BadInput

_GRPC_TARGET = re.compile(r"^(?:grpc://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


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
