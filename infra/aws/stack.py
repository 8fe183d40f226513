"""The AWS stack: store, store access, network, load balancer and the two fleets, wired from one `StackConfig`.

`build(cfg)` creates every resource (through an explicit provider for `cfg.region`) and returns the stack outputs.
Choices that are not config keys (yet) follow `cfg.deletion_protection` as the "production-grade" signal: three
zones and one NAT gateway per zone instead of two zones sharing one. See docs/aws.md.
"""

from __future__ import annotations

import functools
from typing import Any

import pulumi
import pulumi_aws as aws

from infra import agent_package, naming
from infra.agent_package import AgentWheelFile
from infra.aws.fleet import RequestMetric, ServingFleet, ServingFleetArgs
from infra.aws.iam import StoreAccess, StoreAccessArgs
from infra.aws.load_balancer import LoadBalancer, LoadBalancerArgs
from infra.aws.network import ExistingNetwork, Network, NetworkArgs
from infra.aws.registry import DockerHubCredential, ImageRegistry, ImageRegistryArgs
from infra.aws.store import ModelStore, ModelStoreArgs, bucket_prefix_for
from infra.bootstrap import AgentWheel, fleet_bootstrap_args, parse_image, render_user_data
from infra.components import autoscaling_target, canary_traffic_order, fleet_capacity
from infra.config import DEFAULT_DISK_GB, PROJECT, StackConfig
from model_export.constants import CANARY, ROLES

# Canonical's and AWS's public SSM parameters: the current image, resolved at `pulumi up` (see docs/aws.md).
UBUNTU_AMI_PARAMETER = "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"
# Ubuntu 24.04 with the NVIDIA driver, Docker (docker-ce) and the NVIDIA container toolkit.
GPU_AMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id"
# By gpu: the boot disk when `diskSizeGb` is 0 (infra.config, where the rule is; docs/agent.md "Disk size").
ROOT_VOLUME_GIB = {gpu: DEFAULT_DISK_GB["aws", gpu] for gpu in (False, True)}
# The names of the top-level resources before the one naming rule (infra.naming): aliases keep them, so an existing
# stack updates in place instead of replacing its bucket, network and fleets.
LEGACY_NAMES = {
    naming.STORE: "store",
    naming.IAM: "store-access",
    naming.NETWORK: "network",
    naming.LOAD_BALANCER: "lb",
    **{role: role for role in ROLES},
}


def base_tags(cfg: StackConfig) -> dict[str, str]:
    return {"modelfleet-project": PROJECT, naming.STACK_LABEL: cfg.stack, "managed-by": "pulumi"}


def production_grade(cfg: StackConfig) -> bool:
    return cfg.deletion_protection


def _named(opts: pulumi.ResourceOptions | None, part: str) -> pulumi.ResourceOptions:
    """``opts`` plus the alias of ``part``'s name before the naming rule."""
    return pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(aliases=[pulumi.Alias(name=LEGACY_NAMES[part])]))


def _user_data(cfg: StackConfig, role: str, wheel_sha256: str, drain_wait: int, resolved: list[Any]) -> str:
    store_uri, wheel_uri, tfs_image = resolved
    wheel = AgentWheel(str(wheel_uri), wheel_sha256)
    return render_user_data(fleet_bootstrap_args(cfg, role, str(store_uri), wheel, drain_wait, str(tfs_image)))


def build(cfg: StackConfig) -> dict[str, Any]:
    tags = base_tags(cfg)
    # The provider keeps the logical name it had before the naming rule: every resource's state records its
    # provider's URN, and engines that ignore provider aliases (pulumi/pulumi#3979) would replace them all, bucket
    # included, if it were renamed.
    provider = aws.Provider("aws", region=cfg.region, default_tags=aws.ProviderDefaultTagsArgs(tags=tags))
    opts = pulumi.ResourceOptions(providers=[provider])
    wheel = agent_package.deployed_agent_wheel()
    store = _store(cfg, wheel, tags, opts)
    access = _store_access(cfg, store, tags, opts)
    network = _network(cfg, tags, opts)
    lb = _load_balancer(cfg, network, tags, opts)
    registry = _image_registry(cfg, access, tags, opts)
    tfs_image = registry.image(cfg.tfs_image) if registry is not None else pulumi.Output.from_input(cfg.tfs_image)
    image_id = aws.ssm.get_parameter_output(
        name=GPU_AMI_PARAMETER if cfg.gpu else UBUNTU_AMI_PARAMETER,
        region=cfg.region,
        opts=pulumi.InvokeOptions(provider=provider),
    ).insecure_value
    wheel_uri = store.agent_wheel_uri
    if wheel_uri is None:  # pragma: no cover - the stack always passes the wheel to the store
        raise RuntimeError("the model store did not upload the agent wheel")
    # The canary's traffic and capacity change in a safe order (docs/aws.md "Canary on and off"): a stopping canary's
    # routes lose it before its group shrinks; a starting canary's group has its VMs in service before the routes.
    traffic_first = canary_traffic_order(cfg.canary_fleet_runs) == "traffic-first"
    routes = lb.route() if traffic_first else []
    fleets: dict[str, ServingFleet] = {}
    for role in ROLES:
        targets = lb.targets[role]
        user_data = pulumi.Output.all(store.store_uri, wheel_uri, tfs_image).apply(
            functools.partial(_user_data, cfg, role, wheel.sha256, lb.drain_wait_seconds)
        )
        fleets[role] = ServingFleet(
            naming.component_name(cfg.stack, role),
            ServingFleetArgs(
                role=role,
                user_data=user_data,
                image_id=image_id,
                machine_type=cfg.machine_type,
                subnet_ids=network.private_subnet_ids,
                security_group_ids=[lb.instance_security_group_id],
                instance_profile_arn=access.instance_profile_arn,
                target_group_arns=targets.target_group_arns,
                capacity=fleet_capacity(cfg, role),
                autoscaling=autoscaling_target(cfg),
                request_metric=RequestMetric(lb.arn_suffix, targets.target_group_arn_suffixes),
                health_check_initial_delay_seconds=cfg.health_check_initial_delay_seconds,
                root_volume_gib=cfg.disk_size_gb,
                tags=tags,
                capacity_after=routes if role == CANARY else [],
            ),
            _named(opts, role),
        )
    if not traffic_first:
        lb.route(after=[fleets[CANARY].capacity])
    access.allow_health_reports([fleet.group_arn for fleet in fleets.values()])
    return _outputs(cfg, store, access, network, lb, fleets)


def _store(cfg: StackConfig, wheel: AgentWheelFile, tags: dict[str, str], opts: pulumi.ResourceOptions) -> ModelStore:
    return ModelStore(
        naming.component_name(cfg.stack, naming.STORE),
        ModelStoreArgs(
            prefix=cfg.store_prefix,
            noncurrent_version_days=cfg.noncurrent_version_days,
            bucket_name=cfg.bucket_name,
            bucket_prefix=bucket_prefix_for(cfg.stack),
            kms_key_arn=cfg.kms_key,
            protect=cfg.deletion_protection,
            agent_wheel=wheel,
            tags=tags,
        ),
        _named(opts, naming.STORE),
    )


def _store_access(
    cfg: StackConfig, store: ModelStore, tags: dict[str, str], opts: pulumi.ResourceOptions
) -> StoreAccess:
    return StoreAccess(
        naming.component_name(cfg.stack, naming.IAM),
        StoreAccessArgs(
            bucket_arn=store.bucket_arn,
            prefix=cfg.store_prefix,
            region=cfg.region,
            kms_key_arn=cfg.kms_key,
            iam_path=f"/{PROJECT}/{cfg.stack}/",
            tags=tags,
        ),
        _named(opts, naming.IAM),
    )


def _image_registry(
    cfg: StackConfig, access: StoreAccess, tags: dict[str, str], opts: pulumi.ResourceOptions
) -> ImageRegistry | None:
    """The stack's Docker Hub mirror (an ECR pull-through cache) when the image is on Docker Hub and a Docker Hub
    credential is configured (ECR needs one for Docker Hub); a reference to another registry (a user's mirror) is
    pulled as it is (docs/bootstrap.md "TF Serving's image")."""
    if not parse_image(cfg.tfs_image).on_docker_hub:
        return None
    if cfg.docker_hub_credential_arn is None:
        # ECR needs a credential for Docker Hub: the VMs pull from Docker Hub through the NAT (docs/bootstrap.md);
        # config_warnings says so at plan and pulumi up.
        return None
    credential = DockerHubCredential(secret_arn=cfg.docker_hub_credential_arn)
    return ImageRegistry(
        naming.component_name(cfg.stack, "registry"),
        ImageRegistryArgs(
            region=cfg.region,
            prefix=naming.shorten(f"{naming.stack_prefix(cfg.stack)}-dockerhub", 30),
            fleet_role_name=access.fleet_role_name,
            credential=credential,
            tags=tags,
        ),
        opts,
    )


def _network(cfg: StackConfig, tags: dict[str, str], opts: pulumi.ResourceOptions) -> Network:
    ha = production_grade(cfg)
    existing = None
    if cfg.existing_network:
        existing = ExistingNetwork(
            cfg.existing_network, cfg.existing_instance_subnets, cfg.existing_load_balancer_subnets
        )
    return Network(
        naming.component_name(cfg.stack, naming.NETWORK),
        NetworkArgs(
            region=cfg.region,
            cidr=cfg.network_cidr,
            zone_count=3 if ha else 2,
            nat_gateway_per_zone=ha,
            existing=existing,
            tags=tags,
        ),
        _named(opts, naming.NETWORK),
    )


def _load_balancer(
    cfg: StackConfig, network: Network, tags: dict[str, str], opts: pulumi.ResourceOptions
) -> LoadBalancer:
    return LoadBalancer(
        naming.component_name(cfg.stack, naming.LOAD_BALANCER),
        LoadBalancerArgs(
            vpc_id=network.vpc_id,
            subnet_ids=network.public_subnet_ids,
            allowed_source_cidrs=cfg.allowed_source_cidrs,
            canary_weight_percent=cfg.canary_weight_percent,
            enable_https=cfg.enable_https,
            certificate_arn=cfg.certificate_arn,
            enable_grpc=cfg.enable_grpc,
            access_logs_bucket=cfg.access_logs_bucket,
            access_logs_prefix=f"{PROJECT}/{cfg.stack}",
            deletion_protection=cfg.deletion_protection,
            canary_fleet_runs=cfg.canary_fleet_runs,  # label routes to each fleet while both run
            tags=tags,
        ),
        _named(opts, naming.LOAD_BALANCER),
    )


def _outputs(
    cfg: StackConfig,
    store: ModelStore,
    access: StoreAccess,
    network: Network,
    lb: LoadBalancer,
    fleets: dict[str, ServingFleet],
) -> dict[str, Any]:
    """The names every stack shares (README "Stack outputs"), then AWS's own."""
    outputs: dict[str, Any] = {
        "endpoint": lb.endpoint,
        "loadBalancerAddress": lb.dns_name,
        "bucketName": store.bucket_name,
        "storeUri": store.store_uri,
        "agentWheelUri": store.agent_wheel_uri,
        "fleetIdentity": access.fleet_role_arn,
        "fleetGroups": {role: fleet.group_name for role, fleet in fleets.items()},
        "networkId": network.vpc_id,
        "canaryWeightPercent": cfg.canary_weight_percent,
        "loadBalancerZoneId": lb.zone_id,
        "publisherPolicyArn": access.publisher_policy_arn,
    }
    if lb.grpc_endpoint is not None:
        outputs["grpcEndpoint"] = lb.grpc_endpoint
    if access.publisher_role_arn is not None:
        outputs["publisherIdentity"] = access.publisher_role_arn
    return outputs
