"""The one home of every stack config key: name, type, default, description and validation.

`Pulumi.yaml`'s `config:` block and the README's config table are generated from `KEYS` (and a test checks both are
current). `load_config` turns raw values (from `pulumi.Config` or a stack file) into one typed, validated
`StackConfig`, or raises `ConfigError` naming the key, the bad value and what is valid.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from model_export.constants import (
    AGENT_POLL_SECONDS,
    AGENT_STORE_TIMEOUT_SECONDS,
    DEFAULT_MAX_DRAINING_PERCENT,
    DEFAULT_VERSION_SWITCH,
    MODEL_CONFIG_POLL_SECONDS,
    TFS_IMAGE_REPOSITORY,
    TFS_VERSION,
    VERSION_SWITCHES,
)
from model_export.errors import BadInput
from model_export.manifest import check_model_names

PROJECT = "modelfleet"
STACK_CONFIG_DIR = "stacks"  # Pulumi.yaml's stackConfigDir: where the Pulumi.<stack>.yaml files are
Cloud = Literal["gcp", "aws"]
CLOUDS: tuple[str, ...] = get_args(Cloud)
REQUIRED = object()  # marks a key without a default


class ConfigError(BadInput):
    pass


def bad_value(key: str, value: Any, valid: str, *, owner: str = f"{PROJECT}:") -> ConfigError:
    """The one shape of an invalid-value error: ``modelfleet:<key> = <value> is invalid; <what is valid>``.

    ``owner`` names what holds the value when it is not a stack key (the bootstrap passes ``"bootstrap "``).
    """
    return ConfigError(f"{owner}{key} = {value!r} is invalid; {valid}")


class Invalid(ValueError):
    """Raised by a key's check: says what is valid; ``part`` is the offending element when not the whole value."""

    def __init__(self, valid: str, part: Any = None) -> None:
        super().__init__(valid)
        self.valid, self.part = valid, part


# A key's own rule, on its parsed (typed) value; raises Invalid. Rules across keys live in `_check_across_keys`.
Check = Callable[[Any], None]

_TYPES: Mapping[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "boolean": (bool,),
    "array": (list, tuple),
}
_EXPECTED = {
    "string": "expected a string",
    "integer": "expected an integer",
    "boolean": "expected true or false",
    "array": "expected a list of strings",
}


@dataclass(frozen=True)
class Key:
    name: str
    kind: str  # string | integer | boolean | array
    default: Any
    description: str
    clouds: tuple[str, ...] = CLOUDS
    check: Check | None = None  # the key's own validation, beside its definition

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def validate(self, value: Any) -> None:
        """The value's type, then the key's own rule; raises ``ConfigError`` naming the key."""
        wrong_type = not isinstance(value, _TYPES[self.kind]) or (self.kind == "integer" and isinstance(value, bool))
        if self.kind == "array" and not wrong_type:
            wrong_type = not all(isinstance(v, str) for v in value)
        if wrong_type:
            raise bad_value(self.name, value, _EXPECTED[self.kind])
        if self.check is None:
            return
        try:
            self.check(value)
        except Invalid as e:
            raise bad_value(self.name, value if e.part is None else e.part, e.valid) from None


# --- the rules keys use -----------------------------------------------------------------------------------------


def _between(lo: int, hi: int | None = None) -> Check:
    def check(value: int) -> None:
        if value < lo or (hi is not None and value > hi):
            raise Invalid(f"must be between {lo} and {hi}" if hi is not None else f"must be {lo} or more")

    return check


def _one_of(*choices: str, valid: str) -> Check:
    def check(value: str) -> None:
        if value not in choices:
            raise Invalid(valid)

    return check


def _matches(pattern: str, valid: str, *, allow_empty: bool = False) -> Check:
    regex = re.compile(pattern)

    def check(value: str) -> None:
        if not (allow_empty and value == "") and not regex.match(value):
            raise Invalid(valid)

    return check


def _models(value: Sequence[str]) -> None:
    try:
        check_model_names(value)
    except BadInput as e:
        raise Invalid(str(e)) from None


def _image_reference(value: str) -> None:
    """``[registry/]repository[:tag][@sha256:digest]`` with a tag or a digest, never a floating tag without a
    digest: Docker's reference grammar, as ``infra.bootstrap.parse_image`` reads it."""
    if not value:
        return
    from infra.bootstrap import FLOATING_TAGS, IMAGE_REFERENCE  # the bootstrap imports this module

    match = IMAGE_REFERENCE.match(value)
    example = "'tensorflow/serving:2.20.0@sha256:<64 hex>' or 'registry.example.com/tfs/serving:2.20.0'"
    if not match:
        raise Invalid(f"a Docker reference such as {example}")
    tag, digest = match.group("tag"), match.group("digest")
    if tag is None and digest is None:
        raise Invalid(f"pin a version tag or a digest, e.g. {example}")
    if tag in FLOATING_TAGS and digest is None:
        raise Invalid(f"tag {tag!r} floats; pin a version or a digest")


def _stable_min_replicas(value: int) -> None:
    _between(0, 1000)(value)
    if value < 1:
        raise Invalid("the stable fleet needs at least 1 VM")


def _network(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise Invalid("expected a CIDR such as 203.0.113.0/24") from None


def _cidrs(value: Sequence[str]) -> None:
    for cidr in value:
        try:
            _network(cidr)
        except Invalid as e:
            raise Invalid(e.valid, cidr) from None


def _network_cidr(value: str) -> None:
    network = _network(value)
    if network.version != 4 or not 16 <= network.prefixlen <= 24:
        raise Invalid("use an IPv4 range from /16 to /24, e.g. 10.60.0.0/16")


# `diskSizeGb` 0: the boot disk by cloud and `gpu` (the GPU machine images and TF Serving's -gpu image are far larger).
# Sizing rule: docs/agent.md "Disk size".
DEFAULT_DISK_GB: Mapping[tuple[str, bool], int] = {
    ("gcp", False): 50,
    ("gcp", True): 100,
    ("aws", False): 50,
    ("aws", True): 150,
}
MIN_DISK_GB, MAX_DISK_GB = 20, 16384  # below: no room beside the OS; above: EBS's largest volume


def _disk_size(value: int) -> None:
    if value != 0 and not MIN_DISK_GB <= value <= MAX_DISK_GB:
        raise Invalid(f"use 0 (the default size) or {MIN_DISK_GB} to {MAX_DISK_GB} GiB")


_PROJECT_ID = r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$"
_STORE_PREFIX = r"^[a-z0-9][a-z0-9/_.-]*[a-z0-9]$"
_TAG = r"^\d+\.\d+\.\d+$"  # a release; never `latest`
_S3_BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
REGIONS: Mapping[str, re.Pattern[str]] = {
    "gcp": re.compile(r"^[a-z]+-[a-z]+\d+$"),
    "aws": re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d$"),  # also us-gov-west-1, ap-southeast-1, us-isob-east-1
}
_REGION_EXAMPLE = {"gcp": "europe-west1", "aws": "eu-west-1"}


def check_region(cloud: str, region: str) -> None:
    """The one rule for a cloud's region name (the stack's ``region``; the bootstrap's AWS region)."""
    if not REGIONS[cloud].match(region):
        raise bad_value("region", region, f"expected a {cloud} region such as {_REGION_EXAMPLE[cloud]}")


# --- the keys ---------------------------------------------------------------------------------------------------

KEYS: tuple[Key, ...] = (
    Key(
        "cloud",
        "string",
        REQUIRED,
        "Where the stack runs: `gcp` or `aws`.",
        check=_one_of(*CLOUDS, valid=f"use one of: {', '.join(CLOUDS)}"),
    ),
    Key("region", "string", REQUIRED, "Cloud region, e.g. `europe-west1` (GCP) or `eu-west-1` (AWS)."),
    Key(
        "gcpProject",
        "string",
        REQUIRED,
        "GCP project id to deploy into.",
        ("gcp",),
        check=_matches(_PROJECT_ID, "expected a GCP project id (6-30 of a-z, 0-9, -)"),
    ),
    Key(
        "models",
        "array",
        REQUIRED,
        "Model names the fleets serve (each must exist in the store before serving).",
        check=_models,
    ),
    Key(
        "storePrefix",
        "string",
        "models",
        "Prefix inside the bucket under which models are stored.",
        check=_matches(_STORE_PREFIX, "use lowercase letters, digits and / _ . - (no leading '/')", allow_empty=True),
    ),
    Key("bucketName", "string", "", "Bucket name for the model store; empty = derived from project and stack."),
    Key(
        "kmsKey",
        "string",
        "",
        "Customer-managed key for the bucket (GCP KMS key name / AWS KMS key ARN); empty = "
        "provider-managed encryption.",
    ),
    Key(
        "noncurrentVersionDays",
        "integer",
        30,
        "Days before overwritten or deleted objects are removed for good.",
        check=_between(1, 3650),
    ),
    Key("machineType", "string", "", "VM type; empty = `e2-standard-4` (GCP) / `c6i.xlarge` (AWS)."),
    Key(
        "diskSizeGb",
        "integer",
        0,
        "Boot disk of each VM in GiB; 0 = 50, with `gpu` 100 (GCP) / 150 (AWS). Size: what the OS and images use + "
        '4 x the models\' size (3 kept versions + 1 downloading) + 10 % (docs/agent.md "Disk size").',
        check=_disk_size,
    ),
    Key(
        "gpu",
        "boolean",
        False,
        "Serve with the GPU image of TF Serving (and a GPU on each VM). On GCP `pulumi up` refuses it: the GPU machine "
        'image is not documented to carry Docker and the NVIDIA container toolkit (README "Deploying for real").',
    ),
    Key(
        "gpuType",
        "string",
        "nvidia-tesla-t4",
        "GCP accelerator type when `gpu` is true (AWS: pick a GPU `machineType`).",
        ("gcp",),
    ),
    Key(
        "tfServingVersion",
        "string",
        TFS_VERSION,
        "TF Serving image tag (`tensorflow/serving:<tag>`); never `latest`.",
        check=_matches(_TAG, "pin a release such as 2.20.0 (never latest)"),
    ),
    Key(
        "tfServingImage",
        "string",
        "",
        "TF Serving image, `[registry/]repository[:tag][@sha256:digest]`; empty = `tensorflow/serving:"
        "<tfServingVersion>[-gpu]`. A Docker Hub image is pulled through the stack's own registry (GCP Artifact "
        "Registry remote repository, AWS ECR pull-through cache); one with a registry host is used as it is (your "
        "mirror). Pin a digest.",
        check=_image_reference,
    ),
    Key(
        "dockerHubCredentialArn",
        "string",
        "",
        "ARN of a Secrets Manager secret named `ecr-pullthroughcache/...` holding a Docker Hub `username` and "
        "`accessToken` (ECR's pull-through cache of Docker Hub needs one). Empty: the VMs pull a Docker Hub image "
        "from Docker Hub through the NAT.",
        ("aws",),
        check=_matches(
            r"^arn:aws(-cn|-us-gov)?:secretsmanager:[a-z0-9-]+:\d{12}:secret:ecr-pullthroughcache/[A-Za-z0-9/_+=.@-]+$",
            "the ARN of a Secrets Manager secret whose name starts with ecr-pullthroughcache/",
            allow_empty=True,
        ),
    ),
    Key("stableMinReplicas", "integer", 2, "Minimum VMs of the stable fleet.", check=_stable_min_replicas),
    Key("stableMaxReplicas", "integer", 6, "Maximum VMs of the stable fleet.", check=_between(1, 1000)),
    Key(
        "canaryMinReplicas",
        "integer",
        1,
        "Minimum VMs of the canary fleet while it runs (weight > 0 or kept warm).",
        check=_between(0, 1000),
    ),
    Key(
        "canaryMaxReplicas",
        "integer",
        2,
        "Maximum VMs of the canary fleet while it runs (weight > 0 or kept warm).",
        check=_between(1, 1000),
    ),
    Key(
        "canaryWeightPercent",
        "integer",
        0,
        "Percent of traffic sent to the canary fleet (0-100); 0 scales the canary fleet to zero unless "
        "`canaryKeepWarm`.",
        check=_between(0, 100),
    ),
    Key(
        "canaryKeepWarm",
        "boolean",
        False,
        "Keep the canary fleet at its replica range even at weight 0, so an A/B test starts without cold VMs (and "
        "the canary can be smoke-tested before it gets traffic).",
    ),
    Key(
        "autoscalingMetric",
        "string",
        "cpu",
        "What drives autoscaling: `cpu` or `requests` (load balancer requests per VM).",
        check=_one_of("cpu", "requests", valid="use cpu or requests"),
    ),
    Key(
        "targetCpuPercent",
        "integer",
        60,
        "CPU utilisation autoscaling aims at, when the metric is `cpu`.",
        check=_between(10, 95),
    ),
    Key(
        "targetRequestsPerSecond",
        "integer",
        50,
        "Requests per second per VM autoscaling aims at, when the metric is `requests`.",
        check=_between(1),
    ),
    Key("batchingEnabled", "boolean", False, "Turn on TF Serving's server-side batching."),
    Key("maxBatchSize", "integer", 32, "Batching: largest batch.", check=_between(1)),
    Key(
        "batchTimeoutMicros",
        "integer",
        1000,
        "Batching: longest wait for a batch to fill, in microseconds (0: run what is queued at once).",
        check=_between(0),
    ),
    Key("numBatchThreads", "integer", 4, "Batching: threads that run batches.", check=_between(1)),
    Key("maxEnqueuedBatches", "integer", 100, "Batching: queue length before requests are refused.", check=_between(1)),
    Key(
        "agentPollSeconds",
        "integer",
        AGENT_POLL_SECONDS,
        "How often each VM's agent checks the manifest (one conditional GET).",
        check=_between(1, 3600),
    ),
    Key(
        "agentStoreTimeoutSeconds",
        "integer",
        AGENT_STORE_TIMEOUT_SECONDS,
        "Longest one store request of each VM's agent may take, retries included (an unreachable store fails a poll "
        "within it; the agent keeps serving and backs off).",
        check=_between(1, 3600),
    ),
    Key(
        "modelConfigPollSeconds",
        "integer",
        MODEL_CONFIG_POLL_SECONDS,
        "How often TF Serving re-reads the model config the agent writes.",
        check=_between(1, 3600),
    ),
    Key(
        "versionSwitch",
        "string",
        DEFAULT_VERSION_SWITCH,
        "How a VM moves a model to a new version: `overlap` (load it beside the old one; RAM briefly holds both), "
        "`drain` (leave the load balancer, unload the old one, load the new one, come back), `auto` (drain only when "
        "both would not fit in memory).",
        check=_one_of(*VERSION_SWITCHES, valid=f"use one of: {', '.join(VERSION_SWITCHES)}"),
    ),
    Key(
        "maxDrainingPercent",
        "integer",
        DEFAULT_MAX_DRAINING_PERCENT,
        "Most VMs of a fleet that drain at once to switch versions, in percent of the fleet's minimum size (at least "
        "one VM), coordinated through leases in the store.",
        check=_between(1, 100),
    ),
    Key(
        "healthCheckInitialDelaySeconds",
        "integer",
        300,
        "How long a new VM may take to get ready (image pull + model download + warmup): the grace before liveness "
        "failures replace it (GCP autohealing, the AWS VM's own report), and on AWS its launch hook's timeout.",
        check=_between(0, 3600),
    ),
    Key(
        "allowedSourceCidrs",
        "array",
        [],
        "Client CIDRs admitted to the load balancer; empty = nobody (`modelfleet plan` and `pulumi up` warn).",
        check=_cidrs,
    ),
    Key("enableHttps", "boolean", False, "Serve HTTPS (and redirect HTTP to it)."),
    Key("httpsDomains", "array", [], "Domains of the Google-managed certificate when `enableHttps`.", ("gcp",)),
    Key("certificateArn", "string", "", "ACM certificate ARN when `enableHttps`.", ("aws",)),
    Key(
        "enableGrpc",
        "boolean",
        False,
        "Expose TF Serving's prediction service over gRPC through the stack's load balancer (HTTP/2 over TLS, so it "
        "needs `enableHttps`; only `/tensorflow.serving.PredictionService/*` is forwarded, never TF Serving's admin "
        "API). On GCP it needs `autoscalingMetric: cpu`.",
    ),
    Key("existingNetwork", "string", "", "Use this VPC (GCP network self link / AWS VPC id) instead of creating one."),
    Key(
        "existingInstanceSubnets",
        "array",
        [],
        "Subnets for the VMs when `existingNetwork` is set (GCP: one subnetwork self link).",
    ),
    Key(
        "existingLoadBalancerSubnets",
        "array",
        [],
        "Public subnets for the load balancer when `existingNetwork` is set.",
        ("aws",),
    ),
    Key(
        "networkCidr",
        "string",
        "10.60.0.0/16",
        "Address range of the VPC the stack creates (GCP: the subnet's).",
        check=_network_cidr,
    ),
    Key(
        "accessLogsBucket",
        "string",
        "",
        "S3 bucket for the load balancer's access logs; empty = off. It must already exist in the stack's region, "
        "use SSE-S3 encryption and have a bucket policy that lets Elastic Load Balancing write under "
        '`modelfleet/<stack>/` (README "Deploying for real"); the stack does not create or check it.',
        ("aws",),
        check=_matches(_S3_BUCKET, "expected an S3 bucket name (3-63 of a-z, 0-9, . and -)", allow_empty=True),
    ),
    Key(
        "deletionProtection",
        "boolean",
        False,
        "Protect every resource of the stack (Pulumi `protect`, plus the load balancer's and bucket's own deletion "
        "protection) except those a routine `pulumi up` replaces; lift it to remove or replace anything else "
        "(prod: true).",
    ),
)
BY_NAME = {k.name: k for k in KEYS}


def validate(name: str, value: Any) -> None:
    """Run stack key ``name``'s own rule on an already-typed value; raises ``ConfigError`` naming the key.

    Components and the bootstrap call this instead of restating a rule that belongs to a key. Unknown names raise
    ``KeyError``.
    """
    BY_NAME[name].validate(value)


def _check_across_keys(cloud: str, v: Mapping[str, Any]) -> None:
    """Every rule that involves more than one key (each key's own rule has run already)."""
    check_region(cloud, v["region"])
    for role in ("stable", "canary"):
        lo, hi = v[f"{role}MinReplicas"], v[f"{role}MaxReplicas"]
        if lo > hi:
            raise ConfigError(
                f"{PROJECT}:{role}MinReplicas = {lo} is greater than {PROJECT}:{role}MaxReplicas = {hi}; "
                "min must be at most max"
            )
    if (v["canaryWeightPercent"] > 0 or v["canaryKeepWarm"]) and v["canaryMinReplicas"] == 0:
        raise ConfigError(
            f"{PROJECT}:canaryMinReplicas = 0 is invalid; the canary fleet needs at least 1 VM while it runs "
            "(canaryWeightPercent > 0 or canaryKeepWarm)"
        )
    if v["enableGrpc"] and not v["enableHttps"]:
        why = {
            "aws": "an ALB takes gRPC only on HTTPS listeners); set enableGrpc to false or enable HTTPS with a "
            "certificateArn",
            "gcp": "gRPC clients reach the Application Load Balancer with HTTP/2 over TLS); set enableGrpc to false or "
            "enable HTTPS with httpsDomains",
        }
        raise ConfigError(f"{PROJECT}:enableGrpc = true needs {PROJECT}:enableHttps on {cloud} ({why[cloud]}")
    if cloud == "gcp" and v["enableGrpc"] and v["autoscalingMetric"] == "requests":
        from infra.gcp.load_balancer import GRPC_AUTOSCALING  # the gcp module imports this one

        raise ConfigError(
            f"{PROJECT}:autoscalingMetric = 'requests' cannot work with {PROJECT}:enableGrpc on gcp: "
            f"{GRPC_AUTOSCALING}; set autoscalingMetric to cpu, or enableGrpc to false"
        )
    if cloud == "aws":
        ipv6 = [c for c in v["allowedSourceCidrs"] if ":" in c]
        if ipv6:
            raise bad_value("allowedSourceCidrs", ipv6[0], "the AWS load balancer is IPv4-only")
    if v["enableHttps"]:
        if cloud == "gcp" and not v["httpsDomains"]:
            raise ConfigError(f"{PROJECT}:httpsDomains is required when enableHttps is true on gcp: list the domains")
        if cloud == "aws" and not v["certificateArn"].startswith("arn:aws"):
            raise bad_value("certificateArn", v["certificateArn"], "enableHttps on aws needs an ACM certificate ARN")
    image = v["tfServingImage"]
    if image:
        tag = image.split("@", 1)[0].rsplit("/", 1)[-1].partition(":")[2]
        if v["tfServingVersion"] != TFS_VERSION:
            raise ConfigError(
                f"{PROJECT}:tfServingImage and {PROJECT}:tfServingVersion are both set; set one (the image's tag or "
                "digest names the version)"
            )
        if tag and tag.endswith("-gpu") != v["gpu"]:
            raise bad_value("tfServingImage", image, "a -gpu tag goes with gpu: true, and gpu: true needs a -gpu tag")
    if v["existingNetwork"]:
        if not v["existingInstanceSubnets"]:
            raise ConfigError(f"{PROJECT}:existingInstanceSubnets is required when existingNetwork is set")
        if cloud == "aws" and len(v["existingLoadBalancerSubnets"]) < 2:
            raise bad_value(
                "existingLoadBalancerSubnets",
                v["existingLoadBalancerSubnets"],
                "an ALB needs public subnets in at least two availability zones",
            )
    elif v["existingInstanceSubnets"] or v["existingLoadBalancerSubnets"]:
        raise ConfigError(f"{PROJECT}:existingInstanceSubnets needs {PROJECT}:existingNetwork to be set too")


# --- the typed result -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetSize:
    min_replicas: int
    max_replicas: int


@dataclass(frozen=True)
class Batching:
    enabled: bool
    max_batch_size: int
    batch_timeout_micros: int
    num_batch_threads: int
    max_enqueued_batches: int


BATCHING_KEYS: Mapping[str, str] = {
    "max_batch_size": "maxBatchSize",
    "batch_timeout_micros": "batchTimeoutMicros",
    "num_batch_threads": "numBatchThreads",
    "max_enqueued_batches": "maxEnqueuedBatches",
}


def check_batching(batching: Batching) -> None:
    """Each batching parameter against its stack key's rule (for callers that build a `Batching` themselves)."""
    validate("batchingEnabled", batching.enabled)
    for field_name, key in BATCHING_KEYS.items():
        validate(key, getattr(batching, field_name))


@dataclass(frozen=True)
class StackConfig:
    stack: str
    cloud: str
    region: str
    gcp_project: str | None
    models: tuple[str, ...]
    store_prefix: str
    bucket_name: str | None
    kms_key: str | None
    noncurrent_version_days: int
    machine_type: str
    disk_size_gb: int  # resolved: diskSizeGb, or DEFAULT_DISK_GB for the cloud and gpu
    gpu: bool
    gpu_type: str
    tfs_image: str
    docker_hub_credential_arn: str | None  # aws: the secret ECR's pull-through cache of Docker Hub uses
    stable: FleetSize
    canary: FleetSize
    canary_weight_percent: int
    canary_keep_warm: bool
    autoscaling_metric: str
    target_cpu_percent: int
    target_requests_per_second: int
    batching: Batching
    agent_poll_seconds: int
    agent_store_timeout_seconds: int
    model_config_poll_seconds: int
    version_switch: str
    max_draining_percent: int
    health_check_initial_delay_seconds: int
    allowed_source_cidrs: tuple[str, ...]
    enable_https: bool
    https_domains: tuple[str, ...]
    certificate_arn: str | None
    enable_grpc: bool
    existing_network: str | None
    existing_instance_subnets: tuple[str, ...]
    existing_load_balancer_subnets: tuple[str, ...]
    network_cidr: str
    access_logs_bucket: str | None
    deletion_protection: bool

    @property
    def canary_enabled(self) -> bool:
        """The canary fleet gets traffic."""
        return self.canary_weight_percent > 0

    @property
    def canary_fleet_runs(self) -> bool:
        """The canary fleet has VMs: it gets traffic, or is kept warm for the next A/B test."""
        return self.canary_enabled or self.canary_keep_warm


# --- parsing ----------------------------------------------------------------------------------------------------


def _parse(key: Key, raw: Any) -> Any:
    """Pulumi hands config over as strings (arrays as JSON); stack files and tests may give native values."""
    if key.kind == "string":
        if not isinstance(raw, str):
            raise bad_value(key.name, raw, "expected a string")
        return raw.strip()
    if key.kind == "integer":
        if isinstance(raw, bool):
            raise bad_value(key.name, raw, "expected an integer")
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise bad_value(key.name, raw, "expected an integer") from None
    if key.kind == "boolean":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        raise bad_value(key.name, raw, "expected true or false")
    value = raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            raise bad_value(key.name, raw, 'expected a list, e.g. ["a", "b"]') from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_value(key.name, raw, "expected a list of strings")
    return [v.strip() for v in value]


# Where a person finds every key with its type, default and description (generated from KEYS).
KEYS_REFERENCE = 'the README\'s "Stack config reference" table'


def unknown_key(name: str) -> str:
    """The one line for a `modelfleet:` key that is not a setting: the closest key names, else where all are listed."""
    by_lower = {k.lower(): k for k in BY_NAME}
    close = [by_lower[m] for m in difflib.get_close_matches(name.lower(), by_lower, n=1, cutoff=0.75)]
    hint = f"did you mean {PROJECT}:{close[0]}?" if close else f"see {KEYS_REFERENCE}"
    return f"{PROJECT}:{name} is not a modelfleet setting; {hint}"


def edit_distance(a: str, b: str) -> int:
    """Damerau-Levenshtein distance (optimal string alignment): insertions, deletions, substitutions and swaps of
    two neighbouring characters, one edit each."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


# A namespace this close to `modelfleet` is a typo of it (`modelfeet`, `modelfleeet`, `ModelFleet`), not another
# provider's (`gcp`, `aws`, `pulumi`): its keys would otherwise be dropped and their defaults used without a word.
NAMESPACE_TYPO_DISTANCE = 2


def misspelt_namespace(key: str) -> str | None:
    """The one line for a stack file key whose namespace is a typo of `modelfleet`, or None."""
    namespace, sep, name = key.partition(":")
    if not sep or namespace == PROJECT or edit_distance(namespace.lower(), PROJECT) > NAMESPACE_TYPO_DISTANCE:
        return None
    return f"{key} is in namespace {namespace!r}, which nothing reads; did you mean {PROJECT}:{name}?"


def load_config(values: Mapping[str, Any], stack: str) -> StackConfig:
    """Validate raw config values (keys without the `modelfleet:` prefix) into a `StackConfig`."""
    unknown = sorted(set(values) - set(BY_NAME))
    if unknown:
        raise ConfigError(unknown_key(unknown[0]))
    if values.get("cloud") is None:
        raise ConfigError(f"{PROJECT}:cloud is required; set it to one of: {', '.join(CLOUDS)}")
    cloud: str = _parse(BY_NAME["cloud"], values["cloud"])
    BY_NAME["cloud"].validate(cloud)  # every other key's rule may depend on it

    v: dict[str, Any] = {}
    for key in KEYS:
        raw = values.get(key.name)
        # Pulumi hands over Pulumi.yaml's defaults too ("" for keys required on one cloud only).
        parsed = None if raw is None or (key.required and raw == "") else _parse(key, raw)
        if cloud not in key.clouds:
            if parsed not in (None, "", key.default):
                raise ConfigError(f"{PROJECT}:{key.name} applies only to {'/'.join(key.clouds)}, not cloud {cloud!r}")
            v[key.name] = None if key.required else key.default
            continue
        if parsed is not None:
            v[key.name] = parsed
        elif key.required:
            raise ConfigError(f"{PROJECT}:{key.name} is required for cloud {cloud!r}: {key.description}")
        else:
            v[key.name] = key.default
        key.validate(v[key.name])
    _check_across_keys(cloud, v)

    suffix = "-gpu" if v["gpu"] else ""
    machine = v["machineType"] or ("e2-standard-4" if cloud == "gcp" else "c6i.xlarge")
    return StackConfig(
        stack=stack,
        cloud=cloud,
        region=v["region"],
        gcp_project=v["gcpProject"],
        models=tuple(v["models"]),
        store_prefix=v["storePrefix"],
        bucket_name=v["bucketName"] or None,
        kms_key=v["kmsKey"] or None,
        noncurrent_version_days=v["noncurrentVersionDays"],
        machine_type=machine,
        disk_size_gb=v["diskSizeGb"] or DEFAULT_DISK_GB[cloud, v["gpu"]],
        gpu=v["gpu"],
        gpu_type=v["gpuType"],
        tfs_image=v["tfServingImage"] or f"{TFS_IMAGE_REPOSITORY}:{v['tfServingVersion']}{suffix}",
        docker_hub_credential_arn=v["dockerHubCredentialArn"] or None,
        stable=FleetSize(v["stableMinReplicas"], v["stableMaxReplicas"]),
        canary=FleetSize(v["canaryMinReplicas"], v["canaryMaxReplicas"]),
        canary_weight_percent=v["canaryWeightPercent"],
        canary_keep_warm=v["canaryKeepWarm"],
        autoscaling_metric=v["autoscalingMetric"],
        target_cpu_percent=v["targetCpuPercent"],
        target_requests_per_second=v["targetRequestsPerSecond"],
        batching=Batching(
            v["batchingEnabled"],
            v["maxBatchSize"],
            v["batchTimeoutMicros"],
            v["numBatchThreads"],
            v["maxEnqueuedBatches"],
        ),
        agent_poll_seconds=v["agentPollSeconds"],
        agent_store_timeout_seconds=v["agentStoreTimeoutSeconds"],
        model_config_poll_seconds=v["modelConfigPollSeconds"],
        version_switch=v["versionSwitch"],
        max_draining_percent=v["maxDrainingPercent"],
        health_check_initial_delay_seconds=v["healthCheckInitialDelaySeconds"],
        allowed_source_cidrs=tuple(str(ipaddress.ip_network(c)) for c in v["allowedSourceCidrs"]),
        enable_https=v["enableHttps"],
        https_domains=tuple(v["httpsDomains"]),
        certificate_arn=v["certificateArn"] or None,
        enable_grpc=v["enableGrpc"],
        existing_network=v["existingNetwork"] or None,
        existing_instance_subnets=tuple(v["existingInstanceSubnets"]),
        existing_load_balancer_subnets=tuple(v["existingLoadBalancerSubnets"]),
        network_cidr=str(ipaddress.ip_network(v["networkCidr"])),
        access_logs_bucket=v["accessLogsBucket"] or None,
        deletion_protection=v["deletionProtection"],
    )


# --- values that validate but cannot be deployed ----------------------------------------------------------------

# The example values the shipped stack files (stacks/) carry where every user must put their own. They pass the keys'
# rules, so `modelfleet plan` draws the example's graph; `pulumi up` refuses them before any cloud call
# (`infra.stack.check_deployable`), naming each key to set.
EXAMPLE_AWS_ACCOUNT = "123456789012"  # the account AWS's documentation uses in its example ARNs
EXAMPLE_DOMAINS = ("example.com", "example.net", "example.org")  # reserved for documentation (RFC 2606)
EXAMPLE_VALUES: Mapping[str, tuple[str, ...]] = {
    "gcpProject": ("acme-ml-staging", "acme-ml-prod"),
    "accessLogsBucket": ("acme-lb-access-logs",),
}


def _example_domain(domain: str) -> bool:
    host = domain.lower().rstrip(".")
    return any(host == d or host.endswith(f".{d}") for d in EXAMPLE_DOMAINS)


def example_values(cfg: StackConfig) -> list[str]:
    """What still carries an example value, one finding per key: ``modelfleet:<key> <value> is ...: set ...``."""
    found: list[str] = []
    if cfg.gcp_project in EXAMPLE_VALUES["gcpProject"]:
        found.append(f"{PROJECT}:gcpProject {cfg.gcp_project!r} is an example value: set your GCP project id")
    examples = [d for d in cfg.https_domains if _example_domain(d)]
    if examples:
        found.append(
            f"{PROJECT}:httpsDomains {examples[0]!r} is a documentation domain no certificate is issued for: "
            "set the domains your clients call"
        )
    account = f":{EXAMPLE_AWS_ACCOUNT}:"
    for key, value, what in (
        ("certificateArn", cfg.certificate_arn, "ACM certificate"),
        ("kmsKey", cfg.kms_key, "KMS key"),
    ):
        if value and account in value:
            found.append(
                f"{PROJECT}:{key} {value!r} names AWS's documentation account {EXAMPLE_AWS_ACCOUNT}: "
                f"set the ARN of your {what} in {cfg.region}"
            )
    if cfg.access_logs_bucket in EXAMPLE_VALUES["accessLogsBucket"]:
        found.append(
            f"{PROJECT}:accessLogsBucket {cfg.access_logs_bucket!r} is an example value: set an existing S3 bucket "
            f"in {cfg.region}, encrypted with SSE-S3, whose bucket policy lets Elastic Load Balancing write logs "
            '(README "Deploying for real"), or "" for no access logs'
        )
    return found


# What an empty client allow-list does on each cloud's load balancer.
NOBODY_ADMITTED: Mapping[str, str] = {
    "gcp": "Cloud Armor answers 403 to every request",
    "aws": "its security group drops every connection",
}


def config_warnings(cfg: StackConfig) -> list[str]:
    """Valid, deployable settings that are probably not what was meant: `plan` prints them, `pulumi up` warns."""
    out = []
    if not cfg.allowed_source_cidrs:
        out.append(
            f"{PROJECT}:allowedSourceCidrs is empty: the load balancer admits no client "
            f"({NOBODY_ADMITTED[cfg.cloud]}); list your clients' ranges, e.g. pulumi config set --path "
            "'allowedSourceCidrs[0]' 203.0.113.0/24"
        )
    from infra.bootstrap import parse_image

    if cfg.cloud == "aws" and cfg.docker_hub_credential_arn is None and parse_image(cfg.tfs_image).on_docker_hub:
        out.append(
            f"{PROJECT}:dockerHubCredentialArn is empty: every VM pulls {cfg.tfs_image} from Docker Hub through the "
            "NAT (one anonymous pull quota for the whole fleet); set it (ECR then caches the image in the stack's "
            f"account) or set {PROJECT}:tfServingImage to your mirror"
        )
    return out


# --- where values come from -------------------------------------------------------------------------------------


def read_stack_file(path: Path) -> dict[str, Any]:
    """The `modelfleet:` values of a `Pulumi.<stack>.yaml`. Other namespaces (`gcp:`, `aws:`, ...) are ignored, but a
    namespace one or two edits away from `modelfleet` is a typo and refused (``misspelt_namespace``)."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"stack file {str(path)!r} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"stack file {str(path)!r} is not valid YAML: {e}") from None
    raw = doc.get("config") or {}
    for key in raw:
        typo = misspelt_namespace(str(key))
        if typo is not None:
            raise ConfigError(f"stack file {str(path)!r} sets {typo}")
    prefix = f"{PROJECT}:"
    return {k.removeprefix(prefix): val for k, val in raw.items() if k.startswith(prefix)}


def from_pulumi(stack: str, get: Callable[[str], str | None]) -> StackConfig:
    """Read every known key through `get` (e.g. `pulumi.Config("modelfleet").get`) and validate."""
    return load_config({k.name: val for k in KEYS if (val := get(k.name)) is not None}, stack)


# --- generated documentation ------------------------------------------------------------------------------------


def pulumi_yaml_config() -> dict[str, Any]:
    """The `config:` block of Pulumi.yaml (project-level declarations with types, descriptions and defaults)."""
    block: dict[str, Any] = {}
    for key in KEYS:
        decl: dict[str, Any] = {"type": key.kind, "description": key.description.replace("`", "")}
        if key.kind == "array":
            decl["items"] = {"type": "string"}
        if not key.required:
            decl["default"] = key.default
        elif key.clouds != CLOUDS:
            # Pulumi treats a declared key without a default as required on every stack; load_config requires it
            # only for the clouds it applies to.
            decl["default"] = ""
        block[key.name] = decl  # project keys are declared un-namespaced
    return block


def markdown_table() -> str:
    rows = ["| key | type | default | clouds | description |", "|---|---|---|---|---|"]
    for key in KEYS:
        default = "**required**" if key.required else f"`{json.dumps(key.default)}`"
        rows.append(
            f"| `{PROJECT}:{key.name}` | {key.kind} | {default} | {', '.join(key.clouds)} | {key.description} |"
        )
    return "\n".join(rows)


PULUMI_YAML_HEADER = "# Generated from infra/config.py (`python -m infra.config > Pulumi.yaml`); edit the keys there.\n"


def render_pulumi_yaml() -> str:
    import yaml

    doc = {
        "name": PROJECT,
        "description": "Self-hosted TF Serving fleets (GCP managed instance groups / AWS auto scaling groups) behind "
        "a load balancer, following a bucket-backed model store.",
        "runtime": {"name": "python", "options": {"toolchain": "pip", "virtualenv": ".venv"}},
        "stackConfigDir": STACK_CONFIG_DIR,
        "config": pulumi_yaml_config(),
    }
    return PULUMI_YAML_HEADER + yaml.safe_dump(doc, sort_keys=False, width=120)


README_START, README_END = "<!-- config-table:start -->\n", "\n<!-- config-table:end -->"


def update_readme(path: Path) -> None:
    """Rewrite the config table between the README's markers."""
    text = path.read_text()
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    path.write_text(head + README_START + markdown_table() + README_END + tail)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--readme"]:
        update_readme(Path(__file__).resolve().parent.parent / "README.md")
    else:
        print(render_pulumi_yaml(), end="")
