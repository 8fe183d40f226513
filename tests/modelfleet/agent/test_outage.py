"""The store goes away (a real S3 API server, stopped) and comes back: the agent keeps serving, then recovers.

A private moto server, not the session's ``s3_server``: stopping and restarting it wipes its contents, which other
tests holding buckets on the shared one must not see.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from model_export.constants import HEALTH_PATH, METRICS_PATH, STABLE
from model_export.publish import publish
from model_export.store.s3 import S3Store
from model_export.transfer import sha256_file
from modelfleet.agent.tfs import TfsClient
from tests.support.agent import MODEL, http_get, make_agent, metrics, served, serving, wait_until
from tests.support.servers import free_port, running
from tests.support.tfserving_standin import TFServingStandIn


def snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p).sha256 for p in sorted(root.rglob("*")) if p.is_file()}


def test_store_outage_keeps_config_files_and_health_then_recovers(savedmodels: dict[str, Path], tmp_path: Path) -> None:
    with running("s3") as server, TFServingStandIn(grpc=False) as tfs:
        client = boto3.client(
            "s3",
            endpoint_url=server.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            # One attempt per call: the agent's own backoff is under test, not botocore's retries.
            config=Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=1, read_timeout=2),
        )
        client.create_bucket(Bucket="outage")
        store = S3Store("s3://outage/models", "outage", "models", client=client)
        publish(savedmodels["v1"], store, MODEL, label=STABLE)

        root = tmp_path / "root"
        listen = ("127.0.0.1", free_port())
        options: dict[str, Any] = {"poll_seconds": 0.1, "max_backoff_seconds": 0.4, "listen": listen}
        agent = make_agent(store, root, STABLE, tfs=TfsClient(tfs.rest_url), **options)
        with agent, serving(agent) as base:
            wait_until("the first config", lambda: agent.config_path.exists())
            tfs.watch_config(agent.config_path, poll_seconds=0.05)
            wait_until("v1 labeled stable", lambda: tfs.labels(MODEL) == {STABLE: 1})
            wait_until("healthy on v1", lambda: http_get(base + HEALTH_PATH)[0] == 200)
            config, files = agent.config_path.read_bytes(), snapshot(root / MODEL)

            server.stop()
            failed = metrics(http_get(base + METRICS_PATH)[1])
            failures = f'modelfleet_agent_sync_failures_total{{model="{MODEL}"}}'
            last_ok = "modelfleet_agent_last_sync_success_timestamp_seconds"
            wait_until(
                "three failed polls",
                lambda: metrics(http_get(base + METRICS_PATH)[1])[failures] >= failed[failures] + 3,
            )
            during = metrics(http_get(base + METRICS_PATH)[1])
            assert agent.config_path.read_bytes() == config
            assert snapshot(root / MODEL) == files
            code, body = http_get(base + HEALTH_PATH)
            assert code == 200, body
            assert "digits: version 1 AVAILABLE\ndigits: note: cannot read the manifest" in body
            assert during[last_ok] == failed[last_ok]  # no success while the store is down

        # An agent restarted while the store is still down resumes what it served, and stays healthy.
        agent = make_agent(store, root, STABLE, tfs=TfsClient(tfs.rest_url), **options)
        with agent, serving(agent) as base:
            wait_until("a failed poll", lambda: agent.status.counters()[1].get(MODEL, 0) >= 1)
            assert agent.status.models()[0].target == 1
            assert agent.config_path.read_bytes() == config
            assert http_get(base + HEALTH_PATH)[0] == 200

            # The store comes back, empty (moto keeps everything in memory): a bucket and two publishes later, the
            # agent follows v2 within a few polls of its capped backoff.
            server.start()
            client.create_bucket(Bucket="outage")
            publish(savedmodels["v1"], store, MODEL, label=STABLE)
            publish(savedmodels["v2"], store, MODEL, label=STABLE)
            wait_until("v2 labeled stable", lambda: tfs.labels(MODEL) == {STABLE: 2}, timeout=20)
            wait_until(
                "healthy on v2", lambda: http_get(base + HEALTH_PATH) == (200, "ok\ndigits: version 2 AVAILABLE\n")
            )
            assert served(agent.config_path) == {MODEL: ([2], {STABLE: 2})}
            assert metrics(http_get(base + METRICS_PATH)[1])[last_ok] > during[last_ok]
        assert tfs.config_errors == []
