"""`modelfleet plan`: a stack's resource tree, offline, from the same program `pulumi up` runs."""

from __future__ import annotations

import json

import pytest

from modelfleet.cli import main


def test_plan_text_shows_the_tree_and_key_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--stack", "staging"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("stack staging (gcp, europe-west1): ")
    assert "canary weight 10%" in lines[0]
    components = [line.strip() for line in lines if line.startswith("  modelfleet:")]
    assert {c.split()[0] for c in components} >= {
        "modelfleet:LoadBalancer",
        "modelfleet:ModelStore",
        "modelfleet:Network",
        "modelfleet:ServingFleet",
    }
    template = next(line for line in lines if "gcp:InstanceTemplate mf-staging-stable-template" in line)
    assert template.startswith("    ") and 'machineType="e2-standard-2"' in template
    urlmap = next(line for line in lines if "gcp:URLMap" in line)
    assert '{"backendService":"mf-staging-lb-stable","weight":90}' in urlmap
    assert '{"backendService":"mf-staging-lb-canary","weight":10}' in urlmap
    assert 'storeUri: "gs://' in out


def test_plan_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--stack", "aws-staging", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["stack"], plan["cloud"]) == ("aws-staging", "aws")
    asgs = [r for r in plan["resources"] if r["type"] == "aws:autoscaling/group:Group"]
    assert sorted((r["settings"]["minSize"], r["settings"]["maxSize"]) for r in asgs) == [(1, 1), (1, 2)]
    assert plan["outputs"]["storeUri"].startswith("s3://")


def test_plan_unknown_stack_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--stack", "qa"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("modelfleet: error: no stack 'qa': ")
    assert err.endswith("(stacks: aws-prod, aws-staging, prod, staging)\n")
