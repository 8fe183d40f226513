"""modelfleet: fetch_object.py s3://bucket/key DEST with the instance profile (IMDSv2) and a SigV4-signed GET, in
Python's standard library: it runs before the agent bundle brings the SDKs. AWS_DEFAULT_REGION: the bucket's
region; AWS_ENDPOINT_URL(_S3), AWS_EC2_METADATA_SERVICE_ENDPOINT aim it elsewhere. systemd retries a failure."""

# ruff: noqa: S310, PTH123

import datetime
import hashlib
import hmac
import json
import os
import shutil
import sys
import urllib.request
from urllib.parse import quote, urlsplit

EMPTY = hashlib.sha256(b"").hexdigest()


def get(url: str, method: str = "GET", **headers: str) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, method=method, headers=headers), timeout=30) as r:
        return bytes(r.read())


def credentials() -> dict[str, str]:
    base = os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://169.254.169.254").rstrip("/")
    auth = {
        "X-aws-ec2-metadata-token": get(
            f"{base}/latest/api/token", "PUT", **{"X-aws-ec2-metadata-token-ttl-seconds": "300"}
        ).decode()
    }
    roles = f"{base}/latest/meta-data/iam/security-credentials/"
    found = json.loads(get(roles + get(roles, **auth).decode().split()[0], **auth))
    return {"key": found["AccessKeyId"], "secret": found["SecretAccessKey"], "token": found["Token"]}


def url_of(bucket: str, key: str, region: str) -> str:
    endpoint, path = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"), quote(key, safe="/~")
    if endpoint:
        return f"{endpoint.rstrip('/')}/{bucket}/{path}"
    host = f"s3.{region}.amazonaws.com" + (".cn" if region.startswith("cn-") else "")
    # A dotted bucket name does not match the wildcard certificate of virtual-hosted style.
    return f"https://{host}/{bucket}/{path}" if "." in bucket else f"https://{bucket}.{host}/{path}"


def mac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signed(url: str, region: str, creds: dict[str, str], now: datetime.datetime) -> dict[str, str]:
    parts, stamp, day = urlsplit(url), now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    headers = {"host": parts.netloc, "x-amz-content-sha256": EMPTY, "x-amz-date": stamp}
    headers["x-amz-security-token"] = creds["token"]
    names, scope = ";".join(headers), f"{day}/{region}/s3/aws4_request"  # headers: in sorted order
    canonical = "\n".join(["GET", parts.path, parts.query, *(f"{k}:{v}" for k, v in headers.items()), "", names, EMPTY])
    to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = mac(mac(mac(mac(f"AWS4{creds['secret']}".encode(), day), region), "s3"), "aws4_request")
    sig = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    del headers["host"]
    return {
        **headers,
        "Authorization": f"AWS4-HMAC-SHA256 Credential={creds['key']}/{scope}, SignedHeaders={names}, Signature={sig}",
    }


def fetch(uri: str, dest: str) -> None:
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc or len(parts.path) < 2:
        sys.exit(f"modelfleet: cannot fetch {uri}: use s3://bucket/key")
    region = os.environ.get("AWS_DEFAULT_REGION") or sys.exit("modelfleet: AWS_DEFAULT_REGION is not set")
    url = url_of(parts.netloc, parts.path[1:], region)
    req = urllib.request.Request(url, headers=signed(url, region, credentials(), datetime.datetime.now(datetime.UTC)))
    with urllib.request.urlopen(req, timeout=60) as r, open(dest, "wb") as f:
        shutil.copyfileobj(r, f, 1 << 20)


if __name__ == "__main__":
    fetch(*sys.argv[1:3])
