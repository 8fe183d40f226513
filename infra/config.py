"""The one home of every stack config key: name, type, default, description and validation.

`Pulumi.yaml`'s `config:` block and the README's config table are generated from `KEYS` (and a test checks both are
current). `load_config` turns raw values (from `pulumi.Config` or a stack file) into one typed, validated
`StackConfig`, or raises `ConfigError` naming the key, the bad value and what is valid.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_export.constants import AGENT_POLL_SECONDS, MODEL_CONFIG_POLL_SECONDS, TFS_IMAGE_REPOSITORY, TFS_VERSION
from model_export.errors import BadInput
from model_export.manifest import MODEL_RE

PROJECT = "modelfleet"
CLOUDS = ("gcp", "aws")
REQUIRED = object()  # marks a key without a default


class ConfigError(BadInput):
    pass


@dataclass(frozen=True)
class Key:
    name: str
    kind: str  # string | integer | boolean | array
    default: Any
    description: str
    clouds: tuple[str, ...] = CLOUDS

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


# --- the keys ---------------------------------------------------------------------------------------------------

KEYS: tuple[Key, ...] = (
    Key("cloud", "string", REQUIRED, "Where the stack runs: `gcp` or `aws`."),
    Key("region", "string", REQUIRED, "Cloud region, e.g. `europe-west1` (GCP) or `eu-west-1` (AWS)."),
    Key("gcpProject", "string", REQUIRED, "GCP project id to deploy into.", ("gcp",)),
    Key("models", "array", REQUIRED, "Model names the fleets serve (each must exist in the store before serving)."),
    Key("storePrefix", "string", "models", "Prefix inside the bucket under which models are stored."),
    Key("bucketName", "string", "", "Bucket name for the model store; empty = derived from project and stack."),
    Key(
        "kmsKey",
        "string",
        "",
        "Customer-managed key for the bucket (GCP KMS key name / AWS KMS key ARN); empty = "
        "provider-managed encryption.",
    ),
    Key("noncurrentVersionDays", "integer", 30, "Days before overwritten or deleted objects are removed for good."),
    Key("machineType", "string", "", "VM type; empty = `e2-standard-4` (GCP) / `c6i.xlarge` (AWS)."),
    Key("gpu", "boolean", False, "Serve with the GPU image of TF Serving (and a GPU on each VM)."),
    Key(
        "gpuType",
        "string",
        "nvidia-tesla-t4",
        "GCP accelerator type when `gpu` is true (AWS: pick a GPU `machineType`).",
        ("gcp",),
    ),
    Key(
        "tfServingVersion", "string", TFS_VERSION, "TF Serving image tag (`tensorflow/serving:<tag>`); never `latest`."
    ),
    Key("stableMinReplicas", "integer", 2, "Minimum VMs of the stable fleet."),
    Key("stableMaxReplicas", "integer", 6, "Maximum VMs of the stable fleet."),
    Key("canaryMinReplicas", "integer", 1, "Minimum VMs of the canary fleet while it runs (weight > 0 or kept warm)."),
    Key("canaryMaxReplicas", "integer", 2, "Maximum VMs of the canary fleet while it runs (weight > 0 or kept warm)."),
    Key(
        "canaryWeightPercent",
        "integer",
        0,
        "Percent of traffic sent to the canary fleet (0-100); 0 scales the canary fleet to zero unless "
        "`canaryKeepWarm`.",
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
    ),
    Key("targetCpuPercent", "integer", 60, "CPU utilisation autoscaling aims at, when the metric is `cpu`."),
    Key(
        "targetRequestsPerSecond",
        "integer",
        50,
        "Requests per second per VM autoscaling aims at, when the metric is `requests`.",
    ),
    Key("batchingEnabled", "boolean", False, "Turn on TF Serving's server-side batching."),
    Key("maxBatchSize", "integer", 32, "Batching: largest batch."),
    Key("batchTimeoutMicros", "integer", 1000, "Batching: longest wait for a batch to fill, in microseconds."),
    Key("numBatchThreads", "integer", 4, "Batching: threads that run batches."),
    Key("maxEnqueuedBatches", "integer", 100, "Batching: queue length before requests are refused."),
    Key(
        "agentPollSeconds",
        "integer",
        AGENT_POLL_SECONDS,
        "How often each VM's agent checks the manifest (one conditional GET).",
    ),
    Key(
        "modelConfigPollSeconds",
        "integer",
        MODEL_CONFIG_POLL_SECONDS,
        "How often TF Serving re-reads the model config the agent writes.",
    ),
    Key(
        "healthCheckInitialDelaySeconds",
        "integer",
        300,
        "Grace before autohealing / ELB health checks count (image pull + model download + warmup).",
    ),
    Key("allowedSourceCidrs", "array", [], "Client CIDRs admitted to the load balancer; empty = nobody."),
    Key("enableHttps", "boolean", False, "Serve HTTPS (and redirect HTTP to it)."),
    Key("httpsDomains", "array", [], "Domains of the Google-managed certificate when `enableHttps`.", ("gcp",)),
    Key("certificateArn", "string", "", "ACM certificate ARN when `enableHttps`.", ("aws",)),
    Key("enableGrpc", "boolean", True, "Expose TF Serving's gRPC port through a load balancer of the stack."),
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
    Key("networkCidr", "string", "10.60.0.0/16", "Address range of the VPC the stack creates (GCP: the subnet's)."),
    Key("accessLogsBucket", "string", "", "Bucket for load balancer access logs; empty = off.", ("aws",)),
    Key("deletionProtection", "boolean", False, "Protect the load balancer and bucket from deletion (prod: true)."),
)
BY_NAME = {k.name: k for k in KEYS}


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
    gpu: bool
    gpu_type: str
    tfs_image: str
    stable: FleetSize
    canary: FleetSize
    canary_weight_percent: int
    canary_keep_warm: bool
    autoscaling_metric: str
    target_cpu_percent: int
    target_requests_per_second: int
    batching: Batching
    agent_poll_seconds: int
    model_config_poll_seconds: int
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
    def stable_weight_percent(self) -> int:
        return 100 - self.canary_weight_percent

    @property
    def canary_enabled(self) -> bool:
        """The canary fleet gets traffic."""
        return self.canary_weight_percent > 0

    @property
    def canary_fleet_runs(self) -> bool:
        """The canary fleet has VMs: it gets traffic, or is kept warm for the next A/B test."""
        return self.canary_enabled or self.canary_keep_warm


# --- parsing ----------------------------------------------------------------------------------------------------


def _bad(key: str, value: Any, valid: str) -> ConfigError:
    return ConfigError(f"{PROJECT}:{key} = {value!r} is invalid; {valid}")


def _parse(key: Key, raw: Any) -> Any:
    """Pulumi hands config over as strings (arrays as JSON); stack files and tests may give native values."""
    if key.kind == "string":
        if not isinstance(raw, str):
            raise _bad(key.name, raw, "expected a string")
        return raw.strip()
    if key.kind == "integer":
        if isinstance(raw, bool):
            raise _bad(key.name, raw, "expected an integer")
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise _bad(key.name, raw, "expected an integer") from None
    if key.kind == "boolean":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        raise _bad(key.name, raw, "expected true or false")
    value = raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            raise _bad(key.name, raw, 'expected a list, e.g. ["a", "b"]') from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(key.name, raw, "expected a list of strings")
    return [v.strip() for v in value]


def _in_range(name: str, value: int, lo: int, hi: int | None = None) -> None:
    if value < lo or (hi is not None and value > hi):
        raise _bad(name, value, f"must be between {lo} and {hi}" if hi is not None else f"must be {lo} or more")


def _cidr(name: str, value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError:
        raise _bad(name, value, "expected a CIDR such as 203.0.113.0/24") from None


_REGION = {"gcp": re.compile(r"^[a-z]+-[a-z]+\d+$"), "aws": re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")}
_TAG = re.compile(r"^\d+\.\d+\.\d+$")


def load_config(values: Mapping[str, Any], stack: str) -> StackConfig:
    """Validate raw config values (keys without the `modelfleet:` prefix) into a `StackConfig`."""
    unknown = sorted(set(values) - set(BY_NAME))
    if unknown:
        raise ConfigError(f"{PROJECT}:{unknown[0]} is not a modelfleet setting; known: {', '.join(sorted(BY_NAME))}")
    cloud_raw = values.get("cloud")
    if cloud_raw is None:
        raise ConfigError(f"{PROJECT}:cloud is required; set it to one of: {', '.join(CLOUDS)}")
    cloud = str(cloud_raw).strip()
    if cloud not in CLOUDS:
        raise _bad("cloud", cloud_raw, f"use one of: {', '.join(CLOUDS)}")

    v: dict[str, Any] = {}
    for key in KEYS:
        raw = values.get(key.name)
        # Pulumi hands over Pulumi.yaml's defaults too ("" for keys required on one cloud only).
        parsed = None if raw is None or (key.required and raw == "") else _parse(key, raw)
        if cloud not in key.clouds:
            if parsed not in (None, "", key.default):
                raise ConfigError(f"{PROJECT}:{key.name} applies only to {'/'.join(key.clouds)}, not cloud {cloud!r}")
            v[key.name] = None if key.required else key.default
        elif parsed is not None:
            v[key.name] = parsed
        elif key.required:
            raise ConfigError(f"{PROJECT}:{key.name} is required for cloud {cloud!r}: {key.description}")
        else:
            v[key.name] = key.default

    if not _REGION[cloud].match(v["region"]):
        example = "europe-west1" if cloud == "gcp" else "eu-west-1"
        raise _bad("region", v["region"], f"expected a {cloud} region such as {example}")
    if cloud == "gcp" and not re.match(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$", v["gcpProject"] or ""):
        raise _bad("gcpProject", v["gcpProject"], "expected a GCP project id (6-30 of a-z, 0-9, -)")
    if not v["models"]:
        raise _bad("models", v["models"], "list at least one model name")
    for model in v["models"]:
        if not MODEL_RE.match(model):
            raise _bad("models", model, "model names are 1-128 of [A-Za-z0-9_.-], starting alphanumeric")
    if len(set(v["models"])) != len(v["models"]):
        raise _bad("models", v["models"], "list each model once")
    if v["storePrefix"] and not re.match(r"^[a-z0-9][a-z0-9/_.-]*[a-z0-9]$", v["storePrefix"]):
        raise _bad("storePrefix", v["storePrefix"], "use lowercase letters, digits and / _ . - (no leading '/')")
    if v["tfServingVersion"] == "latest" or not _TAG.match(v["tfServingVersion"]):
        raise _bad("tfServingVersion", v["tfServingVersion"], "pin a release such as 2.20.0 (never latest)")

    for name in ("stableMinReplicas", "canaryMinReplicas"):
        _in_range(name, v[name], 0, 1000)
    for role in ("stable", "canary"):
        lo, hi = v[f"{role}MinReplicas"], v[f"{role}MaxReplicas"]
        _in_range(f"{role}MaxReplicas", hi, 1, 1000)
        if lo > hi:
            raise ConfigError(
                f"{PROJECT}:{role}MinReplicas = {lo} is greater than {PROJECT}:{role}MaxReplicas = {hi}; "
                "min must be at most max"
            )
    if v["stableMinReplicas"] < 1:
        raise _bad("stableMinReplicas", 0, "the stable fleet needs at least 1 VM")
    _in_range("canaryWeightPercent", v["canaryWeightPercent"], 0, 100)
    if v["autoscalingMetric"] not in ("cpu", "requests"):
        raise _bad("autoscalingMetric", v["autoscalingMetric"], "use cpu or requests")
    _in_range("targetCpuPercent", v["targetCpuPercent"], 10, 95)
    _in_range("targetRequestsPerSecond", v["targetRequestsPerSecond"], 1)
    for name in ("maxBatchSize", "batchTimeoutMicros", "numBatchThreads", "maxEnqueuedBatches"):
        _in_range(name, v[name], 1)
    _in_range("agentPollSeconds", v["agentPollSeconds"], 1, 3600)
    _in_range("modelConfigPollSeconds", v["modelConfigPollSeconds"], 1, 3600)
    _in_range("healthCheckInitialDelaySeconds", v["healthCheckInitialDelaySeconds"], 0, 3600)
    _in_range("noncurrentVersionDays", v["noncurrentVersionDays"], 1, 3650)
    cidrs = tuple(_cidr("allowedSourceCidrs", c) for c in v["allowedSourceCidrs"])
    if cloud == "aws" and any(":" in c for c in cidrs):
        raise _bad("allowedSourceCidrs", next(c for c in cidrs if ":" in c), "the AWS load balancer is IPv4-only")
    network_cidr = _cidr("networkCidr", v["networkCidr"])
    if ":" in network_cidr or not 16 <= int(network_cidr.split("/")[1]) <= 24:
        raise _bad("networkCidr", v["networkCidr"], "use an IPv4 range from /16 to /24, e.g. 10.60.0.0/16")
    if cloud == "aws" and v["enableGrpc"] and not v["enableHttps"]:
        raise ConfigError(
            f"{PROJECT}:enableGrpc = true needs {PROJECT}:enableHttps on aws (an ALB takes gRPC only on HTTPS "
            "listeners); set enableGrpc to false or enable HTTPS with a certificateArn"
        )
    if v["enableHttps"]:
        if cloud == "gcp" and not v["httpsDomains"]:
            raise ConfigError(f"{PROJECT}:httpsDomains is required when enableHttps is true on gcp: list the domains")
        if cloud == "aws" and not v["certificateArn"].startswith("arn:aws"):
            raise _bad("certificateArn", v["certificateArn"], "enableHttps on aws needs an ACM certificate ARN")
    if v["existingNetwork"]:
        if not v["existingInstanceSubnets"]:
            raise ConfigError(f"{PROJECT}:existingInstanceSubnets is required when existingNetwork is set")
        if cloud == "aws" and len(v["existingLoadBalancerSubnets"]) < 2:
            raise _bad(
                "existingLoadBalancerSubnets",
                v["existingLoadBalancerSubnets"],
                "an ALB needs public subnets in at least two availability zones",
            )
    elif v["existingInstanceSubnets"] or v["existingLoadBalancerSubnets"]:
        raise ConfigError(f"{PROJECT}:existingInstanceSubnets needs {PROJECT}:existingNetwork to be set too")

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
        gpu=v["gpu"],
        gpu_type=v["gpuType"],
        tfs_image=f"{TFS_IMAGE_REPOSITORY}:{v['tfServingVersion']}{suffix}",
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
        model_config_poll_seconds=v["modelConfigPollSeconds"],
        health_check_initial_delay_seconds=v["healthCheckInitialDelaySeconds"],
        allowed_source_cidrs=cidrs,
        enable_https=v["enableHttps"],
        https_domains=tuple(v["httpsDomains"]),
        certificate_arn=v["certificateArn"] or None,
        enable_grpc=v["enableGrpc"],
        existing_network=v["existingNetwork"] or None,
        existing_instance_subnets=tuple(v["existingInstanceSubnets"]),
        existing_load_balancer_subnets=tuple(v["existingLoadBalancerSubnets"]),
        network_cidr=network_cidr,
        access_logs_bucket=v["accessLogsBucket"] or None,
        deletion_protection=v["deletionProtection"],
    )


def validate(name: str, value: Any) -> None:
    """Run stack key ``name``'s own rule on an already-typed value; raises ``ConfigError`` naming the key.

    Components and the bootstrap call this instead of restating a rule that belongs to a key.
    """
    if name == "canaryWeightPercent":
        _in_range(name, value, 0, 100)
    else:
        raise KeyError(name)


# --- where values come from -------------------------------------------------------------------------------------


def read_stack_file(path: Path) -> dict[str, Any]:
    """The `modelfleet:` values of a `Pulumi.<stack>.yaml` (other namespaces, e.g. `gcp:`, are ignored)."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"stack file {str(path)!r} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"stack file {str(path)!r} is not valid YAML: {e}") from None
    raw = doc.get("config") or {}
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
        "stackConfigDir": "stacks",
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
