"""The stack config: one validated object, clear errors for bad values, generated Pulumi.yaml and README table."""

from __future__ import annotations

from typing import Any

import pytest

from infra.config import (
    BY_NAME,
    KEYS,
    README_END,
    README_START,
    ConfigError,
    check_region,
    load_config,
    markdown_table,
    render_pulumi_yaml,
    validate,
)
from infra.stack import stack_config
from tests.support import REPO_ROOT

GCP: dict[str, Any] = {"cloud": "gcp", "region": "europe-west1", "gcpProject": "acme-ml-test", "models": ["digits"]}
AWS: dict[str, Any] = {"cloud": "aws", "region": "eu-west-1", "models": ["digits"]}  # only the required keys


def test_minimal_configs_get_defaults() -> None:
    g = load_config(GCP, "t")
    assert (g.machine_type, g.tfs_image, g.canary_weight_percent, g.allowed_source_cidrs) == (
        "e2-standard-4",
        "tensorflow/serving:2.20.0",
        0,
        (),
    )
    assert not g.canary_enabled and not g.canary_fleet_runs
    warm = load_config({**GCP, "canaryKeepWarm": "true"}, "t")
    assert warm.canary_fleet_runs and not warm.canary_enabled
    a = load_config(AWS, "t")
    assert (a.machine_type, a.gcp_project, a.store_prefix) == ("c6i.xlarge", None, "models")
    gpu = load_config({**GCP, "gpu": "true"}, "t")
    assert gpu.tfs_image == "tensorflow/serving:2.20.0-gpu"
    # diskSizeGb 0: by cloud and GPU (docs/agent.md "Disk size"); the agent's store budget is shorter than 30 s.
    assert (g.disk_size_gb, a.disk_size_gb, gpu.disk_size_gb) == (50, 50, 100)
    assert load_config({**AWS, "gpu": True}, "t").disk_size_gb == 150
    assert load_config({**AWS, "diskSizeGb": "200"}, "t").disk_size_gb == 200
    assert g.agent_store_timeout_seconds == a.agent_store_timeout_seconds == 10


@pytest.mark.parametrize("values", [GCP, AWS], ids=["gcp", "aws"])
def test_only_the_required_keys_validate_on_each_cloud(values: dict[str, Any]) -> None:
    """Every default holds together with every other (AWS used to refuse the default gRPC without HTTPS)."""
    assert set(values) == {k.name for k in KEYS if k.required and values["cloud"] in k.clouds}
    cfg = load_config(values, "t")
    assert cfg.cloud == values["cloud"]
    assert not cfg.enable_grpc and not cfg.enable_https  # gRPC is opt-in


@pytest.mark.parametrize("key", [k for k in KEYS if not k.required], ids=lambda k: k.name)
def test_every_default_passes_its_own_check(key: Any) -> None:
    validate(key.name, key.default)


def test_validate_runs_the_keys_own_rule() -> None:
    """Components and the bootstrap call `validate`: it is each key's rule, not a copy of some of them."""
    validate("canaryWeightPercent", 100)
    validate("batchTimeoutMicros", 0)  # TF Serving runs what is queued at once
    cases = [
        ("canaryWeightPercent", 101, "modelfleet:canaryWeightPercent = 101 is invalid; must be between 0 and 100"),
        ("canaryWeightPercent", True, "modelfleet:canaryWeightPercent = True is invalid; expected an integer"),
        ("agentPollSeconds", 3601, "modelfleet:agentPollSeconds = 3601 is invalid; must be between 1 and 3600"),
        ("models", [], r"modelfleet:models = \[\] is invalid; list at least one model name"),
        ("cloud", "azure", "modelfleet:cloud = 'azure' is invalid; use one of: gcp, aws"),
        ("allowedSourceCidrs", ["10.0.0.0/8", "x"], "modelfleet:allowedSourceCidrs = 'x' is invalid; expected a CIDR"),
    ]
    for name, value, message in cases:
        with pytest.raises(ConfigError, match=message):
            validate(name, value)
    with pytest.raises(KeyError):
        validate("canaryWeight", 1)
    assert all(BY_NAME[name].check is not None for name in ("canaryWeightPercent", "models", "networkCidr"))


def test_version_switch_keys() -> None:
    """`versionSwitch` and `maxDrainingPercent` (issue 10): defaults, parsing from Pulumi's strings, their checks."""
    g = load_config(GCP, "t")
    assert (g.version_switch, g.max_draining_percent) == ("auto", 25)
    cfg = load_config({**AWS, "versionSwitch": "drain", "maxDrainingPercent": "100"}, "t")
    assert (cfg.version_switch, cfg.max_draining_percent) == ("drain", 100)
    for key, value, message in [
        ("versionSwitch", "swap", "modelfleet:versionSwitch = 'swap' is invalid; use one of: overlap, drain, auto"),
        ("maxDrainingPercent", "0", "modelfleet:maxDrainingPercent = 0 is invalid; must be between 1 and 100"),
        ("maxDrainingPercent", "101", "modelfleet:maxDrainingPercent = 101 is invalid; must be between 1 and 100"),
    ]:
        with pytest.raises(ConfigError, match=f"^{message}$"):
            load_config({**GCP, key: value}, "t")


@pytest.mark.parametrize("region", ["eu-west-1", "us-gov-west-1", "ap-southeast-2", "us-isob-east-1"])
def test_aws_regions(region: str) -> None:
    check_region("aws", region)
    assert load_config({**AWS, "region": region}, "t").region == region


@pytest.mark.parametrize(("cloud", "region"), [("aws", "Europe"), ("aws", "eu-west"), ("gcp", "europe-west")])
def test_bad_regions(cloud: str, region: str) -> None:
    with pytest.raises(ConfigError, match=f"modelfleet:region = '{region}' is invalid; expected a {cloud} region"):
        check_region(cloud, region)


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
    assert (cfg.canary_weight_percent, cfg.batching.enabled) == (25, True)
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
        (
            {"models": ["ok", "bad/name"]},
            r"modelfleet:models = \['ok', 'bad/name'\] is invalid; model name 'bad/name' is invalid; use 1-128",
        ),
        ({"models": ["a", "a"]}, r"modelfleet:models = \['a', 'a'\] is invalid; names a model twice: a,a"),
        ({"models": "digits"}, "modelfleet:models = 'digits' is invalid; expected a list, e.g. "),
        ({"gcpProject": "Acme"}, "modelfleet:gcpProject = 'Acme' is invalid; expected a GCP project id"),
        ({"batchTimeoutMicros": -1}, "modelfleet:batchTimeoutMicros = -1 is invalid; must be 0 or more"),
        ({"agentPollSeconds": 0}, "modelfleet:agentPollSeconds = 0 is invalid; must be between 1 and 3600"),
        (
            {"agentStoreTimeoutSeconds": 0},
            "modelfleet:agentStoreTimeoutSeconds = 0 is invalid; must be between 1 and 3600",
        ),
        ({"diskSizeGb": 10}, r"modelfleet:diskSizeGb = 10 is invalid; use 0 \(the default size\) or 20 to 16384 GiB"),
        ({"diskSizeGb": -1}, r"modelfleet:diskSizeGb = -1 is invalid; use 0"),
        ({"networkCidr": "10.0.0.1/16"}, "modelfleet:networkCidr = '10.0.0.1/16' is invalid; expected a CIDR"),
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
    # gRPC is opt-in: the stacks that served it under the old default (true) say so; aws-staging has no certificate.
    grpc = {name: stack_config(name).enable_grpc for name in ("staging", "prod", "aws-staging", "aws-prod")}
    assert grpc == {"staging": True, "prod": True, "aws-staging": False, "aws-prod": True}
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
