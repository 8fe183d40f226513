"""Whole-stack protection (issue 12, item 7): with ``deletionProtection`` every resource of the graph carries Pulumi's
``protect`` (firewalls, groups, autoscalers, accounts, the provider, the components), except what a routine
`pulumi up` replaces or removes, which protection would make fail.

The protection is a stack transformation the SDK runs on each registration, so the offline graph records what the
engine would receive (``PlannedResource.protect`` is the registration's ``protect``).
"""

from __future__ import annotations

from typing import Any

import pulumi
import pytest

from infra.config import StackConfig, load_config, read_stack_file
from infra.offline import Plan, evaluate
from infra.stack import (
    CANARY_ONLY,
    ROUTINELY_REPLACED_TYPES,
    STACKS_DIR,
    build_stack,
    plan_stack,
    protect_stack,
    routinely_replaced,
)

PROD = {"gcp": "prod", "aws": "aws-prod"}
STAGING = {"gcp": "staging", "aws": "aws-staging"}
T_TEMPLATE = "gcp:compute/instanceTemplate:InstanceTemplate"


def plan_of(stack_file: str, **overrides: Any) -> tuple[StackConfig, Plan]:
    cfg = load_config({**read_stack_file(STACKS_DIR / f"Pulumi.{stack_file}.yaml"), **overrides}, stack_file)
    return cfg, evaluate(cfg.stack, lambda: build_stack(cfg), cloud=cfg.cloud)


def unprotected(plan: Plan) -> dict[str, str]:
    return {r.name: r.type for r in plan.resources if not r.protect}


@pytest.mark.parametrize("cloud", ["gcp", "aws"])
def test_every_resource_of_a_protected_stack_is_protected_but_the_routinely_replaced(cloud: str) -> None:
    cfg, plan = plan_stack(PROD[cloud])
    assert cfg.deletion_protection
    for r in plan.resources:
        why = routinely_replaced(r.type, r.name, r.retain_on_delete)
        assert r.protect is (why is None), (r.type, r.name, why)
    # What stays open is small and known: the agent wheel, and on GCP the instance templates.
    expected = {
        "gcp": {"gcp:storage/bucketObject:BucketObject", T_TEMPLATE},
        "aws": {"aws:s3/bucketObjectv2:BucketObjectv2"},
    }
    assert set(unprotected(plan).values()) == expected[cloud]
    # The examples: firewalls, autoscalers, groups, service accounts, and the provider itself.
    kinds = {
        "gcp": ("compute/firewall", "regionAutoscaler", "regionInstanceGroupManager", "serviceaccount/account"),
        "aws": ("securityGroup", "autoscaling/group", "iam/role", "lb/loadBalancer", "s3/bucket:Bucket"),
    }
    for kind in kinds[cloud]:
        found = [r for r in plan.resources if kind in r.type]
        assert found and all(r.protect for r in found), kind
    assert all(r.protect for r in plan.resources if r.type.startswith("pulumi:providers:"))
    assert all(r.protect for r in plan.resources if not r.custom)  # components too


@pytest.mark.parametrize("cloud", ["gcp", "aws"])
def test_an_unprotected_stack_protects_nothing(cloud: str) -> None:
    cfg, plan = plan_stack(STAGING[cloud])
    assert not cfg.deletion_protection
    assert not any(r.protect for r in plan.resources)


@pytest.mark.parametrize("cloud", ["gcp", "aws"])
def test_routine_changes_only_add_or_remove_unprotected_resources(cloud: str) -> None:
    """A protected resource that an `up` drops from the program fails that `up`: canary on and off (label routes on
    AWS) and kept warm must come and go with unprotected resources only."""
    flips = [
        {"canaryWeightPercent": 0},
        {"canaryWeightPercent": 10},
        {"canaryWeightPercent": 0, "canaryKeepWarm": True},
        {"canaryWeightPercent": 100},
    ]
    graphs = [plan_of(PROD[cloud], **flip)[1] for flip in flips]
    names = [{(r.type, r.name) for r in g.resources} for g in graphs]
    always = names[0].intersection(*names[1:])
    coming_and_going = names[0].union(*names[1:]) - always
    if cloud == "aws":
        assert coming_and_going  # the label routes exist only while the canary fleet runs
    for graph in graphs:
        for r in graph.resources:
            if (r.type, r.name) in coming_and_going:
                assert not r.protect, (r.type, r.name)


def test_gcp_instance_templates_stay_unprotected() -> None:
    """Every change to a fleet's VMs replaces its template (create the new one, then delete the old one)."""
    _, plan = plan_stack("prod")
    templates = plan.of_type(T_TEMPLATE)
    assert templates and not any(t.protect for t in templates)
    assert T_TEMPLATE in ROUTINELY_REPLACED_TYPES


def test_the_transformation_itself() -> None:
    def run(type_: str, name: str, **opts: Any) -> bool | None:
        args = pulumi.ResourceTransformationArgs(
            resource=None,  # type: ignore[arg-type]
            type_=type_,
            name=name,
            props={},
            opts=pulumi.ResourceOptions(**opts),
        )
        result = protect_stack(args)
        assert result.props == {}
        return result.opts.protect

    assert run("gcp:compute/firewall:Firewall", "mf-prod-lb-allow-lb") is True
    assert run("pulumi:providers:aws", "aws") is True
    assert run("modelfleet:gcp:ServingFleet", "mf-prod-stable") is True
    assert run("gcp:storage/bucketObject:BucketObject", "mf-prod-store-agent-wheel", retain_on_delete=True) is False
    assert run(T_TEMPLATE, "mf-prod-stable-template") is False
    assert run("aws:lb/listenerRule:ListenerRule", "mf-aws-prod-lb-label-canary") is False
    assert run("aws:lb/listenerRule:ListenerRule", "mf-aws-prod-lb-grpc") is True  # not routine
    assert run("aws:lb/listenerRule:ListenerRule", "mf-aws-prod-lb-internal-paths") is True
    # An explicit `protect=False` on a resource does not survive in a protected stack.
    assert run("aws:s3/bucket:Bucket", "mf-aws-prod-store-bucket", protect=False) is True
    assert set(CANARY_ONLY) == {"aws:lb/listenerRule:ListenerRule"}


def test_the_stack_builder_registers_it_only_with_deletion_protection() -> None:
    _, protected = plan_of("aws-staging", deletionProtection=True)
    assert all(r.protect for r in protected.resources if r.type == "aws:ec2/vpc:Vpc")
    _, unprotected_prod = plan_of("aws-prod", deletionProtection=False)
    assert not any(r.protect for r in unprotected_prod.resources)
