"""The Application Load Balancer in front of both fleets, and the two security groups that fence them.

- ALB security group: ingress only from ``allowed_source_cidrs`` on 80 (and 443 with HTTPS); no rule at all when
  the list is empty, so nobody gets in. Egress only to the instances' security group, on the ports it needs.
- Instance security group: ingress only from the ALB's security group (TF Serving REST, the agent's health port,
  TF Serving gRPC when exposed); never a CIDR. Egress 80/443 (apt, Docker Hub, PyPI, S3).
- Target groups per fleet role: REST on TFS_REST_PORT, health-checked on the agent's AGENT_PORT + HEALTH_PATH
  (200 only when the desired versions are AVAILABLE); gRPC (protocol version GRPC) on TFS_GRPC_PORT, health-checked
  with grpc.health.v1 (only with HTTPS: ALB speaks gRPC on HTTPS listeners only).
- Listeners forward with weights: stable 100 - w, canary w (``infra.components.traffic_weights``). With HTTPS,
  HTTP answers 301 to HTTPS. TF Serving's metrics path (on its REST port) answers 404 at the load balancer.
- Rules on the serving listener, lowest priority first: gRPC calls of ``tensorflow.serving.PredictionService``
  (content-type ``application/grpc*`` and that path) to the gRPC groups by weight; every other gRPC call (TF Serving's
  ``ModelService`` with its config reloads, the health service...) a fixed 404, which gRPC clients read as
  UNIMPLEMENTED; ``/monitoring/*`` 404; while the canary fleet runs (weight > 0 or kept warm), the label routes
  ``/v1/models/*/labels/<role>`` (exact, ``:*``, ``/*``) to that role's REST group, whatever the weights.
- Two steps (``LoadBalancer`` then ``route``): the listeners and rules carry the canary's traffic, so the stack
  creates them after a starting canary's group (which waits for its VMs), or before a stopping one's
  (``infra.components.canary_traffic_order``).
See docs/aws.md for the gRPC choice and the traffic order.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from infra import config, naming
from infra.bootstrap import drain_wait_seconds
from infra.components import HealthCheck, traffic_weights
from model_export.constants import AGENT_PORT, HEALTH_PATH, ROLES, TFS_GRPC_PORT, TFS_REST_PORT

TYPE = "modelfleet:aws:LoadBalancer"
HTTP_PORT, HTTPS_PORT = 80, 443
# TLS 1.3 + 1.2 only, AWS's recommended policy for new listeners.
SSL_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"
GRPC_HEALTH_PATH = "/grpc.health.v1.Health/Check"  # TF Serving: --enable_grpc_healthcheck_service=true
GRPC_CONTENT_TYPE = "application/grpc*"
# The only gRPC service clients may call: TF Serving registers ModelService (config reloads) on the same port.
GRPC_SERVICE = "tensorflow.serving.PredictionService"
GRPC_PATHS = (f"/{GRPC_SERVICE}/*",)
GRPC_RULE_PRIORITY = 10
GRPC_REFUSED_RULE_PRIORITY = 11  # any other gRPC call: 404, which gRPC clients read as UNIMPLEMENTED
# TF Serving serves its Prometheus metrics on the REST port; clients have no business there.
INTERNAL_PATHS = ("/monitoring/*",)
INTERNAL_RULE_PRIORITY = 20
# /labels/<role> requests to that role's fleet: after the gRPC rule and the internal paths (ALB rules: 1 to 50000,
# unique per listener, lowest first). One rule per role, in ROLES order.
LABEL_RULE_PRIORITY = 30
NAME_LIMIT = 32  # load balancer and target group names


@dataclass(frozen=True)
class LoadBalancerArgs:
    vpc_id: pulumi.Input[str]
    subnet_ids: pulumi.Input[Sequence[pulumi.Input[str]]]  # public subnets in at least two zones
    allowed_source_cidrs: tuple[str, ...]  # empty = nobody
    canary_weight_percent: int  # modelfleet:canaryWeightPercent
    enable_https: bool = False
    certificate_arn: str | None = None
    enable_grpc: bool = True  # takes effect with HTTPS only (see docs/aws.md)
    access_logs_bucket: str | None = None
    access_logs_prefix: str = ""
    deletion_protection: bool = False
    deregistration_delay_seconds: int = 30
    health_check: HealthCheck = field(default_factory=HealthCheck)
    tags: Mapping[str, str] = field(default_factory=dict)
    # StackConfig.canary_fleet_runs (weight > 0 or canaryKeepWarm): route /labels/<role> paths to each role's fleet.
    # Off: the weighted split alone (the canary fleet has no VMs).
    canary_fleet_runs: bool = False

    def __post_init__(self) -> None:
        config.validate("canaryWeightPercent", self.canary_weight_percent)
        if self.enable_https and not self.certificate_arn:
            raise ValueError("enable_https needs a certificate_arn (ACM)")
        for cidr in self.allowed_source_cidrs:
            if ipaddress.ip_network(cidr, strict=True).version != 4:
                raise ValueError(f"allowed source {cidr!r}: the load balancer is IPv4-only; list IPv4 CIDRs")

    @property
    def weights(self) -> dict[str, int]:
        return traffic_weights(self.canary_weight_percent)

    @property
    def grpc_exposed(self) -> bool:
        return self.enable_grpc and self.enable_https

    @property
    def client_ports(self) -> tuple[int, ...]:
        return (HTTP_PORT, HTTPS_PORT) if self.enable_https else (HTTP_PORT,)

    @property
    def instance_ports(self) -> tuple[int, ...]:
        """What the ALB reaches on the instances: traffic, health checks."""
        ports = (TFS_REST_PORT, AGENT_PORT)
        return (*ports, TFS_GRPC_PORT) if self.grpc_exposed else ports


@dataclass(frozen=True)
class FleetTargets:
    """One fleet's target groups (ASG attachment) and their CloudWatch dimensions (request-based scaling)."""

    target_group_arns: list[pulumi.Output[str]]
    target_group_arn_suffixes: list[pulumi.Output[str]]


def label_path_patterns(label: str) -> list[str]:
    """The path patterns of TF Serving's REST paths at ``label``, for any model: the exact path (model status), its
    methods (``:predict``...) and sub-resources (``/metadata``). ``*`` matches any characters, ``/`` included. Within
    an ALB rule's limits: 3 values in one condition, 5 wildcards in the rule."""
    path = f"/v1/models/*/labels/{label}"
    return [path, f"{path}:*", f"{path}/*"]


def ingress_rule_name(name: str, port: int, cidr: str) -> str:
    """Named by source and port, not by position: reordering allowedSourceCidrs replaces nothing."""
    return f"{name}-alb-in-{port}-{cidr.replace('/', '-')}"


def _health_check(hc: HealthCheck, *, port: str, path: str, matcher: str) -> aws.lb.TargetGroupHealthCheckArgs:
    return aws.lb.TargetGroupHealthCheckArgs(
        enabled=True,
        protocol="HTTP",
        port=port,
        path=path,
        matcher=matcher,
        interval=hc.interval_seconds,
        timeout=hc.timeout_seconds,
        healthy_threshold=hc.healthy_threshold,
        unhealthy_threshold=hc.unhealthy_threshold,
    )


class LoadBalancer(pulumi.ComponentResource):
    arn: pulumi.Output[str]
    arn_suffix: pulumi.Output[str]
    dns_name: pulumi.Output[str]
    zone_id: pulumi.Output[str]
    endpoint: pulumi.Output[str]
    grpc_endpoint: pulumi.Output[str] | None
    security_group_id: pulumi.Output[str]
    instance_security_group_id: pulumi.Output[str]
    targets: dict[str, FleetTargets]

    def __init__(self, name: str, args: LoadBalancerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        self._opts = opts
        if args.enable_grpc and not args.enable_https:
            pulumi.log.warn(
                "enableGrpc is on but enableHttps is off: an ALB serves gRPC on HTTPS listeners only, so gRPC is not "
                "exposed (set enableHttps and certificateArn). See docs/aws.md.",
                resource=self,
            )
        alb_sg, instance_sg = self._security_groups(name, args)
        alb = self._alb(name, args, alb_sg)
        rest, grpc = self._target_groups(name, args)
        # The listeners and rules come with `route`, once the stack knows their order against the canary's group.
        self._name, self._args, self._alb_resource, self._rest, self._grpc = name, args, alb, rest, grpc

        self.arn = alb.arn
        self.arn_suffix = alb.arn_suffix
        self.dns_name = alb.dns_name
        self.zone_id = alb.zone_id
        scheme = "https" if args.enable_https else "http"
        self.endpoint = alb.dns_name.apply(lambda dns: f"{scheme}://{dns}")
        self.grpc_endpoint = alb.dns_name.apply(lambda dns: f"{dns}:{HTTPS_PORT}") if grpc else None
        self.security_group_id = alb_sg.id
        self.instance_security_group_id = instance_sg.id
        # How long a draining VM waits for the ALB to stop sending: the REST groups' check sees the agent's 503. The
        # gRPC groups' check asks TF Serving's gRPC health service, which a drain does not change (docs/aws.md).
        self.drain_wait_seconds = drain_wait_seconds(args.health_check)
        self.targets = {
            role: FleetTargets(
                [rest[role].arn, *([grpc[role].arn] if grpc else [])],
                [rest[role].arn_suffix, *([grpc[role].arn_suffix] if grpc else [])],
            )
            for role in ROLES
        }
        outputs: dict[str, Any] = {
            "arn": self.arn,
            "dns_name": self.dns_name,
            "zone_id": self.zone_id,
            "endpoint": self.endpoint,
            "security_group_id": self.security_group_id,
            "instance_security_group_id": self.instance_security_group_id,
            "target_group_arns": {role: t.target_group_arns for role, t in self.targets.items()},
        }
        if self.grpc_endpoint is not None:
            outputs["grpc_endpoint"] = self.grpc_endpoint
        self.register_outputs(outputs)

    def _limited(self, name: str, part: str) -> tuple[str, pulumi.ResourceOptions]:
        """A child whose AWS name is autonamed within NAME_LIMIT characters: its name, and options with the
        aliases of its earlier name when ``naming.child_name`` had to shorten it."""
        child = naming.child_name(name, part, NAME_LIMIT)
        aliases = naming.child_aliases(name, part, child, self._opts)
        return child, pulumi.ResourceOptions(parent=self, aliases=aliases or None)

    def _tags(self, name: str, args: LoadBalancerArgs, suffix: str) -> dict[str, str]:
        return {**args.tags, "Name": f"{name}-{suffix}"}

    def _security_groups(
        self, name: str, args: LoadBalancerArgs
    ) -> tuple[aws.ec2.SecurityGroup, aws.ec2.SecurityGroup]:
        """The ALB's group (clients in, instances out) and the instances' (only the ALB in; 80/443 out)."""
        child = pulumi.ResourceOptions(parent=self)

        def tags(suffix: str) -> dict[str, str]:
            return self._tags(name, args, suffix)

        alb_sg = aws.ec2.SecurityGroup(
            f"{name}-alb",
            description="modelfleet load balancer: clients in, instances out",
            vpc_id=args.vpc_id,
            revoke_rules_on_delete=True,
            tags=tags("alb"),
            opts=child,
        )
        instance_sg = aws.ec2.SecurityGroup(
            f"{name}-instances",
            description="modelfleet serving VMs: only the load balancer gets in",
            vpc_id=args.vpc_id,
            revoke_rules_on_delete=True,
            tags=tags("instances"),
            opts=child,
        )
        for cidr in args.allowed_source_cidrs:
            for port in args.client_ports:
                aws.vpc.SecurityGroupIngressRule(
                    ingress_rule_name(name, port, cidr),
                    security_group_id=alb_sg.id,
                    description=f"clients {cidr} on {port}",
                    ip_protocol="tcp",
                    from_port=port,
                    to_port=port,
                    cidr_ipv4=cidr,
                    opts=child,
                )
        for port in args.instance_ports:
            aws.vpc.SecurityGroupEgressRule(
                f"{name}-alb-out-{port}",
                security_group_id=alb_sg.id,
                description=f"to the instances on {port}",
                ip_protocol="tcp",
                from_port=port,
                to_port=port,
                referenced_security_group_id=instance_sg.id,
                opts=child,
            )
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-instances-in-{port}",
                security_group_id=instance_sg.id,
                description=f"from the load balancer on {port}",
                ip_protocol="tcp",
                from_port=port,
                to_port=port,
                referenced_security_group_id=alb_sg.id,
                opts=child,
            )
        for port in (HTTP_PORT, HTTPS_PORT):
            aws.vpc.SecurityGroupEgressRule(
                f"{name}-instances-out-{port}",
                security_group_id=instance_sg.id,
                description=f"packages, images, the store (tcp {port})",
                ip_protocol="tcp",
                from_port=port,
                to_port=port,
                cidr_ipv4="0.0.0.0/0",
                opts=child,
            )
        return alb_sg, instance_sg

    def _alb(self, name: str, args: LoadBalancerArgs, alb_sg: aws.ec2.SecurityGroup) -> aws.lb.LoadBalancer:
        access_logs = None
        if args.access_logs_bucket:
            access_logs = aws.lb.LoadBalancerAccessLogsArgs(
                bucket=args.access_logs_bucket, prefix=args.access_logs_prefix or None, enabled=True
            )
        alb_name, alb_opts = self._limited(name, "alb")
        return aws.lb.LoadBalancer(
            alb_name,
            load_balancer_type="application",
            internal=False,
            ip_address_type="ipv4",
            subnets=args.subnet_ids,
            security_groups=[alb_sg.id],
            drop_invalid_header_fields=True,
            enable_deletion_protection=args.deletion_protection,
            enable_http2=True,
            access_logs=access_logs,
            tags=self._tags(name, args, "alb"),
            opts=alb_opts,
        )

    def _target_groups(
        self, name: str, args: LoadBalancerArgs
    ) -> tuple[dict[str, aws.lb.TargetGroup], dict[str, aws.lb.TargetGroup]]:
        """Per fleet role: REST, health-checked on the agent; gRPC (with HTTPS only), on TF Serving's health."""

        def tags(suffix: str) -> dict[str, str]:
            return self._tags(name, args, suffix)

        hc = args.health_check
        rest: dict[str, aws.lb.TargetGroup] = {}
        grpc: dict[str, aws.lb.TargetGroup] = {}
        for role in ROLES:
            rest_name, rest_opts = self._limited(name, f"{role}-rest")
            rest[role] = aws.lb.TargetGroup(
                rest_name,
                vpc_id=args.vpc_id,
                target_type="instance",
                protocol="HTTP",
                protocol_version="HTTP1",
                port=TFS_REST_PORT,
                deregistration_delay=args.deregistration_delay_seconds,
                # Inference latency varies with batch size and model: send each request to the least busy VM.
                load_balancing_algorithm_type="least_outstanding_requests",
                health_check=_health_check(hc, port=str(AGENT_PORT), path=HEALTH_PATH, matcher="200"),
                tags={**tags(f"{role}-rest"), naming.ROLE_LABEL: role},
                opts=rest_opts,
            )
            if args.grpc_exposed:
                grpc_name, grpc_opts = self._limited(name, f"{role}-grpc")
                grpc[role] = aws.lb.TargetGroup(
                    grpc_name,
                    vpc_id=args.vpc_id,
                    target_type="instance",
                    protocol="HTTP",
                    protocol_version="GRPC",
                    port=TFS_GRPC_PORT,
                    deregistration_delay=args.deregistration_delay_seconds,
                    # A gRPC target group's check is a gRPC call; the agent speaks HTTP/1.1, so this checks TF
                    # Serving's own health service. The ASG still replaces a VM the REST group finds unhealthy.
                    health_check=_health_check(hc, port="traffic-port", path=GRPC_HEALTH_PATH, matcher="0"),
                    tags={**tags(f"{role}-grpc"), naming.ROLE_LABEL: role},
                    opts=grpc_opts,
                )
        return rest, grpc

    def route(self, after: Sequence[pulumi.Resource] = ()) -> list[pulumi.Resource]:
        """The listeners and their rules: HTTP (or HTTPS + an HTTP redirect) forwarding by weight, the gRPC rules, the
        internal paths' 404 and the label routes. Each resource that sends traffic by weight or label depends on
        ``after`` (a starting canary's group, which waits for its VMs); returns them, for a stopping canary's group
        to depend on (``infra.components.canary_traffic_order``)."""
        return self._listeners(self._name, self._args, self._alb_resource, self._rest, self._grpc, list(after))

    def _listeners(
        self,
        name: str,
        args: LoadBalancerArgs,
        alb: aws.lb.LoadBalancer,
        rest: Mapping[str, aws.lb.TargetGroup],
        grpc: Mapping[str, aws.lb.TargetGroup],
        after: list[pulumi.Resource],
    ) -> list[pulumi.Resource]:
        child = pulumi.ResourceOptions(parent=self)
        # The resources that carry the canary's traffic: after a starting canary's VMs (``after``).
        carrier = pulumi.ResourceOptions(parent=self, depends_on=after)
        weights = args.weights

        def tags(suffix: str) -> dict[str, str]:
            return self._tags(name, args, suffix)

        def forward(groups: Mapping[str, aws.lb.TargetGroup]) -> aws.lb.ListenerDefaultActionArgs:
            # The canary group stays in the action with weight 0 when the canary is off: a request-count scaling
            # policy needs its target group attached to the load balancer.
            return aws.lb.ListenerDefaultActionArgs(
                type="forward",
                forward=aws.lb.ListenerDefaultActionForwardArgs(
                    target_groups=[
                        aws.lb.ListenerDefaultActionForwardTargetGroupArgs(arn=groups[r].arn, weight=weights[r])
                        for r in ROLES
                    ]
                ),
            )

        carriers: list[pulumi.Resource] = []
        if args.enable_https:
            serving = https = aws.lb.Listener(
                f"{name}-https",
                load_balancer_arn=alb.arn,
                port=HTTPS_PORT,
                protocol="HTTPS",
                ssl_policy=SSL_POLICY,
                certificate_arn=args.certificate_arn,
                default_actions=[forward(rest)],
                tags=tags("https"),
                opts=carrier,
            )
            aws.lb.Listener(
                f"{name}-http",
                load_balancer_arn=alb.arn,
                port=HTTP_PORT,
                protocol="HTTP",
                default_actions=[
                    aws.lb.ListenerDefaultActionArgs(
                        type="redirect",
                        redirect=aws.lb.ListenerDefaultActionRedirectArgs(
                            protocol="HTTPS", port=str(HTTPS_PORT), status_code="HTTP_301"
                        ),
                    )
                ],
                tags=tags("http"),
                opts=child,
            )
            if grpc:
                carriers.append(self._grpc_rules(name, args, https, grpc, carrier))
        else:
            serving = aws.lb.Listener(
                f"{name}-http",
                load_balancer_arn=alb.arn,
                port=HTTP_PORT,
                protocol="HTTP",
                default_actions=[forward(rest)],
                tags=tags("http"),
                opts=carrier,
            )
        carriers.insert(0, serving)
        aws.lb.ListenerRule(
            f"{name}-internal-paths",
            listener_arn=serving.arn,
            priority=INTERNAL_RULE_PRIORITY,
            conditions=[
                aws.lb.ListenerRuleConditionArgs(
                    path_pattern=aws.lb.ListenerRuleConditionPathPatternArgs(values=list(INTERNAL_PATHS))
                )
            ],
            actions=[
                aws.lb.ListenerRuleActionArgs(
                    type="fixed-response",
                    fixed_response=aws.lb.ListenerRuleActionFixedResponseArgs(
                        content_type="text/plain", message_body="not found\n", status_code="404"
                    ),
                )
            ],
            tags=tags("internal-paths"),
            opts=child,
        )
        if args.canary_fleet_runs:
            carriers += self._label_rules(name, args, serving, rest, carrier)
        return carriers

    def _grpc_rules(
        self,
        name: str,
        args: LoadBalancerArgs,
        https: aws.lb.Listener,
        grpc: Mapping[str, aws.lb.TargetGroup],
        carrier: pulumi.ResourceOptions,
    ) -> aws.lb.ListenerRule:
        """gRPC calls of the prediction service to the gRPC groups by weight; every other gRPC call a 404 (ALB rules
        match all their conditions; lowest priority first). Returns the rule that carries traffic."""
        weights = args.weights
        grpc_call = aws.lb.ListenerRuleConditionArgs(
            http_header=aws.lb.ListenerRuleConditionHttpHeaderArgs(
                http_header_name="content-type", values=[GRPC_CONTENT_TYPE]
            )
        )
        predict = aws.lb.ListenerRule(
            f"{name}-grpc",
            listener_arn=https.arn,
            priority=GRPC_RULE_PRIORITY,
            conditions=[
                grpc_call,
                aws.lb.ListenerRuleConditionArgs(
                    path_pattern=aws.lb.ListenerRuleConditionPathPatternArgs(values=list(GRPC_PATHS))
                ),
            ],
            actions=[
                aws.lb.ListenerRuleActionArgs(
                    type="forward",
                    forward=aws.lb.ListenerRuleActionForwardArgs(
                        target_groups=[
                            aws.lb.ListenerRuleActionForwardTargetGroupArgs(arn=grpc[r].arn, weight=weights[r])
                            for r in ROLES
                        ]
                    ),
                )
            ],
            tags=self._tags(name, args, "grpc"),
            opts=carrier,
        )
        aws.lb.ListenerRule(
            f"{name}-grpc-refused",
            listener_arn=https.arn,
            priority=GRPC_REFUSED_RULE_PRIORITY,
            conditions=[grpc_call],
            actions=[
                aws.lb.ListenerRuleActionArgs(
                    type="fixed-response",
                    fixed_response=aws.lb.ListenerRuleActionFixedResponseArgs(
                        content_type="text/plain", message_body="unimplemented\n", status_code="404"
                    ),
                )
            ],
            tags=self._tags(name, args, "grpc-refused"),
            opts=pulumi.ResourceOptions(parent=self),
        )
        return predict

    def _label_rules(
        self,
        name: str,
        args: LoadBalancerArgs,
        serving: aws.lb.Listener,
        rest: Mapping[str, aws.lb.TargetGroup],
        carrier: pulumi.ResourceOptions,
    ) -> list[pulumi.Resource]:
        """``/v1/models/*/labels/<role>...`` to that role's REST group alone, while the canary fleet runs, after the
        gRPC rules (gRPC paths are ``/<package>.<Service>/<Method>``, never ``/v1/models/...``) and the internal paths
        (disjoint). When the canary stops, Pulumi deletes them at the end of the update, after the canary's group has
        shrunk: label requests to the canary meet no VM for those seconds (docs/aws.md "Canary on and off")."""
        rules: list[pulumi.Resource] = []
        for i, role in enumerate(ROLES):
            rules.append(
                aws.lb.ListenerRule(
                    f"{name}-label-{role}",
                    listener_arn=serving.arn,
                    priority=LABEL_RULE_PRIORITY + i,
                    conditions=[
                        aws.lb.ListenerRuleConditionArgs(
                            path_pattern=aws.lb.ListenerRuleConditionPathPatternArgs(values=label_path_patterns(role))
                        )
                    ],
                    actions=[aws.lb.ListenerRuleActionArgs(type="forward", target_group_arn=rest[role].arn)],
                    tags=self._tags(name, args, f"label-{role}"),
                    opts=carrier,
                )
            )
        return rules
