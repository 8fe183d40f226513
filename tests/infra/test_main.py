"""`__main__.py`, the program `pulumi up` runs: config comes through `pulumi.Config` as strings, as on a real run."""

from __future__ import annotations

import json
import runpy
from typing import Any

import pulumi
import pytest

from infra.config import read_stack_file
from infra.offline import evaluate
from infra.stack import STACKS_DIR
from tests.support import REPO_ROOT


def _pulumi_config(values: dict[str, Any]) -> dict[str, str]:
    """What the engine hands the program: `project:key` names, strings, JSON for structured values."""
    return {f"modelfleet:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


def _run_main(stack: str, values: dict[str, Any]) -> Any:
    def program() -> dict[str, Any]:
        pulumi.runtime.set_all_config(_pulumi_config(values))
        runpy.run_path(str(REPO_ROOT / "__main__.py"), run_name="__main__")
        return {}

    try:
        return evaluate(stack, program, cloud=values["cloud"])
    finally:
        pulumi.runtime.set_all_config({})


@pytest.mark.parametrize("stack", ["staging", "aws-staging"])
def test_main_builds_the_stack_from_pulumi_config(stack: str) -> None:
    values = read_stack_file(STACKS_DIR / f"Pulumi.{stack}.yaml")
    plan = _run_main(stack, values)
    types = {r.type for r in plan.resources}
    if values["cloud"] == "gcp":
        template = plan.of_type("gcp:compute/instanceTemplate:InstanceTemplate")
        assert template and all(t.inputs["machineType"] == values["machineType"] for t in template)
        assert "gcp:storage/bucket:Bucket" in types
    else:
        templates = plan.of_type("aws:ec2/launchTemplate:LaunchTemplate")
        assert templates and all(t.inputs["instanceType"] == values["machineType"] for t in templates)
        assert "aws:s3/bucket:Bucket" in types


def test_main_stops_on_a_bad_value_with_its_message() -> None:
    values = {**read_stack_file(STACKS_DIR / "Pulumi.staging.yaml"), "canaryWeightPercent": 150}
    with pytest.raises(
        pulumi.RunError, match=r"modelfleet:canaryWeightPercent = 150 is invalid; must be between 0 and 100"
    ):
        _run_main("staging", values)
