"""Honest stack files (issue 12, item 6): an unedited shipped stack that carries example values fails before any
cloud call with one line naming the keys to set, the empty client allow-list is a warning in `pulumi up` and
`modelfleet plan` alike, and the AWS store's lifecycle rules use an explicit empty-prefix filter (item 9)."""

from __future__ import annotations

import logging
from typing import Any

import pulumi
import pytest

import infra.offline
from infra.config import EXAMPLE_VALUES, read_stack_file
from infra.stack import STACKS_DIR, deploy_warnings, not_deployable, plan_stack, stack_config
from tests.infra.test_main import run_main
from tests.support.plan import one

GCP_NOBODY = (
    "modelfleet:allowedSourceCidrs is empty: the load balancer admits no client (Cloud Armor answers 403 to every "
    "request); list your clients' ranges, e.g. pulumi config set --path 'allowedSourceCidrs[0]' 203.0.113.0/24"
)
AWS_NOBODY = (
    "modelfleet:allowedSourceCidrs is empty: the load balancer admits no client (its security group drops every "
    "connection); list your clients' ranges, e.g. pulumi config set --path 'allowedSourceCidrs[0]' 203.0.113.0/24"
)
AWS_DOCKER_HUB = (
    "modelfleet:dockerHubCredentialArn is empty: every VM pulls tensorflow/serving:2.20.0 from Docker Hub through the "
    "NAT (one anonymous pull quota for the whole fleet); set it (ECR then caches the image in the stack's account) or "
    "set modelfleet:tfServingImage to your mirror"
)
REFUSED = {
    "staging": "stack 'staging' cannot be deployed as it is: modelfleet:gcpProject 'acme-ml-staging' is an example "
    "value: set your GCP project id",
    "prod": "stack 'prod' cannot be deployed as it is: modelfleet:gcpProject 'acme-ml-prod' is an example value: set "
    "your GCP project id; modelfleet:httpsDomains 'models.example.com' is a documentation domain no certificate is "
    "issued for: set the domains your clients call",
    "aws-staging": None,
    "aws-prod": "stack 'aws-prod' cannot be deployed as it is: modelfleet:certificateArn "
    "'arn:aws:acm:eu-west-1:123456789012:certificate/00000000-0000-0000-0000-000000000000' names AWS's documentation "
    "account 123456789012: set the ARN of your ACM certificate in eu-west-1; modelfleet:accessLogsBucket "
    "'acme-lb-access-logs' is an example value: set an existing S3 bucket in eu-west-1, encrypted with SSE-S3, whose "
    'bucket policy lets Elastic Load Balancing write logs (README "Deploying for real"), or "" for no access logs',
}
STACKS = tuple(REFUSED)


@pytest.mark.parametrize("stack", STACKS)
def test_each_shipped_stack_says_what_to_set(stack: str) -> None:
    cfg = stack_config(stack)
    assert not_deployable(cfg) == REFUSED[stack]
    assert deploy_warnings(cfg) == ([GCP_NOBODY] if cfg.cloud == "gcp" else [AWS_NOBODY, AWS_DOCKER_HUB])


def test_every_example_value_of_the_shipped_files_is_known() -> None:
    """A stack file's example values are exactly the ones `pulumi up` refuses (a new example must be added there)."""
    shipped = {
        key: value
        for stack in STACKS
        for key, value in read_stack_file(STACKS_DIR / f"Pulumi.{stack}.yaml").items()
        if key in EXAMPLE_VALUES
    }
    assert set(shipped.values()) <= {v for values in EXAMPLE_VALUES.values() for v in values}


class _Calls:
    """Counts what the program asks of the (offline) provider: registrations of custom resources and invokes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.resources: list[str] = []
        self.invokes: list[str] = []
        new_resource, call = infra.offline.OfflineProvider.new_resource, infra.offline.OfflineProvider.call

        def counted_new_resource(provider: Any, args: pulumi.runtime.MockResourceArgs) -> Any:
            if args.custom:
                self.resources.append(args.name)
            return new_resource(provider, args)

        def counted_call(provider: Any, args: pulumi.runtime.MockCallArgs) -> Any:
            self.invokes.append(args.token)
            return call(provider, args)

        monkeypatch.setattr(infra.offline.OfflineProvider, "new_resource", counted_new_resource)
        monkeypatch.setattr(infra.offline.OfflineProvider, "call", counted_call)


@pytest.mark.parametrize("stack", ["staging", "prod", "aws-prod"])
def test_pulumi_up_refuses_an_unedited_example_before_any_cloud_call(
    stack: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = _Calls(monkeypatch)
    values = read_stack_file(STACKS_DIR / f"Pulumi.{stack}.yaml")
    with caplog.at_level(logging.WARNING), pytest.raises(pulumi.RunError) as refused:
        run_main(stack, values)
    assert str(refused.value) == REFUSED[stack]
    assert (calls.resources, calls.invokes) == ([], [])  # no provider, no resource, no invoke
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (GCP_NOBODY if values["cloud"] == "gcp" else AWS_NOBODY) in warnings  # warned before refusing


def test_pulumi_up_warns_about_an_empty_allow_list_and_deploys(caplog: pytest.LogCaptureFixture) -> None:
    values = read_stack_file(STACKS_DIR / "Pulumi.aws-staging.yaml")
    with caplog.at_level(logging.WARNING):
        plan = run_main("aws-staging", values)
    assert plan.of_type("aws:lb/loadBalancer:LoadBalancer")
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [AWS_NOBODY, AWS_DOCKER_HUB]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run_main("aws-staging", {**values, "allowedSourceCidrs": ["203.0.113.0/24"]})
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [AWS_DOCKER_HUB]


@pytest.mark.parametrize("stack", ["aws-staging", "aws-prod"])
def test_aws_lifecycle_rules_filter_with_an_explicit_empty_prefix(stack: str) -> None:
    """`filter {}` is deprecated by the AWS provider (an error in a future version); `{prefix: ""}` means the same,
    every object (terraform-provider-aws#41710, #42714)."""
    _, plan = plan_stack(stack)
    rules = one(plan, "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration").inputs["rules"]
    assert {r["id"] for r in rules} == {"expire-noncurrent-versions", "abort-incomplete-multipart-uploads"}
    assert all(r["filter"] == {"prefix": ""} for r in rules)
