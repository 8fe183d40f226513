"""The GCP stack: identities, model store, network, the stable and canary fleets, and the load balancers.

``build(cfg)`` creates every resource through one explicit ``gcp.Provider`` (project and region from the stack
config; no ambient ``gcp:`` settings are read) and returns the stack outputs. Design notes: docs/gcp.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_gcp as gcp

from infra import agent_package, naming
from infra.agent_package import AgentWheelFile, agent_wheel_uri
from infra.bootstrap import AgentWheel, drain_wait_seconds, fleet_bootstrap_args, parse_image, render_user_data
from infra.components import AutoscalingTarget, autoscaling_target, canary_traffic_order, fleet_capacity, store_uri
from infra.config import PROJECT, ConfigError, StackConfig
from infra.gcp.fleet import ServingFleet, ServingFleetArgs
from infra.gcp.iam import ServiceAccounts, ServiceAccountsArgs
from infra.gcp.load_balancer import SERVING_CHECK, LoadBalancer, LoadBalancerArgs, grpc_autoscaling, grpc_exposed
from infra.gcp.network import Network, NetworkArgs
from infra.gcp.registry import ImageRegistry, ImageRegistryArgs
from infra.gcp.store import ModelStore, ModelStoreArgs
from infra.gcp.wait import FleetHealthy, FleetHealthyArgs, healthy_wait_seconds
from model_export.constants import CANARY, ROLES, STABLE

# Machine families whose GPUs come with the machine type (no guest_accelerators); N1 takes attachable GPUs.
ATTACHED_GPU_FAMILIES = ("a2", "a3", "a4", "g2", "g4")
ATTACHABLE_GPU_FAMILIES = ("n1",)


def default_bucket_name(project: str, stack: str) -> str:
    """``<project>-modelfleet-<stack>``: globally unique as long as project ids are (3-63 characters)."""
    return f"{project}-{PROJECT}-{naming.slug(stack, 63 - len(project) - len(PROJECT) - 2)}"


def gpu_accelerator(cfg: StackConfig) -> str | None:
    """The accelerator type to attach, or None (no GPU, or one that comes with the machine type)."""
    if not cfg.gpu:
        return None
    family = cfg.machine_type.split("-", 1)[0]
    if family in ATTACHED_GPU_FAMILIES:
        return None
    if family in ATTACHABLE_GPU_FAMILIES:
        return cfg.gpu_type
    raise ConfigError(
        f"{PROJECT}:machineType = {cfg.machine_type!r} cannot take a GPU ({PROJECT}:gpu is true); use an "
        f"n1-* type with {PROJECT}:gpuType (e.g. n1-standard-8 + nvidia-tesla-t4) or a GPU machine type such as "
        "g2-standard-8"
    )


def build(cfg: StackConfig) -> dict[str, Any]:
    if cfg.cloud != "gcp" or not cfg.gcp_project:
        raise ConfigError(f"the GCP stack needs {PROJECT}:cloud = gcp and {PROJECT}:gcpProject")
    prefix = naming.stack_prefix(cfg.stack)
    labels = {naming.STACK_LABEL: naming.slug(cfg.stack, 63)}
    gpu_type = gpu_accelerator(cfg)

    provider = gcp.Provider(
        naming.component_name(cfg.stack, "gcp"), project=cfg.gcp_project, region=cfg.region, default_labels=labels
    )
    opts = pulumi.ResourceOptions(providers=[provider])

    bucket = cfg.bucket_name or default_bucket_name(cfg.gcp_project, cfg.stack)
    uri = store_uri("gs", bucket, cfg.store_prefix)
    wheel = agent_package.deployed_agent_wheel()
    wheel_uri = agent_wheel_uri(uri, wheel.path, wheel.sha256)

    accounts = ServiceAccounts(
        naming.component_name(cfg.stack, naming.IAM),
        ServiceAccountsArgs(project=cfg.gcp_project, id_prefix=prefix, stack=cfg.stack),
        # Named "<prefix>-sa" before 0.x's one naming rule: the alias keeps the accounts (and their ids).
        pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(aliases=[pulumi.Alias(name=f"{prefix}-sa")])),
    )
    store = _store(cfg, bucket, accounts, wheel, opts)
    network = _network(cfg, opts)
    registry = _image_registry(cfg, prefix, accounts, opts)
    tfs_image = registry.image(cfg.tfs_image) if registry is not None else cfg.tfs_image

    # A draining VM waits until the load balancer that routes to it (REST and gRPC alike) has seen its 503.
    drain_wait = drain_wait_seconds(SERVING_CHECK)
    # With gRPC each group is in two backend services: the autoscalers cannot scale on requests (docs/gcp.md "gRPC").
    autoscaling = grpc_autoscaling(autoscaling_target(cfg), grpc_exposed(cfg.enable_grpc, cfg.enable_https))
    fleets: dict[str, ServingFleet] = {}
    for role in ROLES:
        boot = fleet_bootstrap_args(cfg, role, uri, AgentWheel(wheel_uri, wheel.sha256), drain_wait, tfs_image)
        fleets[role] = ServingFleet(
            naming.component_name(cfg.stack, role),
            ServingFleetArgs(
                role=role,
                region=cfg.region,
                machine_type=cfg.machine_type,
                service_account_email=accounts.fleet_email,
                subnetwork=network.subnetwork,
                user_data=render_user_data(boot),
                capacity=fleet_capacity(cfg, role),
                autoscaling=autoscaling,
                health_check_initial_delay_seconds=cfg.health_check_initial_delay_seconds,
                gpu=cfg.gpu,
                gpu_type=gpu_type,
                root_volume_gib=cfg.disk_size_gb,
                name_grpc_port=cfg.enable_grpc,
                boot_dependencies=[store, *([registry] if registry is not None else [])],
            ),
            opts,
        )

    # The canary's capacity and traffic change in order (docs/gcp.md "Canary on and off"): a starting canary's
    # autoscaler, then the wait for its healthy VMs, then the URL map that gives it traffic; a stopping canary's URL
    # map, then its autoscaler (scale to zero).
    if canary_traffic_order(cfg.canary_fleet_runs) == "capacity-first":
        healthy = _autoscale(cfg, fleets, canary_after=[])
        lb = _load_balancer(cfg, network, accounts, fleets, autoscaling, opts, serving_after=[healthy])
    else:
        lb = _load_balancer(cfg, network, accounts, fleets, autoscaling, opts, serving_after=[])
        _autoscale(cfg, fleets, canary_after=lb.traffic)
    return _outputs(cfg, uri, wheel_uri, store, accounts, network, lb, fleets)


def _autoscale(
    cfg: StackConfig, fleets: dict[str, ServingFleet], canary_after: Sequence[pulumi.Resource]
) -> FleetHealthy:
    """Both fleets' autoscalers (the canary's updated after ``canary_after``), then ``FleetHealthy`` on the canary's
    group: it waits, after the autoscaler's update, for canaryMinReplicas healthy VMs when the canary starts (its
    minimum goes up from 0), and does nothing when it stops (``min_healthy`` 0) or keeps running at the same size."""
    fleets[STABLE].autoscale()
    canary = fleets[CANARY]
    autoscaler = canary.autoscale(after=canary_after)
    min_healthy, _ = fleet_capacity(cfg, CANARY).bounds
    return FleetHealthy(
        f"{naming.component_name(cfg.stack, CANARY)}-healthy",
        FleetHealthyArgs(
            project=cfg.gcp_project or "",
            region=cfg.region,
            group=canary.manager.name,
            min_healthy=min_healthy,
            timeout_seconds=healthy_wait_seconds(cfg.health_check_initial_delay_seconds),
        ),
        pulumi.ResourceOptions(parent=canary, depends_on=[autoscaler]),
    )


def _store(
    cfg: StackConfig, bucket: str, accounts: ServiceAccounts, wheel: AgentWheelFile, opts: pulumi.ResourceOptions
) -> ModelStore:
    return ModelStore(
        naming.component_name(cfg.stack, naming.STORE),
        ModelStoreArgs(
            bucket_name=bucket,
            location=cfg.region,
            noncurrent_version_days=cfg.noncurrent_version_days,
            kms_key=cfg.kms_key,
            deletion_protection=cfg.deletion_protection,
            reader_members=[accounts.fleet_member],
            publisher_members=[accounts.publisher_member],
            lease_writer_members=[accounts.fleet_member],
            agent_wheel=wheel,
            store_prefix=cfg.store_prefix,
        ),
        opts,
    )


def _image_registry(
    cfg: StackConfig, prefix: str, accounts: ServiceAccounts, opts: pulumi.ResourceOptions
) -> ImageRegistry | None:
    """The stack's Docker Hub mirror (an Artifact Registry remote repository) when the image is on Docker Hub; a
    reference to another registry (a user's mirror) is pulled as it is (docs/bootstrap.md "TF Serving's image")."""
    if not parse_image(cfg.tfs_image).on_docker_hub:
        return None
    return ImageRegistry(
        naming.component_name(cfg.stack, "registry"),
        ImageRegistryArgs(
            project=cfg.gcp_project or "",
            location=cfg.region,
            repository_id=f"{prefix}-dockerhub",
            reader_members=[accounts.fleet_member],
        ),
        opts,
    )


def _network(cfg: StackConfig, opts: pulumi.ResourceOptions) -> Network:
    return Network(
        naming.component_name(cfg.stack, naming.NETWORK),
        NetworkArgs(
            region=cfg.region,
            cidr=cfg.network_cidr,
            existing_network=cfg.existing_network,
            existing_subnetwork=cfg.existing_instance_subnets[0] if cfg.existing_instance_subnets else None,
        ),
        opts,
    )


def _load_balancer(
    cfg: StackConfig,
    network: Network,
    accounts: ServiceAccounts,
    fleets: dict[str, ServingFleet],
    autoscaling: AutoscalingTarget,
    opts: pulumi.ResourceOptions,
    serving_after: Sequence[pulumi.Resource],
) -> LoadBalancer:
    return LoadBalancer(
        naming.component_name(cfg.stack, naming.LOAD_BALANCER),
        LoadBalancerArgs(
            network=network.network,
            backend_service_account=accounts.fleet_email,
            stable_group=fleets[STABLE].instance_group,
            canary_group=fleets[CANARY].instance_group,
            canary_weight_percent=cfg.canary_weight_percent,
            rest_port_name=fleets[STABLE].rest_port_name,
            max_rate_per_instance=cfg.target_requests_per_second,
            allowed_source_cidrs=cfg.allowed_source_cidrs,
            https_domains=cfg.https_domains if cfg.enable_https else (),
            grpc_port_name=fleets[STABLE].grpc_port_name,  # exposed with HTTPS only
            lb_utilization_autoscaling=autoscaling.metric == "requests",
            deletion_protection=cfg.deletion_protection,
            health_check=SERVING_CHECK,  # what the fleets' drain wait was computed from
            canary_fleet_runs=cfg.canary_fleet_runs,  # label routes to each fleet while both run
            models=cfg.models,
            serving_after=serving_after,  # a starting canary's FleetHealthy
        ),
        opts,
    )


def _outputs(
    cfg: StackConfig,
    uri: str,
    wheel_uri: str,
    store: ModelStore,
    accounts: ServiceAccounts,
    network: Network,
    lb: LoadBalancer,
    fleets: dict[str, ServingFleet],
) -> dict[str, Any]:
    """The names every stack shares (README "Stack outputs"), then GCP's own."""
    outputs: dict[str, Any] = {
        "endpoint": lb.endpoint,
        "loadBalancerAddress": lb.address,
        "bucketName": store.bucket_name,
        "storeUri": uri,
        "agentWheelUri": wheel_uri,
        "fleetIdentity": accounts.fleet_email,
        "publisherIdentity": accounts.publisher_email,
        "fleetGroups": {role: fleet.instance_group_manager for role, fleet in fleets.items()},
        "networkId": network.network,
        "canaryWeightPercent": cfg.canary_weight_percent,
        "securityPolicy": lb.security_policy,
    }
    if lb.grpc_endpoint is not None:
        outputs["grpcEndpoint"] = lb.grpc_endpoint
    if cfg.enable_https:
        outputs["httpsDomains"] = list(cfg.https_domains)
    return outputs
