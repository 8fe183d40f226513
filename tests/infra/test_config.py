"""The stack config: one validated object, clear errors for bad values, generated Pulumi.yaml and README table."""

from __future__ import annotations

from typing import Any

import pytest

from infra.config import (
    KEYS,
    README_END,
    README_START,
    ConfigError,
    load_config,
    markdown_table,
    render_pulumi_yaml,
)
from infra.stack import stack_config
from tests.support import REPO_ROOT

GCP: dict[str, Any] = {"cloud": "gcp", "region": "europe-west1", "gcpProject": "acme-ml-test", "models": ["digits"]}
AWS: dict[str, Any] = {"cloud": "aws", "region": "eu-west-1", "models": ["digits"], "enableGrpc": False}


def test_minimal_configs_get_defaults() -> None:
    g = load_config(GCP, "t")
    assert (g.machine_type, g.tfs_image, g.canary_weight_percent, g.allowed_source_cidrs) == (
        "e2-standard-4",
        "tensorflow/serving:2.20.0",
        0,
        (),
    )
    assert not g.canary_enabled and not g.canary_fleet_runs and g.stable_weight_percent == 100
    warm = load_config({**GCP, "canaryKeepWarm": "true"}, "t")
    assert warm.canary_fleet_runs and not warm.canary_enabled
    a = load_config(AWS, "t")
    assert (a.machine_type, a.gcp_project, a.store_prefix) == ("c6i.xlarge", None, "models")
    gpu = load_config({**GCP, "gpu": "true"}, "t")
    assert gpu.tfs_image == "tensorflow/serving:2.20.0-gpu"


def test_pulumi_strings_are_parsed() -> None:
    """`pulumi.Config.get` returns strings, arrays as JSON, and Pulumi.yaml's defaults for every declared key."""
    raw = {k.name: ("" if k.required else k.default) for k in KEYS}
    raw.update(
        cloud="aws",
        region="eu-west-1",
        models='["a","b"]',
        enableGrpc="false",
        canaryWeightPercent="25",
        batchingEnabled="true",
        allowedSourceCidrs='["203.0.113.0/24"]',
        httpsDomains="[]",
    )
    raw = {k: (v if isinstance(v, str) else __import__("json").dumps(v)) for k, v in raw.items()}
    cfg = load_config(raw, "t")
    assert cfg.models == ("a", "b")
    assert (cfg.canary_weight_percent, cfg.stable_weight_percent, cfg.batching.enabled) == (25, 75, True)
    assert cfg.allowed_source_cidrs == ("203.0.113.0/24",)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cloud": "azure"}, "modelfleet:cloud = 'azure' is invalid; use one of: gcp, aws"),
        ({"cloud": None}, "modelfleet:cloud is required; set it to one of: gcp, aws"),
        (
            {"stableMinReplicas": 5, "stableMaxReplicas": 3},
            "modelfleet:stableMinReplicas = 5 is greater than modelfleet:stableMaxReplicas = 3",
        ),
        (
            {"canaryMinReplicas": 3, "canaryMaxReplicas": 2},
            "modelfleet:canaryMinReplicas = 3 is greater than modelfleet:canaryMaxReplicas = 2",
        ),
        ({"canaryWeightPercent": 101}, "modelfleet:canaryWeightPercent = 101 is invalid; must be between 0 and 100"),
        ({"canaryWeightPercent": -1}, "modelfleet:canaryWeightPercent = -1 is invalid; must be between 0 and 100"),
        ({"canaryWeightPercent": "ten"}, "modelfleet:canaryWeightPercent = 'ten' is invalid; expected an integer"),
        ({"models": []}, r"modelfleet:models = \[\] is invalid; list at least one model name"),
        ({"models": ["ok", "bad/name"]}, "modelfleet:models = 'bad/name' is invalid"),
        ({"gcpProject": None}, "modelfleet:gcpProject is required for cloud 'gcp'"),
        ({"gcpProject": ""}, "modelfleet:gcpProject is required for cloud 'gcp'"),
        ({"region": None}, "modelfleet:region is required for cloud 'gcp'"),
        ({"region": "eu-west-1"}, "modelfleet:region = 'eu-west-1' is invalid; expected a gcp region such as"),
        ({"tfServingVersion": "latest"}, "modelfleet:tfServingVersion = 'latest' is invalid; pin a release"),
        ({"allowedSourceCidrs": ["0.0.0.0/33"]}, "modelfleet:allowedSourceCidrs = '0.0.0.0/33' is invalid"),
        ({"certificateArn": "arn:aws:acm:x"}, "modelfleet:certificateArn applies only to aws, not cloud 'gcp'"),
        ({"enableHttps": True}, "modelfleet:httpsDomains is required when enableHttps is true on gcp"),
        ({"autoscalingMetric": "memory"}, "modelfleet:autoscalingMetric = 'memory' is invalid; use cpu or requests"),
        ({"typo": 1}, "modelfleet:typo is not a modelfleet setting; known: "),
        ({"stableMinReplicas": 0}, "modelfleet:stableMinReplicas = 0 is invalid; the stable fleet needs at least 1 VM"),
        ({"existingInstanceSubnets": ["s"]}, "existingInstanceSubnets needs modelfleet:existingNetwork to be set too"),
    ],
)
def test_bad_values_fail_with_their_message(change: dict[str, Any], message: str) -> None:
    values = {**GCP, **change}
    values = {k: v for k, v in values.items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        load_config(values, "t")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"enableHttps": True},
            "modelfleet:certificateArn = '' is invalid; enableHttps on aws needs an ACM certificate",
        ),
        (
            {"existingNetwork": "vpc-1", "existingInstanceSubnets": ["a"], "existingLoadBalancerSubnets": ["b"]},
            "an ALB needs public subnets in at least two availability zones",
        ),
        ({"gcpProject": "p-123456"}, "modelfleet:gcpProject applies only to gcp, not cloud 'aws'"),
        ({"enableGrpc": True}, "modelfleet:enableGrpc = true needs modelfleet:enableHttps on aws"),
        ({"allowedSourceCidrs": ["2001:db8::/32"]}, "'2001:db8::/32' is invalid; the AWS load balancer is IPv4-only"),
        (
            {"networkCidr": "10.0.0.0/26"},
            "modelfleet:networkCidr = '10.0.0.0/26' is invalid; use an IPv4 range from /16",
        ),
    ],
)
def test_bad_aws_values(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config({**AWS, **change}, "t")


def test_stack_files_load() -> None:
    staging, prod = stack_config("staging"), stack_config("prod")
    assert staging.cloud == prod.cloud == "gcp"
    assert prod.stable.min_replicas >= 3 and prod.deletion_protection and prod.enable_https
    assert staging.stable.max_replicas <= 2
    for name in ("aws-staging", "aws-prod"):
        assert stack_config(name).cloud == "aws"
    with pytest.raises(
        ConfigError, match=r"no stack 'qa': .* does not exist \(stacks: aws-prod, aws-staging, prod, staging\)"
    ):
        stack_config("qa")


def test_pulumi_yaml_is_generated_from_the_keys() -> None:
    assert (REPO_ROOT / "Pulumi.yaml").read_text() == render_pulumi_yaml(), (
        "regenerate: python -m infra.config > Pulumi.yaml"
    )


def test_readme_config_table_is_current() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert README_START in readme and README_END in readme
    table = readme.split(README_START)[1].split(README_END)[0]
    assert table == markdown_table(), "regenerate: python -m infra.config --readme"
