"""How clients reach the fleets, and who may.

REST: a global external Application Load Balancer (``EXTERNAL_MANAGED``). One backend service per fleet, both
behind a Cloud Armor policy that admits only ``allowed_source_cidrs`` (default rule: deny 403); the URL map splits
traffic by weight (stable = 100 - w, canary = w: ``infra.components.traffic_weights``). While the canary fleet runs
(weight > 0 or kept warm), route rules send ``/v1/models/<m>/labels/<role>...`` to that role's fleet whatever the
weights (``label_route_rules``), so a label can be reached through the load balancer. With HTTPS, a
Google-managed certificate serves 443 and port 80 only redirects.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from infra import config
from infra.components import HealthCheck, traffic_weights
from infra.gcp.health import agent_health_check
from model_export.constants import AGENT_PORT, CANARY, HEALTH_PATH, ROLES, STABLE, TFS_GRPC_PORT, TFS_REST_PORT

# Google Front Ends (ALB proxies) and the health checkers of proxy load balancers (gcp.compute.get_lbip_ranges).
GFE_RANGES = ("35.191.0.0/16", "130.211.0.0/22")
# Health checkers of passthrough Network Load Balancers (and of target pools' legacy HTTP health checks).
NLB_HEALTH_CHECK_RANGES = ("35.191.0.0/16", "209.85.152.0/22", "209.85.204.0/22")
DEFAULT_RULE_PRIORITY = 2147483647
ALLOW_RULE_PRIORITY = 1000
ARMOR_RANGES_PER_RULE = 10  # Cloud Armor's limit for a basic src_ip_ranges match
HTTP_PORT, HTTPS_PORT = 80, 443
# Label routes: one path matcher for every host; its route rules' priorities start here, one per (model, label).
# Route rule priorities are unique within a path matcher, 0 to 2147483647, lowest first.
LABEL_MATCHER = "labels"
LABEL_ROUTE_PRIORITY = 100
# The serving check: a VM stops getting traffic ten seconds after its agent stops answering 200.
SERVING_CHECK = HealthCheck(interval_seconds=5, timeout_seconds=5, healthy_threshold=2, unhealthy_threshold=2)


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
    canary_weight_percent: int  # modelfleet:canaryWeightPercent
    rest_port_name: str  # the MIGs' named port for TF Serving's REST port
    max_rate_per_instance: int  # backend capacity (RATE balancing); the autoscaler's "requests" target
    allowed_source_cidrs: tuple[str, ...] = ()  # empty: nobody
    https_domains: tuple[str, ...] = ()  # non-empty: HTTPS with a managed certificate, HTTP redirects
    grpc: GrpcArgs | None = None
    backend_timeout_seconds: int = 60  # above TF Serving's own 30 s REST timeout, so its error reaches the client
    deletion_protection: bool = False
    health_check: HealthCheck = SERVING_CHECK
    # StackConfig.canary_fleet_runs (weight > 0 or canaryKeepWarm): route /labels/<role> paths of `models` to each
    # role's fleet. Off: the weighted split alone (the canary fleet has no VMs).
    canary_fleet_runs: bool = False
    models: tuple[str, ...] = ()  # modelfleet:models: the label routes' paths name each one

    def __post_init__(self) -> None:
        if self.canary_fleet_runs:
            config.validate("models", self.models)  # the routes need at least one valid model name


def weighted_split(canary_weight_percent: int) -> list[tuple[str, int]]:
    """``[(role, weight)]`` with the weights that get traffic (sum 100): a URL map takes no zero weight."""
    return [(role, weight) for role, weight in traffic_weights(canary_weight_percent).items() if weight > 0]


def label_paths(model: str, label: str) -> tuple[str, tuple[str, ...]]:
    """TF Serving's REST paths of ``model`` at ``label``: the exact path (model status), and the prefixes of its
    methods (``:predict``, ``:classify``, ``:regress``) and sub-resources (``/metadata``). Model names and labels need
    no escaping in a path (``[A-Za-z0-9_.-]``, ``[A-Za-z0-9_]``)."""
    path = f"/v1/models/{model}/labels/{label}"
    return path, (f"{path}:", f"{path}/")


def label_route_rules(
    models: Sequence[str], services: Mapping[str, pulumi.Input[str]]
) -> list[gcp.compute.URLMapPathMatcherRouteRuleArgs]:
    """One route rule per model and role: ``/v1/models/<m>/labels/<role>`` (exact, ``:...`` and ``/...``) to that
    role's backend service (``services[role]``). Its match rules are ORed; none overlaps another rule's."""
    rules: list[gcp.compute.URLMapPathMatcherRouteRuleArgs] = []
    for model in models:
        for role in ROLES:
            exact, prefixes = label_paths(model, role)
            rules.append(
                gcp.compute.URLMapPathMatcherRouteRuleArgs(
                    priority=LABEL_ROUTE_PRIORITY + len(rules),
                    match_rules=[
                        gcp.compute.URLMapPathMatcherRouteRuleMatchRuleArgs(full_path_match=exact),
                        *(gcp.compute.URLMapPathMatcherRouteRuleMatchRuleArgs(prefix_match=p) for p in prefixes),
                    ],
                    service=services[role],
                )
            )
    return rules


def ipv4_only(cidrs: Sequence[str]) -> list[str]:
    return [c for c in cidrs if ipaddress.ip_network(c).version == 4]


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
        self._keep = "PREVENT" if args.deletion_protection else None
        self.health_check = self._health_check(name, args)
        self.armor = self._armor(name, args)
        self.backends = self._backends(name, args)
        self.serving_map = self._url_map(name, args)
        self.ip = self._address(name)
        self._frontends(name, args)
        self.firewalls = [self._allow_load_balancer(name, args)]

        self.grpc_address = None
        self.grpc_endpoint = None
        if args.grpc is not None:
            self._grpc(name, args, args.grpc)

        self.address = self.ip.address
        self.endpoint = (
            pulumi.Output.from_input(f"https://{args.https_domains[0]}")
            if args.https_domains
            else self.ip.address.apply(lambda ip: f"http://{ip}")
        )
        self.security_policy = self.armor.self_link
        self.url_map = self.serving_map.self_link
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

    def _health_check(self, name: str, args: LoadBalancerArgs) -> gcp.compute.HealthCheck:
        return agent_health_check(
            f"{name}-hc",
            f"modelfleet serving: the agent's {HEALTH_PATH} (200 only when the fleet's version is up)",
            args.health_check,
            pulumi.ResourceOptions(parent=self),
        )

    def _armor(self, name: str, args: LoadBalancerArgs) -> gcp.compute.SecurityPolicy:
        return gcp.compute.SecurityPolicy(
            f"{name}-armor",
            description="modelfleet: only modelfleet:allowedSourceCidrs reach the fleets",
            type="CLOUD_ARMOR",
            rules=armor_rules(args.allowed_source_cidrs),
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _backends(self, name: str, args: LoadBalancerArgs) -> dict[str, gcp.compute.BackendService]:
        backends: dict[str, gcp.compute.BackendService] = {}
        for role, group in ((STABLE, args.stable_group), (CANARY, args.canary_group)):
            backends[role] = gcp.compute.BackendService(
                f"{name}-{role}",
                description=f"modelfleet {role} fleet, TF Serving REST",
                load_balancing_scheme="EXTERNAL_MANAGED",
                protocol="HTTP",
                port_name=args.rest_port_name,
                timeout_sec=args.backend_timeout_seconds,
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
                deletion_policy=self._keep,
                opts=pulumi.ResourceOptions(parent=self),
            )
        return backends

    def _url_map(self, name: str, args: LoadBalancerArgs) -> gcp.compute.URLMap:
        """The weighted split (``default_service`` when one fleet gets all traffic: a URL map takes no zero weight);
        while the canary fleet runs, a path matcher for every host with the label routes before the same split."""
        split = weighted_split(args.canary_weight_percent)
        links = [(self.backends[role].self_link, weight) for role, weight in split]
        only = links[0][0] if len(links) == 1 else None  # a route action with weights otherwise
        description = f"all traffic to the {split[0][0]} fleet" if only else " / ".join(f"{r} {w}%" for r, w in split)
        host_rules = path_matchers = None
        if args.canary_fleet_runs:
            description += "; /labels/<role> to that fleet"
            # Route rules need a path matcher, and only a host rule reaches one: "*" matches every host. The URL map's
            # own default (below) still answers requests no host rule matches, with the same split.
            host_rules = [gcp.compute.URLMapHostRuleArgs(hosts=["*"], path_matcher=LABEL_MATCHER)]
            path_matchers = [self._label_matcher(args, only, links)]
        return gcp.compute.URLMap(
            f"{name}-urlmap",
            description=description,
            default_service=only,
            default_route_action=None
            if only
            else gcp.compute.URLMapDefaultRouteActionArgs(
                weighted_backend_services=[
                    gcp.compute.URLMapDefaultRouteActionWeightedBackendServiceArgs(backend_service=link, weight=weight)
                    for link, weight in links
                ]
            ),
            host_rules=host_rules,
            path_matchers=path_matchers,
            deletion_policy=self._keep,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _label_matcher(
        self,
        args: LoadBalancerArgs,
        only: pulumi.Input[str] | None,
        links: Sequence[tuple[pulumi.Input[str], int]],
    ) -> gcp.compute.URLMapPathMatcherArgs:
        """The label routes, then the URL map's split as the default: one backend service, or a route action with
        weights (a path matcher takes one or the other)."""
        return gcp.compute.URLMapPathMatcherArgs(
            name=LABEL_MATCHER,
            description="TF Serving labels to the fleet of that role, the rest by weight",
            default_service=only,
            default_route_action=None
            if only
            else gcp.compute.URLMapPathMatcherDefaultRouteActionArgs(
                weighted_backend_services=[
                    gcp.compute.URLMapPathMatcherDefaultRouteActionWeightedBackendServiceArgs(
                        backend_service=link, weight=weight
                    )
                    for link, weight in links
                ]
            ),
            route_rules=label_route_rules(
                args.models, {role: backend.self_link for role, backend in self.backends.items()}
            ),
        )

    def _address(self, name: str) -> gcp.compute.GlobalAddress:
        return gcp.compute.GlobalAddress(
            f"{name}-ip",
            description="modelfleet load balancer",
            address_type="EXTERNAL",
            ip_version="IPV4",
            deletion_policy=self._keep,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _frontends(self, name: str, args: LoadBalancerArgs) -> None:
        """HTTP on 80 to the serving URL map, or with HTTPS: 443 to it and 80 redirecting to 443."""
        http_map = self._https(name, args) if args.https_domains else self.serving_map
        self.http_proxy = gcp.compute.TargetHttpProxy(
            f"{name}-http-proxy", url_map=http_map.self_link, opts=pulumi.ResourceOptions(parent=self)
        )
        self.http_rule = self._forwarding_rule(
            f"{name}-http",
            "modelfleet HTTP" + (" (redirects to HTTPS)" if args.https_domains else ""),
            self.http_proxy.self_link,
            HTTP_PORT,
        )

    def _forwarding_rule(
        self, resource_name: str, description: str, target: pulumi.Input[str], port: int
    ) -> gcp.compute.GlobalForwardingRule:
        return gcp.compute.GlobalForwardingRule(
            resource_name,
            description=description,
            target=target,
            ip_address=self.ip.address,
            ip_protocol="TCP",
            port_range=str(port),
            load_balancing_scheme="EXTERNAL_MANAGED",
            deletion_policy=self._keep,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _https(self, name: str, args: LoadBalancerArgs) -> gcp.compute.URLMap:
        """The HTTPS front end; returns the URL map port 80 serves (a redirect to HTTPS)."""
        child = pulumi.ResourceOptions(parent=self)
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
            url_map=self.serving_map.self_link,
            ssl_certificates=[self.certificate.self_link],
            ssl_policy=self.tls_policy.self_link,
            opts=child,
        )
        self.https_rule = self._forwarding_rule(
            f"{name}-https", "modelfleet HTTPS", self.https_proxy.self_link, HTTPS_PORT
        )
        self.redirect_map = gcp.compute.URLMap(
            f"{name}-redirect",
            description="HTTP to HTTPS",
            default_url_redirect=gcp.compute.URLMapDefaultUrlRedirectArgs(
                https_redirect=True,
                strip_query=False,
                redirect_response_code="MOVED_PERMANENTLY_DEFAULT",
            ),
            deletion_policy=self._keep,
            opts=child,
        )
        return self.redirect_map

    def _allow_load_balancer(self, name: str, args: LoadBalancerArgs) -> gcp.compute.Firewall:
        return gcp.compute.Firewall(
            f"{name}-allow-lb",
            description="Google front ends and health checkers to TF Serving REST and the agent's health port",
            network=args.network,
            direction="INGRESS",
            source_ranges=list(GFE_RANGES),
            target_service_accounts=[args.backend_service_account],
            allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=[str(TFS_REST_PORT), str(AGENT_PORT)])],
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _grpc(self, name: str, args: LoadBalancerArgs, grpc: GrpcArgs) -> None:
        child = pulumi.ResourceOptions(parent=self)
        self.grpc_ip = gcp.compute.Address(
            f"{name}-grpc-ip",
            description="modelfleet gRPC",
            region=grpc.region,
            address_type="EXTERNAL",
            network_tier="PREMIUM",
            deletion_policy=self._keep,
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
            deletion_policy=self._keep,
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
        ipv4_clients = ipv4_only(args.allowed_source_cidrs)
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
