"""Issue 12, item 2: flipping a boolean or enum stack key never makes `pulumi up` replace a resource in a way that
conflicts.

A provider replaces a resource when an input it marks immutable (Terraform's ``ForceNew``, which the Pulumi bridge
turns into a replacement) changes. Pulumi replaces create-before-delete by default: the new resource must not collide
with the old one still in place. An autonamed resource gets a new name; but one that holds something unique besides
its name (a forwarding rule's address and port, a listener rule's priority on its listener, an explicit name) cannot
exist twice, and the replacement fails half-way (the issue's example: toggling ``enableHttps`` changed the port-80
forwarding rule's immutable ``description``; GCP refused a second rule on the same address and port). A protected
resource (``deletionProtection``) cannot be replaced at all.

So each stack is built twice, flipping one key both ways, and for every resource present in both graphs:
- no change to an input outside the table below (a type the table does not list must not change at all: add it);
- a change to an immutable input is allowed only where the replacement cannot collide: autonamed (or ``name_prefix``)
  and none of its unique keys unchanged, or registered ``delete_before_replace``; never on a front-end identity
  (addresses, forwarding rules, target proxies: they keep their immutable inputs) nor on a protected resource.
Inputs a registration lists in ``ignore_changes`` are not compared (the engine keeps the old value). File assets are
compared by content, as the engine does.

The immutable inputs per type (Pulumi wire names):
- GCP: generated from terraform-provider-google's schemas (``ForceNew: true``, top level and nested, at
  hashicorp/terraform-provider-google@e03b7622a26c, ``google/services/compute/resource_compute_*.go`` and
  ``google/services/storage/resource_storage_bucket.go``), mapped to the wire names of pulumi-gcp 10.2's input classes.
- AWS: terraform-provider-aws's schemas: ``internal/service/elbv2/listener.go`` (``load_balancer_arn``),
  ``listener_rule.go`` (``listener_arn``; ``priority`` is ``ForceNew: false``), ``target_group.go`` (name, prefix,
  port, protocol, protocol version, target type, VPC, address type); the auto scaling group, launch template (every
  other change is a new version), policy, lifecycle hook and security group rules by their documented names and
  parents.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pulumi
import pytest

from infra.config import load_config, read_stack_file
from infra.offline import PlannedResource, evaluate
from infra.stack import STACKS_DIR, build_stack
from tests.infra.test_traffic_order import CERTIFICATE, FILES, Graph, Registration, recording

# --- what each provider replaces ----------------------------------------------------------------------------------

# fmt: off
FORCE_NEW: Mapping[str, frozenset[str]] = {
    t: frozenset(fields)
    for t, fields in {
        "pulumi-python:dynamic/modelfleet:FleetHealthy": [],  # never replaced; min_healthy changes in place
        "gcp:compute/globalForwardingRule:GlobalForwardingRule": [
            "description", "ipAddress", "ipProtocol", "ipVersion", "metadataFilters", "name", "network",
            "networkTier", "noAutomateDnsZone", "portRange", "project", "serviceDirectoryRegistrations",
            "sourceIpRanges", "subnetwork",
        ],
        "gcp:compute/targetHttpProxy:TargetHttpProxy": [
            "description", "httpKeepAliveTimeoutSec", "name", "project", "proxyBind",
        ],
        "gcp:compute/targetHttpsProxy:TargetHttpsProxy": [
            "description", "httpKeepAliveTimeoutSec", "name", "project", "proxyBind", "tlsEarlyData",
        ],
        "gcp:compute/uRLMap:URLMap": ["name", "project"],
        "gcp:compute/backendService:BackendService": ["name", "params", "project"],
        "gcp:compute/managedSslCertificate:ManagedSslCertificate": [
            "description", "managed", "name", "project", "type",
        ],
        "gcp:compute/sSLPolicy:SSLPolicy": ["description", "name", "project"],
        "gcp:compute/globalAddress:GlobalAddress": [
            "address", "addressType", "description", "ipVersion", "name", "network", "prefixLength", "project",
            "purpose",
        ],
        "gcp:compute/firewall:Firewall": ["direction", "name", "params", "project"],
        "gcp:compute/healthCheck:HealthCheck": ["name", "project"],
        "gcp:compute/securityPolicy:SecurityPolicy": ["name", "project", "type"],
        "gcp:compute/instanceTemplate:InstanceTemplate": [
            "advancedMachineFeatures", "canIpForward", "confidentialInstanceConfig", "description", "disks",
            "guestAccelerators", "instanceDescription", "keyRevocationActionType", "machineType", "metadata",
            "metadataStartupScript", "minCpuPlatform", "name", "namePrefix", "networkInterfaces",
            "networkPerformanceConfig", "project", "region", "reservationAffinity", "resourceManagerTags",
            "resourcePolicies", "scheduling", "serviceAccount", "shieldedInstanceConfig", "tags",
            "workloadIdentityConfig",
        ],
        "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager": [
            "baseInstanceName", "description", "distributionPolicyZones", "name", "project", "region",
            "targetSizePolicies",
        ],
        "gcp:compute/regionAutoscaler:RegionAutoscaler": ["name", "project", "region"],
        "gcp:storage/bucket:Bucket": [
            "customPlacementConfig", "enableObjectRetention", "hierarchicalNamespace", "location", "name", "project",
        ],
        "aws:lb/listener:Listener": ["loadBalancerArn"],
        "aws:lb/listenerRule:ListenerRule": ["listenerArn"],
        "aws:lb/targetGroup:TargetGroup": [
            "name", "namePrefix", "port", "protocol", "protocolVersion", "targetType", "vpcId", "ipAddressType",
        ],
        "aws:autoscaling/group:Group": ["name", "namePrefix"],
        "aws:ec2/launchTemplate:LaunchTemplate": ["name", "namePrefix"],
        "aws:autoscaling/policy:Policy": ["name", "autoscalingGroupName"],
        "aws:autoscaling/lifecycleHook:LifecycleHook": ["name", "autoscalingGroupName"],
        "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": ["securityGroupId"],
        "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": ["securityGroupId"],
    }.items()
}
# fmt: on
# What a client connects to: these keep their immutable inputs through every flip (a replacement moves or drops the
# endpoint, and the rules cannot be created twice on one address and port).
FRONTEND_IDENTITY = frozenset(
    {
        "gcp:compute/globalForwardingRule:GlobalForwardingRule",
        "gcp:compute/globalAddress:GlobalAddress",
        "gcp:compute/address:Address",
        "gcp:compute/forwardingRule:ForwardingRule",
        "gcp:compute/targetHttpProxy:TargetHttpProxy",
        "gcp:compute/targetHttpsProxy:TargetHttpsProxy",
        "aws:lb/loadBalancer:LoadBalancer",
        "aws:lb/listener:Listener",
    }
)
# Besides the name, what is unique in the cloud: a replacement that keeps all of these collides with the old one.
SG_RULE_KEYS = ("securityGroupId", "ipProtocol", "fromPort", "toPort", "cidrIpv4", "referencedSecurityGroupId")
UNIQUE_KEYS: Mapping[str, tuple[str, ...]] = {
    "aws:lb/listenerRule:ListenerRule": ("listenerArn", "priority"),
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": SG_RULE_KEYS,
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": SG_RULE_KEYS,
}

# --- the flips: (name, values one way, values the other), on top of each cloud's staging file ------------------------

HTTPS: dict[str, dict[str, Any]] = {
    "gcp": {"enableHttps": True, "httpsDomains": ["models.example.com"]},
    "aws": {"enableHttps": True, "certificateArn": CERTIFICATE},
}
GPU_MACHINE = {"gcp": "n1-standard-8", "aws": "g5.xlarge"}


def flips(cloud: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    https = HTTPS[cloud]
    machine = GPU_MACHINE[cloud]
    return [
        ("enableHttps", {"enableHttps": False}, https),
        ("enableHttps without gRPC", {"enableGrpc": False}, {**https, "enableGrpc": False}),
        ("enableGrpc", {"enableGrpc": False}, {**https, "enableGrpc": True}),  # gRPC needs HTTPS on both clouds
        ("enableGrpc with HTTPS", {**https, "enableGrpc": False}, {**https, "enableGrpc": True}),
        ("canaryWeightPercent", {"canaryWeightPercent": 0}, {"canaryWeightPercent": 10}),
        ("canaryWeightPercent with HTTPS", {**https, "canaryWeightPercent": 0}, {**https, "canaryWeightPercent": 10}),
        ("canaryKeepWarm", {"canaryWeightPercent": 0}, {"canaryWeightPercent": 0, "canaryKeepWarm": True}),
        ("batchingEnabled", {"batchingEnabled": False}, {"batchingEnabled": True}),
        ("gpu", {"gpu": False, "machineType": machine}, {"gpu": True, "machineType": machine}),
        ("autoscalingMetric", {"autoscalingMetric": "cpu"}, {"autoscalingMetric": "requests"}),
        ("versionSwitch", {"versionSwitch": "overlap"}, {"versionSwitch": "drain"}),
    ] + (
        [("deletionProtection", {"deletionProtection": False}, {"deletionProtection": True})] if cloud == "gcp" else []
    )


FLIPS = [(cloud, *flip) for cloud in ("gcp", "aws") for flip in flips(cloud)]

_graphs: dict[tuple[str, str], Graph] = {}


def graph(cloud: str, overrides: dict[str, Any]) -> Graph:
    """The cloud's staging file with ``overrides``, through ``infra.stack.build_stack`` (protection included), once
    per session."""
    key = (cloud, repr(sorted(overrides.items())))
    if key not in _graphs:
        cfg = load_config({**read_stack_file(STACKS_DIR / FILES[cloud]), **overrides}, "flip")
        with recording() as registrations:
            plan = evaluate(cfg.stack, lambda: build_stack(cfg), cloud=cloud)
        _graphs[key] = Graph(cfg, plan, dict(registrations))
    return _graphs[key]


# --- comparing ------------------------------------------------------------------------------------------------------


def normal(value: Any) -> Any:
    """Inputs as the engine compares them: assets by their content."""
    if isinstance(value, pulumi.FileAsset):
        return ("file", hashlib.sha256(Path(str(value.path)).read_bytes()).hexdigest())
    if isinstance(value, pulumi.StringAsset):
        return ("text", value.text)
    if isinstance(value, Mapping):
        return {k: normal(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normal(v) for v in value]
    return value


def changed_inputs(old: PlannedResource, new: PlannedResource, ignored: tuple[str, ...]) -> set[str]:
    keys = (old.inputs.keys() | new.inputs.keys()) - set(ignored)
    return {k for k in keys if normal(old.inputs.get(k)) != normal(new.inputs.get(k))}


def replacement_problem(g_old: Graph, old: PlannedResource, g_new: Graph, new: PlannedResource) -> str | None:
    """Why replacing ``old`` by ``new`` (same URN) would fail or conflict, or None."""
    registration = g_new.registrations[new.urn]
    changed = changed_inputs(old, new, registration.ignore_changes)
    if not changed:
        return None
    immutable = FORCE_NEW.get(new.type)
    if immutable is None:
        return f"changes {sorted(changed)}, and its type's immutable inputs are not in FORCE_NEW: add them"
    forced = changed & immutable
    if not forced:
        return None  # an update in place
    if new.type in FRONTEND_IDENTITY:
        return f"a front end must keep its immutable inputs; changes {sorted(forced)}"
    if getattr(old, "protect", False):
        return f"protected, so it cannot be replaced; changes {sorted(forced)}"
    if registration.delete_before_replace:
        return None
    if "name" in new.inputs and "namePrefix" not in new.inputs:
        name = new.inputs["name"]
        return f"an explicit name, replaced create-before-delete: a second {name!r}; changes {sorted(forced)}"
    keys = UNIQUE_KEYS.get(new.type, ())
    if keys and all(normal(old.inputs.get(k)) == normal(new.inputs.get(k)) for k in keys):
        return f"replaced create-before-delete on the same {keys}: the two collide; changes {sorted(forced)}"
    return None


@pytest.mark.parametrize(("cloud", "flip", "one_way", "other_way"), FLIPS, ids=[f"{c}-{f}" for c, f, _, _ in FLIPS])
def test_flipping_a_key_replaces_nothing_in_a_way_that_conflicts(
    cloud: str, flip: str, one_way: dict[str, Any], other_way: dict[str, Any]
) -> None:
    a, b = graph(cloud, one_way), graph(cloud, other_way)
    assert a.plan.resources and b.plan.resources
    problems = []
    for g_old, g_new in ((a, b), (b, a)):
        old_by_urn = {r.urn: r for r in g_old.plan.resources}
        for new in g_new.plan.resources:
            old = old_by_urn.get(new.urn)
            if old is None or not new.custom:
                continue
            problem = replacement_problem(g_old, old, g_new, new)
            if problem:
                problems.append(f"{new.type} {new.name}: {problem}")
    assert problems == [], f"flipping {flip}:\n" + "\n".join(problems)


# --- the issue's case, and the checker checks -----------------------------------------------------------------------


def test_gcp_https_toggle_keeps_the_port_80_forwarding_rule() -> None:
    """The port-80 rule's description no longer says whether HTTPS is on; a stack created when it did keeps its old
    text (``ignore_changes``), and a replacement, should an immutable input ever change, deletes the old rule first."""
    off, on = graph("gcp", {"enableHttps": False}), graph("gcp", HTTPS["gcp"])
    for g in (off, on):
        [rule] = [
            r
            for r in g.plan.of_type("gcp:compute/globalForwardingRule:GlobalForwardingRule")
            if r.name.endswith("-lb-http")
        ]
        registration = g.registrations[rule.urn]
        assert rule.inputs["description"] == "modelfleet HTTP"
        assert "description" in registration.ignore_changes
        assert registration.delete_before_replace


def test_the_checker_catches_the_forwarding_rule_of_the_issue() -> None:
    """The check itself, on the defect as it was: a port-80 rule whose description followed HTTPS."""
    g = graph("gcp", {"enableHttps": False})
    [rule] = [
        r
        for r in g.plan.of_type("gcp:compute/globalForwardingRule:GlobalForwardingRule")
        if r.name.endswith("-lb-http")
    ]
    before = PlannedResource(
        rule.urn, rule.type, rule.name, {**rule.inputs, "description": "modelfleet HTTP"}, True, rule.parent
    )
    after = PlannedResource(
        rule.urn,
        rule.type,
        rule.name,
        {**rule.inputs, "description": "modelfleet HTTP (redirects to HTTPS)"},
        True,
        rule.parent,
    )
    unprotected = Graph(
        g.cfg, g.plan, {rule.urn: Registration(frozenset(), delete_before_replace=False, ignore_changes=())}
    )
    problem = replacement_problem(unprotected, before, unprotected, after)
    assert problem is not None and "front end" in problem and "description" in problem


def test_the_checker_knows_every_type_it_meets() -> None:
    """Every type of every graph above is in the table or never changes; a type with no entry and no change passes
    silently, so list what the flips touch."""
    touched = set()
    for cloud, _, one_way, other_way in FLIPS:
        a, b = graph(cloud, one_way), graph(cloud, other_way)
        old_by_urn = {r.urn: r for r in a.plan.resources}
        for new in b.plan.resources:
            old = old_by_urn.get(new.urn)
            if old is not None and new.custom and changed_inputs(old, new, b.registrations[new.urn].ignore_changes):
                touched.add(new.type)
    assert touched and touched <= set(FORCE_NEW), sorted(touched - set(FORCE_NEW))
