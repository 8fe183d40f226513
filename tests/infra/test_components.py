"""What both clouds' components share (infra/components.py), and the pure decisions beside the components: weights,
capacity, autoscaling targets, disk sizes, cooldowns, store URIs, and names that fit each cloud's limits."""

from __future__ import annotations

import re
from typing import Any

import pytest

from infra import components, naming
from infra.aws.load_balancer import NAME_LIMIT, LoadBalancerArgs
from infra.config import ConfigError, FleetSize, load_config, read_stack_file
from infra.gcp import fleet as gcp_fleet
from infra.gcp.load_balancer import grpc_autoscaling, grpc_exposed, weighted_split
from infra.stack import STACKS_DIR
from model_export.constants import CANARY, ROLES, STABLE

STACKS = ("staging", "aws-prod", "Team_ML.Serving-Europe-Production-Blue", "x" * 200, "")
AWS_LIMITED_PARTS = (*(f"{role}-{protocol}" for role in ROLES for protocol in ("rest", "grpc")), "alb")


def stack_config(**overrides: Any) -> Any:
    return load_config({**read_stack_file(STACKS_DIR / "Pulumi.staging.yaml"), **overrides}, "test")


# --- weights --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("canary", "weights", "split"),
    [
        (0, {STABLE: 100, CANARY: 0}, [(STABLE, 100)]),
        (1, {STABLE: 99, CANARY: 1}, [(STABLE, 99), (CANARY, 1)]),
        (35, {STABLE: 65, CANARY: 35}, [(STABLE, 65), (CANARY, 35)]),
        (100, {STABLE: 0, CANARY: 100}, [(CANARY, 100)]),
    ],
)
def test_traffic_weights(canary: int, weights: dict[str, int], split: list[tuple[str, int]]) -> None:
    assert components.traffic_weights(canary) == weights
    assert weighted_split(canary) == split  # GCP's URL map: no zero weights


@pytest.mark.parametrize("canary", [-1, 101, 1000])
def test_weights_outside_the_config_range_are_refused_by_the_config_rule(canary: int) -> None:
    with pytest.raises(ConfigError, match=r"modelfleet:canaryWeightPercent = .* must be between 0 and 100"):
        components.traffic_weights(canary)
    with pytest.raises(ConfigError, match="canaryWeightPercent"):
        LoadBalancerArgs(vpc_id="vpc-1", subnet_ids=[], allowed_source_cidrs=(), canary_weight_percent=canary)


# --- fleets ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("running", "bounds"),
    [(True, (2, 6)), (False, (0, 0))],
)
def test_fleet_capacity_bounds(running: bool, bounds: tuple[int, int]) -> None:
    assert components.FleetCapacity(FleetSize(2, 6), running).bounds == bounds


@pytest.mark.parametrize(
    ("weight", "keep_warm", "canary_runs"),
    [(0, False, False), (0, True, True), (10, False, True), (100, False, True)],
)
def test_fleet_capacity_from_config(weight: int, keep_warm: bool, canary_runs: bool) -> None:
    cfg = stack_config(canaryWeightPercent=weight, canaryKeepWarm=keep_warm)
    stable, canary = components.fleet_capacity(cfg, STABLE), components.fleet_capacity(cfg, CANARY)
    assert (stable.size, stable.running) == (cfg.stable, True)
    assert (canary.size, canary.running) == (cfg.canary, canary_runs)


@pytest.mark.parametrize("metric", ["cpu", "requests"])
def test_autoscaling_target_from_config(metric: str) -> None:
    cfg = stack_config(autoscalingMetric=metric, targetCpuPercent=70, targetRequestsPerSecond=80)
    assert components.autoscaling_target(cfg) == components.AutoscalingTarget(metric, 70, 80)  # type: ignore[arg-type]


def test_autoscaling_target_refuses_an_unknown_metric() -> None:
    with pytest.raises(ValueError, match="autoscaling metric must be one of cpu, requests, got 'memory'"):
        components.AutoscalingTarget("memory")  # type: ignore[arg-type]


@pytest.mark.parametrize(("delay", "cooldown"), [(0, 60), (59, 60), (60, 60), (300, 300)])
def test_gcp_autoscaler_cooldown(delay: int, cooldown: int) -> None:
    assert gcp_fleet.cooldown_seconds(delay) == cooldown


@pytest.mark.parametrize(("gpu", "gib"), [(False, 50), (True, 100)])
def test_gcp_root_volume(gpu: bool, gib: int) -> None:
    assert gcp_fleet.ROOT_VOLUME_GIB[gpu] == gib


def test_user_data_is_the_bootstrap_cloud_config() -> None:
    from infra.bootstrap import AgentWheel

    cfg = stack_config()
    store = "gs://acme-models/models"
    bundle = "modelfleet-0.1.0-agent-cp312-manylinux_2_17_x86_64.zip"  # infra.agent_package.bundle_name
    wheel = AgentWheel(f"{store}/_agent/{'ab' * 32}/{bundle}", "ab" * 32)
    text = components.fleet_user_data(cfg, CANARY, store, wheel)
    assert text.startswith("#cloud-config\n")
    assert "--role canary" in text and f"--store {store}" in text and wheel.uri in text


# --- store URIs and addresses ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "bucket", "prefix", "uri"),
    [("gs", "b", "models", "gs://b/models"), ("s3", "b", "", "s3://b"), ("s3", "b", "a/b", "s3://b/a/b")],
)
def test_store_uri(scheme: str, bucket: str, prefix: str, uri: str) -> None:
    assert components.store_uri(scheme, bucket, prefix) == uri


# --- traffic order and gRPC ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weight", "keep_warm", "order"),
    [
        (0, False, "traffic-first"),
        (0, True, "capacity-first"),
        (10, False, "capacity-first"),
        (100, True, "capacity-first"),
    ],
)
def test_canary_traffic_order(weight: int, keep_warm: bool, order: str) -> None:
    """A canary fleet that runs gets its VMs before its traffic; one that stops loses its traffic first."""
    cfg = stack_config(canaryWeightPercent=weight, canaryKeepWarm=keep_warm)
    assert components.canary_traffic_order(cfg.canary_fleet_runs) == order


@pytest.mark.parametrize(("grpc", "https", "exposed"), [(True, True, True), (True, False, False), (False, True, False)])
def test_gcp_grpc_is_exposed_with_https_only(grpc: bool, https: bool, exposed: bool) -> None:
    assert grpc_exposed(grpc, https) is exposed


def test_gcp_grpc_turns_request_autoscaling_into_cpu() -> None:
    """A group in two backend services (REST and gRPC) cannot scale on load-balancer utilisation."""
    requests = components.AutoscalingTarget("requests", target_cpu_percent=70, target_requests_per_second=80)
    assert grpc_autoscaling(requests, exposed=True) == components.AutoscalingTarget("cpu", 70, 80)
    assert grpc_autoscaling(requests, exposed=False) == requests
    cpu = components.AutoscalingTarget("cpu", 55)
    assert grpc_autoscaling(cpu, exposed=True) == cpu


# --- names that fit -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_aws_load_balancer_children_fit_the_name_limit(stack: str) -> None:
    lb = naming.component_name(stack, naming.LOAD_BALANCER)
    names = {naming.child_name(lb, part, NAME_LIMIT) for part in AWS_LIMITED_PARTS}
    assert len(names) == len(AWS_LIMITED_PARTS)  # shortening never makes two children collide
    for name in names:
        assert len(name) + naming.AUTONAME_SUFFIX <= NAME_LIMIT, name


@pytest.mark.parametrize("stack", STACKS)
def test_gcp_longest_names_are_valid(stack: str) -> None:
    for part in ("canary-grpc", "https-proxy", "allow-lb", "redirect"):
        child = naming.child_name(naming.component_name(stack, naming.LOAD_BALANCER), part)
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", child)
        assert len(child) + naming.AUTONAME_SUFFIX <= 63


@pytest.mark.parametrize(
    ("stack", "slug", "bucket"),
    [
        ("staging", "staging", "proj-123-modelfleet-staging"),
        ("My Stack_Name!!", "my-stack-name", "proj-123-modelfleet-my-stack-name"),
        ("prod-eu-west-1-very-long-name", "prod-eu-west-1-878e", "proj-123-modelfleet-prod-eu-west-1-very-long-name"),
        ("--", "stack", "proj-123-modelfleet-stack"),
    ],
)
def test_stack_slugs_and_bucket_names_never_change(stack: str, slug: str, bucket: str) -> None:
    """Pinned to what earlier releases computed: the slug is in GCP service-account ids and the default bucket name,
    so a change would create new accounts and a new, empty model store on the next `pulumi up`."""
    from infra.gcp.stack import default_bucket_name

    assert naming.slug(stack) == slug
    assert default_bucket_name("proj-123", stack) == bucket
