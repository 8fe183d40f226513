"""Unique names (issue 12, item 8): stack names that map to the same GCP names (``prod-eu``/``prod_eu``,
``Prod``/``prod``) are refused before any cloud call, with a line saying how to rename the stack without renaming
anything in the cloud; on AWS, where every shared name is autonamed, they are accepted."""

from __future__ import annotations

import functools
import itertools
from typing import Any

import pytest

from infra import naming
from infra.config import StackConfig, load_config, read_stack_file
from infra.gcp.stack import default_bucket_name
from infra.offline import Plan, evaluate
from infra.stack import STACKS_DIR, build_stack, deploy_blockers, not_deployable
from tests.support.plan import one

PAIRS = [("prod-eu", "prod_eu"), ("prod", "Prod")]
GCP = {**read_stack_file(STACKS_DIR / "Pulumi.staging.yaml"), "gcpProject": "team-ml-prod"}
AWS = read_stack_file(STACKS_DIR / "Pulumi.aws-staging.yaml")
T_ACCOUNT = "gcp:serviceaccount/account:Account"


def config(values: dict[str, Any], stack: str, **overrides: Any) -> StackConfig:
    return load_config({**values, **overrides}, stack)


def gcp_names(stack: str) -> tuple[set[str], str]:
    """The GCP names the stack sets itself: service account ids and the bucket name."""
    cfg = config(GCP, stack)
    plan: Plan = evaluate(stack, lambda: build_stack(cfg), cloud="gcp")
    return {a.inputs["accountId"] for a in plan.of_type(T_ACCOUNT)}, one(plan, "gcp:storage/bucket:Bucket").inputs[
        "name"
    ]


@pytest.mark.parametrize(("canonical", "other"), PAIRS)
def test_the_pairs_would_share_their_gcp_names(canonical: str, other: str) -> None:
    """Why the name is refused: built as they are, both stacks set the same account ids and bucket name."""
    assert gcp_names(canonical) == gcp_names(other)
    assert naming.canonical_stack_name(other) == canonical


@pytest.mark.parametrize(("canonical", "other"), PAIRS)
def test_on_gcp_the_name_that_is_not_its_own_slug_is_refused(canonical: str, other: str) -> None:
    assert deploy_blockers(config(GCP, canonical)) == []
    assert not_deployable(config(GCP, other)) == (
        f"stack {other!r} cannot be deployed as it is: stack name {other!r} is not a GCP name: stack {canonical!r} "
        "would get the same service account ids and bucket name, and the second stack's `pulumi up` fails with 409; "
        f"rename it: pulumi stack rename {canonical} (its resources keep their cloud names)"
    )


@pytest.mark.parametrize(("canonical", "other"), PAIRS)
def test_renaming_keeps_every_gcp_name(canonical: str, other: str) -> None:
    """What the refusal tells an existing stack to do changes nothing in the cloud."""
    assert naming.stack_prefix(other) == naming.stack_prefix(canonical)
    assert default_bucket_name("team-ml-prod", other) == default_bucket_name("team-ml-prod", canonical)


@pytest.mark.parametrize(("canonical", "other"), PAIRS)
def test_on_aws_both_names_are_accepted(canonical: str, other: str) -> None:
    """AWS autonames what the two stacks could share (Pulumi suffix, S3 bucket prefix + suffix) and keeps the exact
    stack name in the IAM path and tags."""
    for stack in (canonical, other):
        assert deploy_blockers(config(AWS, stack)) == []
    paths: set[str] = set()
    for stack in (canonical, other):
        plan = evaluate(stack, functools.partial(build_stack, config(AWS, stack)), cloud="aws")
        bucket = one(plan, "aws:s3/bucket:Bucket").inputs
        assert "bucket" not in bucket and bucket["bucketPrefix"].startswith("modelfleet-")  # S3 adds a unique suffix
        paths |= {r.inputs["path"] for r in plan.of_type("aws:iam/role:Role")}
    assert paths == {f"/modelfleet/{canonical}/", f"/modelfleet/{other}/"}


def test_a_long_name_shares_only_the_default_bucket_name() -> None:
    """Past the 20-character slug the account ids carry a hash of the exact name, but the bucket name (up to 63
    characters) can still be shared: the line says so, and an explicit bucketName settles it."""
    stack = "Team_ML.Serving-Europe-Prod"
    canonical = "team-ml-serving-europe-prod"
    assert naming.stack_prefix(stack) != naming.stack_prefix(canonical)
    bucket = default_bucket_name("team-ml-prod", stack)
    assert not_deployable(config(GCP, stack)) == (
        f"stack {stack!r} cannot be deployed as it is: stack name {stack!r} is not a GCP name: stack {canonical!r} "
        "would get the same bucket name, and the second stack's `pulumi up` fails with 409; "
        f"set modelfleet:bucketName to {bucket!r} (this stack's bucket) or rename the stack"
    )
    assert deploy_blockers(config(GCP, stack, bucketName=bucket)) == []


def test_names_that_are_their_own_slug_never_share_gcp_names() -> None:
    stacks = ["prod", "prod-eu", "prod-eu-1", "staging", "a" * 20, "a" * 21, "a" * 40, "team-ml-serving-europe-prod"]
    assert all(deploy_blockers(config(GCP, s)) == [] for s in stacks)
    prefixes = [naming.stack_prefix(s) for s in stacks]
    buckets = [default_bucket_name("team-ml-prod", s) for s in stacks]
    for names in (prefixes, buckets):
        assert len(set(names)) == len(stacks), names
    for a, b in itertools.combinations(stacks, 2):
        assert naming.stack_prefix(a) != naming.stack_prefix(b)
