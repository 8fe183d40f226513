"""One serving fleet (stable or canary): instance template, regional managed instance group, autoscaler.

- The template carries the whole VM in its ``user-data`` (``infra.bootstrap``); any change to it (image, flags,
  agent wheel hash) makes a new template (``name_prefix``: created before the old one is deleted), and the MIG's
  PROACTIVE update policy rolls the fleet onto it: ``max_surge`` 3 (a regional MIG needs 0 or at least its number
  of zones), ``max_unavailable`` 0, so serving capacity never drops during a roll.
- Autohealing probes the agent's liveness endpoint (``LIVE_PATH``), not its readiness (``HEALTH_PATH``, the load
  balancer's): a VM that drains to switch versions answers 503 on readiness and must not be recreated for it.
  Liveness is 503 until the VM is ready the first time (so a roll waits for ready VMs, as before), then only when the
  agent loop or TF Serving is dead; counted after ``health_check_initial_delay_seconds`` (image pull + model download
  + warmup).
- The autoscaler owns the group's size (the MIG sets no ``target_size``). A fleet that does not run
  (``FleetCapacity.running`` false: the canary while it gets no traffic) has min = max = 0: GCP accepts that.
- Two steps (``ServingFleet`` then ``autoscale``): the autoscaler comes once the load balancer exists, so a fleet
  that stops running can scale to zero only after the URL map stopped sending it traffic
  (``infra.components.canary_traffic_order``). The other direction has no waiter in the provider (the MIG's
  ``wait_for_instances`` runs only when the MIG itself changes, and the size is the autoscaler's): a starting canary's
  weight waits for ``infra.gcp.wait.FleetHealthy`` (docs/gcp.md "Canary on and off").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from infra import naming
from infra.bootstrap import LIVENESS_FAILURES, LIVENESS_INTERVAL_SECONDS
from infra.components import AutoscalingTarget, FleetCapacity, HealthCheck
from infra.config import DEFAULT_DISK_GB
from infra.gcp.health import agent_health_check
from model_export.constants import LIVE_PATH, TFS_GRPC_PORT, TFS_REST_PORT

UBUNTU_IMAGE = "projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64"
# Ubuntu 24.04 with the NVIDIA driver (Google's Deep Learning VM base image); see docs/gcp.md "GPU".
GPU_IMAGE = "projects/deeplearning-platform-release/global/images/family/common-cu129-ubuntu-2404-nvidia-580"
# GCS is all a serving VM calls: it reads the bucket and writes its fleet's drain-slot leases. IAM narrows that to
# reading one bucket and writing under its `_fleet/` prefix (store.py; docs/gcp.md "Identities and scopes").
SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)
REST_PORT_NAME = "http"
GRPC_PORT_NAME = "grpc"
MAX_SURGE = 3  # regional MIGs: 0 or at least the number of zones the group spans (3 by default)
# By gpu: the boot disk when `diskSizeGb` is 0 (infra.config, where the rule is; docs/agent.md "Disk size").
ROOT_VOLUME_GIB = {gpu: DEFAULT_DISK_GB["gcp", gpu] for gpu in (False, True)}
# Autohealing (on liveness) is more patient than the load balancer: a VM is recreated only after a minute of failures,
# the same numbers the AWS VMs report themselves with (infra.bootstrap).
AUTOHEALING_CHECK = HealthCheck(
    interval_seconds=LIVENESS_INTERVAL_SECONDS,
    timeout_seconds=5,
    healthy_threshold=2,
    unhealthy_threshold=LIVENESS_FAILURES,
)
# "requests": the load balancer backend's max_rate_per_instance is the target requests per second, so a utilisation
# target of 1.0 keeps each VM at that rate.
LB_UTILIZATION_TARGET = 1.0
MIN_COOLDOWN_SECONDS = 60


def cooldown_seconds(health_check_initial_delay_seconds: int) -> int:
    """How long the autoscaler ignores a new VM's load: its boot, but never under GCP's useful minimum."""
    return max(health_check_initial_delay_seconds, MIN_COOLDOWN_SECONDS)


@dataclass(frozen=True)
class ServingFleetArgs:
    role: str  # stable | canary
    region: str
    machine_type: str
    service_account_email: pulumi.Input[str]
    subnetwork: pulumi.Input[str]
    user_data: pulumi.Input[str]  # the rendered cloud-config (infra.components.fleet_user_data)
    capacity: FleetCapacity
    autoscaling: AutoscalingTarget
    health_check_initial_delay_seconds: int
    gpu: bool = False  # GPU image, no live migration, Secure Boot off (see docs/gcp.md "GPU")
    gpu_type: str | None = None  # attach one accelerator of this type (N1); None when the machine type has its GPU
    image: str | None = None  # default: Ubuntu 24.04 LTS, or GPU_IMAGE with a GPU
    root_volume_gib: int | None = None  # the stack passes `diskSizeGb`; default: ROOT_VOLUME_GIB[gpu]
    name_grpc_port: bool = True  # also name TF Serving's gRPC port on the group (the ALB's gRPC backend services)
    autohealing: HealthCheck = AUTOHEALING_CHECK
    # Resources the VMs need before they boot (the agent wheel object, the bucket grant that lets them read it).
    boot_dependencies: Sequence[pulumi.Resource] = ()


class ServingFleet(pulumi.ComponentResource):
    instance_group: pulumi.Output[str]  # the regional instance group's URL (a load balancer backend)
    instance_group_manager: pulumi.Output[str]
    instance_template: pulumi.Output[str]
    rest_port_name: str
    grpc_port_name: str | None

    def __init__(self, name: str, args: ServingFleetArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("modelfleet:gcp:ServingFleet", name, None, opts)
        self.health_check = self._autohealing_check(name, args)
        self.template = self._template(name, args)
        self.manager = self._group(name, args)
        self._name, self._args = name, args
        self.autoscaler: gcp.compute.RegionAutoscaler | None = None  # `autoscale`

        self.instance_group = self.manager.instance_group
        self.instance_group_manager = self.manager.self_link
        self.instance_template = self.template.self_link
        self.rest_port_name = REST_PORT_NAME
        self.grpc_port_name = GRPC_PORT_NAME if args.name_grpc_port else None
        self.register_outputs(
            {
                "instance_group": self.instance_group,
                "instance_group_manager": self.instance_group_manager,
                "instance_template": self.instance_template,
                "rest_port_name": self.rest_port_name,
                "grpc_port_name": self.grpc_port_name,
            }
        )

    def _autohealing_check(self, name: str, args: ServingFleetArgs) -> gcp.compute.HealthCheck:
        # Its own check, on liveness and more patient than the load balancer's (readiness: out after ten seconds).
        return agent_health_check(
            f"{name}-autoheal",
            f"modelfleet {args.role} autohealing: the agent's {LIVE_PATH} (liveness; draining is not a failure)",
            args.autohealing,
            pulumi.ResourceOptions(parent=self),
            path=LIVE_PATH,
        )

    def _template(self, name: str, args: ServingFleetArgs) -> gcp.compute.InstanceTemplate:
        gpu = args.gpu
        return gcp.compute.InstanceTemplate(
            f"{name}-template",
            name_prefix=f"{name}-",
            description=f"modelfleet {args.role} TF Serving VM",
            machine_type=args.machine_type,
            disks=[
                gcp.compute.InstanceTemplateDiskArgs(
                    boot=True,
                    auto_delete=True,
                    source_image=args.image or (GPU_IMAGE if gpu else UBUNTU_IMAGE),
                    disk_size_gb=args.root_volume_gib or ROOT_VOLUME_GIB[gpu],
                    disk_type="pd-balanced",
                )
            ],
            # No access_configs: no external address. Egress goes through Cloud NAT.
            network_interfaces=[gcp.compute.InstanceTemplateNetworkInterfaceArgs(subnetwork=args.subnetwork)],
            metadata={
                "user-data": args.user_data,
                "enable-oslogin": "TRUE",
                "block-project-ssh-keys": "TRUE",
            },
            service_account=gcp.compute.InstanceTemplateServiceAccountArgs(
                email=args.service_account_email, scopes=list(SCOPES)
            ),
            shielded_instance_config=gcp.compute.InstanceTemplateShieldedInstanceConfigArgs(
                # The GPU image's NVIDIA kernel modules are not signed with a key Secure Boot trusts (docs/gcp.md).
                enable_secure_boot=not gpu,
                enable_vtpm=True,
                enable_integrity_monitoring=True,
            ),
            guest_accelerators=(
                [gcp.compute.InstanceTemplateGuestAcceleratorArgs(type=args.gpu_type, count=1)]
                if gpu and args.gpu_type
                else None
            ),
            scheduling=gcp.compute.InstanceTemplateSchedulingArgs(
                automatic_restart=True,
                # GPUs cannot live-migrate.
                on_host_maintenance="TERMINATE" if gpu else "MIGRATE",
            ),
            labels={naming.ROLE_LABEL: args.role},
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _group(self, name: str, args: ServingFleetArgs) -> gcp.compute.RegionInstanceGroupManager:
        named_ports = [gcp.compute.RegionInstanceGroupManagerNamedPortArgs(name=REST_PORT_NAME, port=TFS_REST_PORT)]
        if args.name_grpc_port:
            named_ports.append(
                gcp.compute.RegionInstanceGroupManagerNamedPortArgs(name=GRPC_PORT_NAME, port=TFS_GRPC_PORT)
            )
        return gcp.compute.RegionInstanceGroupManager(
            f"{name}-mig",
            description=f"modelfleet {args.role} fleet",
            region=args.region,
            base_instance_name=f"{name}",
            versions=[
                gcp.compute.RegionInstanceGroupManagerVersionArgs(
                    name=args.role, instance_template=self.template.self_link_unique
                )
            ],
            distribution_policy_target_shape="EVEN",
            named_ports=named_ports,
            auto_healing_policies=gcp.compute.RegionInstanceGroupManagerAutoHealingPoliciesArgs(
                health_check=self.health_check.self_link,
                initial_delay_sec=args.health_check_initial_delay_seconds,
            ),
            update_policy=gcp.compute.RegionInstanceGroupManagerUpdatePolicyArgs(
                type="PROACTIVE",
                minimal_action="REPLACE",
                most_disruptive_allowed_action="REPLACE",
                replacement_method="SUBSTITUTE",
                instance_redistribution_type="PROACTIVE",
                max_surge_fixed=MAX_SURGE,
                max_unavailable_fixed=0,
                # With an autohealing check the MIG waits for a new VM to be HEALTHY (model AVAILABLE), then this.
                min_ready_sec=60,
            ),
            instance_lifecycle_policy=gcp.compute.RegionInstanceGroupManagerInstanceLifecyclePolicyArgs(
                force_update_on_repair="YES",
                default_action_on_failure="REPAIR",
            ),
            # No wait here: this MIG changes before its autoscaler (which owns the size) and the load balancer.
            wait_for_instances=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.boot_dependencies)),
        )

    def autoscale(self, after: Sequence[pulumi.Resource] = ()) -> gcp.compute.RegionAutoscaler:
        """The fleet's autoscaler, updated after ``after``: for a fleet that stops running (min = max = 0), the URL map
        that stops sending it traffic. Called once, after the load balancer exists."""
        if self.autoscaler is not None:
            raise RuntimeError(f"{self._name}: autoscale() was called twice")
        self.autoscaler = self._autoscaler(self._name, self._args, after)
        return self.autoscaler

    def _autoscaler(
        self, name: str, args: ServingFleetArgs, after: Sequence[pulumi.Resource]
    ) -> gcp.compute.RegionAutoscaler:
        target = args.autoscaling
        min_replicas, max_replicas = args.capacity.bounds
        policy = gcp.compute.RegionAutoscalerAutoscalingPolicyArgs(
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            mode="ON",
            cooldown_period=cooldown_seconds(args.health_check_initial_delay_seconds),
            cpu_utilization=(
                gcp.compute.RegionAutoscalerAutoscalingPolicyCpuUtilizationArgs(target=target.target_cpu_percent / 100)
                if target.metric == "cpu"
                else None
            ),
            load_balancing_utilization=(
                gcp.compute.RegionAutoscalerAutoscalingPolicyLoadBalancingUtilizationArgs(target=LB_UTILIZATION_TARGET)
                if target.metric == "requests"
                else None
            ),
        )
        return gcp.compute.RegionAutoscaler(
            f"{name}-autoscaler",
            region=args.region,
            target=self.manager.self_link,
            autoscaling_policy=policy,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(after)),
        )
