"""infra/templates/livez_report.py, the AWS VM's liveness report to its auto scaling group: the calls it makes are
checked against the real autoscaling API model (botocore's Stubber refuses unknown operations and parameters), and
its probe against a real HTTP endpoint."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from infra import bootstrap
from tests.support.servers import free_port

INSTANCE, GROUP = "i-0123456789abcdef0", "mf-aws-prod-stable-asg-1a2b3c4"


def load_report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("livez_report", bootstrap.TEMPLATES / "livez_report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = load_report()


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Stubber]]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    real = boto3.client("autoscaling", region_name="eu-west-1")
    with Stubber(real) as stub:
        yield real, stub
        stub.assert_no_pending_responses()


def expect_ready(stub: Stubber, error: str | None = None) -> None:
    stub.add_response(
        "describe_auto_scaling_instances",
        {
            "AutoScalingInstances": [
                {
                    "InstanceId": INSTANCE,
                    "AutoScalingGroupName": GROUP,
                    "AvailabilityZone": "eu-west-1a",
                    "LifecycleState": "Pending:Wait",
                    "HealthStatus": "HEALTHY",
                    "ProtectedFromScaleIn": False,
                }
            ]
        },
        {"InstanceIds": [INSTANCE]},
    )
    params = {
        "LifecycleHookName": bootstrap.READY_HOOK,
        "AutoScalingGroupName": GROUP,
        "LifecycleActionResult": "CONTINUE",
        "InstanceId": INSTANCE,
    }
    if error is None:
        stub.add_response("complete_lifecycle_action", {}, params)
    else:
        stub.add_client_error("complete_lifecycle_action", error, "no", expected_params=params)


def test_a_vm_goes_in_service_when_first_live_and_is_reported_after_a_minute_of_failures(
    client: tuple[Any, Stubber],
) -> None:
    real, stub = client
    reporter = report.Reporter(real, INSTANCE, bootstrap.READY_HOOK, bootstrap.LIVENESS_FAILURES)
    for _ in range(10):  # not live yet (booting): nothing is called, the hook's timeout decides
        reporter.step(False)
    expect_ready(stub)
    reporter.step(True)
    assert reporter.ready

    for _ in range(bootstrap.LIVENESS_FAILURES - 1):  # a short outage (an agent restart) is not reported
        reporter.step(False)
    reporter.step(True)
    for _ in range(bootstrap.LIVENESS_FAILURES - 1):
        reporter.step(False)
    stub.add_response(
        "set_instance_health",
        {},
        {"InstanceId": INSTANCE, "HealthStatus": "Unhealthy", "ShouldRespectGracePeriod": True},
    )
    reporter.step(False)
    assert reporter.failed == 0  # reported again only after another full minute


def test_a_vm_without_a_pending_hook_is_simply_in_service(client: tuple[Any, Stubber]) -> None:
    """After a reboot, or for the group's first VMs (launched before the hook existed), AWS has no action pending."""
    real, stub = client
    reporter = report.Reporter(real, INSTANCE, bootstrap.READY_HOOK, 6)
    expect_ready(stub, error="ValidationError")
    reporter.step(True)
    assert reporter.ready


def test_an_api_failure_is_retried_at_the_next_probe(client: tuple[Any, Stubber]) -> None:
    real, stub = client
    reporter = report.Reporter(real, INSTANCE, bootstrap.READY_HOOK, 6)
    expect_ready(stub, error="AccessDenied")
    with pytest.raises(real.exceptions.ClientError):
        reporter.step(True)  # main() logs it and probes again
    assert not reporter.ready
    expect_ready(stub)
    reporter.step(True)
    assert reporter.ready


SEEN: list[tuple[str, str | None]] = []


@pytest.fixture
def endpoint() -> Iterator[tuple[str, list[int]]]:
    codes = [200]

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.send_response(codes[0])
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def do_GET(self) -> None:
            SEEN.append(("GET", self.headers.get("X-aws-ec2-metadata-token")))
            self._answer()

        def do_PUT(self) -> None:
            SEEN.append(("PUT", self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")))
            self._answer()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/livez", codes
    finally:
        server.shutdown()
        server.server_close()


def test_the_probe_is_live_only_on_200(endpoint: tuple[str, list[int]]) -> None:
    url, codes = endpoint
    assert report.probe(url)
    codes[0] = 503
    assert not report.probe(url)
    assert not report.probe(f"http://127.0.0.1:{free_port()}/livez")  # the agent is down


def test_imds_calls_are_the_imdsv2_token_dance(endpoint: tuple[str, list[int]]) -> None:
    url, _ = endpoint
    SEEN.clear()
    token = report.get(url, "PUT", **{"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    assert report.get(url, **{"X-aws-ec2-metadata-token": token}) == "ok"
    assert SEEN == [("PUT", "60"), ("GET", "ok")]
