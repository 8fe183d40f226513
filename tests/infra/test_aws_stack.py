"""The AWS stack under Pulumi's mocks: each stack file's resource graph carries the hardening and wiring that matter
(store locked down, IMDSv2, no public IPs, instances reachable only from the load balancer, health on the agent,
weights from config, instance refresh on template change), and the rendered user-data passes cloud-init's schema."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import infra.aws.stack as aws_stack
from infra import agent_package, bootstrap, naming
from infra.agent_package import AgentWheelFile
from infra.config import StackConfig, load_config, read_stack_file
from infra.offline import Plan, PlannedResource, evaluate
from infra.offline import aws as aws_answers
from infra.stack import STACKS_DIR, plan_stack
from model_export import layout
from model_export.constants import AGENT_PORT, CANARY, HEALTH_PATH, ROLES, STABLE, TFS_GRPC_PORT, TFS_REST_PORT
from tests.support.plan import one, parent_type

STACKS = ("aws-staging", "aws-prod")
T_BUCKET = "aws:s3/bucket:Bucket"
T_LT = "aws:ec2/launchTemplate:LaunchTemplate"
T_ASG = "aws:autoscaling/group:Group"
T_TG = "aws:lb/targetGroup:TargetGroup"
T_LISTENER = "aws:lb/listener:Listener"
T_RULE = "aws:lb/listenerRule:ListenerRule"
T_SG = "aws:ec2/securityGroup:SecurityGroup"
T_INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
T_EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
T_POLICY = "aws:autoscaling/policy:Policy"
T_HOOK = "aws:autoscaling/lifecycleHook:LifecycleHook"
T_ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
PROVIDER = "pulumi:providers:aws"


def lb(plan: Plan) -> str:
    """The load balancer component's name (infra/naming.py: mf-<stack slug>-lb); its children start with it."""
    return naming.component_name(plan.stack, naming.LOAD_BALANCER)


def tg(plan: Plan, role: str, protocol: str) -> str:
    """A target group's name: AWS autonames it within 32 characters, so the component part may be shortened."""
    return naming.child_name(lb(plan), f"{role}-{protocol}", 32)


@pytest.fixture(scope="module", params=STACKS)
def planned(request: pytest.FixtureRequest) -> tuple[StackConfig, Plan]:
    return plan_stack(request.param)


def config(**overrides: Any) -> StackConfig:
    return load_config({**read_stack_file(STACKS_DIR / "Pulumi.aws-staging.yaml"), **overrides}, "test")


def plan_of(cfg: StackConfig) -> Plan:
    return evaluate("test", lambda: aws_stack.build(cfg), cloud="aws")


def by_role(plan: Plan, type_: str) -> dict[str, PlannedResource]:
    """The resource of ``type_`` in each fleet (stable / canary components)."""
    fleets = {naming.component_name(plan.stack, role): role for role in ROLES}
    return {fleets[r.parent_name]: r for r in plan.of_type(type_) if r.parent_name in fleets}


def statements(document: str) -> list[dict[str, Any]]:
    doc = json.loads(document)
    assert doc["Version"] == "2012-10-17"
    return list(doc["Statement"])


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --- the store -----------------------------------------------------------------------------------------------------


def test_bucket_is_private_versioned_encrypted_and_tls_only(planned: tuple[StackConfig, Plan]) -> None:
    cfg, plan = planned
    bucket = one(plan, T_BUCKET)
    assert bucket.inputs.get("forceDestroy") is False
    pab = one(plan, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock").inputs
    for flag in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"):
        assert pab[flag] is True, flag
    ownership = one(plan, "aws:s3/bucketOwnershipControls:BucketOwnershipControls").inputs
    assert ownership["rule"]["objectOwnership"] == "BucketOwnerEnforced"
    sse = one(plan, "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
    [rule] = sse.inputs["rules"]
    assert rule["applyServerSideEncryptionByDefault"] == {"sseAlgorithm": "AES256"}  # no kmsKey in the stack files
    versioning = one(plan, "aws:s3/bucketVersioning:BucketVersioning").inputs
    assert versioning["versioningConfiguration"]["status"] == "Enabled"

    rules = {
        r["id"]: r
        for r in one(plan, "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration").inputs["rules"]
    }
    expire = rules["expire-noncurrent-versions"]
    assert expire["status"] == "Enabled"
    assert expire["noncurrentVersionExpiration"]["noncurrentDays"] == cfg.noncurrent_version_days
    assert rules["abort-incomplete-multipart-uploads"]["abortIncompleteMultipartUpload"]["daysAfterInitiation"] >= 1

    [deny_plain, deny_old_tls] = statements(one(plan, "aws:s3/bucketPolicy:BucketPolicy").inputs["policy"])
    assert deny_plain["Effect"] == "Deny" and deny_plain["Principal"] == "*"
    assert deny_plain["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert deny_old_tls["Condition"] == {"NumericLessThan": {"s3:TlsVersion": "1.2"}}


def test_agent_wheel_is_uploaded_content_addressed_under_the_prefix(planned: tuple[StackConfig, Plan]) -> None:
    cfg, plan = planned
    wheel = agent_package.deployed_agent_wheel()
    obj = one(plan, "aws:s3/bucketObjectv2:BucketObjectv2").inputs
    assert obj["key"] == f"{cfg.store_prefix}/_agent/{wheel.sha256}/{wheel.path.name}"
    assert plan.outputs["agentWheelUri"] == f"{plan.outputs['storeUri']}/_agent/{wheel.sha256}/{wheel.path.name}"


# --- who may touch the store ------------------------------------------------------------------------------------


def role_policy(plan: Plan, suffix: str) -> PlannedResource:
    """The fleet role's inline policy named ``<iam component>-fleet-<suffix>``."""
    return one(plan, T_ROLE_POLICY, f"{naming.component_name(plan.stack, naming.IAM)}-fleet-{suffix}")


def test_fleet_role_may_only_list_the_prefix_and_read_objects_under_it(planned: tuple[StackConfig, Plan]) -> None:
    cfg, plan = planned
    bucket_arn = f"arn:aws:s3:::{plan.outputs['bucketName']}"
    policy = role_policy(plan, "read-store")
    role = one(plan, "aws:iam/role:Role", policy.name.removesuffix("-read-store"))
    assert json.loads(role.inputs["assumeRolePolicy"])["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}

    found = statements(policy.inputs["policy"])
    actions = sorted(a for s in found for a in as_list(s["Action"]))
    assert actions == ["s3:GetObject", "s3:ListBucket"]
    for s in found:
        assert s["Effect"] == "Allow"
        assert all("*" not in a for a in as_list(s["Action"]))
        assert all(r != "*" and not r.endswith(":::*") for r in as_list(s["Resource"]))
    [get] = [s for s in found if s["Action"] == "s3:GetObject"]
    assert get["Resource"] == f"{bucket_arn}/{cfg.store_prefix}/*"
    [lst] = [s for s in found if s["Action"] == "s3:ListBucket"]
    assert lst["Resource"] == bucket_arn
    assert lst["Condition"] == {"StringLike": {"s3:prefix": [f"{cfg.store_prefix}/*"]}}
    assert plan.outputs["fleetIdentity"].startswith("arn:aws:iam::")
    role_policies = {r.name.rsplit("-fleet-", 1)[1] for r in plan.of_type(T_ROLE_POLICY)}
    assert role_policies == {"read-store", "write-leases", "report-health"}  # all on the one fleet role
    assert {r.inputs["role"] for r in plan.of_type(T_ROLE_POLICY)} == {role.state["name"]}


def test_fleet_role_writes_only_its_drain_leases(planned: tuple[StackConfig, Plan]) -> None:
    cfg, plan = planned
    bucket_arn = f"arn:aws:s3:::{plan.outputs['bucketName']}"
    [put] = statements(role_policy(plan, "write-leases").inputs["policy"])
    assert put["Effect"] == "Allow" and put["Action"] == "s3:PutObject"  # conditional puts need no more; no delete
    assert put["Resource"] == f"{bucket_arn}/{cfg.store_prefix}/_fleet/*"


# Keys relative to the store: what the fleet VMs write, and what they must never write.
FLEET_WRITES = (
    "_fleet/stable/status/vm-1.json",  # a heartbeat: model_export.layout.heartbeat_key("stable", "vm-1") (issue 11)
    "_fleet/canary/status/i-0123456789abcdef0.json",
    layout.drain_slot_key(STABLE, 0),
    layout.drain_slot_key(CANARY, 3),
)
NOT_FLEET_WRITES = (
    layout.manifest_key("digits"),
    f"{layout.version_prefix('digits', 3)}/saved_model.pb",
    layout.pending_key("digits", 4),
    layout.agent_wheel_key("ab" * 32, "modelfleet-0.1.0-py3-none-any.whl"),
    "_fleetx/stable/status/vm-1.json",
    "_fleet",
    "fleet/stable/status/vm-1.json",
)
READ_ACTIONS = {"s3:GetObject", "s3:ListBucket"}


def iam_glob(pattern: str) -> re.Pattern[str]:
    """An IAM resource pattern: ``*`` any characters (``/`` included), ``?`` one."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern))


def fleet_may_write(plan: Plan) -> Callable[[str], bool]:
    """Whether any statement of the fleet role's policies that allows an S3 action beyond reading admits an object
    ARN (``arn:aws:s3:::B/K``)."""
    patterns = []
    for policy in plan.of_type(T_ROLE_POLICY):
        for s in statements(policy.inputs["policy"]):
            actions = set(as_list(s["Action"]))
            if s["Effect"] == "Allow" and any(a.startswith("s3:") for a in actions) and actions - READ_ACTIONS:
                patterns += [iam_glob(r) for r in as_list(s["Resource"])]
    assert patterns
    return lambda arn: any(p.fullmatch(arn) for p in patterns)


def assert_fleet_writes_only_under_fleet(cfg: StackConfig, plan: Plan) -> None:
    bucket = plan.outputs["bucketName"]
    may_write = fleet_may_write(plan)

    def arn(key: str, bucket: str = bucket, prefix: str = cfg.store_prefix) -> str:
        return f"arn:aws:s3:::{bucket}/{prefix + '/' if prefix else ''}{key}"

    for key in FLEET_WRITES:
        assert may_write(arn(key)), key
        assert not may_write(arn(key, bucket=f"{bucket}-other")), key
        if cfg.store_prefix:  # the same key at the bucket's root or under another prefix is not the stack's
            assert not may_write(arn(key, prefix="")), key
            assert not may_write(arn(key, prefix=f"{cfg.store_prefix}x")), key
    for key in NOT_FLEET_WRITES:
        assert not may_write(arn(key)), key


def test_fleet_role_writes_only_its_leases_and_heartbeats(planned: tuple[StackConfig, Plan]) -> None:
    """Drain leases and heartbeats (``<prefix>/_fleet/*``) are writable to the fleet; models, manifests, the agent
    wheel are not."""
    assert_fleet_writes_only_under_fleet(*planned)


def test_fleet_role_writes_only_under_fleet_at_the_bucket_root() -> None:
    cfg = config(storePrefix="")
    assert_fleet_writes_only_under_fleet(cfg, plan_of(cfg))


def test_fleet_vms_may_report_health_to_the_stacks_groups_only(planned: tuple[StackConfig, Plan]) -> None:
    _, plan = planned
    report, find = statements(role_policy(plan, "report-health").inputs["policy"])
    assert report["Action"] == ["autoscaling:SetInstanceHealth", "autoscaling:CompleteLifecycleAction"]
    arns = sorted(g.state["arn"] for g in by_role(plan, T_ASG).values())
    assert report["Resource"] == arns and len(arns) == len(ROLES)
    assert all(":autoScalingGroup:" in arn for arn in arns)
    # The one read that supports no resource-level permission: which group is this instance in?
    assert (find["Action"], find["Resource"]) == ("autoscaling:DescribeAutoScalingInstances", "*")


def test_publisher_policy_writes_only_under_the_prefix_and_cannot_erase_history(
    planned: tuple[StackConfig, Plan],
) -> None:
    cfg, plan = planned
    bucket_arn = f"arn:aws:s3:::{plan.outputs['bucketName']}"
    found = statements(one(plan, "aws:iam/policy:Policy").inputs["policy"])
    actions = {a for s in found for a in as_list(s["Action"])}
    assert {"s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:ListBucket"} <= actions
    assert not any("*" in a or "Version" in a for a in actions)  # no s3:*, no DeleteObjectVersion
    for s in found:
        for resource in as_list(s["Resource"]):
            if s["Effect"] == "Allow":
                assert resource in (bucket_arn, f"{bucket_arn}/{cfg.store_prefix}/*")
            else:  # a deny only narrows what the allows grant, inside the store
                assert resource.startswith(f"{bucket_arn}/{cfg.store_prefix}/"), resource
    assert plan.outputs["publisherPolicyArn"].startswith("arn:aws:iam::")


# --- network -------------------------------------------------------------------------------------------------------


def test_network_spreads_over_zones_with_private_instance_subnets(planned: tuple[StackConfig, Plan]) -> None:
    cfg, plan = planned
    zones = 3 if cfg.deletion_protection else 2
    subnets = plan.of_type("aws:ec2/subnet:Subnet")
    private = [s for s in subnets if s.inputs["tags"]["tier"] == "private"]
    public = [s for s in subnets if s.inputs["tags"]["tier"] == "public"]
    assert len(private) == len(public) == zones
    assert {s.inputs["availabilityZone"] for s in private} == {f"{cfg.region}{z}" for z in "abc"[:zones]}
    assert all(s.inputs.get("mapPublicIpOnLaunch") is False for s in subnets)
    assert one(plan, "aws:ec2/vpc:Vpc").inputs["cidrBlock"] == cfg.network_cidr
    assert len(plan.of_type("aws:ec2/natGateway:NatGateway")) == (zones if cfg.deletion_protection else 1)
    endpoint = one(plan, "aws:ec2/vpcEndpoint:VpcEndpoint").inputs
    assert endpoint["vpcEndpointType"] == "Gateway" and endpoint["serviceName"] == f"com.amazonaws.{cfg.region}.s3"

    private_ids = {s.name for s in private}
    for asg in plan.of_type(T_ASG):
        assert {i.rsplit("-", 1)[0] for i in asg.inputs["vpcZoneIdentifiers"]} == private_ids


# --- the fleets ----------------------------------------------------------------------------------------------------


def test_launch_templates_require_imdsv2_and_give_no_public_ip(planned: tuple[StackConfig, Plan]) -> None:
    cfg, plan = planned
    templates = by_role(plan, T_LT)
    assert set(templates) == set(ROLES)
    instances_sg = one(plan, T_SG, f"{lb(plan)}-instances")
    for lt in templates.values():
        i = lt.inputs
        assert i["metadataOptions"]["httpTokens"] == "required"
        assert i["metadataOptions"]["httpEndpoint"] == "enabled"
        # 1: the host only. A container on Docker's bridge is one hop further and gets no instance credentials; nothing
        # in one needs them (the agent, the store fetch, the health report and the registry login run on the host).
        assert i["metadataOptions"]["httpPutResponseHopLimit"] == 1
        [nic] = i["networkInterfaces"]
        assert nic["associatePublicIpAddress"] == "false"
        assert [sg.rsplit("-", 1)[0] for sg in nic["securityGroups"]] == [instances_sg.name]
        assert "vpcSecurityGroupIds" not in i
        [disk] = i["blockDeviceMappings"]
        assert disk["ebs"]["encrypted"] == "true" and disk["ebs"]["volumeType"] == "gp3"
        assert disk["ebs"]["volumeSize"] >= 50
        assert i["updateDefaultVersion"] is True
        assert i["instanceType"] == cfg.machine_type
        assert i["imageId"].startswith("ami-0")
        assert i["iamInstanceProfile"]["arn"].startswith("arn:aws:iam::")


def test_user_data_passes_cloud_init_schema_and_carries_the_role(
    planned: tuple[StackConfig, Plan], tmp_path: Path
) -> None:
    cfg, plan = planned
    for role, lt in by_role(plan, T_LT).items():
        text = base64.b64decode(lt.inputs["userData"]).decode("utf-8")
        assert text.startswith("#cloud-config\n")
        assert plan.outputs["storeUri"] in text and plan.outputs["agentWheelUri"] in text
        assert f"--role {role}" in text and f"AWS_DEFAULT_REGION={cfg.region}" in text
        path = tmp_path / f"user-data-{role}"
        path.write_text(text)
        proc = subprocess.run(
            ["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_groups_run_the_templates_latest_version_with_ec2_health_and_refresh(
    planned: tuple[StackConfig, Plan],
) -> None:
    cfg, plan = planned
    templates = by_role(plan, T_LT)
    for role, asg in by_role(plan, T_ASG).items():
        i = asg.inputs
        lt = i["launchTemplate"]
        assert lt["version"] == "1"  # the mock's latestVersion; never $Latest / $Default
        assert lt["id"].rsplit("-", 1)[0] == templates[role].name
        # Not ELB: the target groups' check is readiness, 503 on purpose while a VM drains (docs/aws.md).
        assert i["healthCheckType"] == "EC2"
        assert i["healthCheckGracePeriod"] == cfg.health_check_initial_delay_seconds
        refresh = i["instanceRefresh"]
        assert refresh["strategy"] == "Rolling"
        assert refresh["preferences"]["minHealthyPercentage"] == 100
        assert refresh["preferences"]["maxHealthyPercentage"] == 200
        assert refresh["preferences"].get("autoRollback") is not True  # terraform-provider-aws#34189
        # Capacity is the scaling policy's: a desired count in the program would reset it on every update.
        size = cfg.stable if role == STABLE else cfg.canary
        if role == STABLE or cfg.canary_fleet_runs:
            assert (i["minSize"], i["maxSize"]) == (size.min_replicas, size.max_replicas)
            assert "desiredCapacity" not in i
        else:
            assert (i["minSize"], i["maxSize"], i["desiredCapacity"]) == (0, 0, 0)
        # A change of the minimum waits for that many VMs in service (ready once, the hook): the whole hook timeout
        # plus the launch (tests/infra/test_traffic_order.py has what depends on that wait). Never the provider's
        # "0", which turns every capacity wait off; never less than its 10-minute default.
        wait = i["waitForCapacityTimeout"]
        assert re.fullmatch(r"\d+s", wait), wait
        assert int(wait[:-1]) >= max(600, cfg.health_check_initial_delay_seconds + 300)
        assert "waitForElbCapacity" not in i and "minElbCapacity" not in i  # docs/aws.md: they would deadlock a create


def test_new_vms_go_in_service_only_once_ready(planned: tuple[StackConfig, Plan]) -> None:
    """With EC2 health, the launch lifecycle hook is what keeps refreshes, scale-outs and replacements waiting for a
    ready VM (the VM completes it once its liveness endpoint first answers 200)."""
    cfg, plan = planned
    groups = by_role(plan, T_ASG)
    hooks = by_role(plan, T_HOOK)
    assert set(hooks) == set(ROLES)
    for role, hook in hooks.items():
        i = hook.inputs
        assert i["name"] == bootstrap.READY_HOOK
        assert i["autoscalingGroupName"] == groups[role].state["name"]
        assert i["lifecycleTransition"] == "autoscaling:EC2_INSTANCE_LAUNCHING"
        assert i["defaultResult"] == "ABANDON"  # never ready within the boot grace: replaced
        assert i["heartbeatTimeout"] == max(30, cfg.health_check_initial_delay_seconds)


def test_the_vms_drain_wait_is_the_rest_checks_interval_times_unhealthy_threshold(
    planned: tuple[StackConfig, Plan],
) -> None:
    _, plan = planned
    rest = [t for t in plan.of_type(T_TG) if t.inputs["healthCheck"].get("path") == HEALTH_PATH]
    waits = {t.inputs["healthCheck"]["interval"] * t.inputs["healthCheck"]["unhealthyThreshold"] for t in rest}
    assert waits == {30}
    for template in plan.of_type(T_LT):
        user_data = base64.b64decode(template.inputs["userData"]).decode()
        assert "--drain-wait-seconds 30" in user_data


def test_groups_attach_their_own_target_groups(planned: tuple[StackConfig, Plan]) -> None:
    cfg, plan = planned
    grpc = cfg.enable_grpc and cfg.enable_https
    for role, asg in by_role(plan, T_ASG).items():
        attached = {arn.split("/")[1] for arn in asg.inputs["targetGroupArns"]}
        expected = {tg(plan, role, "rest")} | ({tg(plan, role, "grpc")} if grpc else set())
        assert {name.rsplit("-", 1)[0] for name in attached} == expected


def test_scaling_policy_follows_the_configured_metric(planned: tuple[StackConfig, Plan]) -> None:
    cfg, plan = planned
    for policy in by_role(plan, T_POLICY).values():
        tracking = policy.inputs["targetTrackingConfiguration"]
        assert policy.inputs["policyType"] == "TargetTrackingScaling"
        if cfg.autoscaling_metric == "cpu":
            assert tracking["predefinedMetricSpecification"]["predefinedMetricType"] == "ASGAverageCPUUtilization"
            assert tracking["targetValue"] == cfg.target_cpu_percent
        else:  # RequestCountPerTarget counts per minute
            assert tracking["targetValue"] == cfg.target_requests_per_second * 60
            metrics = tracking.get("customizedMetricSpecification", {}).get("metrics")
            if metrics:  # REST + gRPC target groups summed
                names = {m["metricStat"]["metric"]["metricName"] for m in metrics if "metricStat" in m}
                assert names == {"RequestCountPerTarget"}
                assert [m["id"] for m in metrics if m.get("returnData")] == ["requests_per_target"]
            else:
                spec = tracking["predefinedMetricSpecification"]
                assert spec["predefinedMetricType"] == "ALBRequestCountPerTarget"
                assert "/targetgroup/" in spec["resourceLabel"]


# --- load balancer and security groups ------------------------------------------------------------------------------


def test_instances_admit_only_the_load_balancer(planned: tuple[StackConfig, Plan]) -> None:
    cfg, plan = planned
    alb_sg, instances_sg = one(plan, T_SG, f"{lb(plan)}-alb"), one(plan, T_SG, f"{lb(plan)}-instances")
    rules = [r for r in plan.of_type(T_INGRESS) if r.inputs["securityGroupId"].startswith(f"{instances_sg.name}-")]
    assert rules
    for rule in rules:
        assert rule.inputs["referencedSecurityGroupId"].rsplit("-", 1)[0] == alb_sg.name
        assert not any(k in rule.inputs for k in ("cidrIpv4", "cidrIpv6", "prefixListId"))
    expected = {TFS_REST_PORT, AGENT_PORT} | ({TFS_GRPC_PORT} if cfg.enable_grpc and cfg.enable_https else set())
    assert {r.inputs["fromPort"] for r in rules} == expected


def test_load_balancer_admits_only_the_allowed_sources(planned: tuple[StackConfig, Plan]) -> None:
    cfg, plan = planned
    alb_sg = one(plan, T_SG, f"{lb(plan)}-alb")
    rules = [r for r in plan.of_type(T_INGRESS) if r.inputs["securityGroupId"].startswith(f"{alb_sg.name}-")]
    assert sorted(r.inputs["cidrIpv4"] for r in rules) == sorted(
        c for c in cfg.allowed_source_cidrs for _ in range(2 if cfg.enable_https else 1)
    )  # the stack files list none: nobody gets in
    egress = [r for r in plan.of_type(T_EGRESS) if r.inputs["securityGroupId"].startswith(f"{alb_sg.name}-")]
    assert egress and all(r.inputs["referencedSecurityGroupId"].startswith(f"{lb(plan)}-instances-") for r in egress)


def test_alb_is_hardened(planned: tuple[StackConfig, Plan]) -> None:
    cfg, plan = planned
    alb = one(plan, "aws:lb/loadBalancer:LoadBalancer").inputs
    assert alb["loadBalancerType"] == "application" and alb["internal"] is False
    assert alb["dropInvalidHeaderFields"] is True
    assert alb["enableDeletionProtection"] is cfg.deletion_protection
    assert {s.rsplit("-", 1)[0] for s in alb["subnets"]} == {
        s.name for s in plan.of_type("aws:ec2/subnet:Subnet") if s.inputs["tags"]["tier"] == "public"
    }
    if cfg.access_logs_bucket:
        assert alb["accessLogs"] == {
            "bucket": cfg.access_logs_bucket,
            "enabled": True,
            "prefix": f"modelfleet/{cfg.stack}",
        }
    else:
        assert "accessLogs" not in alb


def test_target_groups_health_check_the_agent(planned: tuple[StackConfig, Plan]) -> None:
    cfg, plan = planned
    groups = {g.name: g.inputs for g in plan.of_type(T_TG)}
    for role in ROLES:
        rest = groups[tg(plan, role, "rest")]
        assert (rest["port"], rest["protocol"], rest["protocolVersion"]) == (TFS_REST_PORT, "HTTP", "HTTP1")
        hc = rest["healthCheck"]
        assert (hc["port"], hc["path"], hc["matcher"], hc["protocol"]) == (str(AGENT_PORT), HEALTH_PATH, "200", "HTTP")
        assert rest["deregistrationDelay"] <= 60
        if cfg.enable_grpc and cfg.enable_https:
            grpc = groups[tg(plan, role, "grpc")]
            assert (grpc["port"], grpc["protocolVersion"]) == (TFS_GRPC_PORT, "GRPC")
            assert grpc["healthCheck"]["path"] == "/grpc.health.v1.Health/Check"
            assert grpc["healthCheck"]["matcher"] == "0"
        else:
            assert tg(plan, role, "grpc") not in groups


def weights(forward: dict[str, Any]) -> dict[str, int]:
    """{role: weight}, the role read from each target group's name (<lb>-<role>-<protocol>-<suffix>)."""
    found: dict[str, int] = {}
    for g in forward["targetGroups"]:
        name = g["arn"].split("/")[1]
        [role] = [r for r in ROLES if f"-{r}-" in name]
        found[role] = g["weight"]
    return found


def test_listeners_split_traffic_by_the_configured_weights(planned: tuple[StackConfig, Plan]) -> None:
    cfg, plan = planned
    expected = {STABLE: 100 - cfg.canary_weight_percent, CANARY: cfg.canary_weight_percent}
    assert sum(expected.values()) == 100
    listeners = {r.name: r.inputs for r in plan.of_type(T_LISTENER)}
    if cfg.enable_https:
        https = listeners[f"{lb(plan)}-https"]
        assert https["protocol"] == "HTTPS" and https["port"] == 443
        assert https["certificateArn"] == cfg.certificate_arn
        assert https["sslPolicy"].startswith("ELBSecurityPolicy-TLS13-1-2")
        [action] = https["defaultActions"]
        [redirect] = listeners[f"{lb(plan)}-http"]["defaultActions"]
        assert redirect["type"] == "redirect"
        assert redirect["redirect"] == {"protocol": "HTTPS", "port": "443", "statusCode": "HTTP_301"}
        assert plan.outputs["endpoint"].startswith("https://")
    else:
        assert set(listeners) == {f"{lb(plan)}-http"}
        [action] = listeners[f"{lb(plan)}-http"]["defaultActions"]
        assert plan.outputs["endpoint"].startswith("http://")
    assert action["type"] == "forward"
    assert weights(action["forward"]) == expected
    assert "stickiness" not in action["forward"]

    rules = {r.name: r for r in plan.of_type(T_RULE)}
    internal = rules.pop(f"{lb(plan)}-internal-paths").inputs
    assert internal["listenerArn"].split("/")[2] == (f"{lb(plan)}-https" if cfg.enable_https else f"{lb(plan)}-http")
    assert internal["conditions"] == [{"pathPattern": {"values": ["/monitoring/*"]}}]
    assert internal["actions"][0]["fixedResponse"]["statusCode"] == "404"
    if cfg.enable_grpc and cfg.enable_https:
        # gRPC calls of the prediction service by weight, every other gRPC call a 404 (tests/infra/test_grpc_paths.py).
        grpc_call = {"httpHeader": {"httpHeaderName": "content-type", "values": ["application/grpc*"]}}
        rule = rules.pop(f"{lb(plan)}-grpc")
        assert rule.inputs["conditions"] == [
            grpc_call,
            {"pathPattern": {"values": ["/tensorflow.serving.PredictionService/*"]}},
        ]
        [grpc_action] = rule.inputs["actions"]
        assert weights(grpc_action["forward"]) == expected
        refused = rules.pop(f"{lb(plan)}-grpc-refused")
        assert refused.inputs["conditions"] == [grpc_call]
        assert refused.inputs["actions"][0]["fixedResponse"]["statusCode"] == "404"
        assert int(rule.inputs["priority"]) < int(refused.inputs["priority"]) < int(internal["priority"])
        assert plan.outputs["grpcEndpoint"].endswith(":443")
    else:
        assert "grpcEndpoint" not in plan.outputs
    # Label routes (tests/infra/test_label_routes.py has their routing), on the serving listener, only while the
    # canary fleet runs.
    labels = [rules.pop(f"{lb(plan)}-label-{role}", None) for role in ROLES]
    if cfg.canary_fleet_runs:
        assert all(r is not None and r.inputs["listenerArn"] == internal["listenerArn"] for r in labels)
    else:
        assert labels == [None, None]
    assert rules == {}


# --- structure and outputs ------------------------------------------------------------------------------------------


def test_every_resource_belongs_to_a_modelfleet_component(planned: tuple[StackConfig, Plan]) -> None:
    _, plan = planned
    for r in plan.resources:
        if r.type == PROVIDER or r.type.startswith("modelfleet:aws:"):
            assert parent_type(r) == "pulumi:pulumi:Stack", r.urn
        else:
            assert (parent_type(r) or "").startswith("modelfleet:aws:"), r.urn
    components = {r.type for r in plan.resources if not r.custom}
    assert components == {
        "modelfleet:aws:ModelStore",
        "modelfleet:aws:StoreAccess",
        "modelfleet:aws:Network",
        "modelfleet:aws:LoadBalancer",
        "modelfleet:aws:ServingFleet",
    }


def test_outputs_name_the_store_as_publish_takes_it(planned: tuple[StackConfig, Plan]) -> None:
    cfg, plan = planned
    out = plan.outputs
    assert out["storeUri"] == f"s3://{out['bucketName']}/{cfg.store_prefix}"
    assert out["bucketName"].startswith(f"modelfleet-{cfg.stack}-")
    assert out["endpoint"].endswith(out["loadBalancerAddress"])
    assert set(out["fleetGroups"]) == set(ROLES)


# --- config variants --------------------------------------------------------------------------------------------


KMS = "arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555"


def test_kms_key_encrypts_the_bucket_and_only_the_fleet_may_decrypt_through_s3() -> None:
    plan = plan_of(config(kmsKey=KMS))
    sse = one(plan, "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
    [rule] = sse.inputs["rules"]
    assert rule["applyServerSideEncryptionByDefault"] == {"sseAlgorithm": "aws:kms", "kmsMasterKeyId": KMS}
    assert rule["bucketKeyEnabled"] is True
    [kms] = [s for s in statements(role_policy(plan, "read-store").inputs["policy"]) if s["Resource"] == KMS]
    assert kms["Action"] == ["kms:Decrypt"]
    assert kms["Condition"] == {"StringEquals": {"kms:ViaService": "s3.eu-west-1.amazonaws.com"}}
    # Writing a lease under SSE-KMS needs a data key, through S3 only.
    [lease_kms] = [s for s in statements(role_policy(plan, "write-leases").inputs["policy"]) if s["Resource"] == KMS]
    assert lease_kms["Action"] == ["kms:GenerateDataKey"]
    assert lease_kms["Condition"] == kms["Condition"]


def test_existing_network_is_used_as_given() -> None:
    cfg = config(
        existingNetwork="vpc-0abc",
        existingInstanceSubnets=["subnet-priv-a", "subnet-priv-b"],
        existingLoadBalancerSubnets=["subnet-pub-a", "subnet-pub-b"],
    )
    plan = plan_of(cfg)
    assert not plan.of_type("aws:ec2/vpc:Vpc") and not plan.of_type("aws:ec2/subnet:Subnet")
    assert one(plan, "aws:lb/loadBalancer:LoadBalancer").inputs["subnets"] == ["subnet-pub-a", "subnet-pub-b"]
    for asg in plan.of_type(T_ASG):
        assert asg.inputs["vpcZoneIdentifiers"] == ["subnet-priv-a", "subnet-priv-b"]
    assert {sg.inputs["vpcId"] for sg in plan.of_type(T_SG)} == {"vpc-0abc"}
    assert plan.outputs["networkId"] == "vpc-0abc"


def test_allowed_sources_open_http_and_https_to_exactly_them() -> None:
    cidrs = ["203.0.113.0/24", "198.51.100.7/32"]
    cfg = config(
        allowedSourceCidrs=cidrs,
        enableHttps=True,
        certificateArn="arn:aws:acm:eu-west-1:123456789012:certificate/abc",
        canaryWeightPercent=100,
    )
    plan = plan_of(cfg)
    alb_sg = one(plan, T_SG, f"{lb(plan)}-alb")
    rules = [r.inputs for r in plan.of_type(T_INGRESS) if r.inputs["securityGroupId"].startswith(f"{alb_sg.name}-")]
    assert sorted((r["cidrIpv4"], r["fromPort"], r["toPort"]) for r in rules) == sorted(
        (c, p, p) for c in cidrs for p in (80, 443)
    )
    [action] = one(plan, T_LISTENER, f"{lb(plan)}-https").inputs["defaultActions"]
    assert weights(action["forward"]) == {STABLE: 0, CANARY: 100}


@pytest.mark.parametrize(("keep_warm", "size"), [(False, (0, 0)), (True, (1, 1))])
def test_canary_at_weight_zero_scales_to_zero_unless_kept_warm(keep_warm: bool, size: tuple[int, int]) -> None:
    cfg = config(canaryWeightPercent=0, canaryKeepWarm=keep_warm)
    plan = plan_of(cfg)
    canary = by_role(plan, T_ASG)[CANARY].inputs
    assert (canary["minSize"], canary["maxSize"]) == size
    [action] = one(plan, T_LISTENER, f"{lb(plan)}-http").inputs["defaultActions"]
    assert weights(action["forward"]) == {STABLE: 100, CANARY: 0}


def test_a_new_agent_wheel_changes_the_launch_templates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config()
    before = {r: lt.inputs["userData"] for r, lt in by_role(plan_of(cfg), T_LT).items()}
    other = tmp_path / "modelfleet-0.1.0-agent-cp312-manylinux_2_17_x86_64.zip"  # infra.agent_package.bundle_name
    other.write_bytes(b"another build")
    replacement: Callable[[], AgentWheelFile] = lambda: AgentWheelFile(other, "ab" * 32)  # noqa: E731
    monkeypatch.setattr(agent_package, "deployed_agent_wheel", replacement)
    plan = plan_of(cfg)
    after = {r: lt.inputs["userData"] for r, lt in by_role(plan, T_LT).items()}
    for role in ROLES:
        assert after[role] != before[role]
        assert "ab" * 32 in base64.b64decode(after[role]).decode()
    assert one(plan, "aws:s3/bucketObjectv2:BucketObjectv2").inputs["key"] == f"models/_agent/{'ab' * 32}/{other.name}"


def test_gpu_fleets_use_the_deep_learning_image_a_bigger_disk_and_the_gpu_serving_image() -> None:
    plan = plan_of(config(gpu=True, machineType="g5.xlarge"))
    ami = aws_answers.answers().invokes["aws:ssm/getParameter:getParameter"](
        "", {"name": aws_stack.GPU_AMI_PARAMETER, "region": "eu-west-1"}
    )["insecureValue"]
    for lt in by_role(plan, T_LT).values():
        assert lt.inputs["imageId"] == ami
        assert lt.inputs["blockDeviceMappings"][0]["ebs"]["volumeSize"] == aws_stack.ROOT_VOLUME_GIB[True]
        assert "tensorflow/serving:2.20.0-gpu" in base64.b64decode(lt.inputs["userData"]).decode()


@pytest.mark.parametrize(
    ("overrides", "gib"),
    [({}, 50), ({"diskSizeGb": 200}, 200), ({"gpu": True, "machineType": "g5.xlarge", "diskSizeGb": 300}, 300)],
    ids=["default", "diskSizeGb", "gpu-diskSizeGb"],
)
def test_root_volume_size_follows_disk_size_gb(overrides: dict[str, Any], gib: int) -> None:
    cfg = config(**overrides)
    assert cfg.disk_size_gb == gib
    for lt in by_role(plan_of(cfg), T_LT).values():
        (mapping,) = lt.inputs["blockDeviceMappings"]
        assert mapping["deviceName"] == "/dev/sda1" and mapping["ebs"]["volumeSize"] == gib


def test_publisher_role_is_created_only_for_named_principals() -> None:
    from infra.aws.iam import StoreAccess, StoreAccessArgs

    ci_role = "arn:aws:iam::123456789012:role/ci-training"

    def program() -> dict[str, Any]:
        access = StoreAccess(
            "access",
            StoreAccessArgs(
                bucket_arn="arn:aws:s3:::b",
                prefix="models",
                region="eu-west-1",
                publisher_trusted_principals=(ci_role,),
            ),
        )
        assert access.publisher_role_arn is not None
        return {"role": access.publisher_role_arn}

    plan = evaluate("test", program, cloud="aws")
    publisher = one(plan, "aws:iam/role:Role", "access-publisher")
    trust = json.loads(publisher.inputs["assumeRolePolicy"])["Statement"]
    assert trust == [{"Effect": "Allow", "Principal": {"AWS": [ci_role]}, "Action": "sts:AssumeRole"}]
    attachments = {a.name: a.inputs for a in plan.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")}
    assert attachments["access-publisher"]["policyArn"].startswith("arn:aws:iam::123456789012:policy/")
    assert plan.outputs["role"].startswith("arn:aws:iam::123456789012:role/")


# --- names ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", ["aws-staging", "a-stack-name-long-enough-to-shorten-the-load-balancer"])
def test_renamed_components_keep_their_earlier_names_as_aliases(stack: str) -> None:
    """Without these aliases the first `pulumi up` after the naming rule replaces the bucket, VPC, ALB and fleets."""
    plan = evaluate(
        stack,
        lambda: aws_stack.build(load_config(read_stack_file(STACKS_DIR / "Pulumi.aws-staging.yaml"), stack)),
        cloud="aws",
    )
    for part, earlier in aws_stack.LEGACY_NAMES.items():
        (component,) = [r for r in plan.resources if r.name == naming.component_name(stack, part)]
        assert component.aliases == (earlier,), component.name
    # A child whose name was shortened to fit AWS's 32 characters does not inherit its component's alias by prefix.
    lb_name = naming.component_name(stack, naming.LOAD_BALANCER)
    shortened = 0
    for tgroup in plan.of_type(T_TG):
        part = next(
            p for p in (f"{r}-{x}" for r in ROLES for x in ("rest", "grpc")) if tgroup.name == tg(plan, *p.split("-"))
        )
        if not tgroup.name.startswith(f"{lb_name}-"):
            shortened += 1
            assert tgroup.aliases == (f"lb-{part}",), tgroup.name
    assert shortened > 0  # both stacks have target group names too long for AWS: the shortening is exercised
    # The provider keeps its name: every resource's state records its provider, and provider aliases are not honoured
    # by every engine.
    (provider,) = plan.of_type(PROVIDER)
    assert provider.name == "aws" and provider.aliases == ()
