"""modelfleet: log Docker in to the stack's own registry with the VM's identity, before TF Serving's image is pulled.

Run by tfserving.service (``ExecStartPre=-``, as root) with the registry host of the image as its one argument:
- ``<location>-docker.pkg.dev`` (GCP Artifact Registry): an access token of the VM's service account from the
  metadata server, user ``oauth2accesstoken``;
- ``<account>.dkr.ecr.<region>.amazonaws.com`` (AWS ECR): ``GetAuthorizationToken`` with the instance profile
  (boto3 from the agent's venv), user ``AWS``.
Any other host needs no login here (a mirror the machine image or the network already trusts). Tokens last an hour
(GCP) or twelve (ECR); the login runs before every start, and a cached image needs none (``--pull=missing``).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import urllib.request

GCP = re.compile(r"^[a-z0-9-]+-docker\.pkg\.dev$")
ECR = re.compile(r"^\d{12}\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")


def gcp_token() -> str:
    host = os.environ.get("GCE_METADATA_HOST", "metadata.google.internal")
    url = f"http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
    req = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
        return str(json.load(resp)["access_token"])


def ecr_password(region: str) -> str:
    import boto3

    data = boto3.client("ecr", region_name=region).get_authorization_token()["authorizationData"][0]
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    return password if user == "AWS" else sys.exit(f"unexpected ECR token user {user!r}")


def credentials(host: str) -> tuple[str, str] | None:
    if GCP.match(host):
        return "oauth2accesstoken", gcp_token()
    match = ECR.match(host)
    if match:
        return "AWS", ecr_password(match.group("region"))
    return None


def main(host: str) -> None:
    found = credentials(host)
    if found is None:
        print(f"{host}: no login needed", flush=True)
        return
    user, password = found
    cmd = ["docker", "login", "--username", user, "--password-stdin", f"https://{host}"]
    subprocess.run(cmd, input=password, text=True, check=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
