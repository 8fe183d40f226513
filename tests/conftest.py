from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from model_export.store import Store, open_store
from tests.support.proxy import Proxy, proxying
from tests.support.servers import Server, running, use_s3


@pytest.fixture(scope="session")
def s3_server() -> Iterator[Server]:
    with running("s3") as server:
        use_s3(server)
        yield server


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[Server]:
    with running("gcs") as server:
        os.environ["STORAGE_EMULATOR_HOST"] = server.endpoint
        os.environ.setdefault("GOOGLE_CLOUD_PROJECT", "test-project")
        yield server


def new_bucket(kind: str) -> str:
    name = f"mf-{uuid.uuid4().hex[:12]}"
    if kind == "s3":
        boto3.client("s3").create_bucket(Bucket=name)
    else:
        from google.cloud import storage

        storage.Client().create_bucket(name)
    return name


@pytest.fixture
def proxied(s3_server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Proxy, Store, Store]]:
    """(a fault-injecting proxy in front of the S3 server, a store through it, the same store direct)."""
    uri = f"s3://{new_bucket('s3')}/models"
    direct = open_store(uri)
    with proxying(s3_server.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        yield proxy, open_store(uri), direct


@pytest.fixture(params=["file", "s3", "gcs"])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store of each kind, with a prefix for the cloud ones."""
    kind = request.param
    if kind == "file":
        root = tmp_path / "store"
        root.mkdir()
        return f"file://{root}"
    request.getfixturevalue(f"{kind}_server")
    return f"{'s3' if kind == 's3' else 'gs'}://{new_bucket(kind)}/models"


@pytest.fixture(scope="session")
def savedmodels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small real SavedModels exported by TensorFlow: two compatible versions and one with other inputs."""
    from tests.support.models import make_savedmodels

    return make_savedmodels(tmp_path_factory.mktemp("savedmodels"))
