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


def run_main(stack: str, values: dict[str, Any]) -> Any:
    """`__main__.py` evaluated offline as `pulumi up` would run it in ``stack`` with ``values`` as its config."""

    def program() -> dict[str, Any]:
        pulumi.runtime.set_all_config(_pulumi_config(values))
        runpy.run_path(str(REPO_ROOT / "__main__.py"), run_name="__main__")
        return {}

    try:
        return evaluate(stack, program, cloud=values["cloud"])
    finally:
        pulumi.runtime.set_all_config({})


# What a user puts in place of the shipped files' example values (which `pulumi up` refuses: test_stack_files.py).
OWN_VALUES: dict[str, dict[str, Any]] = {
    "staging": {"gcpProject": "team-ml-staging"},
    "aws-staging": {},
    "prod": {"gcpProject": "team-ml-prod", "httpsDomains": ["models.team-ml.io"]},
    "aws-prod": {
        "certificateArn": "arn:aws:acm:eu-west-1:210987654321:certificate/11111111-2222-3333-4444-555555555555",
        "accessLogsBucket": "team-ml-lb-logs",
    },
}


def _own(stack: str) -> dict[str, Any]:
    return {**read_stack_file(STACKS_DIR / f"Pulumi.{stack}.yaml"), **OWN_VALUES[stack]}


@pytest.mark.parametrize("stack", ["staging", "aws-staging"])
def test_main_builds_the_stack_from_pulumi_config(stack: str) -> None:
    values = _own(stack)
    plan = run_main(stack, values)
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
        run_main("staging", values)


@pytest.mark.parametrize("stack", ["prod", "aws-prod"])
def test_main_protects_a_prod_stack_as_a_whole(stack: str) -> None:
    """The program `pulumi up` runs registers the protection (through the stack builder), not only `plan`."""
    plan = run_main(stack, _own(stack))
    assert plan.resources
    unprotected = {r.type for r in plan.resources if not r.protect}
    assert unprotected <= {
        "gcp:compute/instanceTemplate:InstanceTemplate",
        "gcp:storage/bucketObject:BucketObject",
        "aws:s3/bucketObjectv2:BucketObjectv2",
    }
    assert sum(r.protect for r in plan.resources) > 40


def test_main_stops_on_a_stack_name_that_would_share_gcp_names() -> None:
    with pytest.raises(pulumi.RunError, match=r"^stack 'Staging' cannot be deployed as it is: stack name 'Staging'"):
        run_main("Staging", _own("staging"))


def test_main_stops_on_gpus_on_gcp() -> None:
    values = {**_own("staging"), "gpu": True, "machineType": "g2-standard-8"}
    with pytest.raises(pulumi.RunError) as refused:
        run_main("staging", values)
    assert str(refused.value) == (
        "stack 'staging' cannot be deployed as it is: modelfleet:gpu = true on gcp: Google does not document Docker "
        "or the NVIDIA container toolkit in the GPU image common-cu129-ubuntu-2404-nvidia-580, and the bootstrap runs "
        "TF Serving with docker run --gpus all without installing them; set gpu to false, or serve GPUs on aws"
    )
