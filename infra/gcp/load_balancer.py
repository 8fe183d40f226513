"""How clients reach the fleets, and who may.

REST: a global external Application Load Balancer (``EXTERNAL_MANAGED``). One backend service per fleet, both
behind a Cloud Armor policy that admits only ``allowed_source_cidrs`` (default rule: deny 403); the URL map splits
traffic by weight (stable = 100 - w, canary = w). With HTTPS, a Google-managed certificate serves 443 and port 80
only redirects.

gRPC: a regional external passthrough Network Load Balancer on TF Serving's gRPC port in front of the stable fleet
(its target pool, see ``fleet.py``). The ALB would speak HTTP/2 to backends only over TLS, and TF Serving's gRPC port
is plaintext, so it cannot carry gRPC without TLS on the VMs. A passthrough NLB keeps client addresses, so the VPC
firewall is the allowlist there (``allowed_source_cidrs`` on the gRPC port only). No weighted split at L4: gRPC goes
to the stable fleet; canary A/B runs on REST. docs/gcp.md has the whole argument.

Firewall: the VMs admit the serving and agent ports only from Google's front ends and health checkers (and the gRPC
port from the allowed clients); there is no rule from 0.0.0.0/0.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from model_export.constants import AGENT_PORT, CANARY, HEALTH_PATH, STABLE, TFS_GRPC_PORT, TFS_REST_PORT

# Google Front Ends (ALB proxies) and the health checkers of proxy load balancers (gcp.compute.get_lbip_ranges).
GFE_RANGES = ("35.191.0.0/16", "130.211.0.0/22")
# Health checkers of passthrough Network Load Balancers (and of target pools' legacy HTTP health checks).
NLB_HEALTH_CHECK_RANGES = ("35.191.0.0/16", "209.85.152.0/22", "209.85.204.0/22")
DEFAULT_RULE_PRIORITY = 2147483647
ALLOW_RULE_PRIORITY = 1000
ARMOR_RANGES_PER_RULE = 10  # Cloud Armor's limit for a basic src_ip_ranges match


@dataclass(frozen=True)
class GrpcArgs:
    """The gRPC passthrough NLB: regional, in front of the stable fleet's target pool (``ServingFleet``)."""

    region: str
    target_pool: pulumi.Input[str]


@dataclass(frozen=True)
class LoadBalancerArgs:
    network: pulumi.Input[str]  # the fleets' VPC (firewall rules live there)
    backend_service_account: pulumi.Input[str]  # the fleets' service account email (firewall targets)
    stable_group: pulumi.Input[str]
    canary_group: pulumi.Input[str]
    canary_weight_percent: int  # 0-100
    rest_port_name: str  # the MIGs' named port for TF Serving's REST port
    max_rate_per_instance: int  # backend capacity (RATE balancing); the autoscaler's "requests" target
    allowed_source_cidrs: tuple[str, ...] = ()  # empty: nobody
    https_domains: tuple[str, ...] = ()  # non-empty: HTTPS with a managed certificate, HTTP redirects
    grpc: GrpcArgs | None = None
    backend_timeout_sec: int = 60  # above TF Serving's own 30 s REST timeout, so its error reaches the client
    deletion_protection: bool = False


def weighted_split(canary_weight_percent: int) -> list[tuple[str, int]]:
    """``[(role, weight)]`` with the weights that get traffic (sum 100)."""
    if not 0 <= canary_weight_percent <= 100:
        raise ValueError(f"canary weight {canary_weight_percent} is not a percentage")
    split = [(STABLE, 100 - canary_weight_percent), (CANARY, canary_weight_percent)]
    return [(role, weight) for role, weight in split if weight > 0]


def armor_rules(allowed_source_cidrs: Sequence[str]) -> list[gcp.compute.SecurityPolicyRuleArgs]:
    """Allow rules for the CIDRs (10 per rule), then the default rule: deny everyone else with 403."""
    cidrs = list(allowed_source_cidrs)
    rules = [
        gcp.compute.SecurityPolicyRuleArgs(
            action="allow",
            priority=ALLOW_RULE_PRIORITY + i,
            description="allowed clients (modelfleet:allowedSourceCidrs)",
            match=gcp.compute.SecurityPolicyRuleMatchArgs(
                versioned_expr="SRC_IPS_V1",
                config=gcp.compute.SecurityPolicyRuleMatchConfigArgs(
                    src_ip_ranges=cidrs[start : start + ARMOR_RANGES_PER_RULE]
                ),
            ),
        )
        for i, start in enumerate(range(0, len(cidrs), ARMOR_RANGES_PER_RULE))
    ]
    rules.append(
        gcp.compute.SecurityPolicyRuleArgs(
            action="deny(403)",
            priority=DEFAULT_RULE_PRIORITY,
            description="default: deny everyone not allowed above",
            match=gcp.compute.SecurityPolicyRuleMatchArgs(
                versioned_expr="SRC_IPS_V1",
                config=gcp.compute.SecurityPolicyRuleMatchConfigArgs(src_ip_ranges=["*"]),
            ),
        )
    )
    return rules


class LoadBalancer(pulumi.ComponentResource):
    address: pulumi.Output[str]  # the ALB's global IPv4 address (point the HTTPS domains' A records here)
    endpoint: pulumi.Output[str]  # http://<address> or https://<first domain>
    grpc_address: pulumi.Output[str] | None
    grpc_endpoint: pulumi.Output[str] | None  # <address>:8500
    security_policy: pulumi.Output[str]
    url_map: pulumi.Output[str]

    def __init__(self, name: str, args: LoadBalancerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("modelfleet:gcp:LoadBalancer", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        keep = "PREVENT" if args.deletion_protection else None

        self.health_check = gcp.compute.HealthCheck(
            f"{name}-hc",
            description=f"modelfleet serving: the agent's {HEALTH_PATH} (200 only when the fleet's version is up)",
            check_interval_sec=5,
            timeout_sec=5,
            healthy_threshold=2,
            unhealthy_threshold=2,
            http_health_check=gcp.compute.HealthCheckHttpHealthCheckArgs(port=AGENT_PORT, request_path=HEALTH_PATH),
            log_config=gcp.compute.HealthCheckLogConfigArgs(enable=True),
            opts=child,
        )
        self.armor = gcp.compute.SecurityPolicy(
            f"{name}-armor",
            description="modelfleet: only modelfleet:allowedSourceCidrs reach the fleets",
            type="CLOUD_ARMOR",
            rules=armor_rules(args.allowed_source_cidrs),
            opts=child,
        )
        self.backends: dict[str, gcp.compute.BackendService] = {}
        for role, group in ((STABLE, args.stable_group), (CANARY, args.canary_group)):
            self.backends[role] = gcp.compute.BackendService(
                f"{name}-{role}",
                description=f"modelfleet {role} fleet, TF Serving REST",
                load_balancing_scheme="EXTERNAL_MANAGED",
                protocol="HTTP",
                port_name=args.rest_port_name,
                timeout_sec=args.backend_timeout_sec,
                connection_draining_timeout_sec=30,
                health_checks=self.health_check.self_link,
                security_policy=self.armor.self_link,
                backends=[
                    gcp.compute.BackendServiceBackendArgs(
                        group=group,
                        # RATE: the capacity the "requests" autoscaling metric measures against; with "cpu" it
                        # is a soft capacity the single-region ALB may exceed.
                        balancing_mode="RATE",
                        max_rate_per_instance=args.max_rate_per_instance,
                        capacity_scaler=1.0,
                    )
                ],
                log_config=gcp.compute.BackendServiceLogConfigArgs(enable=True, sample_rate=1.0),
                deletion_policy=keep,
                opts=child,
            )

        split = weighted_split(args.canary_weight_percent)
        if len(split) == 1:
            serving_map = gcp.compute.URLMap(
                f"{name}-urlmap",
                description=f"all traffic to the {split[0][0]} fleet",
                default_service=self.backends[split[0][0]].self_link,
                deletion_policy=keep,
                opts=child,
            )
        else:
            serving_map = gcp.compute.URLMap(
                f"{name}-urlmap",
                description=" / ".join(f"{role} {weight}%" for role, weight in split),
                default_route_action=gcp.compute.URLMapDefaultRouteActionArgs(
                    weighted_backend_services=[
                        gcp.compute.URLMapDefaultRouteActionWeightedBackendServiceArgs(
                            backend_service=self.backends[role].self_link, weight=weight
                        )
                        for role, weight in split
                    ]
                ),
                deletion_policy=keep,
                opts=child,
            )
        self.serving_map = serving_map

        self.ip = gcp.compute.GlobalAddress(
            f"{name}-ip",
            description="modelfleet load balancer",
            address_type="EXTERNAL",
            ip_version="IPV4",
            deletion_policy=keep,
            opts=child,
        )
        http_map = serving_map
        if args.https_domains:
            self.certificate = gcp.compute.ManagedSslCertificate(
                f"{name}-cert",
                description="modelfleet: " + ", ".join(args.https_domains),
                managed=gcp.compute.ManagedSslCertificateManagedArgs(domains=list(args.https_domains)),
                opts=child,
            )
            self.tls_policy = gcp.compute.SSLPolicy(
                f"{name}-tls",
                description="TLS 1.2+, modern ciphers",
                min_tls_version="TLS_1_2",
                profile="MODERN",
                opts=child,
            )
            self.https_proxy = gcp.compute.TargetHttpsProxy(
                f"{name}-https-proxy",
                url_map=serving_map.self_link,
                ssl_certificates=[self.certificate.self_link],
                ssl_policy=self.tls_policy.self_link,
                opts=child,
            )
            self.https_rule = gcp.compute.GlobalForwardingRule(
                f"{name}-https",
                description="modelfleet HTTPS",
                target=self.https_proxy.self_link,
                ip_address=self.ip.address,
                ip_protocol="TCP",
                port_range="443",
                load_balancing_scheme="EXTERNAL_MANAGED",
                deletion_policy=keep,
                opts=child,
            )
            http_map = gcp.compute.URLMap(
                f"{name}-redirect",
                description="HTTP to HTTPS",
                default_url_redirect=gcp.compute.URLMapDefaultUrlRedirectArgs(
                    https_redirect=True,
                    strip_query=False,
                    redirect_response_code="MOVED_PERMANENTLY_DEFAULT",
                ),
                deletion_policy=keep,
                opts=child,
            )
            self.redirect_map = http_map
        self.http_proxy = gcp.compute.TargetHttpProxy(f"{name}-http-proxy", url_map=http_map.self_link, opts=child)
        self.http_rule = gcp.compute.GlobalForwardingRule(
            f"{name}-http",
            description="modelfleet HTTP" + (" (redirects to HTTPS)" if args.https_domains else ""),
            target=self.http_proxy.self_link,
            ip_address=self.ip.address,
            ip_protocol="TCP",
            port_range="80",
            load_balancing_scheme="EXTERNAL_MANAGED",
            deletion_policy=keep,
            opts=child,
        )

        self.firewalls: list[gcp.compute.Firewall] = [
            gcp.compute.Firewall(
                f"{name}-allow-lb",
                description="Google front ends and health checkers to TF Serving REST and the agent's health port",
                network=args.network,
                direction="INGRESS",
                source_ranges=list(GFE_RANGES),
                target_service_accounts=[args.backend_service_account],
                allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=[str(TFS_REST_PORT), str(AGENT_PORT)])],
                opts=child,
            )
        ]

        self.grpc_address = None
        self.grpc_endpoint = None
        if args.grpc is not None:
            self._grpc(name, args, args.grpc, keep)

        self.address = self.ip.address
        self.endpoint = (
            pulumi.Output.from_input(f"https://{args.https_domains[0]}")
            if args.https_domains
            else self.ip.address.apply(lambda ip: f"http://{ip}")
        )
        self.security_policy = self.armor.self_link
        self.url_map = serving_map.self_link
        self.register_outputs(
            {
                "address": self.address,
                "endpoint": self.endpoint,
                "grpc_address": self.grpc_address,
                "grpc_endpoint": self.grpc_endpoint,
                "security_policy": self.security_policy,
                "url_map": self.url_map,
            }
        )

    def _grpc(self, name: str, args: LoadBalancerArgs, grpc: GrpcArgs, keep: str | None) -> None:
        child = pulumi.ResourceOptions(parent=self)
        self.grpc_ip = gcp.compute.Address(
            f"{name}-grpc-ip",
            description="modelfleet gRPC",
            region=grpc.region,
            address_type="EXTERNAL",
            network_tier="PREMIUM",
            deletion_policy=keep,
            opts=child,
        )
        self.grpc_rule = gcp.compute.ForwardingRule(
            f"{name}-grpc-rule",
            description="modelfleet gRPC (TF Serving PredictionService), passthrough to the stable fleet",
            region=grpc.region,
            load_balancing_scheme="EXTERNAL",
            ip_protocol="TCP",
            port_range=str(TFS_GRPC_PORT),
            ip_address=self.grpc_ip.address,
            target=grpc.target_pool,
            network_tier="PREMIUM",
            deletion_policy=keep,
            opts=child,
        )
        self.firewalls.append(
            gcp.compute.Firewall(
                f"{name}-allow-grpc-hc",
                description="target pool health checkers to the agent's health port",
                network=args.network,
                direction="INGRESS",
                source_ranges=list(NLB_HEALTH_CHECK_RANGES),
                target_service_accounts=[args.backend_service_account],
                allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=[str(AGENT_PORT)])],
                opts=child,
            )
        )
        ipv4_clients = [c for c in args.allowed_source_cidrs if ipaddress.ip_network(c).version == 4]
        if ipv4_clients:
            # The NLB's address is IPv4 (and a rule cannot mix families), so IPv6 client ranges do not apply here.
            # The passthrough NLB keeps the client's address: this rule is the gRPC allowlist. Logged, since there
            # is no Cloud Armor or request log in front of it.
            self.firewalls.append(
                gcp.compute.Firewall(
                    f"{name}-allow-grpc-clients",
                    description="allowed clients (modelfleet:allowedSourceCidrs) to TF Serving gRPC",
                    network=args.network,
                    direction="INGRESS",
                    source_ranges=ipv4_clients,
                    target_service_accounts=[args.backend_service_account],
                    allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=[str(TFS_GRPC_PORT)])],
                    log_config=gcp.compute.FirewallLogConfigArgs(metadata="INCLUDE_ALL_METADATA"),
                    opts=child,
                )
            )
        self.grpc_address = self.grpc_ip.address
        self.grpc_endpoint = self.grpc_ip.address.apply(lambda ip: f"{ip}:{TFS_GRPC_PORT}")
