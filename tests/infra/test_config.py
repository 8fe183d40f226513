"""The stack config: one validated object, clear errors for bad values, generated Pulumi.yaml and README table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from infra.config import (
    BY_NAME,
    KEYS,
    README_END,
    README_START,
    ConfigError,
    check_region,
    config_warnings,
    edit_distance,
    example_values,
    load_config,
    markdown_table,
    read_stack_file,
    render_pulumi_yaml,
    unknown_key,
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
        (
            {"tfServingImage": "tensorflow/serving"},
            "modelfleet:tfServingImage = 'tensorflow/serving' is invalid; pin a",
        ),
        (
            {"tfServingImage": "tensorflow/serving:latest"},
            "modelfleet:tfServingImage = 'tensorflow/serving:latest' is invalid; tag 'latest' floats",
        ),
        ({"tfServingImage": "Bad Image"}, "modelfleet:tfServingImage = 'Bad Image' is invalid; a Docker reference"),
        (
            {"tfServingImage": "tensorflow/serving:2.20.0-gpu"},
            "modelfleet:tfServingImage = 'tensorflow/serving:2.20.0-gpu' is invalid; a -gpu tag goes with gpu: true",
        ),
        (
            {"tfServingImage": "tensorflow/serving:2.19.0", "tfServingVersion": "2.19.0"},
            "modelfleet:tfServingImage and modelfleet:tfServingVersion are both set; set one",
        ),
        ({"dockerHubCredentialArn": "arn:x"}, "modelfleet:dockerHubCredentialArn applies only to aws, not cloud 'gcp'"),
        ({"allowedSourceCidrs": ["0.0.0.0/33"]}, "modelfleet:allowedSourceCidrs = '0.0.0.0/33' is invalid"),
        ({"certificateArn": "arn:aws:acm:x"}, "modelfleet:certificateArn applies only to aws, not cloud 'gcp'"),
        ({"enableHttps": True}, "modelfleet:httpsDomains is required when enableHttps is true on gcp"),
        ({"autoscalingMetric": "memory"}, "modelfleet:autoscalingMetric = 'memory' is invalid; use cpu or requests"),
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
        (
            {"accessLogsBucket": "Acme_Logs"},
            r"^modelfleet:accessLogsBucket = 'Acme_Logs' is invalid; expected an S3 bucket name \(3-63 of a-z, 0-9, "
            r"\. and -\)$",
        ),
        ({"accessLogsBucket": "s3://acme-logs"}, r"^modelfleet:accessLogsBucket = 's3://acme-logs' is invalid"),
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
    assert grpc == {"staging": False, "prod": True, "aws-staging": False, "aws-prod": True}  # gRPC needs HTTPS
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


# --- values that validate but cannot be deployed (infra.stack.check_deployable refuses them; plan draws them) -------


@pytest.mark.parametrize(
    ("values", "finding"),
    [
        (
            {**GCP, "gcpProject": "acme-ml-prod"},
            "modelfleet:gcpProject 'acme-ml-prod' is an example value: set your GCP project id",
        ),
        (
            {**GCP, "enableHttps": True, "httpsDomains": ["models.acme.io", "api.Example.ORG."]},
            "modelfleet:httpsDomains 'api.Example.ORG.' is a documentation domain no certificate is issued for: set "
            "the domains your clients call",
        ),
        (
            {**AWS, "kmsKey": "arn:aws:kms:eu-west-1:123456789012:key/abc"},
            "modelfleet:kmsKey 'arn:aws:kms:eu-west-1:123456789012:key/abc' names AWS's documentation account "
            "123456789012: set the ARN of your KMS key in eu-west-1",
        ),
        (
            {**AWS, "accessLogsBucket": "acme-lb-access-logs"},
            "modelfleet:accessLogsBucket 'acme-lb-access-logs' is an example value: set an existing S3 bucket in "
            "eu-west-1, encrypted with SSE-S3, whose bucket policy lets Elastic Load Balancing write logs "
            '(README "Deploying for real"), or "" for no access logs',
        ),
    ],
    ids=["gcpProject", "httpsDomains", "kmsKey", "accessLogsBucket"],
)
def test_example_values_validate_but_are_named(values: dict[str, Any], finding: str) -> None:
    assert example_values(load_config(values, "t")) == [finding]


def test_own_values_are_not_examples() -> None:
    own = {
        **AWS,
        "enableHttps": True,
        "certificateArn": "arn:aws:acm:eu-west-1:210987654321:certificate/x",
        "kmsKey": "arn:aws:kms:eu-west-1:210987654321:key/abc",
        "accessLogsBucket": "team-lb-logs",
    }
    assert example_values(load_config(own, "t")) == []
    gcp = {**GCP, "enableHttps": True, "httpsDomains": ["models.notexample.com", "example.company.io"]}
    assert example_values(load_config(gcp, "t")) == []


@pytest.mark.parametrize("values", [GCP, AWS], ids=["gcp", "aws"])
def test_an_empty_allow_list_is_a_warning(values: dict[str, Any]) -> None:
    what = {"gcp": "Cloud Armor answers 403 to every request", "aws": "its security group drops every connection"}
    mirror = "registry.example.net/tfs/serving:2.20.0"  # no Docker Hub warning (tested below)
    values = {**values, "tfServingImage": mirror}
    assert config_warnings(load_config(values, "t")) == [
        f"modelfleet:allowedSourceCidrs is empty: the load balancer admits no client ({what[values['cloud']]}); list "
        "your clients' ranges, e.g. pulumi config set --path 'allowedSourceCidrs[0]' 203.0.113.0/24"
    ]
    assert config_warnings(load_config({**values, "allowedSourceCidrs": ["0.0.0.0/0"]}, "t")) == []


def test_image_references_and_the_docker_hub_warning() -> None:
    digest = "sha256:" + "a" * 64
    cfg = load_config({**AWS, "tfServingImage": f"tensorflow/serving:2.20.0@{digest}"}, "t")
    assert cfg.tfs_image == f"tensorflow/serving:2.20.0@{digest}"
    assert load_config({**GCP, "tfServingImage": f"tensorflow/serving@{digest}"}, "t").tfs_image.endswith(digest)
    mirror = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/tfs/serving:2.20.0"
    assert load_config({**AWS, "tfServingImage": mirror}, "t").tfs_image == mirror
    with pytest.raises(ConfigError, match="dockerHubCredentialArn = 'arn:aws:secretsmanager:eu-west-1:1:secret:x'"):
        load_config({**AWS, "dockerHubCredentialArn": "arn:aws:secretsmanager:eu-west-1:1:secret:x"}, "t")
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:ecr-pullthroughcache/docker-hub-AbCdEf"
    assert load_config({**AWS, "dockerHubCredentialArn": arn}, "t").docker_hub_credential_arn == arn
    # a Docker Hub image with no credential on aws: a warning that names the key and the way out
    warned = config_warnings(load_config({**AWS, "allowedSourceCidrs": ["203.0.113.0/24"]}, "t"))
    assert warned == [
        "modelfleet:dockerHubCredentialArn is empty: every VM pulls tensorflow/serving:2.20.0 from Docker Hub through "
        "the NAT (one anonymous pull quota for the whole fleet); set it (ECR then caches the image in the stack's "
        "account) or set modelfleet:tfServingImage to your mirror"
    ]
    quiet = {**AWS, "allowedSourceCidrs": ["203.0.113.0/24"], "dockerHubCredentialArn": arn}
    assert config_warnings(load_config(quiet, "t")) == []
    assert (
        config_warnings(load_config({**AWS, "allowedSourceCidrs": ["203.0.113.0/24"], "tfServingImage": mirror}, "t"))
        == []
    )


# --- keys that are not settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (
            "agentPolSeconds",
            "modelfleet:agentPolSeconds is not a modelfleet setting; did you mean modelfleet:agentPollSeconds?",
        ),
        (
            "agentpollseconds",
            "modelfleet:agentpollseconds is not a modelfleet setting; did you mean modelfleet:agentPollSeconds?",
        ),
        (
            "canaryWeight",
            "modelfleet:canaryWeight is not a modelfleet setting; did you mean modelfleet:canaryWeightPercent?",
        ),
        ("typo", 'modelfleet:typo is not a modelfleet setting; see the README\'s "Stack config reference" table'),
    ],
)
def test_an_unknown_key_is_one_short_line_with_the_closest_key(key: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config({**GCP, key: 1}, "t")
    assert str(e.value) == message == unknown_key(key)
    assert len(message) < 120


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [
        ("modelfeet", "modelfleet", 1),
        ("modelfleeet", "modelfleet", 1),
        ("modelfelet", "modelfleet", 1),
        ("modlefleet", "modelfleet", 1),
        ("modelfleets", "modelfleet", 1),
        ("gcp", "modelfleet", 10),
        ("pulumi", "modelfleet", 9),
        ("", "ab", 2),
    ],
)
def test_edit_distance_counts_a_swap_as_one_edit(a: str, b: str, distance: int) -> None:
    assert edit_distance(a, b) == distance


@pytest.mark.parametrize(
    "namespace", ["modelfeet", "modelfleeet", "modelfelet", "ModelFleet", "modelfleets", "modlfleet"]
)
def test_a_namespace_one_edit_from_modelfleet_is_refused(namespace: str, tmp_path: Path) -> None:
    """Once silently dropped: the stack ran with the default poll instead of the value set."""
    path = tmp_path / "Pulumi.t.yaml"
    path.write_text(f"config:\n  gcp:project: acme\n  {namespace}:agentPollSeconds: 5\n  modelfleet:cloud: gcp\n")
    with pytest.raises(ConfigError) as e:
        read_stack_file(path)
    assert str(e.value) == (
        f"stack file {str(path)!r} sets {namespace}:agentPollSeconds is in namespace {namespace!r}, which nothing "
        "reads; did you mean modelfleet:agentPollSeconds?"
    )


def test_other_namespaces_stay_ignored(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.t.yaml"
    path.write_text(
        "config:\n  gcp:project: acme\n  aws:region: eu-west-1\n  pulumi:tags: {a: b}\n  model:x: 1\n"
        "  modelfleet:cloud: gcp\n"
    )
    assert read_stack_file(path) == {"cloud": "gcp"}
