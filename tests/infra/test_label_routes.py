"""The plan of each stack sends TF Serving's label paths to the right fleet.

``modelfleet smoke --url <load balancer> --model M --label canary`` must reach the canary fleet whatever the weights
(also at weight 0 with ``canaryKeepWarm``): its metadata and predict requests go to ``/v1/models/M/labels/canary...``.
The assertions are about routing behaviour, not field spelling: a small resolver per cloud evaluates the recorded
load balancer inputs against a request, with the provider's documented semantics:

- GCP URL map: a host rule picks a path matcher (``*`` matches any host of ``[a-z0-9-.]``), whose route rules are
  tried by ascending priority, each matching when any of its match rules does (``fullPathMatch``: the path without
  query equals it; ``prefixMatch``: starts with it; and every ``headerMatches`` entry: the header present and, by its
  ``exactMatch`` / ``prefixMatch``, equal to or starting with the value, case-sensitive); otherwise the path matcher's
  default, and with no host rule the URL map's own default.
- AWS listener: rules by ascending priority, a rule matching when all its conditions do (a path pattern: any of its
  values, ``*`` any characters including ``/``, ``?`` one, case-sensitive; an HTTP header: name and values
  case-insensitive), otherwise the listener's default actions.

Each resolver also checks the documented limits of what it reads (priorities unique and in range, one path match per
GCP match rule, ALB values and wildcards per rule), and refuses fields it does not model, so a changed shape fails
here instead of passing unread.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pytest

from infra import naming
from infra.aws import stack as aws_stack
from infra.config import ConfigError, StackConfig, load_config, read_stack_file
from infra.gcp import stack as gcp_stack
from infra.gcp.load_balancer import LoadBalancerArgs as GcpLoadBalancerArgs
from infra.offline import Plan, evaluate
from infra.stack import STACKS_DIR, plan_stack
from model_export.constants import CANARY, ROLES, STABLE
from tests.support.plan import one

# What a forward resolves to: {backend: weight}, the backend "<role>" (GCP REST), "<role>-grpc" (GCP gRPC) or
# "<role>-<rest|grpc>" (AWS); else "redirect" or a status code.
Route = dict[str, int] | str

T_URLMAP = "gcp:compute/uRLMap:URLMap"
T_GLOBAL_RULE = "gcp:compute/globalForwardingRule:GlobalForwardingRule"
T_PROXIES = ("gcp:compute/targetHttpProxy:TargetHttpProxy", "gcp:compute/targetHttpsProxy:TargetHttpsProxy")
T_BACKEND = "gcp:compute/backendService:BackendService"
T_LISTENER = "aws:lb/listener:Listener"
T_RULE = "aws:lb/listenerRule:ListenerRule"
T_TG = "aws:lb/targetGroup:TargetGroup"

CLIENT_HOST = "203.0.113.10"  # clients call the load balancer by its address (or a domain)
GRPC = {"content-type": "application/grpc"}
GRPC_PREDICT = "/tensorflow.serving.PredictionService/Predict"
CERTIFICATE = "arn:aws:acm:eu-west-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"


def path_only(url_path: str) -> str:
    """The path both load balancers match: without query string and fragment."""
    return url_path.split("#", 1)[0].split("?", 1)[0]


def weighted(cfg: StackConfig) -> dict[str, int]:
    """The split a request without a label route gets, as a URL map holds it (no zero weights)."""
    split = {STABLE: 100 - cfg.canary_weight_percent, CANARY: cfg.canary_weight_percent}
    return {role: weight for role, weight in split.items() if weight > 0}


# --- GCP: the URL map ---------------------------------------------------------------------------------------------

MAX_PRIORITY = 2147483647  # route rule priorities: 0 to 2147483647, unique within a path matcher
PATH_KINDS = ("fullPathMatch", "prefixMatch", "regexMatch", "pathTemplateMatch")


def gcp_plan(**overrides: Any) -> tuple[StackConfig, Plan]:
    values = {**read_stack_file(STACKS_DIR / "Pulumi.staging.yaml"), **overrides}
    cfg = load_config(values, "test")
    return cfg, evaluate("test", lambda: gcp_stack.build(cfg), cloud="gcp")


def gcp_host_matches(pattern: str, host: str) -> bool:
    if not pattern.startswith("*"):
        return pattern == host
    head = host[: len(host) - len(pattern) + 1]
    return host.endswith(pattern[1:]) and re.fullmatch(r"[a-z0-9.-]*", head) is not None


def gcp_target(holder: Mapping[str, Any], roles: Mapping[str, str], *, default: bool) -> Route:
    """What a route rule (``default`` False) or a path matcher / the URL map (True) sends to: exactly one of a
    backend service, weighted backend services or a redirect."""
    service = holder.get("defaultService" if default else "service")
    action = holder.get("defaultRouteAction" if default else "routeAction") or {}
    redirect = holder.get("defaultUrlRedirect" if default else "urlRedirect")
    found = [x for x in (service, action.get("weightedBackendServices"), redirect) if x]
    assert len(found) == 1, f"expected one of service, weighted backend services, redirect: {dict(holder)}"
    assert set(action) <= {"weightedBackendServices"}, f"route action fields the resolver does not model: {action}"
    if redirect:
        return "redirect"
    if service:
        return {roles[service]: 100}
    split = {roles[w["backendService"]]: int(w["weight"]) for w in action["weightedBackendServices"]}
    assert sum(split.values()) == 100 and all(w > 0 for w in split.values()), split
    return split


def gcp_header_match(header: Mapping[str, Any], headers: Mapping[str, str]) -> bool:
    assert set(header) <= {"headerName", "exactMatch", "prefixMatch"}, f"not modelled: {dict(header)}"
    assert len(set(header) & {"exactMatch", "prefixMatch"}) == 1, dict(header)
    value = {k.lower(): v for k, v in headers.items()}.get(header["headerName"].lower())
    if value is None:
        return False
    return value == header["exactMatch"] if "exactMatch" in header else value.startswith(header["prefixMatch"])


def gcp_match(rule: Mapping[str, Any], path: str, headers: Mapping[str, str]) -> bool:
    kinds = [k for k in PATH_KINDS if k in rule]
    assert len(kinds) == 1, f"a match rule takes one of {PATH_KINDS}: {dict(rule)}"
    assert set(rule) <= {"fullPathMatch", "prefixMatch", "headerMatches"}, f"not modelled: {dict(rule)}"
    value: str = rule[kinds[0]]
    assert value.startswith("/") and 1 <= len(value) <= 1024, value
    path_matches = path == value if kinds[0] == "fullPathMatch" else path.startswith(value)
    return path_matches and all(gcp_header_match(h, headers) for h in rule.get("headerMatches", []))


def gcp_check(urlmap: Mapping[str, Any]) -> None:
    """The documented constraints of what the resolver reads."""
    names = [m["name"] for m in urlmap.get("pathMatchers", [])]
    assert len(set(names)) == len(names)
    for host_rule in urlmap.get("hostRules", []):
        assert host_rule["pathMatcher"] in names
        for pattern in host_rule["hosts"]:
            # "*" first, and when followed by anything, by "-" or "."
            assert "*" not in pattern[1:] and (not pattern.startswith("*") or pattern == "*" or pattern[1] in "-.")
    for matcher in urlmap.get("pathMatchers", []):
        assert not (matcher.get("pathRules") and matcher.get("routeRules")), "path rules or route rules, not both"
        priorities = [int(r["priority"]) for r in matcher.get("routeRules", [])]
        assert len(set(priorities)) == len(priorities), priorities
        assert all(0 <= p <= MAX_PRIORITY for p in priorities), priorities
        for rule in matcher.get("routeRules", []):
            assert rule["matchRules"], "a route rule without match rules matches everything"


def gcp_resolve(
    urlmap: Mapping[str, Any],
    roles: Mapping[str, str],
    url_path: str,
    host: str = CLIENT_HOST,
    headers: Mapping[str, str] | None = None,
) -> Route:
    gcp_check(urlmap)
    path = path_only(url_path)
    matchers = {m["name"]: m for m in urlmap.get("pathMatchers", [])}
    chosen = next(
        (r["pathMatcher"] for r in urlmap.get("hostRules", []) if any(gcp_host_matches(h, host) for h in r["hosts"])),
        None,
    )
    if chosen is None:
        return gcp_target(urlmap, roles, default=True)
    matcher = matchers[chosen]
    assert not matcher.get("pathRules"), "the resolver models route rules only"
    for rule in sorted(matcher.get("routeRules", []), key=lambda r: int(r["priority"])):
        if any(gcp_match(m, path, headers or {}) for m in rule["matchRules"]):
            return gcp_target(rule, roles, default=False)
    return gcp_target(matcher, roles, default=True)


def gcp_backend(backend: Mapping[str, Any], name: str) -> str:
    """``<role>`` for a REST backend service, ``<role>-grpc`` for a gRPC one (protocol H2C), the role from the name
    (``<lb>-<role>[-grpc]``)."""
    role = next(r for r in ROLES if name.endswith((f"-{r}", f"-{r}-grpc")))
    return f"{role}-grpc" if backend["protocol"] == "H2C" else role


def gcp_frontend(plan: Plan, port: int) -> tuple[dict[str, Any], dict[str, str]]:
    """The URL map serving ``port`` (forwarding rule -> target proxy -> URL map), and ``{backend self link: backend}``
    (``gcp_backend``)."""
    [rule] = [r for r in plan.of_type(T_GLOBAL_RULE) if r.inputs["portRange"] == str(port)]
    [proxy] = [p for t in T_PROXIES for p in plan.of_type(t) if p.state["selfLink"] == rule.inputs["target"]]
    [urlmap] = [m for m in plan.of_type(T_URLMAP) if m.state["selfLink"] == proxy.inputs["urlMap"]]
    roles = {b.state["selfLink"]: gcp_backend(b.inputs, b.name) for b in plan.of_type(T_BACKEND)}
    assert set(ROLES) <= set(roles.values()) <= {*ROLES, *(f"{r}-grpc" for r in ROLES)}
    return urlmap.inputs, roles


def label_cases(cfg: StackConfig) -> list[tuple[str, Route]]:
    """(request path, where it must go) while the canary fleet runs: labels to their fleet, the rest by weight."""
    split = weighted(cfg)
    return [
        ("/v1/models/digits/labels/canary:predict", {CANARY: 100}),
        ("/v1/models/digits/labels/canary", {CANARY: 100}),  # status
        ("/v1/models/digits/labels/canary/metadata", {CANARY: 100}),
        ("/v1/models/digits/labels/canary:predict?trace=1", {CANARY: 100}),  # the query is not part of the path
        ("/v1/models/digits/labels/stable/metadata", {STABLE: 100}),
        ("/v1/models/digits/labels/stable:predict", {STABLE: 100}),
        ("/v1/models/digits/labels/stable", {STABLE: 100}),
        ("/v1/models/digits:predict", split),
        ("/v1/models/digits", split),  # smoke's status request: any fleet that serves the model
        ("/v1/models/digits/versions/3:predict", split),
        ("/v1/models/digits/labels/canary2:predict", split),  # another label, not the canary's
        ("/v1/models/digits/labels/canaryx", split),
        ("/v1/models/other/labels/canary:predict", split),  # not a model of this stack
    ]


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # the staging file: canary at 10 %
        {"canaryWeightPercent": 0, "canaryKeepWarm": True},  # no traffic, but the canary can be smoke-tested
        {"canaryWeightPercent": 100},
        {"enableHttps": True, "httpsDomains": ["models.example.com"]},
    ],
    ids=["weight-10", "weight-0-kept-warm", "weight-100", "https"],
)
def test_gcp_plan_sends_label_paths_to_their_fleet(overrides: dict[str, Any]) -> None:
    cfg, plan = gcp_plan(**overrides)
    assert cfg.canary_fleet_runs
    urlmap, roles = gcp_frontend(plan, 443 if cfg.enable_https else 80)
    for path, expected in label_cases(cfg):
        assert gcp_resolve(urlmap, roles, path) == expected, path
        assert gcp_resolve(urlmap, roles, path, host="models.example.com") == expected, path
    # A request no host rule takes (none: "*" takes every host) would still get the same split.
    assert gcp_target(urlmap, roles, default=True) == weighted(cfg)
    if cfg.enable_https:  # port 80 only redirects, label paths too: they are served on 443
        http_map, _ = gcp_frontend(plan, 80)
        assert gcp_resolve(http_map, roles, "/v1/models/digits/labels/canary:predict") == "redirect"


def test_gcp_label_routes_cover_every_model_of_the_stack() -> None:
    cfg, plan = gcp_plan(models=["digits", "mnist.v2", "Text_Classifier"])
    urlmap, roles = gcp_frontend(plan, 80)
    for model in cfg.models:
        assert gcp_resolve(urlmap, roles, f"/v1/models/{model}/labels/canary:predict") == {CANARY: 100}
        assert gcp_resolve(urlmap, roles, f"/v1/models/{model}/labels/stable/metadata") == {STABLE: 100}
        assert gcp_resolve(urlmap, roles, f"/v1/models/{model}:predict") == weighted(cfg)
    # Case-sensitive, like TF Serving's model names.
    assert gcp_resolve(urlmap, roles, "/v1/models/text_classifier/labels/canary") == weighted(cfg)
    [matcher] = urlmap["pathMatchers"]
    assert len(matcher["routeRules"]) == len(cfg.models) * len(ROLES)


@pytest.mark.parametrize("stack", ["prod", "staging-weight-0"])
def test_gcp_without_a_canary_fleet_has_no_label_routes(stack: str) -> None:
    """Canary at weight 0 and not kept warm (the prod file, with gRPC; staging without): the canary fleet has no VMs,
    every REST path goes to stable; a path matcher exists only for gRPC's route."""
    if stack == "prod":
        cfg, plan = plan_stack("prod")
    else:
        cfg, plan = gcp_plan(canaryWeightPercent=0)
    assert not cfg.canary_fleet_runs
    urlmap, roles = gcp_frontend(plan, 443 if cfg.enable_https else 80)
    grpc = cfg.enable_grpc and cfg.enable_https
    assert ("pathMatchers" in urlmap) is grpc
    for matcher in urlmap.get("pathMatchers", []):
        assert [r["priority"] for r in matcher["routeRules"]] == [10]  # gRPC's route alone, no label routes
    for path in ("/v1/models/digits/labels/canary:predict", "/v1/models/digits/labels/stable/metadata"):
        assert gcp_resolve(urlmap, roles, path) == {STABLE: 100}


def test_gcp_label_routes_need_the_models() -> None:
    with pytest.raises(ConfigError, match=r"modelfleet:models = \(\) is invalid; list at least one model name"):
        GcpLoadBalancerArgs(
            network="n",
            backend_service_account="sa",
            stable_group="s",
            canary_group="c",
            canary_weight_percent=10,
            rest_port_name="http",
            max_rate_per_instance=50,
            canary_fleet_runs=True,
        )


# --- AWS: the listeners and their rules -----------------------------------------------------------------------------

ALB_MAX_PRIORITY = 50000  # listener rule priorities: 1 to 50000, unique per listener
ALB_VALUES_PER_CONDITION = 3
ALB_EVALUATIONS_PER_RULE = 5
ALB_WILDCARDS_PER_RULE = 5
ALB_PATH_PATTERN = re.compile(r"[A-Za-z0-9_\-.$/~\"'@:+&*?]{1,128}")


def aws_plan(**overrides: Any) -> tuple[StackConfig, Plan]:
    values = {**read_stack_file(STACKS_DIR / "Pulumi.aws-staging.yaml"), **overrides}
    cfg = load_config(values, "test")
    return cfg, evaluate("test", lambda: aws_stack.build(cfg), cloud="aws")


def glob(pattern: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    """An ALB wildcard pattern: ``*`` any characters (``/`` included), ``?`` exactly one."""
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body, re.IGNORECASE if ignore_case else 0)


def aws_condition(condition: Mapping[str, Any], path: str, headers: Mapping[str, str]) -> bool:
    assert len(condition) == 1, f"one condition type per condition: {dict(condition)}"
    if "pathPattern" in condition:
        assert set(condition["pathPattern"]) == {"values"}, "regex values are not modelled"
        return any(glob(v).fullmatch(path) for v in condition["pathPattern"]["values"])
    if "httpHeader" in condition:
        header = condition["httpHeader"]
        value = {k.lower(): v for k, v in headers.items()}.get(header["httpHeaderName"].lower())
        return value is not None and any(glob(v, ignore_case=True).fullmatch(value) for v in header["values"])
    raise AssertionError(f"a condition the resolver does not model: {dict(condition)}")


def aws_action(actions: list[dict[str, Any]], groups: Mapping[str, str]) -> Route:
    [action] = actions
    if action["type"] == "fixed-response":
        return str(action["fixedResponse"]["statusCode"])
    if action["type"] == "redirect":
        return "redirect"
    assert action["type"] == "forward", action
    if "targetGroupArn" in action:
        assert "forward" not in action
        return {groups[action["targetGroupArn"]]: 100}
    return {groups[g["arn"]]: int(g["weight"]) for g in action["forward"]["targetGroups"]}


def aws_check(rules: list[dict[str, Any]]) -> None:
    """The documented limits of one listener's rules."""
    priorities = [int(r["priority"]) for r in rules]
    assert len(set(priorities)) == len(priorities) and all(1 <= p <= ALB_MAX_PRIORITY for p in priorities)
    for rule in rules:
        values = [v for c in rule["conditions"] for kind in c.values() for v in kind["values"]]
        assert all(len(kind["values"]) <= ALB_VALUES_PER_CONDITION for c in rule["conditions"] for kind in c.values())
        assert len(values) <= ALB_EVALUATIONS_PER_RULE
        assert sum(v.count("*") + v.count("?") for v in values) <= ALB_WILDCARDS_PER_RULE, values
        for c in rule["conditions"]:
            for value in c.get("pathPattern", {}).get("values", []):
                assert ALB_PATH_PATTERN.fullmatch(value), value


def group_name(target_group: Mapping[str, Any]) -> str:
    """``<role>-rest`` or ``<role>-grpc``: the target group's role tag and protocol."""
    kind = "grpc" if target_group["protocolVersion"] == "GRPC" else "rest"
    return f"{target_group['tags'][naming.ROLE_LABEL]}-{kind}"


def aws_resolve(plan: Plan, port: int, url_path: str, headers: Mapping[str, str] | None = None) -> Route:
    [listener] = [x for x in plan.of_type(T_LISTENER) if x.inputs["port"] == port]
    rules = [r.inputs for r in plan.of_type(T_RULE) if r.inputs["listenerArn"] == listener.state["arn"]]
    aws_check(rules)
    groups = {g.state["arn"]: group_name(g.inputs) for g in plan.of_type(T_TG)}
    path = path_only(url_path)
    for rule in sorted(rules, key=lambda r: int(r["priority"])):
        if all(aws_condition(c, path, headers or {}) for c in rule["conditions"]):
            return aws_action(rule["actions"], groups)
    return aws_action(listener.inputs["defaultActions"], groups)


def aws_split(cfg: StackConfig) -> dict[str, int]:
    return {f"{STABLE}-rest": 100 - cfg.canary_weight_percent, f"{CANARY}-rest": cfg.canary_weight_percent}


def aws_label_cases(cfg: StackConfig) -> list[tuple[str, Route]]:
    split = aws_split(cfg)
    return [
        ("/v1/models/digits/labels/canary:predict", {"canary-rest": 100}),
        ("/v1/models/digits/labels/canary", {"canary-rest": 100}),
        ("/v1/models/digits/labels/canary/metadata", {"canary-rest": 100}),
        ("/v1/models/digits/labels/canary:predict?trace=1", {"canary-rest": 100}),
        ("/v1/models/digits/labels/stable/metadata", {"stable-rest": 100}),
        ("/v1/models/digits/labels/stable:predict", {"stable-rest": 100}),
        ("/v1/models/digits/labels/stable", {"stable-rest": 100}),
        # The ALB's patterns take any model (a wildcard): a model the fleets do not serve gets their 404.
        ("/v1/models/other/labels/canary:predict", {"canary-rest": 100}),
        ("/v1/models/digits:predict", split),
        ("/v1/models/digits", split),
        ("/v1/models/digits/versions/3:predict", split),
        ("/v1/models/digits/labels/canary2:predict", split),
        ("/v1/models/digits/labels/canaryx", split),
        ("/monitoring/prometheus/metrics", "404"),  # TF Serving's metrics stay internal
    ]


def test_aws_plan_sends_label_paths_to_their_fleet() -> None:
    """The staging file: HTTP only, canary at 10 %."""
    cfg, plan = plan_stack("aws-staging")
    assert cfg.canary_fleet_runs and not cfg.enable_https
    for path, expected in aws_label_cases(cfg):
        assert aws_resolve(plan, 80, path) == expected, path


def test_aws_label_routes_at_weight_zero_kept_warm_with_https_and_grpc() -> None:
    cfg, plan = aws_plan(
        canaryWeightPercent=0, canaryKeepWarm=True, enableHttps=True, certificateArn=CERTIFICATE, enableGrpc=True
    )
    for path, expected in aws_label_cases(cfg):
        assert aws_resolve(plan, 443, path) == expected, path
        assert aws_resolve(plan, 80, path) == "redirect", path  # port 80 only redirects, to 443 and its rules
    # gRPC calls of the prediction service go to the gRPC groups by weight: their rule comes first, and their paths
    # are /<package.Service>/...; any other gRPC call is refused (tests/infra/test_grpc_paths.py).
    grpc_split = {"stable-grpc": 100, "canary-grpc": 0}
    assert aws_resolve(plan, 443, GRPC_PREDICT, GRPC) == grpc_split
    assert aws_resolve(plan, 443, "/v1/models/digits/labels/canary:predict", GRPC) == "404"
    # Without the gRPC content type, a gRPC path is neither a label path nor internal: the REST split.
    assert aws_resolve(plan, 443, GRPC_PREDICT) == aws_split(cfg)
    rules = {r.name.rsplit("-lb-", 1)[1]: int(r.inputs["priority"]) for r in plan.of_type(T_RULE)}
    assert (
        rules["grpc"] < rules["grpc-refused"] < rules["internal-paths"] < rules["label-stable"] < rules["label-canary"]
    )


def test_aws_without_a_canary_fleet_has_no_label_rules() -> None:
    """The prod file: canary at weight 0, not kept warm; HTTPS and gRPC."""
    cfg, plan = plan_stack("aws-prod")
    assert not cfg.canary_fleet_runs
    assert not [r for r in plan.of_type(T_RULE) if "-label-" in r.name]
    for path in ("/v1/models/digits/labels/canary:predict", "/v1/models/digits/labels/stable/metadata"):
        assert aws_resolve(plan, 443, path) == aws_split(cfg) == {"stable-rest": 100, "canary-rest": 0}
    assert aws_resolve(plan, 443, "/monitoring/prometheus/metrics") == "404"


def test_aws_label_rule_targets_are_the_rest_groups_of_that_role() -> None:
    _, plan = plan_stack("aws-staging")
    groups = {g.state["arn"]: g for g in plan.of_type(T_TG)}
    for role in ROLES:
        rule = one(plan, T_RULE, f"mf-aws-staging-lb-label-{role}")
        [action] = rule.inputs["actions"]
        group = groups[action["targetGroupArn"]]
        assert group_name(group.inputs) == f"{role}-rest"
