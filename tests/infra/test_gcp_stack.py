"""The GCP stack's resource graph, evaluated offline under Pulumi's mocks (no CLI, no credentials).

Each stack file (staging, prod) is checked for every resource and its hardening, and config variants (canary
weights, client CIDRs, HTTPS, gRPC on and off, GPU, an existing network) are built from the staging file's values
with overrides. gRPC goes through the Application Load Balancer (tests/infra/test_grpc_paths.py has its routing).
The fleets' user-data is read back from the instance templates and checked by ``cloud-init schema``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import infra.offline
from infra import bootstrap, naming
from infra.config import ConfigError, StackConfig, load_config, read_stack_file
from infra.gcp.stack import build
from infra.offline import Plan, PlannedResource, evaluate
from infra.stack import STACKS_DIR, plan_stack
from model_export import layout
from model_export.constants import (
    AGENT_PORT,
    CANARY,
    HEALTH_PATH,
    LIVE_PATH,
    ROLES,
    STABLE,
    TFS_GRPC_PORT,
    TFS_REST_PORT,
)
from model_export.store import parse_uri
from tests.support.plan import named, one, parent_type

T_BUCKET = "gcp:storage/bucket:Bucket"
T_BUCKET_IAM = "gcp:storage/bucketIAMMember:BucketIAMMember"
T_OBJECT = "gcp:storage/bucketObject:BucketObject"
T_ACCOUNT = "gcp:serviceaccount/account:Account"
T_NETWORK = "gcp:compute/network:Network"
T_SUBNET = "gcp:compute/subnetwork:Subnetwork"
T_ROUTER = "gcp:compute/router:Router"
T_NAT = "gcp:compute/routerNat:RouterNat"
T_FIREWALL = "gcp:compute/firewall:Firewall"
T_TEMPLATE = "gcp:compute/instanceTemplate:InstanceTemplate"
T_MIG = "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager"
T_AUTOSCALER = "gcp:compute/regionAutoscaler:RegionAutoscaler"
T_HC = "gcp:compute/healthCheck:HealthCheck"
# The passthrough NLB gRPC once had: none of it may come back (it exposed TF Serving's admin API at L4).
T_LEGACY_HC = "gcp:compute/httpHealthCheck:HttpHealthCheck"
T_POOL = "gcp:compute/targetPool:TargetPool"
T_BACKEND = "gcp:compute/backendService:BackendService"
T_REGION_BACKEND = "gcp:compute/regionBackendService:RegionBackendService"
T_ARMOR = "gcp:compute/securityPolicy:SecurityPolicy"
T_URLMAP = "gcp:compute/uRLMap:URLMap"
T_HTTP_PROXY = "gcp:compute/targetHttpProxy:TargetHttpProxy"
T_HTTPS_PROXY = "gcp:compute/targetHttpsProxy:TargetHttpsProxy"
T_CERT = "gcp:compute/managedSslCertificate:ManagedSslCertificate"
T_GLOBAL_ADDRESS = "gcp:compute/globalAddress:GlobalAddress"
T_ADDRESS = "gcp:compute/address:Address"
T_GLOBAL_RULE = "gcp:compute/globalForwardingRule:GlobalForwardingRule"
T_RULE = "gcp:compute/forwardingRule:ForwardingRule"

GOOGLE_LB_RANGES = {"35.191.0.0/16", "130.211.0.0/22"}
READ_WRITE_SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
STACKS = ("staging", "prod")


# --- plans --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=STACKS)
def stack(request: pytest.FixtureRequest) -> tuple[StackConfig, Plan]:
    return plan_stack(request.param)


def grpc_exposed(cfg: StackConfig) -> bool:
    """gRPC goes through the ALB, which gRPC clients reach over TLS: with HTTPS only (staging: HTTP, so not exposed)."""
    return cfg.enable_grpc and cfg.enable_https


def scaling_metric(cfg: StackConfig) -> str:
    """What the autoscalers aim at: with gRPC each group is in two backend services, so `requests` becomes CPU."""
    return "cpu" if grpc_exposed(cfg) else cfg.autoscaling_metric


_variants: dict[tuple[tuple[str, Any], ...], tuple[StackConfig, Plan]] = {}


def variant(**overrides: Any) -> tuple[StackConfig, Plan]:
    """The staging stack file's values with ``overrides`` (config key names), planned once per test session."""
    key = tuple(sorted((k, repr(v)) for k, v in overrides.items()))
    if key not in _variants:
        values = {**read_stack_file(STACKS_DIR / "Pulumi.staging.yaml"), **overrides}
        cfg = load_config(values, "test")
        _variants[key] = (cfg, evaluate("test", lambda: build(cfg), cloud="gcp"))
    return _variants[key]


# --- helpers ------------------------------------------------------------------------------------------------------


def by_role(plan: Plan, type_: str, role: str) -> PlannedResource:
    found = [r for r in plan.of_type(type_) if r.parent_name is not None and r.parent_name.endswith(f"-{role}")]
    assert len(found) == 1, f"expected one {type_} in the {role} fleet, found {[r.name for r in found]}"
    return found[0]


def state_of(resource: PlannedResource, key: str) -> Any:
    """A computed attribute as the offline provider answered it (the self link other resources refer to)."""
    return resource.state[key]


def self_link(resource: PlannedResource) -> str:
    link: str = state_of(resource, "selfLink")
    return link


def walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from walk(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from walk(item)


def allowed_ports(rule: PlannedResource) -> set[int]:
    return {int(p) for allow in rule.inputs.get("allows", []) for p in allow.get("ports", [])}


def fleet_email(plan: Plan) -> str:
    return str(plan.outputs["fleetIdentity"])


# --- the graph ----------------------------------------------------------------------------------------------------


def test_every_resource_exists(stack: tuple[StackConfig, Plan]) -> None:
    cfg, plan = stack
    counts = {
        T_BUCKET: 1,
        T_OBJECT: 1,
        T_ACCOUNT: 2,
        T_BUCKET_IAM: 3,  # fleet reads, publisher writes, fleet writes its leases
        T_NETWORK: 1,
        T_SUBNET: 1,
        T_ROUTER: 1,
        T_NAT: 1,
        T_TEMPLATE: 2,
        T_MIG: 2,
        T_AUTOSCALER: 2,
        T_HC: 3,  # two autohealing checks, one for the ALB (REST and gRPC backend services alike)
        T_BACKEND: 4 if grpc_exposed(cfg) else 2,
        T_ARMOR: 1,
        T_URLMAP: 2 if cfg.enable_https else 1,
        T_HTTP_PROXY: 1,
        T_HTTPS_PROXY: 1 if cfg.enable_https else 0,
        T_CERT: 1 if cfg.enable_https else 0,
        T_GLOBAL_ADDRESS: 1,
        T_GLOBAL_RULE: 2 if cfg.enable_https else 1,
        T_LEGACY_HC: 0,
        T_POOL: 0,
        T_REGION_BACKEND: 0,
        T_ADDRESS: 0,
        T_RULE: 0,
    }
    got = {type_: len(plan.of_type(type_)) for type_ in counts}
    assert got == counts
    components = {r.type for r in plan.resources if not r.custom}
    assert all(c.startswith("modelfleet:gcp:") for c in components)
    assert components >= {
        "modelfleet:gcp:ServiceAccounts",
        "modelfleet:gcp:ModelStore",
        "modelfleet:gcp:Network",
        "modelfleet:gcp:ServingFleet",
        "modelfleet:gcp:LoadBalancer",
    }


def test_every_child_belongs_to_a_modelfleet_component(stack: tuple[StackConfig, Plan]) -> None:
    _, plan = stack
    for r in plan.resources:
        if r.type.startswith("pulumi:providers:"):
            assert parent_type(r) == "pulumi:pulumi:Stack"
        elif r.custom:
            assert (parent_type(r) or "").startswith("modelfleet:gcp:"), (r.name, parent_type(r))
            assert r.parent_name is not None and r.name.startswith(f"{r.parent_name}-"), (r.name, r.parent_name)
        else:
            assert parent_type(r) == "pulumi:pulumi:Stack", r.name


def test_every_gcp_resource_uses_the_stack_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """No resource falls back to the default provider (ambient `gcp:project` / credentials config)."""
    seen: list[tuple[str, str]] = []
    register = infra.offline.RecordingMonitor.RegisterResource

    def recording(self: infra.offline.RecordingMonitor, request: Any) -> Any:
        seen.append((request.type, request.provider))
        return register(self, request)

    monkeypatch.setattr(infra.offline.RecordingMonitor, "RegisterResource", recording)
    cfg, plan = plan_stack("staging")
    gcp_resources = [(t, p) for t, p in seen if t.startswith("gcp:")]
    assert len(gcp_resources) >= 25
    for type_, provider in gcp_resources:
        assert "pulumi:providers:gcp::mf-staging-gcp::" in provider, type_
    settings = one(plan, "pulumi:providers:gcp").inputs
    assert (settings["project"], settings["region"]) == (cfg.gcp_project, cfg.region)


# --- store and identities -----------------------------------------------------------------------------------------


def test_bucket_is_hardened(stack: tuple[StackConfig, Plan]) -> None:
    cfg, plan = stack
    bucket = one(plan, T_BUCKET).inputs
    assert bucket["uniformBucketLevelAccess"] is True
    assert bucket["publicAccessPrevention"] == "enforced"
    assert bucket["versioning"] == {"enabled": True}
    assert bucket["forceDestroy"] is False
    assert bucket["location"] == cfg.region.upper()
    (rule,) = bucket["lifecycleRules"]
    assert rule["action"]["type"] == "Delete"
    assert rule["condition"]["daysSinceNoncurrentTime"] == cfg.noncurrent_version_days
    assert rule["condition"]["withState"] == "ARCHIVED"
    assert "encryption" not in bucket  # no kmsKey in the stack files
    assert bucket.get("deletionPolicy") == ("PREVENT" if cfg.deletion_protection else None)


def test_fleet_reads_and_publisher_writes_only_this_bucket(stack: tuple[StackConfig, Plan]) -> None:
    cfg, plan = stack
    bucket = one(plan, T_BUCKET).inputs["name"]
    grants = {
        (g.inputs["member"], g.inputs["role"], (g.inputs.get("condition") or {}).get("expression"))
        for g in plan.of_type(T_BUCKET_IAM)
    }
    fleet, publisher = plan.outputs["fleetIdentity"], plan.outputs["publisherIdentity"]
    leases = f"projects/_/buckets/{bucket}/objects/{cfg.store_prefix}/_fleet/"
    # The publisher's grant may carry a condition (tests/infra/test_iam_artifacts.py has it): one grant, either way.
    publisher_grants = {g for g in grants if g[0] == f"serviceAccount:{publisher}"}
    assert [(m, r) for m, r, _ in publisher_grants] == [(f"serviceAccount:{publisher}", "roles/storage.objectUser")]
    assert grants - publisher_grants == {
        (f"serviceAccount:{fleet}", "roles/storage.objectViewer", None),
        # The fleet writes its drain-slot leases, and only those: the grant holds for names under _fleet/ alone.
        (f"serviceAccount:{fleet}", "roles/storage.objectUser", f'resource.name.startsWith("{leases}")'),
    }
    assert {g.inputs["bucket"] for g in plan.of_type(T_BUCKET_IAM)} == {bucket}
    # Nothing is granted anywhere else: no project, folder or organisation IAM resources (grants on the stack's own
    # resources only, e.g. its bucket or image repository).
    iam_types = {r.type for r in plan.resources if "iam" in r.type.lower()}
    assert T_BUCKET_IAM in iam_types
    assert not any(t.startswith(("gcp:projects/", "gcp:folder/", "gcp:organizations/")) for t in iam_types), iam_types


# Keys relative to the store: what the fleet VMs write, and what they must never write.
FLEET_WRITES = (
    "_fleet/stable/status/vm-1.json",  # a heartbeat: model_export.layout.heartbeat_key("stable", "vm-1") (issue 11)
    "_fleet/canary/status/mf-staging-canary-x1z2.json",
    layout.drain_slot_key(STABLE, 0),
    layout.drain_slot_key(CANARY, 3),
)
NOT_FLEET_WRITES = (
    layout.manifest_key("digits"),
    f"{layout.version_prefix('digits', 3)}/saved_model.pb",
    layout.pending_key("digits", 4),
    layout.agent_wheel_key("ab" * 32, "modelfleet-0.1.0-py3-none-any.whl"),
    "_fleetx/stable/status/vm-1.json",
    "_fleet",  # the prefix itself is no object of the fleet's
    "fleet/stable/status/vm-1.json",
)


def fleet_may_write(plan: Plan) -> Callable[[str], bool]:
    """Whether any write grant of the fleet's account admits an object name (``projects/_/buckets/B/objects/K``).

    The fleet's write grants are its conditional ``objectUser`` grants (``objectViewer`` writes nothing); each
    condition must be a single ``resource.name.startsWith("...")``, evaluated here."""
    member = f"serviceAccount:{fleet_email(plan)}"
    prefixes = []
    for grant in plan.of_type(T_BUCKET_IAM):
        if grant.inputs["member"] != member or grant.inputs["role"] == "roles/storage.objectViewer":
            continue
        assert grant.inputs["role"] == "roles/storage.objectUser"
        expression = grant.inputs["condition"]["expression"]
        match = re.fullmatch(r'resource\.name\.startsWith\("([^"\\]+)"\)', expression)
        assert match, expression
        prefixes.append(match.group(1))
    assert prefixes
    return lambda object_name: any(object_name.startswith(p) for p in prefixes)


def assert_fleet_writes_only_under_fleet(cfg: StackConfig, plan: Plan) -> None:
    bucket = one(plan, T_BUCKET).inputs["name"]
    may_write = fleet_may_write(plan)

    def name(key: str, bucket: str = bucket, prefix: str = cfg.store_prefix) -> str:
        return f"projects/_/buckets/{bucket}/objects/{prefix + '/' if prefix else ''}{key}"

    for key in FLEET_WRITES:
        assert may_write(name(key)), key
        assert not may_write(name(key, bucket=f"{bucket}-other")), key
        if cfg.store_prefix:  # the same key at the bucket's root or under another prefix is not the stack's
            assert not may_write(name(key, prefix="")), key
            assert not may_write(name(key, prefix=f"{cfg.store_prefix}x")), key
    for key in NOT_FLEET_WRITES:
        assert not may_write(name(key)), key


def test_fleet_writes_only_its_leases_and_heartbeats(stack: tuple[StackConfig, Plan]) -> None:
    """Drain leases and heartbeats (``<prefix>/_fleet/*``) are writable to the fleet; models, manifests, the agent
    wheel are not."""
    assert_fleet_writes_only_under_fleet(*stack)


def test_fleet_writes_only_under_fleet_at_the_bucket_root() -> None:
    cfg, plan = variant(storePrefix="")
    assert_fleet_writes_only_under_fleet(cfg, plan)


def test_no_grant_or_input_names_all_users(stack: tuple[StackConfig, Plan]) -> None:
    _, plan = stack
    for r in plan.resources:
        for value in walk(r.inputs):
            if isinstance(value, str):
                assert "allUsers" not in value and "allAuthenticatedUsers" not in value, r.name


def test_outputs(stack: tuple[StackConfig, Plan]) -> None:
    cfg, plan = stack
    out = plan.outputs
    scheme, bucket, prefix = parse_uri(out["storeUri"])
    assert (scheme, bucket, prefix) == ("gs", out["bucketName"], cfg.store_prefix)
    assert out["storeUri"] == f"gs://{out['bucketName']}/{cfg.store_prefix}"
    assert out["bucketName"] == one(plan, T_BUCKET).inputs["name"]
    accounts = {a.inputs["accountId"]: a for a in plan.of_type(T_ACCOUNT)}
    assert out["fleetIdentity"] == f"mf-{cfg.stack}-fleet@{cfg.gcp_project}.iam.gserviceaccount.com"
    assert out["publisherIdentity"] == f"mf-{cfg.stack}-publisher@{cfg.gcp_project}.iam.gserviceaccount.com"
    assert set(accounts) == {f"mf-{cfg.stack}-fleet", f"mf-{cfg.stack}-publisher"}
    address = state_of(one(plan, T_GLOBAL_ADDRESS), "address")
    assert out["loadBalancerAddress"] == address
    assert out["endpoint"] == (f"https://{cfg.https_domains[0]}" if cfg.enable_https else f"http://{address}")
    if grpc_exposed(cfg):  # the ALB's HTTPS front end, by the certificate's first domain
        assert out["grpcEndpoint"] == f"{cfg.https_domains[0]}:443"
    else:
        assert "grpcEndpoint" not in out
    assert out["canaryWeightPercent"] == cfg.canary_weight_percent


def test_agent_wheel_is_an_object_in_the_store_that_the_user_data_names(stack: tuple[StackConfig, Plan]) -> None:
    _, plan = stack
    wheel = one(plan, T_OBJECT).inputs
    uri = plan.outputs["agentWheelUri"]
    _, _, key = parse_uri(uri)
    assert (wheel["bucket"], wheel["name"]) == (plan.outputs["bucketName"], key)
    assert key.startswith(f"{parse_uri(plan.outputs['storeUri'])[2]}/_agent/")
    sha = key.split("/")[-2]
    assert len(sha) == 64
    for role in (STABLE, CANARY):
        env = user_data_files(by_role(plan, T_TEMPLATE, role))[bootstrap.AGENT_ENV_FILE]
        assert f"MODELFLEET_WHEEL_URI={uri}\n" in env
        assert f"MODELFLEET_WHEEL_SHA256={sha}\n" in env


# --- fleets -------------------------------------------------------------------------------------------------------


def user_data(template: PlannedResource) -> str:
    text: str = template.inputs["metadata"]["user-data"]
    return text


def user_data_files(template: PlannedResource) -> dict[str, str]:
    doc = yaml.safe_load(user_data(template))
    return {f["path"]: f["content"] for f in doc["write_files"]}


def test_instance_templates_are_hardened(stack: tuple[StackConfig, Plan]) -> None:
    cfg, plan = stack
    for role in (STABLE, CANARY):
        t = by_role(plan, T_TEMPLATE, role).inputs
        assert t["shieldedInstanceConfig"] == {
            "enableSecureBoot": True,
            "enableVtpm": True,
            "enableIntegrityMonitoring": True,
        }
        (nic,) = t["networkInterfaces"]
        assert "accessConfigs" not in nic and "ipv6AccessConfigs" not in nic  # no external address
        assert nic["subnetwork"] == self_link(one(plan, T_SUBNET))
        # Storage read/write: IAM confines the writes to the fleet's lease objects (see the grants' test).
        assert t["serviceAccount"] == {"email": fleet_email(plan), "scopes": [READ_WRITE_SCOPE]}
        (disk,) = t["disks"]
        assert disk["boot"] and disk["sourceImage"].endswith(
            "ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64"
        )
        assert t["machineType"] == cfg.machine_type
        assert t["metadata"]["enable-oslogin"] == "TRUE"
        assert t["metadata"]["block-project-ssh-keys"] == "TRUE"
        assert "guestAccelerators" not in t
        assert t["namePrefix"].startswith(f"mf-{cfg.stack}-{role}-")  # a changed template is a new one: fleet rolls


@pytest.mark.skipif(shutil.which("cloud-init") is None, reason="needs Debian's cloud-init (make system-deps)")
def test_user_data_is_valid_cloud_config(stack: tuple[StackConfig, Plan], tmp_path: Path) -> None:
    cfg, plan = stack
    for role in (STABLE, CANARY):
        text = user_data(by_role(plan, T_TEMPLATE, role))
        assert text.startswith("#cloud-config\n")
        path = tmp_path / f"{role}.yaml"
        path.write_text(text)
        proc = subprocess.run(["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        agent_unit = user_data_files(by_role(plan, T_TEMPLATE, role))[f"{bootstrap.UNIT_DIR}/{bootstrap.AGENT_UNIT}"]
        assert f"--role {role}" in agent_unit
        assert f"--store {plan.outputs['storeUri']}" in agent_unit
        assert f"--models {','.join(cfg.models)}" in agent_unit
        assert cfg.tfs_image in text


def test_fleets_roll_autoheal_and_name_their_ports(stack: tuple[StackConfig, Plan]) -> None:
    cfg, plan = stack
    for role in (STABLE, CANARY):
        mig = by_role(plan, T_MIG, role).inputs
        template = by_role(plan, T_TEMPLATE, role)
        assert mig["versions"] == [{"name": role, "instanceTemplate": state_of(template, "selfLinkUnique")}]
        assert mig["region"] == cfg.region
        ports = {"http": TFS_REST_PORT, **({"grpc": TFS_GRPC_PORT} if cfg.enable_grpc else {})}
        assert {p["name"]: p["port"] for p in mig["namedPorts"]} == ports
        healing = mig["autoHealingPolicies"]
        assert healing["initialDelaySec"] == cfg.health_check_initial_delay_seconds
        check = [h for h in plan.of_type(T_HC) if self_link(h) == healing["healthCheck"]]
        assert len(check) == 1 and check[0].parent_name == f"mf-{cfg.stack}-{role}"
        # Autohealing acts on liveness: a VM draining to switch versions (readiness 503) is not recreated.
        assert check[0].inputs["httpHealthCheck"] == {"port": AGENT_PORT, "requestPath": LIVE_PATH}
        assert check[0].inputs["checkIntervalSec"] * check[0].inputs["unhealthyThreshold"] == 60
        update = mig["updatePolicy"]
        assert update["type"] == "PROACTIVE" and update["minimalAction"] == "REPLACE"
        assert update["maxSurgeFixed"] >= 3 and update["maxUnavailableFixed"] == 0
        assert "targetSize" not in mig  # the autoscaler owns the size
        assert mig["distributionPolicyTargetShape"] == "EVEN"


def test_the_vms_drain_wait_covers_every_check_that_routes_traffic_to_them(stack: tuple[StackConfig, Plan]) -> None:
    cfg, plan = stack
    # The ALB's readiness check is the only one that routes traffic to a VM: REST and gRPC backend services share it.
    routing = named(plan, f"mf-{cfg.stack}-lb-hc")
    checks = {b.inputs["healthChecks"] for b in plan.of_type(T_BACKEND)}
    assert checks == {self_link(routing)}
    wait = int(routing.inputs["checkIntervalSec"] * routing.inputs["unhealthyThreshold"])
    assert wait == 10
    for role in (STABLE, CANARY):
        agent_unit = user_data_files(by_role(plan, T_TEMPLATE, role))[f"{bootstrap.UNIT_DIR}/{bootstrap.AGENT_UNIT}"]
        assert f"--drain-wait-seconds {wait}" in agent_unit
        size = cfg.stable if role == STABLE else cfg.canary
        assert f"--fleet-size {max(1, size.min_replicas)} --max-draining-percent {cfg.max_draining_percent}" in (
            agent_unit
        )
        assert f"--switch {cfg.version_switch}" in agent_unit


def test_autoscalers_follow_the_config(stack: tuple[StackConfig, Plan]) -> None:
    assert_autoscalers(*stack)


def assert_autoscalers(cfg: StackConfig, plan: Plan) -> None:
    for role, size in ((STABLE, cfg.stable), (CANARY, cfg.canary)):
        scaler = by_role(plan, T_AUTOSCALER, role).inputs
        assert scaler["target"] == self_link(by_role(plan, T_MIG, role))
        policy = scaler["autoscalingPolicy"]
        expected = (size.min_replicas, size.max_replicas) if role == STABLE or cfg.canary_fleet_runs else (0, 0)
        assert (policy["minReplicas"], policy["maxReplicas"]) == expected
        assert policy["mode"] == "ON"
        if scaling_metric(cfg) == "cpu":
            assert policy["cpuUtilization"]["target"] == pytest.approx(cfg.target_cpu_percent / 100)
            assert "loadBalancingUtilization" not in policy
        else:
            assert policy["loadBalancingUtilization"]["target"] == pytest.approx(1.0)
            assert "cpuUtilization" not in policy


# --- load balancing -----------------------------------------------------------------------------------------------


def test_backend_services_match_the_fleets(stack: tuple[StackConfig, Plan]) -> None:
    cfg, plan = stack
    lb_check = named(plan, f"mf-{cfg.stack}-lb-hc")
    assert lb_check.inputs["httpHealthCheck"] == {"port": AGENT_PORT, "requestPath": HEALTH_PATH}
    armor = one(plan, T_ARMOR)
    for role in (STABLE, CANARY):
        backend = named(plan, f"mf-{cfg.stack}-lb-{role}").inputs
        mig = by_role(plan, T_MIG, role)
        rest_port_names = [p["name"] for p in mig.inputs["namedPorts"] if p["port"] == TFS_REST_PORT]
        assert [backend["portName"]] == rest_port_names
        assert backend["loadBalancingScheme"] == "EXTERNAL_MANAGED"
        assert backend["protocol"] == "HTTP"
        assert backend["healthChecks"] == self_link(lb_check)
        assert backend["securityPolicy"] == self_link(armor)
        assert backend["logConfig"] == {"enable": True, "sampleRate": 1.0}
        (b,) = backend["backends"]
        assert b["group"] == state_of(mig, "instanceGroup")
        assert b["balancingMode"] == "RATE" and b["maxRatePerInstance"] == cfg.target_requests_per_second
        grpc = [r for r in plan.of_type(T_BACKEND) if r.name == f"mf-{cfg.stack}-lb-{role}-grpc"]
        if not grpc_exposed(cfg):
            assert grpc == []
            continue
        # gRPC: HTTP/2 in cleartext to TF Serving's gRPC port, the same check, armor and balancing as REST.
        (g,) = grpc
        grpc_port_names = [p["name"] for p in mig.inputs["namedPorts"] if p["port"] == TFS_GRPC_PORT]
        assert [g.inputs["portName"]] == grpc_port_names
        assert g.inputs["protocol"] == "H2C" and g.inputs["loadBalancingScheme"] == "EXTERNAL_MANAGED"
        assert g.inputs["healthChecks"] == self_link(lb_check)
        assert g.inputs["securityPolicy"] == self_link(armor)
        assert g.inputs["backends"] == backend["backends"]


def test_url_map_splits_by_the_configured_weight(stack: tuple[StackConfig, Plan]) -> None:
    assert_split(*stack)


def assert_split(cfg: StackConfig, plan: Plan) -> None:
    urlmap = named(plan, f"mf-{cfg.stack}-lb-urlmap").inputs
    backends = {self_link(named(plan, f"mf-{cfg.stack}-lb-{role}")): role for role in (STABLE, CANARY)}
    if 0 < cfg.canary_weight_percent < 100:
        weighted = urlmap["defaultRouteAction"]["weightedBackendServices"]
        weights = {backends[w["backendService"]]: w["weight"] for w in weighted}
        assert weights == {STABLE: 100 - cfg.canary_weight_percent, CANARY: cfg.canary_weight_percent}
        assert sum(weights.values()) == 100
        assert "defaultService" not in urlmap
    else:
        only = STABLE if cfg.canary_weight_percent == 0 else CANARY
        assert backends[urlmap["defaultService"]] == only
        assert "defaultRouteAction" not in urlmap
    # With gRPC or while the canary fleet runs, a path matcher holds the gRPC route (tests/infra/test_grpc_paths.py)
    # and the label routes (tests/infra/test_label_routes.py) before the same split.
    matchers = urlmap.get("pathMatchers", [])
    assert len(matchers) == (1 if cfg.canary_fleet_runs or grpc_exposed(cfg) else 0)
    for matcher in matchers:
        for key in ("defaultService", "defaultRouteAction"):
            assert matcher.get(key) == urlmap.get(key)


def test_forwarding_rules_are_external_managed_on_the_reserved_address(stack: tuple[StackConfig, Plan]) -> None:
    assert_forwarding(*stack)


def assert_forwarding(cfg: StackConfig, plan: Plan) -> None:
    address = state_of(one(plan, T_GLOBAL_ADDRESS), "address")
    rules = {r.inputs["portRange"]: r.inputs for r in plan.of_type(T_GLOBAL_RULE)}
    assert set(rules) == ({"80", "443"} if cfg.enable_https else {"80"})
    for rule in rules.values():
        assert rule["loadBalancingScheme"] == "EXTERNAL_MANAGED"
        assert rule["ipAddress"] == address
        assert rule["ipProtocol"] == "TCP"
        assert rule.get("deletionPolicy") == ("PREVENT" if cfg.deletion_protection else None)
    # The description is immutable (a change replaces the rule, and GCP refuses a second rule on the same address
    # and port): port 80's says the same with and without HTTPS (tests/infra/test_config_flips.py flips it).
    assert rules["80"]["description"] == "modelfleet HTTP"
    proxy = one(plan, T_HTTP_PROXY)
    assert rules["80"]["target"] == self_link(proxy)
    serving_map = self_link(named(plan, f"mf-{cfg.stack}-lb-urlmap"))
    if cfg.enable_https:
        redirect = named(plan, f"mf-{cfg.stack}-lb-redirect")
        assert proxy.inputs["urlMap"] == self_link(redirect)
        assert redirect.inputs["defaultUrlRedirect"]["httpsRedirect"] is True
        https = one(plan, T_HTTPS_PROXY)
        assert rules["443"]["target"] == self_link(https)
        assert https.inputs["urlMap"] == serving_map
        cert = one(plan, T_CERT)
        assert https.inputs["sslCertificates"] == [self_link(cert)]
        assert cert.inputs["managed"]["domains"] == list(cfg.https_domains)
    else:
        assert proxy.inputs["urlMap"] == serving_map


def armor_rules(plan: Plan) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = one(plan, T_ARMOR).inputs["rules"]
    return rules


def test_cloud_armor_denies_by_default_and_admits_only_the_configured_cidrs(stack: tuple[StackConfig, Plan]) -> None:
    assert_armor(*stack)


def assert_armor(cfg: StackConfig, plan: Plan) -> None:
    rules = armor_rules(plan)
    default = [r for r in rules if r["priority"] == 2147483647]
    assert len(default) == 1
    assert default[0]["action"] == "deny(403)"
    assert default[0]["match"] == {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["*"]}}
    others = [r for r in rules if r["priority"] != 2147483647]
    assert all(r["action"] == "allow" for r in others)
    admitted = [c for r in others for c in r["match"]["config"]["srcIpRanges"]]
    assert sorted(admitted) == sorted(cfg.allowed_source_cidrs)
    assert all(len(r["match"]["config"]["srcIpRanges"]) <= 10 for r in others)
    assert len({r["priority"] for r in rules}) == len(rules)


def test_firewall_admits_only_google_and_the_allowed_clients(stack: tuple[StackConfig, Plan]) -> None:
    assert_firewalls(*stack)


def assert_firewalls(cfg: StackConfig, plan: Plan) -> None:
    """Google's front ends and health checkers only, to the serving ports and the agent's: no client reaches a VM
    directly (the allow-list is Cloud Armor's, at the load balancer), and gRPC's port only when gRPC is exposed."""
    rules = plan.of_type(T_FIREWALL)
    assert rules
    for rule in rules:
        inputs = rule.inputs
        assert set(inputs["sourceRanges"]) == GOOGLE_LB_RANGES, rule.name
        assert inputs["direction"] == "INGRESS"
        assert inputs["targetServiceAccounts"] == [fleet_email(plan)]
    ports = {p for r in rules for p in allowed_ports(r)}
    assert ports == {AGENT_PORT, TFS_REST_PORT, *([TFS_GRPC_PORT] if grpc_exposed(cfg) else [])}
    network = plan.of_type(T_NETWORK)
    expected_network = self_link(network[0]) if network else cfg.existing_network
    assert {r.inputs["network"] for r in rules} == {expected_network}


def test_grpc_goes_through_the_application_load_balancer(stack: tuple[StackConfig, Plan]) -> None:
    """No passthrough path to TF Serving's gRPC port (it also serves ModelService, config reloads): no target pool,
    regional address or forwarding rule; the gRPC backend services are reached only through the URL map's route."""
    cfg, plan = stack
    for type_ in (T_POOL, T_LEGACY_HC, T_ADDRESS, T_RULE, T_REGION_BACKEND):
        assert plan.of_type(type_) == [], type_
    assert all("targetPools" not in m.inputs for m in plan.of_type(T_MIG))
    grpc = {self_link(b) for b in plan.of_type(T_BACKEND) if b.inputs["protocol"] == "H2C"}
    assert len(grpc) == (len(ROLES) if grpc_exposed(cfg) else 0)
    if grpc:
        urlmap = named(plan, f"mf-{cfg.stack}-lb-urlmap").inputs
        [matcher] = urlmap["pathMatchers"]

        def links(value: Any) -> set[str]:
            return {x for x in walk(value) if isinstance(x, str)} & grpc

        reaching = [r["priority"] for r in matcher["routeRules"] if links(r)]
        assert reaching == [10]  # the one gRPC route (tests/infra/test_grpc_paths.py)
        for key in ("defaultService", "defaultRouteAction"):
            assert not links(urlmap.get(key)) and not links(matcher.get(key))


def test_each_group_is_in_one_backend_service_per_protocol(stack: tuple[StackConfig, Plan]) -> None:
    """REST, and gRPC when exposed: a group in two backend services cannot scale on load-balancer utilisation
    (MORE_THAN_ONE_BACKEND_SERVICE), so with gRPC the autoscalers scale on CPU (test_autoscalers_follow_the_config)."""
    cfg, plan = stack
    backends = plan.of_type(T_BACKEND) + plan.of_type(T_REGION_BACKEND)
    for role in (STABLE, CANARY):
        group = state_of(by_role(plan, T_MIG, role), "instanceGroup")
        users = sorted(b.inputs["protocol"] for b in backends for x in b.inputs["backends"] if x["group"] == group)
        assert users == (["H2C", "HTTP"] if grpc_exposed(cfg) else ["HTTP"]), (role, users)
        if len(users) > 1:
            policy = by_role(plan, T_AUTOSCALER, role).inputs["autoscalingPolicy"]
            assert "loadBalancingUtilization" not in policy


def test_network_is_private_with_nat_egress(stack: tuple[StackConfig, Plan]) -> None:
    cfg, plan = stack
    assert one(plan, T_NETWORK).inputs["autoCreateSubnetworks"] is False
    subnet = one(plan, T_SUBNET).inputs
    assert subnet["ipCidrRange"] == cfg.network_cidr
    assert subnet["privateIpGoogleAccess"] is True
    assert subnet["network"] == self_link(one(plan, T_NETWORK))
    nat = one(plan, T_NAT).inputs
    assert nat["router"] == state_of(one(plan, T_ROUTER), "name")
    assert [s["name"] for s in nat["subnetworks"]] == [self_link(one(plan, T_SUBNET))]


# --- config variants ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [0, 35, 100])
def test_canary_weight(weight: int) -> None:
    cfg, plan = variant(canaryWeightPercent=weight)
    assert_split(cfg, plan)
    canary = by_role(plan, T_AUTOSCALER, CANARY).inputs["autoscalingPolicy"]
    if weight == 0:
        assert (canary["minReplicas"], canary["maxReplicas"]) == (0, 0)  # scaled to zero
        weighted = named(plan, "mf-test-lb-urlmap").inputs.get("defaultRouteAction")
        assert weighted is None
    else:
        assert (canary["minReplicas"], canary["maxReplicas"]) == (cfg.canary.min_replicas, cfg.canary.max_replicas)
    stable = by_role(plan, T_AUTOSCALER, STABLE).inputs["autoscalingPolicy"]
    assert (stable["minReplicas"], stable["maxReplicas"]) == (cfg.stable.min_replicas, cfg.stable.max_replicas)


def test_canary_kept_warm_at_weight_zero_runs_but_gets_no_traffic() -> None:
    """No weighted traffic; only requests for its label reach it (tests/infra/test_label_routes.py)."""
    cfg, plan = variant(canaryWeightPercent=0, canaryKeepWarm=True)
    canary = by_role(plan, T_AUTOSCALER, CANARY).inputs["autoscalingPolicy"]
    assert (canary["minReplicas"], canary["maxReplicas"]) == (cfg.canary.min_replicas, cfg.canary.max_replicas)
    assert cfg.canary.min_replicas >= 1
    assert named(plan, "mf-test-lb-urlmap").inputs.get("defaultRouteAction") is None  # all traffic to stable
    assert_split(cfg, plan)


@pytest.mark.parametrize("https", [False, True], ids=["http", "https-grpc"])
def test_allowed_cidrs_open_armor_only(https: bool) -> None:
    """Cloud Armor is the allow-list for REST and gRPC alike (both backend services carry it); the firewall never
    names a client range."""
    cidrs = [f"198.51.{i}.0/24" for i in range(12)] + ["2001:db8::/32"]
    tls: dict[str, Any] = {"enableHttps": True, "httpsDomains": ["models.example.com"]} if https else {}
    cfg, plan = variant(allowedSourceCidrs=cidrs, **tls)
    assert_armor(cfg, plan)
    assert len([r for r in armor_rules(plan) if r["action"] == "allow"]) == 2  # 13 ranges, 10 per rule
    assert_firewalls(cfg, plan)
    armor = self_link(one(plan, T_ARMOR))
    assert {b.inputs["securityPolicy"] for b in plan.of_type(T_BACKEND)} == {armor}
    assert len(plan.of_type(T_BACKEND)) == (4 if grpc_exposed(cfg) else 2)


def test_https_with_several_domains_redirects_http() -> None:
    domains = ["models.example.com", "ml.example.org"]
    cfg, plan = variant(enableHttps=True, httpsDomains=domains)
    assert_forwarding(cfg, plan)
    https = one(plan, T_HTTPS_PROXY).inputs
    tls = named(plan, "mf-test-lb-tls").inputs
    assert https["sslPolicy"] == self_link(named(plan, "mf-test-lb-tls"))
    assert tls["minTlsVersion"] == "TLS_1_2"
    assert plan.outputs["endpoint"] == "https://models.example.com"


@pytest.mark.parametrize("https", [False, True], ids=["http", "https"])
def test_grpc_disabled_builds_no_grpc_path(https: bool) -> None:
    tls: dict[str, Any] = {"enableHttps": True, "httpsDomains": ["models.example.com"]} if https else {}
    cfg, plan = variant(enableGrpc=False, **tls)
    for type_ in (T_POOL, T_LEGACY_HC, T_ADDRESS, T_RULE):
        assert plan.of_type(type_) == []
    assert all(b.inputs["protocol"] == "HTTP" for b in plan.of_type(T_BACKEND))
    assert all("targetPools" not in m.inputs for m in plan.of_type(T_MIG))
    assert "grpcEndpoint" not in plan.outputs
    for role in (STABLE, CANARY):
        assert [p["name"] for p in by_role(plan, T_MIG, role).inputs["namedPorts"]] == ["http"]
    assert all(TFS_GRPC_PORT not in allowed_ports(r) for r in plan.of_type(T_FIREWALL))
    assert_firewalls(cfg, plan)


def test_gpu_fleet() -> None:
    _, plan = variant(gpu=True, machineType="n1-standard-8", gpuType="nvidia-tesla-t4")
    for role in (STABLE, CANARY):
        t = by_role(plan, T_TEMPLATE, role).inputs
        assert t["guestAccelerators"] == [{"type": "nvidia-tesla-t4", "count": 1}]
        assert t["scheduling"]["onHostMaintenance"] == "TERMINATE"
        assert "deeplearning-platform-release" in t["disks"][0]["sourceImage"]
        assert t["shieldedInstanceConfig"]["enableVtpm"] is True
        assert "tensorflow/serving:2.20.0-gpu" in user_data(by_role(plan, T_TEMPLATE, role))
    _, g2 = variant(gpu=True, machineType="g2-standard-8")
    assert all("guestAccelerators" not in t.inputs for t in g2.of_type(T_TEMPLATE))  # the L4 comes with g2


@pytest.mark.parametrize(
    ("overrides", "gib"),
    [({}, 50), ({"diskSizeGb": 200}, 200), ({"gpu": True, "machineType": "g2-standard-8"}, 100)],
    ids=["default", "diskSizeGb", "gpu-default"],
)
def test_boot_disk_size_follows_disk_size_gb(overrides: dict[str, Any], gib: int) -> None:
    cfg, plan = variant(**overrides)
    assert cfg.disk_size_gb == gib
    for role in (STABLE, CANARY):
        (disk,) = by_role(plan, T_TEMPLATE, role).inputs["disks"]
        assert disk["boot"] and disk["diskSizeGb"] == gib


def test_gpu_on_a_machine_type_without_gpus_is_refused() -> None:
    values = {**read_stack_file(STACKS_DIR / "Pulumi.staging.yaml"), "gpu": True}
    cfg = load_config(values, "test")
    with pytest.raises(ConfigError, match=r"modelfleet:machineType = 'e2-standard-2' cannot take a GPU"):
        build(cfg)


def test_existing_network_is_used_not_created() -> None:
    network = "https://www.googleapis.com/compute/v1/projects/acme-net/global/networks/shared"
    subnet = "https://www.googleapis.com/compute/v1/projects/acme-net/regions/europe-west1/subnetworks/ml"
    cfg, plan = variant(existingNetwork=network, existingInstanceSubnets=[subnet])
    for type_ in (T_NETWORK, T_SUBNET, T_ROUTER, T_NAT):
        assert plan.of_type(type_) == []
    for t in plan.of_type(T_TEMPLATE):
        assert t.inputs["networkInterfaces"] == [{"subnetwork": subnet}]
    assert_firewalls(cfg, plan)


def test_explicit_bucket_cmek_and_empty_prefix() -> None:
    key = "projects/acme-kms/locations/europe-west1/keyRings/ml/cryptoKeys/models"
    _, plan = variant(bucketName="acme-models-eu", kmsKey=key, storePrefix="", noncurrentVersionDays=7)
    bucket = one(plan, T_BUCKET).inputs
    assert bucket["name"] == "acme-models-eu"
    assert bucket["encryption"] == {"defaultKmsKeyName": key}
    assert bucket["lifecycleRules"][0]["condition"]["daysSinceNoncurrentTime"] == 7
    assert plan.outputs["storeUri"] == "gs://acme-models-eu"
    assert one(plan, T_OBJECT).inputs["name"].startswith("_agent/")


def test_requests_metric_scales_on_load_balancer_rate() -> None:
    cfg, plan = variant(autoscalingMetric="requests", targetRequestsPerSecond=120)
    assert_autoscalers(cfg, plan)
    for role in (STABLE, CANARY):
        (b,) = named(plan, f"mf-test-lb-{role}").inputs["backends"]
        assert b["maxRatePerInstance"] == 120


def test_names_of_a_long_stack_fit_gcp_limits() -> None:
    values = read_stack_file(STACKS_DIR / "Pulumi.staging.yaml")
    cfg = load_config(values, "Team_ML.Serving-Europe-Production-Blue")
    plan = evaluate(cfg.stack, lambda: build(cfg), cloud="gcp")
    for account in plan.of_type(T_ACCOUNT):
        assert re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]", account.inputs["accountId"])
    name = one(plan, T_BUCKET).inputs["name"]
    assert re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]", name) and len(name) <= 63
    for t in plan.of_type(T_TEMPLATE):
        assert len(t.inputs["namePrefix"]) <= 37


def test_the_renamed_accounts_component_keeps_its_earlier_name_as_an_alias(
    stack: tuple[StackConfig, Plan],
) -> None:
    """The identities component was `mf-<slug>-sa`: without the alias `pulumi up` would recreate the service accounts
    (new ids, every IAM binding on them lost). Every other component kept its name."""
    cfg, plan = stack
    components = [r for r in plan.resources if not r.custom and r.parent_name == f"modelfleet-{plan.stack}"]
    aliased = {r.name: r.aliases for r in components if r.aliases}
    prefix = naming.component_name(cfg.stack, "")[:-1]  # mf-<slug>
    assert aliased == {naming.component_name(cfg.stack, naming.IAM): (f"{prefix}-sa",)}
