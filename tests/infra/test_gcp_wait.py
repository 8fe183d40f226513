"""``infra.gcp.wait.FleetHealthy``'s provider against a fake Compute API on 127.0.0.1 (no Google credentials).

The provider's ``create`` and ``update`` are called as the engine's dynamic-provider process would call them, with a
``requests.Session`` injected and the API base pointed at the fake, which answers
``regionInstanceGroupManagers.listManagedInstances`` from a script (one answer per request, the last one repeated) and
records every request. Its graph wiring (the URL map after the wait, the wait after the canary's autoscaler) is in
``test_traffic_order.py``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from infra.gcp.wait import (
    COMPUTE_API,
    FleetHealthyProvider,
    FleetNotHealthy,
    healthy_wait_seconds,
    is_healthy,
    must_wait,
)
from tests.infra.test_traffic_order import T_HEALTHY, graph

ROOT = Path(__file__).resolve().parents[2]
PROJECT, REGION, GROUP = "acme-ml-staging", "europe-west1", "mf-staging-canary-mig-0a1b2c"
PATH = f"/compute/v1/projects/{PROJECT}/regions/{REGION}/instanceGroupManagers/{GROUP}/listManagedInstances"
LIST = re.compile(
    rf"/compute/v1/projects/{PROJECT}/regions/{REGION}/instanceGroupManagers/[a-z0-9-]+/listManagedInstances"
)
CHECK = f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/global/healthChecks/mf-staging-canary-autoheal"


def vm(
    n: int, action: str = "NONE", status: str | None = "RUNNING", health: str | None = "HEALTHY", error: str = ""
) -> dict[str, Any]:
    """One managedInstances[] entry as the API returns it (a VM being created has no status and no health yet)."""
    instance: dict[str, Any] = {
        "instance": f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/zones/{REGION}-b/instances/vm-{n}",
        "id": str(1000 + n),
        "currentAction": action,
    }
    if status:
        instance["instanceStatus"] = status
    if health:
        instance["instanceHealth"] = [{"healthCheck": CHECK, "detailedHealthState": health}]
    if error:
        instance["lastAttempt"] = {"errors": {"errors": [{"code": "QUOTA_EXCEEDED", "message": error}]}}
    return instance


def page(*instances: dict[str, Any], token: str = "") -> tuple[int, dict[str, Any]]:
    return 200, {"managedInstances": list(instances), **({"nextPageToken": token} if token else {})}


@dataclass
class FakeCompute:
    """The script of answers (one per request; the last repeats) and the requests seen: (path, query)."""

    url: str
    answers: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    seen: list[tuple[str, dict[str, list[str]]]] = field(default_factory=list)

    def answer(self, path: str, query: str) -> tuple[int, dict[str, Any]]:
        self.seen.append((path, parse_qs(query)))
        if not LIST.fullmatch(path):
            return 404, {"error": {"code": 404, "message": f"not found: {path}"}}
        return self.answers[min(len(self.seen), len(self.answers)) - 1]


@pytest.fixture
def compute() -> Iterator[FakeCompute]:
    fake = FakeCompute(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            parts = urlsplit(self.path)
            status, body = fake.answer(parts.path, parts.query)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/compute/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


def provider(fake: FakeCompute) -> FleetHealthyProvider:
    return FleetHealthyProvider(api=fake.url, poll_seconds=0.01, session=requests.Session())


def props(min_healthy: int = 1, timeout_seconds: float = 10.0, group: str = GROUP) -> dict[str, Any]:
    """What the engine hands create/update: the resource's inputs (the serialized provider beside them)."""
    return {
        "project": PROJECT,
        "region": REGION,
        "group": group,
        "min_healthy": min_healthy,
        "timeout_seconds": timeout_seconds,
        "__provider": "<pickled>",
    }


# --- waiting ----------------------------------------------------------------------------------------------------


def start(p: FleetHealthyProvider, news: dict[str, Any]) -> Any:
    """The canary starts on an existing stack: an update from the recorded state of a stopped fleet."""
    return p.update("id", {**news, "min_healthy": 0, "healthy": None}, news)


def test_a_start_returns_once_the_group_has_a_healthy_instance(compute: FakeCompute) -> None:
    compute.answers = [
        page(vm(1, "CREATING", status=None, health=None)),
        page(vm(1, "VERIFYING", health="UNKNOWN")),  # booting: the autohealing check has no answer yet
        page(vm(1, "VERIFYING", health="HEALTHY")),  # healthy, but the group still verifies it
        page(vm(1)),
    ]
    result = start(provider(compute), props(min_healthy=1))
    assert len(compute.seen) == 4
    assert all(path == PATH for path, _ in compute.seen)
    assert result.outs == {
        "project": PROJECT,
        "region": REGION,
        "group": GROUP,
        "min_healthy": 1,
        "timeout_seconds": 10.0,
        "healthy": 1,
    }


def test_it_waits_for_min_healthy_instances_across_pages(compute: FakeCompute) -> None:
    """Two needed: one healthy is not enough; a group that pages its list is read to the end."""
    compute.answers = [
        page(vm(1), vm(2, "CREATING", status=None, health=None)),
        page(vm(1), token="page-2"),
        page(vm(2)),
    ]
    result = start(provider(compute), props(min_healthy=2))
    assert result.outs is not None and result.outs["healthy"] == 2
    assert [query for _, query in compute.seen] == [{}, {}, {"pageToken": ["page-2"]}]


@pytest.mark.parametrize(
    ("action", "status", "health", "healthy"),
    [
        ("NONE", "RUNNING", "HEALTHY", True),
        ("VERIFYING", "RUNNING", "HEALTHY", False),
        ("RECREATING", "RUNNING", "HEALTHY", False),
        ("NONE", "STOPPING", "HEALTHY", False),
        ("NONE", "RUNNING", "UNHEALTHY", False),
        ("NONE", "RUNNING", "TIMEOUT", False),
        ("NONE", "RUNNING", "DRAINING", False),
        ("NONE", "RUNNING", "UNKNOWN", False),
        ("NONE", "RUNNING", None, False),
        ("CREATING", None, None, False),
    ],
)
def test_what_counts_as_healthy(action: str, status: str | None, health: str | None, healthy: bool) -> None:
    assert is_healthy(vm(1, action, status, health)) is healthy


def test_server_errors_are_polled_again(compute: FakeCompute) -> None:
    compute.answers = [(503, {"error": {"code": 503, "message": "backend error"}}), (429, {}), page(vm(1))]
    result = start(provider(compute), props())
    assert result.outs is not None and result.outs["healthy"] == 1
    assert len(compute.seen) == 3


def test_a_timeout_names_the_group_and_what_it_saw(compute: FakeCompute) -> None:
    compute.answers = [
        page(
            vm(1),
            vm(2, "VERIFYING", health="TIMEOUT"),
            vm(
                3,
                "CREATING",
                status=None,
                health=None,
                error=f"Quota 'CPUS' exceeded.\n  Limit: 8.0 in region {REGION}",
            ),
        )
    ]
    with pytest.raises(FleetNotHealthy) as failed:
        start(provider(compute), props(min_healthy=3, timeout_seconds=0.2))
    assert str(failed.value) == (
        f"managed instance group {GROUP} (project {PROJECT}, region {REGION}) did not get 3 healthy instances "
        "(RUNNING, no current action, HEALTHY on its autohealing check) within 0.2 s; last seen: 1 healthy of 3 "
        "instances (1 CREATING/-/-, 1 NONE/RUNNING/HEALTHY, 1 VERIFYING/RUNNING/TIMEOUT); last creation error: "
        f"Quota 'CPUS' exceeded. Limit: 8.0 in region {REGION}. The URL map was not changed (no traffic moved); "
        "fix the fleet (its VMs' serial console, `gcloud compute instance-groups managed list-instances`) and run "
        "`pulumi up` again"
    )
    assert len(compute.seen) > 1  # it polled until the deadline


def test_a_timeout_on_api_errors_says_so(compute: FakeCompute) -> None:
    compute.answers = [(503, {"error": {"code": 503, "message": "The service is\n currently unavailable."}})]
    with pytest.raises(FleetNotHealthy, match=r"last seen: the Compute API answered 503: The service is currently "):
        start(provider(compute), props(timeout_seconds=0.1))


def test_a_refused_request_fails_at_once_on_one_line(compute: FakeCompute) -> None:
    message = (
        "Required 'compute.instanceGroupManagers.get' permission for "
        f"'projects/{PROJECT}/regions/{REGION}/instanceGroupManagers/{GROUP}'"
    )
    compute.answers = [(403, {"error": {"code": 403, "message": message, "errors": [{"reason": "forbidden"}]}})]
    with pytest.raises(FleetNotHealthy) as failed:
        start(provider(compute), props())
    assert str(failed.value) == (
        f"cannot list the instances of managed instance group {GROUP} (project {PROJECT}, region {REGION}): the "
        f"Compute API answered 403: {message} (the deploying identity needs compute.instanceGroupManagers.get on it, "
        "e.g. roles/compute.viewer)"
    )
    assert "\n" not in str(failed.value)
    assert len(compute.seen) == 1  # no retry


def test_no_credentials_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without an injected session the provider uses Application Default Credentials; none here."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(FleetNotHealthy) as failed:
        start(FleetHealthyProvider(api="http://127.0.0.1:9/compute/v1"), props())
    text = str(failed.value)
    assert text.startswith(
        f"cannot check managed instance group {GROUP} (project {PROJECT}, region {REGION}): no usable Application "
        "Default Credentials (`gcloud auth application-default login`, or GOOGLE_APPLICATION_CREDENTIALS): "
    )
    assert "missing.json" in text and "\n" not in text


# --- when it waits ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "waits"),
    [
        (props(min_healthy=0), props(min_healthy=1), True),  # the canary starts
        (props(min_healthy=1), props(min_healthy=3), True),  # its minimum grows
        (props(min_healthy=1), props(min_healthy=1, group="mf-other-mig"), True),  # another group
        (props(min_healthy=1), props(min_healthy=1), False),  # runs on (a weight change only)
        (props(min_healthy=1), props(min_healthy=1, timeout_seconds=99.0), False),
        (props(min_healthy=3), props(min_healthy=1), False),  # shrinks
        (props(min_healthy=1), props(min_healthy=0), False),  # stops
        (props(min_healthy=0), props(min_healthy=0), False),
    ],
)
def test_update_waits_only_when_the_canary_starts_or_grows(
    compute: FakeCompute, before: dict[str, Any], after: dict[str, Any], waits: bool
) -> None:
    compute.answers = [page(vm(1), vm(2), vm(3))]
    p = provider(compute)
    olds = {**before, "healthy": None}  # what the state recorded: the outputs of the last create/update
    assert p.diff("id", olds, after).changes is (before != after)
    assert not p.diff("id", olds, after).replaces
    result = p.update("id", olds, after)
    assert [path.split("/")[-2] for path, _ in compute.seen[:1]] == ([after["group"]] if waits else [])
    assert result.outs is not None
    assert result.outs["min_healthy"] == after["min_healthy"]  # recorded: a stop's 0 makes the next start wait
    assert result.outs["healthy"] == (3 if waits else None)


def test_a_create_never_waits(compute: FakeCompute) -> None:
    """A new stack's store is created by the same `pulumi up`: no model can be served yet, nothing would become
    healthy, and no client is served either. Waiting there would fail every first `pulumi up` with a canary."""
    for need in (0, 2):
        result = provider(compute).create(props(min_healthy=need))
        assert compute.seen == []
        assert result.outs is not None and result.outs["healthy"] is None and result.outs["min_healthy"] == need
    assert not must_wait(None, props(min_healthy=1))
    assert provider(compute).create(props()).id == f"{PROJECT}/{REGION}/{GROUP}"


def test_the_diff_ignores_the_serialized_provider_and_the_observation() -> None:
    p = FleetHealthyProvider()
    olds = {**props(), "__provider": "old", "healthy": 2}
    assert p.diff("id", olds, {**props(), "__provider": "new"}).changes is False


# --- what the stack registers, and what the engine's process unpickles ------------------------------------------


def test_the_stack_registers_a_provider_that_unpickles_alone() -> None:
    """The engine runs dynamic providers in its own process (``python -m pulumi.dynamic``, in the project directory):
    the pickled provider (by reference to ``infra.gcp.wait``) must load there, importing nothing else of ``infra``
    and no cloud SDK, with the real API and no session."""
    g = graph("gcp", canaryWeightPercent=10)
    [healthy] = g.plan.of_type(T_HEALTHY)
    pickled = healthy.inputs["__provider"]
    assert isinstance(pickled, str)  # not a secret: it holds none
    assert healthy.inputs["timeout_seconds"] == healthy_wait_seconds(g.cfg.health_check_initial_delay_seconds)
    code = (
        "import base64, json, sys, dill\n"
        "p = dill.loads(base64.b64decode(sys.stdin.read()))\n"
        "print(json.dumps([type(p).__module__, type(p).__name__, p.api, p.session, sorted(\n"
        "    m for m in sys.modules if m.startswith(('infra', 'pulumi_', 'google.auth', 'google.cloud'))\n"
        ")]))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], input=pickled, capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert json.loads(run.stdout) == [
        "infra.gcp.wait",
        "FleetHealthyProvider",
        COMPUTE_API,
        None,
        ["infra", "infra.gcp", "infra.gcp.wait"],
    ]
