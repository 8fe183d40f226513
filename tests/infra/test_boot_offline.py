"""The boot's agent install with no package index, end to end.

The real ``install-agent.sh`` and store fetcher, as the user-data writes them; a real agent bundle (built for this
interpreter and platform, so it installs here: the VM's own is checked in test_agent_package.py); a real store server
(moto's S3, fake-gcs-server) behind a recording proxy; a stub of the cloud's metadata server for the VM's identity;
and every other address closed (a dead HTTP proxy for anything not on 127.0.0.1, ``--isolated`` pip). The S3
fetcher's SigV4 signature is checked against botocore's own signer.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import importlib.util
import json
import platform
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest

from infra import bootstrap
from infra.agent_package import BUNDLED_SCRIPTS, VmTarget, build_agent_bundle
from infra.bootstrap import AgentWheel, BootstrapArgs, cloud_config
from model_export.constants import STABLE
from tests.conftest import new_bucket
from tests.support.proxy import Proxy, proxying
from tests.support.servers import Server

ACCESS_KEY, SECRET_KEY, SESSION_TOKEN = "ASIAFLEETROLE", "fleet-secret", "fleet-session-token"
GCP_TOKEN = "ya29.fleet-token"
DEAD_PROXY = "http://127.0.0.1:9"  # nothing listens: any request beyond 127.0.0.1 fails at once


def load_template(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), bootstrap.TEMPLATES / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fetch_s3 = load_template("fetch_s3.py")


# --- SigV4, as botocore signs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "region"),
    [
        ("https://mf-store.s3.eu-west-1.amazonaws.com/models/_agent/ab/modelfleet-0.2.0-agent.zip", "eu-west-1"),
        ("https://s3.us-east-1.amazonaws.com/my.dotted.bucket/a%20b/%C3%A9t%C3%A9~x.zip", "us-east-1"),
        ("https://mf-store.s3.cn-north-1.amazonaws.com.cn/k", "cn-north-1"),
        ("http://127.0.0.1:5000/mf-store/models/x.zip", "us-east-1"),
    ],
)
def test_the_s3_fetcher_signs_as_botocore_does(url: str, region: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore import auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    now = datetime.datetime(2026, 11, 20, 8, 30, 5, tzinfo=datetime.timezone.utc)
    creds = {"key": ACCESS_KEY, "secret": SECRET_KEY, "token": SESSION_TOKEN}
    ours = fetch_s3.signed(url, region, creds, now)

    monkeypatch.setattr(auth, "get_current_datetime", lambda: now.replace(tzinfo=None))
    request = AWSRequest(method="GET", url=url)
    auth.S3SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY, SESSION_TOKEN), "s3", region).add_auth(request)
    theirs = {k.lower(): v for k, v in request.headers.items()}
    assert {k.lower(): v for k, v in ours.items()} == theirs


@pytest.mark.parametrize(
    ("bucket", "key", "region", "endpoint", "url"),
    [
        ("mf-store", "m/_agent/x.zip", "eu-west-1", None, "https://mf-store.s3.eu-west-1.amazonaws.com/m/_agent/x.zip"),
        ("my.bucket", "a b", "eu-west-1", None, "https://s3.eu-west-1.amazonaws.com/my.bucket/a%20b"),
        ("mf-store", "k", "cn-north-1", None, "https://mf-store.s3.cn-north-1.amazonaws.com.cn/k"),
        ("mf-store", "k", "eu-west-1", "http://127.0.0.1:9000/", "http://127.0.0.1:9000/mf-store/k"),
    ],
)
def test_the_s3_fetcher_addresses_the_buckets_region(
    bucket: str, key: str, region: str, endpoint: str | None, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    if endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    assert fetch_s3.url_of(bucket, key, region) == url


# --- a metadata server stub ---------------------------------------------------------------------------------------


@dataclass
class Metadata:
    """GCE's token endpoint and EC2's IMDSv2 (token, role, credentials), recording what was asked."""

    port: int = 0
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def answer(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        self.seen.append((method, path, headers))
        if path == "/computeMetadata/v1/instance/service-accounts/default/token":
            if headers.get("metadata-flavor") != "Google":
                return 403, b"missing Metadata-Flavor"
            return 200, json.dumps({"access_token": GCP_TOKEN, "expires_in": 3599, "token_type": "Bearer"}).encode()
        if path == "/latest/api/token":
            return (200, b"imds-v2-token") if method == "PUT" else (405, b"")
        if headers.get("x-aws-ec2-metadata-token") != "imds-v2-token":
            return 401, b""  # IMDSv2 only, as the launch template requires
        if path == "/latest/meta-data/iam/security-credentials/":
            return 200, b"mf-prod-fleet"
        if path == "/latest/meta-data/iam/security-credentials/mf-prod-fleet":
            body = {"Code": "Success", "AccessKeyId": ACCESS_KEY, "SecretAccessKey": SECRET_KEY, "Token": SESSION_TOKEN}
            return 200, json.dumps(body).encode()
        return 404, b""


@contextmanager
def metadata_server() -> Iterator[Metadata]:
    stub = Metadata()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _answer(self) -> None:
            status, body = stub.answer(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = _answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    stub.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()


# --- the VM's files, as the user-data writes them -------------------------------------------------------------------


def local_target() -> VmTarget:
    """This machine's interpreter and glibc: a bundle for it installs here (the mechanism is the VM's)."""
    libc, version = platform.libc_ver()
    assert libc == "glibc" and platform.machine() == "x86_64", "the offline-install test needs glibc on x86_64"
    major, minor = (int(p) for p in version.split(".")[:2])
    return VmTarget(python_version=f"{sys.version_info.major}.{sys.version_info.minor}", glibc=(major, minor))


@pytest.fixture(scope="module")
def local_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return build_agent_bundle(tmp_path_factory.mktemp("bundle"), target=local_target())


def vm_home(tmp_path: Path, args: BootstrapArgs) -> Path:
    """/opt/modelfleet as the user-data writes it: install-agent.sh and the cloud's fetcher, from the document."""
    home = tmp_path / "opt-modelfleet"
    home.mkdir()
    for entry in cloud_config(args)["write_files"]:
        if entry["path"].startswith(f"{bootstrap.AGENT_HOME}/"):
            path = home / entry["path"].rsplit("/", 1)[1]
            path.write_text(entry["content"])
            path.chmod(int(entry["permissions"], 8))
    assert {p.name for p in home.iterdir()} == {"install-agent.sh", "fetch_object.py"}
    return home


def install(home: Path, args: BootstrapArgs, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run install-agent.sh as the agent units do: their EnvironmentFile, here; no network beyond 127.0.0.1."""
    agent_env = dict(line.split("=", 1) for line in bootstrap.agent_env(args).splitlines())
    closed = {name: DEAD_PROXY for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}
    full = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        **closed,
        "no_proxy": "127.0.0.1",
        "NO_PROXY": "127.0.0.1",
        "PIP_CONFIG_FILE": "/dev/null",
        **agent_env,
        "MODELFLEET_HOME": str(home),
        "MODELFLEET_PYTHON": sys.executable,
        **env,
    }
    return subprocess.run(
        [str(home / "install-agent.sh")], env=full, capture_output=True, text=True, timeout=600, check=False
    )


def upload(server: Server, bucket: str, key: str, data: bytes) -> None:
    if server.kind == "s3":
        s3 = boto3.client(
            "s3",
            endpoint_url=server.endpoint,
            aws_access_key_id="t",
            aws_secret_access_key="t",
            region_name="us-east-1",
        )
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    else:
        from google.cloud import storage

        storage.Client().bucket(bucket).blob(key).upload_from_string(data)  # STORAGE_EMULATOR_HOST: the server


def boot_args(cloud: str, bucket: str, bundle: Path, sha: str) -> BootstrapArgs:
    scheme = bootstrap.STORE_SCHEME[cloud]
    uri = f"{scheme}://{bucket}/models/_agent/{sha}/{bundle.name}"
    return BootstrapArgs(
        cloud=cloud,  # type: ignore[arg-type]
        store_uri=f"{scheme}://{bucket}/models",
        models=("digits",),
        role=STABLE,
        agent_wheel=AgentWheel(uri, sha),
        aws_region="us-east-1" if cloud == "aws" else None,
    )


def store_env(cloud: str, proxy: Proxy, meta: Metadata) -> dict[str, str]:
    if cloud == "aws":
        return {"AWS_ENDPOINT_URL": proxy.endpoint, "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://{meta.host}"}
    return {"STORAGE_EMULATOR_HOST": proxy.endpoint, "GCE_METADATA_HOST": meta.host}


@contextmanager
def vm_store(request: pytest.FixtureRequest, cloud: str) -> Iterator[tuple[str, Proxy, Metadata]]:
    """A new bucket on the cloud's store server, a recording proxy in front of the server, and the metadata stub."""
    server: Server = request.getfixturevalue("s3_server" if cloud == "aws" else "gcs_server")
    bucket = new_bucket("s3" if cloud == "aws" else "gcs")
    with proxying(server.endpoint) as proxy, metadata_server() as meta:
        yield bucket, proxy, meta


def bundle_get(proxy: Proxy) -> Any:
    gets = [r for r in proxy.requests if r.method == "GET"]
    assert len(gets) == 1, [r.path for r in proxy.requests]
    return gets[0]


# --- the install --------------------------------------------------------------------------------------------------


def test_the_agent_installs_from_the_bundle_with_no_index(
    request: pytest.FixtureRequest, local_bundle: tuple[Path, str], tmp_path: Path
) -> None:
    """S3 end to end: IMDSv2 credentials, one signed GET of the bundle, its hash, pip with no index, the scripts."""
    bundle, sha = local_bundle
    with vm_store(request, "aws") as (bucket, proxy, meta):
        args = boot_args("aws", bucket, bundle, sha)
        upload(request.getfixturevalue("s3_server"), bucket, args.agent_wheel.uri.split("/", 3)[3], bundle.read_bytes())
        home = vm_home(tmp_path, args)
        proc = install(home, args, store_env("aws", proxy, meta))
        assert proc.returncode == 0, proc.stdout + proc.stderr

        get = bundle_get(proxy)
        assert get.path == f"/{bucket}/{args.agent_wheel.uri.split('/', 3)[3]}"
        assert get.headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
        assert "/us-east-1/s3/aws4_request" in get.headers["authorization"]
        assert get.headers["x-amz-security-token"] == SESSION_TOKEN
        assert next((m, p) for m, p, _ in meta.seen) == ("PUT", "/latest/api/token")  # IMDSv2

    venv = home / "venv"
    assert (home / f"installed-{sha}").is_file()
    for name in BUNDLED_SCRIPTS:
        assert (home / name).read_bytes() == (bootstrap.TEMPLATES / name).read_bytes()
        assert (home / name).stat().st_mode & 0o777 == 0o755
    help_ = subprocess.run([str(venv / "bin" / "modelfleet"), "--help"], capture_output=True, text=True, timeout=60)
    assert help_.returncode == 0 and "agent" in help_.stdout, help_.stderr
    freeze = subprocess.run([str(venv / "bin" / "pip"), "freeze", "--isolated"], capture_output=True, text=True)
    with zipfile.ZipFile(bundle) as z:
        required = {line.split("==")[0] for line in z.read("requirements.txt").decode().splitlines() if "==" in line}
    installed = {line.split("==")[0].lower().replace("_", "-") for line in freeze.stdout.splitlines()}
    assert installed == required

    # A rerun (every unit start) is a no-op: no store request.
    again = install(home, args, store_env("aws", proxy, meta))
    assert again.returncode == 0 and again.stdout == "", again.stdout + again.stderr


def test_the_gcs_fetcher_uses_the_service_accounts_token(
    request: pytest.FixtureRequest, local_bundle: tuple[Path, str], tmp_path: Path
) -> None:
    bundle, sha = local_bundle
    with vm_store(request, "gcp") as (bucket, proxy, meta):
        args = boot_args("gcp", bucket, bundle, sha)
        key = args.agent_wheel.uri.split("/", 3)[3]
        upload(request.getfixturevalue("gcs_server"), bucket, key, bundle.read_bytes())
        home = vm_home(tmp_path, args)
        dest = tmp_path / "bundle.zip"
        env = {"PATH": "/usr/bin:/bin", "no_proxy": "127.0.0.1", "https_proxy": DEAD_PROXY, "http_proxy": DEAD_PROXY}
        proc = subprocess.run(
            [sys.executable, str(home / "fetch_object.py"), args.agent_wheel.uri, str(dest)],
            env={**env, **store_env("gcp", proxy, meta)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert dest.read_bytes() == bundle.read_bytes()
        get = bundle_get(proxy)
        assert get.headers["authorization"] == f"Bearer {GCP_TOKEN}"
        assert get.path.startswith(f"/storage/v1/b/{bucket}/o/models%2F_agent%2F{sha}%2F") and "alt=media" in get.path
        assert [p for _, p, h in meta.seen if h.get("metadata-flavor") == "Google"]


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_a_bundle_that_does_not_match_its_hash_is_refused(
    request: pytest.FixtureRequest, local_bundle: tuple[Path, str], tmp_path: Path, cloud: str
) -> None:
    bundle, sha = local_bundle
    with vm_store(request, cloud) as (bucket, proxy, meta):
        args = boot_args(cloud, bucket, bundle, sha)
        server = request.getfixturevalue("s3_server" if cloud == "aws" else "gcs_server")
        upload(server, bucket, args.agent_wheel.uri.split("/", 3)[3], bundle.read_bytes() + b"tampered")
        home = vm_home(tmp_path, args)
        proc = install(home, args, store_env(cloud, proxy, meta))
    assert proc.returncode == 1
    assert f"does not match sha256 {sha}; refusing to install" in proc.stderr
    assert not (home / "venv").exists() and not list(home.glob("installed-*"))


def test_a_bundle_for_another_python_is_refused_before_pip(
    request: pytest.FixtureRequest, local_bundle: tuple[Path, str], tmp_path: Path
) -> None:
    bundle, _ = local_bundle
    other = tmp_path / bundle.name
    with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(other, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "bundle.json":
                data = json.dumps({**json.loads(data), "python": "3.99"}).encode()
            dst.writestr(info, data)
    sha = hashlib.sha256(other.read_bytes()).hexdigest()
    with vm_store(request, "aws") as (bucket, proxy, meta):
        args = boot_args("aws", bucket, other, sha)
        upload(request.getfixturevalue("s3_server"), bucket, args.agent_wheel.uri.split("/", 3)[3], other.read_bytes())
        (tmp_path / "vm").mkdir()
        home = vm_home(tmp_path / "vm", args)
        proc = install(home, args, store_env("aws", proxy, meta))
    assert proc.returncode == 1
    assert "the agent bundle is for Python 3.99" in proc.stderr
    assert not (home / "venv").exists()


def test_the_vm_files_are_what_the_tests_run() -> None:
    """The user-data's install script and fetchers are the templates these tests execute."""
    for cloud in ("aws", "gcp"):
        assert (bootstrap.TEMPLATES / bootstrap.FETCHERS[cloud]).is_file()
    assert shutil.which("flock") and shutil.which("sha256sum"), "install-agent.sh needs util-linux and coreutils"


# --- the registry login (from the bundle, run before TF Serving's pull) ----------------------------------------------

registry_login = load_template("registry_login.py")


def test_registry_login_uses_the_service_accounts_token_on_artifact_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    with metadata_server() as meta:
        monkeypatch.setenv("GCE_METADATA_HOST", meta.host)
        assert registry_login.credentials("europe-west1-docker.pkg.dev") == ("oauth2accesstoken", GCP_TOKEN)
    assert [h.get("metadata-flavor") for _, _, h in meta.seen] == ["Google"]


def test_registry_login_uses_an_ecr_authorization_token(monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.stub import Stubber

    client = boto3.client("ecr", region_name="eu-west-1", aws_access_key_id="k", aws_secret_access_key="s")
    stub = Stubber(client)
    token = base64.b64encode(b"AWS:ecr-password").decode()
    stub.add_response("get_authorization_token", {"authorizationData": [{"authorizationToken": token}]}, {})
    regions: list[str] = []

    def fake_client(service: str, region_name: str) -> Any:
        assert service == "ecr"
        regions.append(region_name)
        return client

    monkeypatch.setattr(boto3, "client", fake_client)
    with stub:
        found = registry_login.credentials("123456789012.dkr.ecr.eu-west-1.amazonaws.com")
    assert found == ("AWS", "ecr-password") and regions == ["eu-west-1"]


@pytest.mark.parametrize("host", ["mirror.example.com", "registry-1.docker.io", "localhost:5000"])
def test_registry_login_leaves_other_registries_alone(host: str) -> None:
    assert registry_login.credentials(host) is None


@pytest.mark.parametrize(
    "host",
    [
        "europe-west1-docker.pkg.dev",
        "us-docker.pkg.dev",
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
        "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn",
        "mirror.example.com",
        "gcr.io",
        "public.ecr.aws",
    ],
)
def test_the_user_data_and_the_login_script_agree_on_which_registries_need_a_login(host: str) -> None:
    script = bool(registry_login.GCP.match(host) or registry_login.ECR.match(host))
    assert (bootstrap.registry_login_host(f"{host}/tfs/serving:2.20.0") == host) is script
