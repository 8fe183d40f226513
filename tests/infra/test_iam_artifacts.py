"""Only the deploying identity writes the agent artefacts (issue 12, item 4): publishers write and delete every object
of the store but those under ``<prefix>/_agent/`` (the agent wheel every VM installs, and whatever else the boot
fetches from there); the fleets read them.

The grants are evaluated against object names, as the clouds would: GCS IAM conditions on
``projects/_/buckets/<bucket>/objects/<name>`` (and ``projects/_/buckets/<bucket>`` for listing), S3 policy
statements with an explicit deny winning over any allow.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from infra import agent_package
from infra.aws import iam as aws_iam
from infra.aws.stack import build as build_aws
from infra.config import StackConfig, load_config, read_stack_file
from infra.gcp import store as gcp_store
from infra.gcp.stack import build as build_gcp
from infra.offline import Plan, evaluate
from infra.stack import STACKS_DIR, plan_stack
from model_export import layout
from model_export.constants import CANARY, STABLE
from tests.support.plan import one

T_GRANT = "gcp:storage/bucketIAMMember:BucketIAMMember"
WRITER_ROLES = {"roles/storage.objectUser", "roles/storage.objectAdmin", "roles/storage.objectCreator"}
WHEEL = layout.agent_wheel_key("ab" * 32, "modelfleet-0.1.0-py3-none-any.whl")

# Keys relative to the store.
PUBLISHER_WRITES = (
    layout.manifest_key("digits"),
    f"{layout.version_prefix('digits', 3)}/saved_model.pb",
    f"{layout.version_prefix('digits', 3)}/variables/variables.data-00000-of-00001",
    layout.pending_key("digits", 4),
    "_agentx/not-the-agent.txt",  # the prefix ends with its '/'
)
AGENT_ARTEFACTS = (
    WHEEL,
    "_agent/" + "cd" * 32 + "/wheelhouse/numpy-2.0.0-cp312-manylinux_2_17_x86_64.whl",  # the agent's dependencies
    "_agent/anything-the-deployer-puts-here",
)


def _plan_of(cloud: str, **overrides: Any) -> tuple[StackConfig, Plan]:
    stack = "staging" if cloud == "gcp" else "aws-staging"
    cfg = load_config({**read_stack_file(STACKS_DIR / f"Pulumi.{stack}.yaml"), **overrides}, "test")
    build = build_gcp if cloud == "gcp" else build_aws
    return cfg, evaluate("test", lambda: build(cfg), cloud=cloud)


def _key(prefix: str, key: str) -> str:
    return f"{prefix}/{key}" if prefix else key


# --- GCP: an IAM condition on the publisher's grant ----------------------------------------------------------------

_STARTS_WITH = re.compile(r'(!?)resource\.name\.startsWith\("([^"\\]+)"\)')


def condition_holds(expression: str | None, resource_name: str) -> bool:
    """Evaluate the conditions the stack writes: none, or one (possibly negated) ``resource.name.startsWith``."""
    if expression is None:
        return True
    match = _STARTS_WITH.fullmatch(expression)
    assert match, f"not a condition this test can evaluate: {expression}"
    negated, prefix = match.groups()
    return resource_name.startswith(prefix) != bool(negated)


def gcp_may_write(plan: Plan, member: str) -> Callable[[str], bool]:
    """Whether any of ``member``'s writing grants holds for a resource name."""
    grants = [g.inputs for g in plan.of_type(T_GRANT) if g.inputs["member"] == member]
    writers = [g for g in grants if g["role"] in WRITER_ROLES]
    assert writers, f"{member} has no writing grant"

    def may_write(name: str) -> bool:
        return any(condition_holds((g.get("condition") or {}).get("expression"), name) for g in writers)

    return may_write


def gcp_may_read(plan: Plan, member: str) -> Callable[[str], bool]:
    grants = [g.inputs for g in plan.of_type(T_GRANT) if g.inputs["member"] == member]
    readers = [g for g in grants if g["role"] in {"roles/storage.objectViewer", *WRITER_ROLES}]
    return lambda name: any(condition_holds((g.get("condition") or {}).get("expression"), name) for g in readers)


def assert_gcp_agent_artefacts_are_the_deployers(cfg: StackConfig, plan: Plan) -> None:
    bucket = one(plan, "gcp:storage/bucket:Bucket").inputs["name"]
    publisher = f"serviceAccount:{plan.outputs['publisherIdentity']}"
    fleet = f"serviceAccount:{plan.outputs['fleetIdentity']}"
    may_write, fleet_reads = gcp_may_write(plan, publisher), gcp_may_read(plan, fleet)

    def obj(key: str) -> str:
        return f"projects/_/buckets/{bucket}/objects/{_key(cfg.store_prefix, key)}"

    for key in PUBLISHER_WRITES:
        assert may_write(obj(key)), key
    for key in AGENT_ARTEFACTS:
        assert not may_write(obj(key)), key
        assert fleet_reads(obj(key)), key
    assert may_write(f"projects/_/buckets/{bucket}")  # listing is a request on the bucket: still allowed
    # The wheel the stack uploads is one of the objects the publisher cannot touch.
    wheel = one(plan, "gcp:storage/bucketObject:BucketObject").inputs["name"]
    assert not may_write(f"projects/_/buckets/{bucket}/objects/{wheel}")


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_gcp_publishers_cannot_write_the_agent_artefacts(stack: str) -> None:
    assert_gcp_agent_artefacts_are_the_deployers(*plan_stack(stack))


def test_gcp_publishers_cannot_write_the_agent_artefacts_at_the_bucket_root() -> None:
    assert_gcp_agent_artefacts_are_the_deployers(*_plan_of("gcp", storePrefix=""))


def test_gcp_publisher_condition_text() -> None:
    """The exact CEL the grant carries; the bucket has uniform bucket-level access (conditions need it)."""
    assert gcp_store.publisher_condition("b", "models") == (
        '!resource.name.startsWith("projects/_/buckets/b/objects/models/_agent/")'
    )
    assert gcp_store.publisher_condition("b", "") == '!resource.name.startsWith("projects/_/buckets/b/objects/_agent/")'
    _, plan = plan_stack("staging")
    assert one(plan, "gcp:storage/bucket:Bucket").inputs["uniformBucketLevelAccess"] is True
    publisher = f"serviceAccount:{plan.outputs['publisherIdentity']}"
    (grant,) = [g for g in plan.of_type(T_GRANT) if g.inputs["member"] == publisher]
    assert grant.name.endswith("-publisher0-objectuser-no-agent")  # a new grant, not a replaced one
    assert grant.inputs["condition"]["title"] == "modelfleet store, not the agent artefacts"


# --- AWS: an explicit deny in the publisher policy -----------------------------------------------------------------


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern))


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def s3_allows(policy: dict[str, Any], action: str, arn: str) -> bool:
    """IAM's evaluation for one identity policy without conditions on objects: an explicit deny wins, else an allow
    is needed."""

    def matches(statement: dict[str, Any]) -> bool:
        actions = _as_list(statement["Action"])
        resources = _as_list(statement["Resource"])
        return any(_glob(a).fullmatch(action) for a in actions) and any(_glob(r).fullmatch(arn) for r in resources)

    statements = policy["Statement"]
    if any(s["Effect"] == "Deny" and matches(s) for s in statements):
        return False
    return any(s["Effect"] == "Allow" and matches(s) for s in statements)


WRITES = ("s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload")


def assert_aws_agent_artefacts_are_the_deployers(
    publisher: dict[str, Any], fleet: dict[str, Any], bucket_arn: str, prefix: str
) -> None:
    for key in PUBLISHER_WRITES:
        for action in (*WRITES, "s3:GetObject"):
            assert s3_allows(publisher, action, f"{bucket_arn}/{_key(prefix, key)}"), (action, key)
    for key in AGENT_ARTEFACTS:
        for action in WRITES:
            assert not s3_allows(publisher, action, f"{bucket_arn}/{_key(prefix, key)}"), (action, key)
        assert s3_allows(fleet, "s3:GetObject", f"{bucket_arn}/{_key(prefix, key)}"), key
    deny = next(s for s in publisher["Statement"] if s["Effect"] == "Deny")
    assert deny["Sid"] == "DenyAgentArtefactWrites"
    assert deny["Resource"] == f"{bucket_arn}/{_key(prefix, '_agent/*')}"


@pytest.mark.parametrize("prefix", ["models", "teams/ml/models", ""])
def test_aws_publisher_policy_denies_the_agent_artefacts(prefix: str) -> None:
    bucket_arn = "arn:aws:s3:::acme-models"
    publisher = aws_iam.publisher_policy(bucket_arn, prefix, "eu-west-1")
    fleet = aws_iam.fleet_read_policy(bucket_arn, prefix, "eu-west-1")
    assert_aws_agent_artefacts_are_the_deployers(publisher, fleet, bucket_arn, prefix)


@pytest.mark.parametrize("stack", ["aws-staging", "aws-prod"])
def test_aws_publisher_policy_in_the_graph_denies_the_agent_artefacts(stack: str) -> None:
    cfg, plan = plan_stack(stack)
    bucket_arn = f"arn:aws:s3:::{plan.outputs['bucketName']}"
    publisher = json.loads(one(plan, "aws:iam/policy:Policy").inputs["policy"])
    read = one(plan, "aws:iam/rolePolicy:RolePolicy", f"mf-{stack}-iam-fleet-read-store")
    assert_aws_agent_artefacts_are_the_deployers(publisher, json.loads(read.inputs["policy"]), bucket_arn, "models")
    wheel = one(plan, "aws:s3/bucketObjectv2:BucketObjectv2").inputs["key"]
    assert wheel == agent_package.deployed_agent_wheel().key(cfg.store_prefix)
    assert not s3_allows(publisher, "s3:PutObject", f"{bucket_arn}/{wheel}")


def test_fleet_writes_stay_under_fleet_and_not_agent() -> None:
    """The fleets' own write grant (leases, heartbeats) does not reach the agent artefacts either."""
    lease = aws_iam.fleet_lease_policy("arn:aws:s3:::b", "models", "eu-west-1")
    for key in AGENT_ARTEFACTS:
        assert not s3_allows(lease, "s3:PutObject", f"arn:aws:s3:::b/models/{key}")
    assert s3_allows(lease, "s3:PutObject", f"arn:aws:s3:::b/models/{layout.drain_slot_key(STABLE, 0)}")
    assert s3_allows(lease, "s3:PutObject", f"arn:aws:s3:::b/models/_fleet/{CANARY}/status/i-1.json")
