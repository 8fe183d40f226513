"""Who this VM is, for its heartbeat: the cloud's instance name (GCP) or id (AWS) and zone from the metadata server,
else the host name. The metadata server is asked only on a VM whose firmware says which cloud it is in (DMI), so a
laptop or CI machine never waits on 169.254.169.254."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

METADATA_TIMEOUT_SECONDS = 1.0
_DMI = Path("/sys/class/dmi/id")
_GCP_METADATA = "http://metadata.google.internal/computeMetadata/v1/instance/"
_AWS_METADATA = "http://169.254.169.254/latest/"


def _dmi(name: str, root: Path) -> str:
    try:
        return (root / name).read_text().strip()
    except OSError:
        return ""


def _get(url: str, headers: dict[str, str], method: str = "GET") -> str | None:
    request = urllib.request.Request(url, headers=headers, method=method)  # noqa: S310 - fixed metadata URLs
    try:
        with urllib.request.urlopen(request, timeout=METADATA_TIMEOUT_SECONDS) as answer:  # noqa: S310
            return str(answer.read().decode().strip()) or None
    except (OSError, urllib.error.URLError, ValueError, UnicodeDecodeError):
        return None


def cloud_identity(dmi: Path = _DMI) -> tuple[str | None, str | None]:
    """``(instance, zone)`` from the cloud's metadata server, or ``(None, None)`` off a cloud VM."""
    if "Google" in _dmi("product_name", dmi):
        flavor = {"Metadata-Flavor": "Google"}
        zone = _get(_GCP_METADATA + "zone", flavor)  # projects/<number>/zones/<zone>
        return _get(_GCP_METADATA + "name", flavor), zone.rsplit("/", 1)[-1] if zone else None
    if "Amazon" in _dmi("sys_vendor", dmi) or "Amazon" in _dmi("board_vendor", dmi):
        token = _get(_AWS_METADATA + "api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"}, method="PUT")
        headers = {"X-aws-ec2-metadata-token": token} if token else {}
        instance = _get(_AWS_METADATA + "meta-data/instance-id", headers)
        return instance, _get(_AWS_METADATA + "meta-data/placement/availability-zone", headers)
    return None, None


def default_identity() -> tuple[str, str | None]:
    """``(instance id, zone)``: the cloud's, or the host name's first label and no zone."""
    instance, zone = cloud_identity()
    return instance or socket.gethostname().split(".")[0] or "localhost", zone
