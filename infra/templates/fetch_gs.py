"""modelfleet: fetch_object.py gs://bucket/key DEST with the VM's service account (a metadata server token) and the
JSON API, in Python's standard library: it runs before the agent bundle brings the SDKs. STORAGE_EMULATOR_HOST,
GCE_METADATA_HOST aim it elsewhere. systemd retries a failure."""

# ruff: noqa: S310, PTH123

import json
import os
import shutil
import sys
import urllib.request
from urllib.parse import quote, urlsplit


def request(bucket: str, key: str) -> urllib.request.Request:
    meta = os.environ.get("GCE_METADATA_HOST", "metadata.google.internal")
    url = f"http://{meta}/computeMetadata/v1/instance/service-accounts/default/token"
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Metadata-Flavor": "Google"}), timeout=30) as r:
        token = json.load(r)["access_token"]
    api = os.environ.get("STORAGE_EMULATOR_HOST", "https://storage.googleapis.com").rstrip("/")
    url = f"{api}/storage/v1/b/{quote(bucket, safe='')}/o/{quote(key, safe='')}?alt=media"
    return urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})


def fetch(uri: str, dest: str) -> None:
    parts = urlsplit(uri)
    if parts.scheme != "gs" or not parts.netloc or len(parts.path) < 2:
        sys.exit(f"modelfleet: cannot fetch {uri}: use gs://bucket/key")
    with urllib.request.urlopen(request(parts.netloc, parts.path[1:]), timeout=60) as r, open(dest, "wb") as f:
        shutil.copyfileobj(r, f, 1 << 20)


if __name__ == "__main__":
    fetch(*sys.argv[1:3])
