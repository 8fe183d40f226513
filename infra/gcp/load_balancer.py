"""How clients reach the fleets, and who may.

One global external Application Load Balancer (``EXTERNAL_MANAGED``) for REST and gRPC. Per fleet a REST backend
service (HTTP/1.1 to TF Serving's REST port) and, with gRPC, a gRPC one (``H2C``: HTTP/2 in cleartext to TF Serving's
gRPC port), all behind a Cloud Armor policy that admits only ``allowed_source_cidrs`` (default rule: deny 403) and
health-checked on the agent's readiness. The URL map splits traffic by weight (stable = 100 - w, canary = w:
``infra.components.traffic_weights``), for REST and gRPC alike. Its route rules send gRPC calls of
``tensorflow.serving.PredictionService`` (and only those) to the gRPC backend services: every other gRPC path, TF
Serving's ``ModelService`` with its config reloads included, takes the REST default and gets TF Serving's REST 404,
which a gRPC client reads as UNIMPLEMENTED. While the canary fleet runs (weight > 0 or kept warm), route rules also
send ``/v1/models/<m>/labels/<role>...`` to that role's fleet whatever the weights (``label_route_rules``). With HTTPS,
a Google-managed certificate serves 443 and port 80 only redirects; gRPC needs HTTPS (clients speak HTTP/2 through TLS
and ALPN), so without it gRPC is not exposed.

Each fleet's group is then the backend of two backend services, and the autoscaler cannot scale on load-balancer
utilisation (``MORE_THAN_ONE_BACKEND_SERVICE``): with gRPC, the fleets scale on CPU (``grpc_autoscaling``).
docs/gcp.md has the whole argument.

Firewall: the VMs admit the serving and agent ports only from Google's front ends and health checkers; there is no
rule from 0.0.0.0/0, and nothing reaches a VM's ports from a client directly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from infra import config
from infra.components import AutoscalingTarget, HealthCheck, traffic_weights
from infra.gcp.health import agent_health_check
from model_export.constants import AGENT_PORT, CANARY, HEALTH_PATH, ROLES, STABLE, TFS_GRPC_PORT, TFS_REST_PORT

# Google Front Ends (ALB proxies) and the health checkers of proxy load balancers (gcp.compute.get_lbip_ranges).
GFE_RANGES = ("35.191.0.0/16", "130.211.0.0/22")
DEFAULT_RULE_PRIORITY = 2147483647
ALLOW_RULE_PRIORITY = 1000
ARMOR_RANGES_PER_RULE = 10  # Cloud Armor's limit for a basic src_ip_ranges match
HTTP_PORT, HTTPS_PORT = 80, 443
# Label routes: one path matcher for every host; its route rules' priorities start here, one per (model, label).
# Route rule priorities are unique within a path matcher, 0 to 2147483647, lowest first.
LABEL_MATCHER = "labels"
LABEL_ROUTE_PRIORITY = 100
# gRPC: the one service clients may call (TF Serving registers ModelService, config reloads, on the same port), by
# path prefix and gRPC content type; before the label routes (disjoint paths anyway).
GRPC_SERVICE = "tensorflow.serving.PredictionService"
GRPC_PATH_PREFIX = f"/{GRPC_SERVICE}/"
GRPC_CONTENT_TYPE_PREFIX = "application/grpc"
GRPC_ROUTE_PRIORITY = 10
# HTTP/2 in cleartext to the backends: TF Serving's gRPC port speaks no TLS.
GRPC_BACKEND_PROTOCOL = "H2C"
# The port-80 forwarding rule's description, whatever `enableHttps`: a description is immutable (a change replaces the
# rule, and a second rule on the same address and port is refused).
HTTP_RULE_DESCRIPTION = "modelfleet HTTP"
# The serving check: a VM stops getting traffic ten seconds after its agent stops answering 200.
SERVING_CHECK = HealthCheck(interval_seconds=5, timeout_seconds=5, healthy_threshold=2, unhealthy_threshold=2)


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
    # The MIGs' named port for TF Serving's gRPC port: gRPC through the ALB (with HTTPS only). None: no gRPC.
    grpc_port_name: str | None = None
    # The fleets' autoscalers scale on the load balancer's utilisation (autoscalingMetric: requests).
    lb_utilization_autoscaling: bool = False
    backend_timeout_seconds: int = 60  # above TF Serving's own 30 s REST timeout, so its error reaches the client
    deletion_protection: bool = False
    health_check: HealthCheck = SERVING_CHECK
    # StackConfig.canary_fleet_runs (weight > 0 or canaryKeepWarm): route /labels/<role> paths of `models` to each
    # role's fleet. Off: the weighted split alone (the canary fleet has no VMs).
    canary_fleet_runs: bool = False
    models: tuple[str, ...] = ()  # modelfleet:models: the label routes' paths name each one
    # What the serving URL map (weights, label and gRPC routes) is updated after: a starting canary's wait for its
    # healthy VMs (``infra.gcp.wait.FleetHealthy``), so its weight reaches it only once it serves.
    serving_after: Sequence[pulumi.Resource] = ()

    def __post_init__(self) -> None:
        if self.canary_fleet_runs:
            config.validate("models", self.models)  # the routes need at least one valid model name
        if self.grpc_exposed and self.lb_utilization_autoscaling:
            raise ValueError(f"{GRPC_AUTOSCALING}: the fleets must scale on CPU (grpc_autoscaling)")

    @property
    def grpc_exposed(self) -> bool:
        """gRPC reaches the fleets: asked for, and HTTPS on (gRPC clients speak HTTP/2 through TLS and ALPN)."""
        return grpc_exposed(self.grpc_port_name is not None, bool(self.https_domains))


GRPC_AUTOSCALING = (
    "with gRPC on gcp each fleet is the backend of two backend services, REST and gRPC, and an autoscaler cannot scale "
    "on load-balancer utilisation for such a group (MORE_THAN_ONE_BACKEND_SERVICE)"
)


def grpc_exposed(enable_grpc: bool, enable_https: bool) -> bool:
    """gRPC goes through the ALB, which gRPC clients reach with HTTP/2 over TLS: exposed with HTTPS only."""
    return enable_grpc and enable_https


def grpc_autoscaling(target: AutoscalingTarget, exposed: bool) -> AutoscalingTarget:
    """What the fleets' autoscalers can aim at: with gRPC exposed, CPU instead of requests (``GRPC_AUTOSCALING``),
    with a warning naming the keys. The config should refuse that pair (a rule across keys, for ``infra.config``);
    until it does, the stack keeps serving both protocols and scales on CPU."""
    if not (exposed and target.metric == "requests"):
        return target
    pulumi.log.warn(
        f"{config.PROJECT}:autoscalingMetric = 'requests' cannot work here: {GRPC_AUTOSCALING}. The fleets scale on "
        f"CPU ({config.PROJECT}:targetCpuPercent = {target.target_cpu_percent}); set autoscalingMetric to cpu, or "
        "enableGrpc to false. See docs/gcp.md."
    )
    return dataclasses.replace(target, metric="cpu")


def weighted_split(canary_weight_percent: int) -> list[tuple[str, int]]:
    """``[(role, weight)]`` with the weights that get traffic (sum 100): a URL map takes no zero weight."""
    return [(role, weight) for role, weight in traffic_weights(canary_weight_percent).items() if weight > 0]


def label_paths(model: str, label: str) -> tuple[str, tuple[str, ...]]:
    """TF Serving's REST paths of ``model`` at ``label``: the exact path (model status), and the prefixes of its
    methods (``:predict``, ``:classify``, ``:regress``) and sub-resources (``/metadata``). Model names and labels need
    no escaping in a path (``[A-Za-z0-9_.-]``, ``[A-Za-z0-9_]``)."""
    path = f"/v1/models/{model}/labels/{label}"
    return path, (f"{path}:", f"{path}/")


Target = tuple[pulumi.Input[str] | None, Sequence[tuple[pulumi.Input[str], int]]]


def split_target(links: Sequence[tuple[pulumi.Input[str], int]]) -> Target:
    """``(service, [])`` when one backend service gets everything (a URL map takes no zero weight and a route takes a
    service or weights, not both), else ``(None, weights)``."""
    return (links[0][0], []) if len(links) == 1 else (None, list(links))


def grpc_route_rule(
    services: Mapping[str, pulumi.Input[str]], canary_weight_percent: int
) -> gcp.compute.URLMapPathMatcherRouteRuleArgs:
    """gRPC calls of ``tensorflow.serving.PredictionService`` (path prefix and gRPC content type) to the gRPC backend
    services (``services[role]``), with the same weights as REST."""
    only, weights = split_target([(services[role], w) for role, w in weighted_split(canary_weight_percent)])
    return gcp.compute.URLMapPathMatcherRouteRuleArgs(
        priority=GRPC_ROUTE_PRIORITY,
        match_rules=[
            gcp.compute.URLMapPathMatcherRouteRuleMatchRuleArgs(
                prefix_match=GRPC_PATH_PREFIX,
                header_matches=[
                    gcp.compute.URLMapPathMatcherRouteRuleMatchRuleHeaderMatchArgs(
                        header_name="content-type", prefix_match=GRPC_CONTENT_TYPE_PREFIX
                    )
                ],
            )
        ],
        service=only,
        route_action=None
        if only
        else gcp.compute.URLMapPathMatcherRouteRuleRouteActionArgs(
            weighted_backend_services=[
                gcp.compute.URLMapPathMatcherRouteRuleRouteActionWeightedBackendServiceArgs(
                    backend_service=link, weight=weight
                )
                for link, weight in weights
            ]
        ),
    )


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
    grpc_endpoint: pulumi.Output[str] | None  # <first HTTPS domain>:443, with gRPC exposed
    security_policy: pulumi.Output[str]
    url_map: pulumi.Output[str]
    # What sends traffic to a fleet by weight, label or gRPC route: the serving URL map. A fleet that stops running
    # scales to zero after it (ServingFleet.autoscale); a starting canary's wait comes before it (`serving_after`).
    traffic: list[pulumi.Resource]

    def __init__(self, name: str, args: LoadBalancerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("modelfleet:gcp:LoadBalancer", name, None, opts)
        if args.grpc_port_name is not None and not args.grpc_exposed:
            pulumi.log.warn(
                f"{config.PROJECT}:enableGrpc is on but enableHttps is off: gRPC goes through the Application Load "
                "Balancer, which clients reach with HTTP/2 over TLS only, so gRPC is not exposed (set enableHttps and "
                "httpsDomains). See docs/gcp.md.",
                resource=self,
            )
        self._keep = "PREVENT" if args.deletion_protection else None
        self.health_check = self._health_check(name, args)
        self.armor = self._armor(name, args)
        self.backends = self._backends(name, args)
        self.grpc_backends = self._grpc_backends(name, args) if args.grpc_exposed else {}
        self.serving_map = self._url_map(name, args)
        self.ip = self._address(name)
        self._frontends(name, args)
        self.firewalls = [self._allow_load_balancer(name, args)]

        self.address = self.ip.address
        self.endpoint = (
            pulumi.Output.from_input(f"https://{args.https_domains[0]}")
            if args.https_domains
            else self.ip.address.apply(lambda ip: f"http://{ip}")
        )
        self.grpc_endpoint = (
            pulumi.Output.from_input(f"{args.https_domains[0]}:{HTTPS_PORT}") if args.grpc_exposed else None
        )
        self.security_policy = self.armor.self_link
        self.url_map = self.serving_map.self_link
        self.traffic = [self.serving_map]
        self.register_outputs(
            {
                "address": self.address,
                "endpoint": self.endpoint,
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

    def _backend_service(
        self,
        resource_name: str,
        description: str,
        args: LoadBalancerArgs,
        group: pulumi.Input[str],
        *,
        protocol: str,
        port_name: str,
    ) -> gcp.compute.BackendService:
        return gcp.compute.BackendService(
            resource_name,
            description=description,
            load_balancing_scheme="EXTERNAL_MANAGED",
            protocol=protocol,
            port_name=port_name,
            timeout_sec=args.backend_timeout_seconds,
            connection_draining_timeout_sec=30,
            # The agent's readiness for both protocols: a draining VM leaves gRPC too.
            health_checks=self.health_check.self_link,
            security_policy=self.armor.self_link,
            backends=[
                gcp.compute.BackendServiceBackendArgs(
                    group=group,
                    # RATE: the capacity the "requests" autoscaling metric measures against; with "cpu" it is a
                    # soft capacity the single-region ALB may exceed. The same mode on both services of a group.
                    balancing_mode="RATE",
                    max_rate_per_instance=args.max_rate_per_instance,
                    capacity_scaler=1.0,
                )
            ],
            log_config=gcp.compute.BackendServiceLogConfigArgs(enable=True, sample_rate=1.0),
            deletion_policy=self._keep,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _groups(self, args: LoadBalancerArgs) -> dict[str, pulumi.Input[str]]:
        return {STABLE: args.stable_group, CANARY: args.canary_group}

    def _backends(self, name: str, args: LoadBalancerArgs) -> dict[str, gcp.compute.BackendService]:
        return {
            role: self._backend_service(
                f"{name}-{role}",
                f"modelfleet {role} fleet, TF Serving REST",
                args,
                group,
                protocol="HTTP",
                port_name=args.rest_port_name,
            )
            for role, group in self._groups(args).items()
        }

    def _grpc_backends(self, name: str, args: LoadBalancerArgs) -> dict[str, gcp.compute.BackendService]:
        """TF Serving's gRPC port, HTTP/2 in cleartext (``H2C``): reached only through ``grpc_route_rule``."""
        assert args.grpc_port_name is not None
        return {
            role: self._backend_service(
                f"{name}-{role}-grpc",
                f"modelfleet {role} fleet, TF Serving gRPC ({GRPC_SERVICE} only, by the URL map)",
                args,
                group,
                protocol=GRPC_BACKEND_PROTOCOL,
                port_name=args.grpc_port_name,
            )
            for role, group in self._groups(args).items()
        }

    def _url_map(self, name: str, args: LoadBalancerArgs) -> gcp.compute.URLMap:
        """The weighted split (``default_service`` when one fleet gets all traffic: a URL map takes no zero weight);
        with gRPC or while the canary fleet runs, a path matcher for every host with the gRPC route and the label routes
        before the same split."""
        split = weighted_split(args.canary_weight_percent)
        only, weights = split_target([(self.backends[role].self_link, weight) for role, weight in split])
        description = f"all traffic to the {split[0][0]} fleet" if only else " / ".join(f"{r} {w}%" for r, w in split)
        route_rules: list[gcp.compute.URLMapPathMatcherRouteRuleArgs] = []
        if self.grpc_backends:
            description += f"; gRPC {GRPC_SERVICE} only"
            route_rules.append(
                grpc_route_rule(
                    {role: b.self_link for role, b in self.grpc_backends.items()}, args.canary_weight_percent
                )
            )
        if args.canary_fleet_runs:
            description += "; /labels/<role> to that fleet"
            route_rules += label_route_rules(
                args.models, {role: backend.self_link for role, backend in self.backends.items()}
            )
        host_rules = path_matchers = None
        if route_rules:
            # Route rules need a path matcher, and only a host rule reaches one: "*" matches every host. The URL map's
            # own default (below) still answers requests no host rule matches, with the same split.
            host_rules = [gcp.compute.URLMapHostRuleArgs(hosts=["*"], path_matcher=LABEL_MATCHER)]
            path_matchers = [self._path_matcher(only, weights, route_rules)]
        return gcp.compute.URLMap(
            f"{name}-urlmap",
            description=description,
            default_service=only,
            default_route_action=None
            if only
            else gcp.compute.URLMapDefaultRouteActionArgs(
                weighted_backend_services=[
                    gcp.compute.URLMapDefaultRouteActionWeightedBackendServiceArgs(backend_service=link, weight=weight)
                    for link, weight in weights
                ]
            ),
            host_rules=host_rules,
            path_matchers=path_matchers,
            deletion_policy=self._keep,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.serving_after)),
        )

    def _path_matcher(
        self,
        only: pulumi.Input[str] | None,
        weights: Sequence[tuple[pulumi.Input[str], int]],
        route_rules: Sequence[gcp.compute.URLMapPathMatcherRouteRuleArgs],
    ) -> gcp.compute.URLMapPathMatcherArgs:
        """The route rules, then the URL map's split as the default: one backend service, or a route action with
        weights (a path matcher takes one or the other)."""
        return gcp.compute.URLMapPathMatcherArgs(
            name=LABEL_MATCHER,
            description="gRPC prediction calls and TF Serving labels to their backends, the rest by weight",
            default_service=only,
            default_route_action=None
            if only
            else gcp.compute.URLMapPathMatcherDefaultRouteActionArgs(
                weighted_backend_services=[
                    gcp.compute.URLMapPathMatcherDefaultRouteActionWeightedBackendServiceArgs(
                        backend_service=link, weight=weight
                    )
                    for link, weight in weights
                ]
            ),
            route_rules=list(route_rules),
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
        # The same description with and without HTTPS; stacks created when it said "(redirects to HTTPS)" keep
        # theirs (ignored), so turning HTTPS on or off never replaces the rule.
        self.http_rule = self._forwarding_rule(
            f"{name}-http", HTTP_RULE_DESCRIPTION, self.http_proxy.self_link, HTTP_PORT
        )

    def _forwarding_rule(
        self, resource_name: str, description: str, target: pulumi.Input[str], port: int
    ) -> gcp.compute.GlobalForwardingRule:
        """A rule holds its address and port alone: a replacement must delete the old rule before it creates the new
        one (GCP refuses a second rule on the same address and port), so it is ``delete_before_replace``; and
        ``description``, immutable, is ignored once the rule exists."""
        return gcp.compute.GlobalForwardingRule(
            resource_name,
            description=description,
            target=target,
            ip_address=self.ip.address,
            ip_protocol="TCP",
            port_range=str(port),
            load_balancing_scheme="EXTERNAL_MANAGED",
            deletion_policy=self._keep,
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True, ignore_changes=["description"]),
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
        ports = [TFS_REST_PORT, AGENT_PORT, *([TFS_GRPC_PORT] if args.grpc_exposed else [])]
        return gcp.compute.Firewall(
            f"{name}-allow-lb",
            description="Google front ends and health checkers to TF Serving (REST, and gRPC when exposed) and the "
            "agent's health port",
            network=args.network,
            direction="INGRESS",
            source_ranges=list(GFE_RANGES),
            target_service_accounts=[args.backend_service_account],
            allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=[str(p) for p in ports])],
            opts=pulumi.ResourceOptions(parent=self),
        )
