"""One serving fleet (stable or canary): a launch template and an auto scaling group behind the load balancer.

- Launch template: Ubuntu 24.04 (or a GPU image), IMDSv2 only with hop limit 1 (nothing in a container needs the
  instance's credentials: the agent, the store fetch, the health report and the registry login run on the host, and
  a container on Docker's bridge is one hop further, so TF Serving's cannot reach the metadata service), no public
  IP, encrypted gp3 root volume, the fleet's instance profile, its cloud-config (``user_data``, base64).
  `update_default_version` so the template's default is always what the group runs.
- Auto scaling group: private subnets, the template's `latest_version` (a number, so a new version triggers the
  instance refresh; `$Latest` would not), EC2 health with the configured grace, a rolling refresh that launches
  before it terminates (min 100 % / max 200 % healthy).
  `desired_capacity` is left to the scaling policy (Pulumi would reset it on every update), except 0 for a fleet
  that does not run (``FleetCapacity.running`` false: min = max = desired = 0).
- Liveness, not readiness, replaces VMs: the load balancer's check (readiness, 503 while a VM drains to switch
  versions) only routes traffic. The VM reports itself Unhealthy (``SetInstanceHealth``) when the agent's liveness
  fails for a minute (``infra.bootstrap.LIVEZ_UNIT``), and a launch lifecycle hook (``READY_HOOK``) keeps each new VM
  out of service until it has been live (ready) once, so refreshes, scale-outs and replacements still wait for ready
  VMs and VMs that never get ready never displace ready ones (docs/aws.md "Health: readiness and liveness").
- Target tracking on CPU or on requests per VM (per minute, as ALB publishes it).
- Traffic order (``infra.components.canary_traffic_order``): the provider waits, on an update that changes the
  group's minimum, for that many in-service VMs (in service = ready once, through the lifecycle hook), up to
  ``wait_for_capacity_timeout``; the stack makes the load balancer's weights and label routes depend on a starting
  canary's group (``capacity``), and a stopping canary's group depend on them (``capacity_after``).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from infra import naming
from infra.bootstrap import READY_HOOK
from infra.components import AutoscalingTarget, FleetCapacity
from model_export.constants import ROLES

TYPE = "modelfleet:aws:ServingFleet"
ROOT_DEVICE = "/dev/sda1"  # Ubuntu's and the Deep Learning AMIs' root device
IMDS_HOP_LIMIT = 1  # the host only: no container needs (or gets) the instance's credentials
_M = aws.autoscaling.Metric
# Group metrics are free at 1-minute granularity: capacity and refresh progress on a dashboard.
GROUP_METRICS = (
    _M.GROUP_DESIRED_CAPACITY,
    _M.GROUP_IN_SERVICE_INSTANCES,
    _M.GROUP_PENDING_INSTANCES,
    _M.GROUP_TERMINATING_INSTANCES,
    _M.GROUP_TOTAL_INSTANCES,
)
LAUNCHING = "autoscaling:EC2_INSTANCE_LAUNCHING"
HOOK_TIMEOUT_RANGE = (30, 7200)  # what AWS accepts for a lifecycle hook's heartbeat timeout
# How long `pulumi up` waits for a group's new minimum of VMs to be in service, beyond their boot grace: the launch,
# the hook's completion and the registration. Never below the provider's default (10 minutes).
LAUNCH_MARGIN_SECONDS = 300
MIN_CAPACITY_WAIT_SECONDS = 600


def ready_hook_timeout(health_check_initial_delay_seconds: int) -> int:
    """How long a new VM may take to get ready before the group abandons it: the stack's boot grace, within AWS's
    range for a lifecycle hook."""
    lo, hi = HOOK_TIMEOUT_RANGE
    return min(max(health_check_initial_delay_seconds, lo), hi)


def capacity_wait_seconds(health_check_initial_delay_seconds: int) -> int:
    """How long the provider waits, on a change of the group's minimum, for that many VMs to be in service (ready
    once): one VM's whole launch, up to its hook's timeout, plus a margin; never less than the provider's default."""
    return max(
        ready_hook_timeout(health_check_initial_delay_seconds) + LAUNCH_MARGIN_SECONDS, MIN_CAPACITY_WAIT_SECONDS
    )


@dataclass(frozen=True)
class RequestMetric:
    """Where request-based scaling reads requests per VM: the load balancer's and the fleet's target groups'
    CloudWatch dimensions (ARN suffixes)."""

    load_balancer_arn_suffix: pulumi.Input[str]
    target_group_arn_suffixes: Sequence[pulumi.Input[str]]


@dataclass(frozen=True)
class ServingFleetArgs:
    role: str  # model_export.constants.ROLES
    user_data: pulumi.Input[str]  # the rendered cloud-config (infra.components.fleet_user_data), base64'd here
    image_id: pulumi.Input[str]
    machine_type: str
    subnet_ids: pulumi.Input[Sequence[pulumi.Input[str]]]  # private subnets
    security_group_ids: Sequence[pulumi.Input[str]]
    instance_profile_arn: pulumi.Input[str]
    target_group_arns: Sequence[pulumi.Input[str]]
    capacity: FleetCapacity
    autoscaling: AutoscalingTarget
    request_metric: RequestMetric | None = None  # required when autoscaling.metric is "requests"
    health_check_initial_delay_seconds: int = 300
    # OS, Docker, TF Serving's image and the agent's model cache (kept versions + one downloading): the stack passes
    # `diskSizeGb` (docs/agent.md "Disk size").
    root_volume_gib: int = 50
    detailed_monitoring: bool = True  # 1-minute EC2 metrics: target tracking on CPU reacts in minutes, not 5+
    tags: Mapping[str, str] = field(default_factory=dict)
    # Resources updated before the group's size changes: for a fleet that stops running, the load balancer resources
    # that stop sending it traffic (infra.components.canary_traffic_order).
    capacity_after: Sequence[pulumi.Resource] = ()

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if self.root_volume_gib < 8:
            raise ValueError(f"root_volume_gib must be 8 or more, got {self.root_volume_gib}")
        if self.autoscaling.metric == "requests" and (
            self.request_metric is None or not self.request_metric.target_group_arn_suffixes
        ):
            raise ValueError("request-based scaling needs the load balancer and target group ARN suffixes")


def base64_text(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _target_tracking(
    target: AutoscalingTarget, request_metric: RequestMetric | None
) -> aws.autoscaling.PolicyTargetTrackingConfigurationArgs:
    if target.metric == "cpu" or request_metric is None:
        return aws.autoscaling.PolicyTargetTrackingConfigurationArgs(
            target_value=float(target.target_cpu_percent),
            predefined_metric_specification=aws.autoscaling.PolicyTargetTrackingConfigurationPredefinedMetricSpecificationArgs(
                predefined_metric_type="ASGAverageCPUUtilization"
            ),
        )
    # RequestCountPerTarget is a per-minute count: the target is requests per second times 60.
    per_minute = float(target.target_requests_per_second * 60)
    lb = request_metric.load_balancer_arn_suffix
    suffixes = list(request_metric.target_group_arn_suffixes)
    if len(suffixes) == 1:
        label = pulumi.Output.all(lb, suffixes[0]).apply(lambda v: f"{v[0]}/{v[1]}")
        return aws.autoscaling.PolicyTargetTrackingConfigurationArgs(
            target_value=per_minute,
            predefined_metric_specification=aws.autoscaling.PolicyTargetTrackingConfigurationPredefinedMetricSpecificationArgs(
                predefined_metric_type="ALBRequestCountPerTarget", resource_label=label
            ),
        )
    # REST and gRPC arrive through different target groups on the same VMs: track their sum per VM.
    spec = aws.autoscaling
    queries = [
        spec.PolicyTargetTrackingConfigurationCustomizedMetricSpecificationMetricArgs(
            id=f"m{i}",
            return_data=False,
            metric_stat=spec.PolicyTargetTrackingConfigurationCustomizedMetricSpecificationMetricMetricStatArgs(
                stat="Sum",
                metric=spec.PolicyTargetTrackingConfigurationCustomizedMetricSpecificationMetricMetricStatMetricArgs(
                    namespace="AWS/ApplicationELB",
                    metric_name="RequestCountPerTarget",
                    dimensions=[
                        spec.PolicyTargetTrackingConfigurationCustomizedMetricSpecificationMetricMetricStatMetricDimensionArgs(
                            name="TargetGroup", value=suffix
                        ),
                    ],
                ),
            ),
        )
        for i, suffix in enumerate(suffixes)
    ]
    total = spec.PolicyTargetTrackingConfigurationCustomizedMetricSpecificationMetricArgs(
        id="requests_per_target",
        expression=" + ".join(f"FILL(m{i}, 0)" for i in range(len(suffixes))),
        label="REST + gRPC requests per target",
        return_data=True,
    )
    return aws.autoscaling.PolicyTargetTrackingConfigurationArgs(
        target_value=per_minute,
        customized_metric_specification=spec.PolicyTargetTrackingConfigurationCustomizedMetricSpecificationArgs(
            metrics=[*queries, total]
        ),
    )


class ServingFleet(pulumi.ComponentResource):
    # The resource whose update adds or removes the fleet's VMs, and waits for added ones to be in service: what the
    # load balancer's routes to a starting fleet depend on.
    capacity: aws.autoscaling.Group
    group_name: pulumi.Output[str]
    group_arn: pulumi.Output[str]
    launch_template_id: pulumi.Output[str]
    launch_template_version: pulumi.Output[int]

    def __init__(self, name: str, args: ServingFleetArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        role_tags = {**args.tags, naming.ROLE_LABEL: args.role}
        template = self._launch_template(name, args, role_tags)
        group = self.capacity = self._group(name, args, role_tags, template)
        self._ready_hook(name, args, group)
        self._scaling_policy(name, args, group)

        self.group_name = group.name
        self.group_arn = group.arn
        self.launch_template_id = template.id
        self.launch_template_version = template.latest_version
        outputs: dict[str, Any] = {
            "group_name": self.group_name,
            "group_arn": self.group_arn,
            "launch_template_id": self.launch_template_id,
            "launch_template_version": self.launch_template_version,
        }
        self.register_outputs(outputs)

    def _launch_template(
        self, name: str, args: ServingFleetArgs, role_tags: Mapping[str, str]
    ) -> aws.ec2.LaunchTemplate:
        child = pulumi.ResourceOptions(parent=self)
        instance_tags = {**role_tags, "Name": f"{name}-vm"}
        return aws.ec2.LaunchTemplate(
            f"{name}-lt",
            description=f"modelfleet {args.role} fleet",
            image_id=args.image_id,
            instance_type=args.machine_type,
            iam_instance_profile=aws.ec2.LaunchTemplateIamInstanceProfileArgs(arn=args.instance_profile_arn),
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_endpoint="enabled",
                http_tokens="required",
                http_put_response_hop_limit=IMDS_HOP_LIMIT,
                instance_metadata_tags="disabled",
            ),
            network_interfaces=[
                aws.ec2.LaunchTemplateNetworkInterfaceArgs(
                    device_index=0,
                    associate_public_ip_address="false",
                    delete_on_termination="true",
                    security_groups=args.security_group_ids,
                )
            ],
            block_device_mappings=[
                aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                    device_name=ROOT_DEVICE,
                    ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                        volume_size=args.root_volume_gib,
                        volume_type="gp3",
                        encrypted="true",
                        delete_on_termination="true",
                    ),
                )
            ],
            monitoring=aws.ec2.LaunchTemplateMonitoringArgs(enabled=args.detailed_monitoring),
            user_data=pulumi.Output.from_input(args.user_data).apply(base64_text),
            update_default_version=True,
            tag_specifications=[
                aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type="instance", tags=instance_tags),
                aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type="volume", tags=instance_tags),
            ],
            tags={**role_tags, "Name": f"{name}-lt"},
            opts=child,
        )

    def _group(
        self, name: str, args: ServingFleetArgs, role_tags: Mapping[str, str], template: aws.ec2.LaunchTemplate
    ) -> aws.autoscaling.Group:
        grace = args.health_check_initial_delay_seconds
        min_size, max_size = args.capacity.bounds
        return aws.autoscaling.Group(
            f"{name}-asg",
            vpc_zone_identifiers=args.subnet_ids,
            min_size=min_size,
            max_size=max_size,
            desired_capacity=None if args.capacity.running else 0,
            # A change of the minimum (a starting canary: 0 -> canaryMinReplicas) returns once that many VMs are in
            # service, i.e. ready once (the lifecycle hook); the routes to a starting fleet depend on this group.
            wait_for_capacity_timeout=f"{capacity_wait_seconds(grace)}s",
            launch_template=aws.autoscaling.GroupLaunchTemplateArgs(
                id=template.id, version=template.latest_version.apply(str)
            ),
            target_group_arns=args.target_group_arns,
            # Not ELB: the target groups' check is readiness, failing on purpose while a VM drains; liveness is
            # reported by the VM itself (SetInstanceHealth), and readiness at launch gates through the lifecycle hook.
            health_check_type="EC2",
            health_check_grace_period=grace,
            default_instance_warmup=grace,
            instance_maintenance_policy=aws.autoscaling.GroupInstanceMaintenancePolicyArgs(
                min_healthy_percentage=100, max_healthy_percentage=200
            ),
            instance_refresh=aws.autoscaling.GroupInstanceRefreshArgs(
                strategy="Rolling",
                preferences=aws.autoscaling.GroupInstanceRefreshPreferencesArgs(
                    min_healthy_percentage=100,
                    max_healthy_percentage=200,
                    instance_warmup=str(grace),
                    skip_matching=True,
                    # Not auto_rollback: the provider moves the group to the new version before it starts the
                    # refresh, so a "rollback" relaunches the same bad version (terraform-provider-aws#34189).
                    # With min 100 % healthy the refresh itself never takes capacity away, but the group launches the
                    # new version from now on: scale-outs and repairs during and after a failed refresh get VMs that
                    # never go in service (the ready hook), until the next `pulumi up` (docs/aws.md).
                    auto_rollback=False,
                ),
            ),
            enabled_metrics=list(GROUP_METRICS),
            metrics_granularity="1Minute",
            tags=[
                aws.autoscaling.GroupTagArgs(key=key, value=value, propagate_at_launch=True)
                for key, value in sorted({**role_tags, "Name": f"{name}-vm"}.items())
            ],
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.capacity_after)),
        )

    def _ready_hook(
        self, name: str, args: ServingFleetArgs, group: aws.autoscaling.Group
    ) -> aws.autoscaling.LifecycleHook:
        # A new VM stays Pending:Wait (out of service, not in the target groups) until its liveness report has seen
        # it live, i.e. ready once; past the timeout it is abandoned (terminated) and the group launches another.
        # Created after the group: the instances of the group's very first launch do not wait (nothing to protect).
        return aws.autoscaling.LifecycleHook(
            f"{name}-ready",
            name=READY_HOOK,
            autoscaling_group_name=group.name,
            lifecycle_transition=LAUNCHING,
            heartbeat_timeout=ready_hook_timeout(args.health_check_initial_delay_seconds),
            default_result="ABANDON",
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _scaling_policy(
        self, name: str, args: ServingFleetArgs, group: aws.autoscaling.Group
    ) -> aws.autoscaling.Policy:
        return aws.autoscaling.Policy(
            f"{name}-scaling",
            autoscaling_group_name=group.name,
            policy_type="TargetTrackingScaling",
            target_tracking_configuration=_target_tracking(args.autoscaling, args.request_metric),
            opts=pulumi.ResourceOptions(parent=self),
        )
