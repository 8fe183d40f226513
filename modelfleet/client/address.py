"""TF Serving's gRPC target (the REST base URL is checked in :mod:`modelfleet.tfs_rest`)."""

from __future__ import annotations

import re

from model_export.constants import TFS_GRPC_PORT
from model_export.errors import BadInput

_GRPC_TARGET = re.compile(r"^(?:grpc://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def grpc_target(url: str) -> str:
    """``url`` checked as a gRPC target ``HOST:PORT`` (``grpc://HOST:PORT`` accepted)."""
    m = _GRPC_TARGET.match(url)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise BadInput(f"bad gRPC target {url!r}: expected HOST:PORT (TF Serving's gRPC port is {TFS_GRPC_PORT})")
    return f"{m.group(1)}:{m.group(2)}"
