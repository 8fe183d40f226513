"""Issue 12, item 1: a canary's weight reaches it only once it has VMs in service, and its VMs go only after its weight
is 0 (``infra.components.canary_traffic_order``).

One ``pulumi up`` updates a resource after the resources it depends on: the SDK registers a resource only once its
dependencies' registrations have returned, and the engine answers a registration once it has created or updated the
resource. So the order is the program's graph, which the mock monitor sees: each registration carries its
dependencies (``depends_on`` and the resources behind its Output inputs), recorded here by wrapping the offline
monitor's ``RegisterResource``.

- AWS, canary starting (weight > 0 or kept warm): the listener that carries the weights, the gRPC rule and the label
  rules depend on the canary's auto scaling group, whose update (its minimum goes from 0 to canaryMinReplicas) returns
  once that many VMs are in service, i.e. ready once (the ready hook), within ``waitForCapacityTimeout``.
- AWS, canary stopping: the group depends on those routes, so the weights are 0 before its minimum is.
- GCP, canary stopping: the canary's autoscaler (min = max = 0) depends on the URL map, and nothing holds the URL map.
- GCP, canary starting: nothing in the Google provider waits for the group's VMs (the MIG's ``wait_for_instances``
  runs when the MIG changes, and the size is the autoscaler's, which must come after the MIG), so the stack's own
  waiter does: ``infra.gcp.wait.FleetHealthy`` (a dynamic resource) depends on the canary's autoscaler and waits for
  canaryMinReplicas healthy VMs; the URL map depends on it. Its polling is tested in ``test_gcp_wait.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from unittest import mock

import pytest

import infra.offline
from infra.aws import stack as aws_stack
from infra.config import ConfigError, StackConfig, load_config, read_stack_file
from infra.gcp import stack as gcp_stack
from infra.offline import Plan, PlannedResource, evaluate
from infra.stack import STACKS_DIR

CERTIFICATE = "arn:aws:acm:eu-west-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"
FILES = {"gcp": "Pulumi.staging.yaml", "aws": "Pulumi.aws-staging.yaml"}
BUILDERS = {"gcp": gcp_stack.build, "aws": aws_stack.build}
T_ASG = "aws:autoscaling/group:Group"
T_LISTENER = "aws:lb/listener:Listener"
T_RULE = "aws:lb/listenerRule:ListenerRule"
T_AUTOSCALER = "gcp:compute/regionAutoscaler:RegionAutoscaler"
T_URLMAP = "gcp:compute/uRLMap:URLMap"
T_MIG = "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager"
T_HEALTHY = "pulumi-python:dynamic/modelfleet:FleetHealthy"  # infra.gcp.wait.FleetHealthy


# --- the graph with each registration's options --------------------------------------------------------------------


@dataclass(frozen=True)
class Registration:
    """What a registration asks of the engine beyond its inputs."""

    dependencies: frozenset[str]  # URNs: depends_on and the resources behind Output inputs
    delete_before_replace: bool
    ignore_changes: tuple[str, ...]


@contextlib.contextmanager
def recording() -> Iterator[dict[str, Registration]]:
    """While active, every registration the offline monitor receives, by URN."""
    seen: dict[str, Registration] = {}
    register = infra.offline.RecordingMonitor.RegisterResource

    def record(self: infra.offline.RecordingMonitor, request: Any) -> Any:
        response = register(self, request)
        urns = set(request.dependencies) | {u for deps in request.propertyDependencies.values() for u in deps.urns}
        seen[response.urn] = Registration(
            frozenset(urns), bool(request.deleteBeforeReplace), tuple(request.ignoreChanges)
        )
        return response

    with mock.patch.object(infra.offline.RecordingMonitor, "RegisterResource", record):
        yield seen


@dataclass(frozen=True)
class Graph:
    cfg: StackConfig
    plan: Plan
    registrations: Mapping[str, Registration]

    def one(self, type_: str, suffix: str) -> PlannedResource:
        found = [r for r in self.plan.of_type(type_) if r.name.endswith(suffix)]
        assert len(found) == 1, (type_, suffix, [r.name for r in self.plan.of_type(type_)])
        return found[0]

    def depends_on(self, resource: PlannedResource, other: PlannedResource) -> bool:
        """Directly: the engine updates ``other`` before ``resource`` (Pulumi orders by these edges)."""
        return other.urn in self.registrations[resource.urn].dependencies


def graph(cloud: str, **overrides: Any) -> Graph:
    """A stack file's values with ``overrides`` (stack "order"), planned offline with every registration's options."""
    cfg = load_config({**read_stack_file(STACKS_DIR / FILES[cloud]), **overrides}, "order")
    with recording() as registrations:
        plan = evaluate(cfg.stack, lambda: BUILDERS[cloud](cfg), cloud=cloud)
    return Graph(cfg, plan, dict(registrations))


# Configurations by what the canary fleet does (weights and label routes are what carries its traffic).
STARTING = {"running": {"canaryWeightPercent": 10}, "kept-warm": {"canaryWeightPercent": 0, "canaryKeepWarm": True}}
STOPPING = {"canaryWeightPercent": 0, "canaryKeepWarm": False}
AWS_GRPC = {"enableHttps": True, "certificateArn": CERTIFICATE, "enableGrpc": True}
GCP_GRPC = {"enableHttps": True, "httpsDomains": ["models.example.com"], "enableGrpc": True}


# --- AWS ------------------------------------------------------------------------------------------------------------


def aws_carriers(g: Graph) -> list[PlannedResource]:
    """What sends requests to the canary's target groups: the serving listener's weighted forward, the gRPC rule's,
    and (while the canary runs) the label rules."""
    serving = g.one(T_LISTENER, "-lb-https" if g.cfg.enable_https else "-lb-http")
    rules = [r for r in g.plan.of_type(T_RULE) if r.name.endswith(("-lb-grpc", "-lb-label-stable", "-lb-label-canary"))]
    return [serving, *rules]


@pytest.mark.parametrize("https", [False, True], ids=["http", "https-grpc"])
@pytest.mark.parametrize("starting", list(STARTING), ids=list(STARTING))
def test_aws_a_starting_canary_gets_traffic_only_after_its_vms_are_in_service(starting: str, https: bool) -> None:
    g = graph("aws", **STARTING[starting], **(AWS_GRPC if https else {}))
    assert g.cfg.canary_fleet_runs
    group = g.one(T_ASG, "-canary-asg")
    carriers = aws_carriers(g)
    assert len(carriers) == 1 + (1 if https else 0) + 2  # listener, gRPC rule, two label rules
    for carrier in carriers:
        assert g.depends_on(carrier, group), carrier.name
        assert not g.depends_on(group, carrier), carrier.name
    # What makes the group's update wait: its minimum rises from 0 (a change of the minimum waits for that many VMs in
    # service; in service = ready once, through the launch hook), within a timeout that covers one whole boot.
    assert group.inputs["minSize"] == g.cfg.canary.min_replicas >= 1
    assert int(group.inputs["waitForCapacityTimeout"].removesuffix("s")) > g.cfg.health_check_initial_delay_seconds
    # The stable fleet is never held back, and never holds the routes back.
    stable = g.one(T_ASG, "-stable-asg")
    assert not any(g.depends_on(c, stable) or g.depends_on(stable, c) for c in carriers)


@pytest.mark.parametrize("https", [False, True], ids=["http", "https-grpc"])
def test_aws_a_stopping_canary_loses_its_weight_before_its_vms(https: bool) -> None:
    g = graph("aws", **STOPPING, **(AWS_GRPC if https else {}))
    assert not g.cfg.canary_fleet_runs
    group = g.one(T_ASG, "-canary-asg")
    assert (group.inputs["minSize"], group.inputs["maxSize"], group.inputs["desiredCapacity"]) == (0, 0, 0)
    carriers = aws_carriers(g)
    assert len(carriers) == 1 + (1 if https else 0)  # no label rules without a canary fleet
    for carrier in carriers:
        assert g.depends_on(group, carrier), carrier.name
        assert not g.depends_on(carrier, group), carrier.name


# --- GCP ------------------------------------------------------------------------------------------------------------


def gcp_parts(g: Graph) -> tuple[PlannedResource, PlannedResource, PlannedResource]:
    """The canary's autoscaler, its health wait, and the serving URL map (the one map that sends requests to the
    fleets, by weight, label or gRPC route, over HTTP and HTTPS alike; the HTTPS redirect map reaches no fleet)."""
    return g.one(T_AUTOSCALER, "-canary-autoscaler"), g.one(T_HEALTHY, "-canary-healthy"), g.one(T_URLMAP, "-lb-urlmap")


@pytest.mark.parametrize("https", [False, True], ids=["http", "https-grpc"])
@pytest.mark.parametrize("starting", list(STARTING), ids=list(STARTING))
def test_gcp_a_starting_canary_gets_traffic_only_after_its_vms_are_healthy(starting: str, https: bool) -> None:
    g = graph("gcp", **STARTING[starting], **(GCP_GRPC if https else {}))
    assert g.cfg.canary_fleet_runs
    autoscaler, healthy, urlmap = gcp_parts(g)
    # autoscaler (minimum 0 -> canaryMinReplicas) -> the wait for that many healthy VMs -> the URL map
    assert g.depends_on(healthy, autoscaler)
    assert g.depends_on(urlmap, healthy)
    assert not g.depends_on(autoscaler, urlmap)
    assert autoscaler.inputs["autoscalingPolicy"]["minReplicas"] == g.cfg.canary.min_replicas >= 1
    # What it waits for: the canary's own group (its name, in the stack's project and region), that many VMs, for
    # longer than one VM's boot grace.
    group = g.one(T_MIG, "-canary-mig")
    assert healthy.parent == group.parent  # a child of the canary's ServingFleet
    assert healthy.inputs["group"] == group.state["name"]
    assert (healthy.inputs["project"], healthy.inputs["region"]) == (g.cfg.gcp_project, g.cfg.region)
    assert healthy.inputs["min_healthy"] == g.cfg.canary.min_replicas
    assert healthy.inputs["timeout_seconds"] > g.cfg.health_check_initial_delay_seconds
    # The stable fleet is never held back, and never holds the URL map back.
    stable = g.one(T_AUTOSCALER, "-stable-autoscaler")
    assert not any(g.depends_on(a, b) for a, b in ((urlmap, stable), (stable, urlmap), (stable, healthy)))
    if https:  # the HTTPS proxy serves that same URL map
        proxy = g.one("gcp:compute/targetHttpsProxy:TargetHttpsProxy", "-lb-https-proxy")
        assert proxy.inputs["urlMap"] == urlmap.state["selfLink"]


@pytest.mark.parametrize("https", [False, True], ids=["http", "https-grpc"])
def test_gcp_a_stopping_canary_scales_to_zero_after_the_url_map_dropped_it(https: bool) -> None:
    g = graph("gcp", **STOPPING, **(GCP_GRPC if https else {}))
    assert not g.cfg.canary_fleet_runs
    autoscaler, healthy, urlmap = gcp_parts(g)
    policy = autoscaler.inputs["autoscalingPolicy"]
    assert (policy["minReplicas"], policy["maxReplicas"]) == (0, 0)
    assert g.depends_on(autoscaler, urlmap)
    assert not g.depends_on(urlmap, autoscaler)
    # The wait stays in the graph with nothing to wait for (min_healthy 0: its update records that, so the next start
    # waits again), and the URL map does not wait for it.
    assert healthy.inputs["min_healthy"] == 0
    assert g.depends_on(healthy, autoscaler)
    assert not g.depends_on(urlmap, healthy)
    # The stable fleet's autoscaler does not wait for the load balancer.
    assert not g.depends_on(g.one(T_AUTOSCALER, "-stable-autoscaler"), urlmap)


# --- the rule across keys in infra/config.py --------------------------------------------------------------------


def cfg_of(cloud: str, **overrides: Any) -> StackConfig:
    return load_config({**read_stack_file(STACKS_DIR / FILES[cloud]), **overrides}, "order")


@pytest.mark.parametrize("cloud", ["gcp", "aws"])
def test_a_running_canary_fleet_needs_a_vm(cloud: str) -> None:
    """With canaryMinReplicas 0 a running canary has no VM to wait for (and CPU target tracking never scales a group
    out of zero): its weight would go to nobody. Checked in load_config's rules across keys."""
    with pytest.raises(ConfigError) as refused:
        cfg_of(cloud, canaryMinReplicas=0, canaryWeightPercent=10)
    assert str(refused.value) == (
        "modelfleet:canaryMinReplicas = 0 is invalid; the canary fleet needs at least 1 VM while it runs "
        "(canaryWeightPercent > 0 or canaryKeepWarm)"
    )
    assert cfg_of(cloud, canaryMinReplicas=0, canaryWeightPercent=0).canary.min_replicas == 0  # not running: fine
