"""`modelfleet plan`: the resource tree of a stack file with its key settings, evaluated offline, and the peak of
vCPUs a rolling update needs (``rolling_update_peak``) with the quotas to check for it."""

from __future__ import annotations

import json
import math
import re
import textwrap
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from infra.config import StackConfig
from infra.offline import Plan, PlannedResource

# The inputs worth a glance when reviewing a fleet: sizes, ports, weights, exposure and access.
KEY_INPUTS = (
    "location",
    "region",
    "machineType",
    "instanceType",
    "imageId",
    "sourceImage",
    "targetSize",
    "minReplicas",
    "maxReplicas",
    "minSize",
    "maxSize",
    "desiredCapacity",
    "namedPorts",
    "portName",
    "port",
    "portRange",
    "ports",
    "protocol",
    "protocolVersion",
    "loadBalancingScheme",
    "requestPath",
    "path",
    "checkIntervalSec",
    "initialDelaySec",
    "healthCheckGracePeriod",
    "healthCheckType",
    "weightedBackendServices",
    "defaultRouteAction",
    "defaultAction",
    "defaultActions",
    "weight",
    "sourceRanges",
    "cidrBlocks",
    "ingress",
    "allows",
    "denies",
    "rules",
    "role",
    "member",
    "members",
    "policy",
    "managedPolicyArns",
    "uniformBucketLevelAccess",
    "publicAccessPrevention",
    "blockPublicAcls",
    "restrictPublicBuckets",
    "metadataOptions",
    "shieldedInstanceConfig",
    "autoscalingPolicy",
    "targetTrackingConfiguration",
    "updatePolicy",
    "instanceRefresh",
    "domains",
    "certificateArn",
    "sslPolicy",
    "enableDeletionProtection",
    "dropInvalidHeaderFields",
)
# The text view fits a terminal of this many columns: long lines wrap, a value longer than a line is cut with "…".
# The JSON view is complete.
WIDTH = 120
CONTINUATION = "    "  # a wrapped line's extra indent (a child resource is indented by two)


def _tidy(value: Any) -> Any:
    """Shorter to read: self links become their last segment, whole floats (the offline provider's numbers) ints."""
    if isinstance(value, dict):
        return {k: _tidy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tidy(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.startswith("https://www.googleapis.com/"):
        return value.rsplit("/", 1)[-1]
    return value


def _compact(value: Any) -> str:
    return json.dumps(_tidy(value), sort_keys=True, separators=(",", ":"), default=str)


def fit(text: str, width: int = WIDTH) -> str:
    """``text`` cut to ``width`` characters, the last one "…" when cut."""
    return text if len(text) <= width else text[: width - 1] + "…"


def wrap(line: str) -> list[str]:
    """A prose line in lines of at most ``WIDTH`` columns, the wrapped ones indented under it."""
    if len(line) <= WIDTH:
        return [line]
    indent = line[: len(line) - len(line.lstrip(" "))]
    return textwrap.wrap(line, WIDTH, subsequent_indent=indent + CONTINUATION, break_on_hyphens=False)


def setting_items(key: str, value: Any, width: int, depth: int = 2) -> list[str]:
    """``key=value`` as one item, or, when longer than ``width``, one item per element of a list (``key[0]=...``)
    or member of an object (``key.member=...``), ``depth`` levels down at most; so the canary weight of a URL map or
    each Cloud Armor rule keeps a line of its own rather than being cut away."""
    tidy = _tidy(value)
    item = f"{key}={_compact(tidy)}"
    if len(item) <= width or depth == 0 or not tidy or not isinstance(tidy, list | dict):
        return [item]
    parts = enumerate(tidy) if isinstance(tidy, list) else sorted(tidy.items())
    fmt = "{}[{}]" if isinstance(tidy, list) else "{}.{}"
    return [i for k, v in parts for i in setting_items(fmt.format(key, k), v, width, depth - 1)]


def pack(head: str, items: list[str]) -> list[str]:
    """``head`` followed by ``items`` (two spaces, then one between items), in lines of at most ``WIDTH`` columns:
    an item that does not fit starts a continuation line, and is cut with "…" if longer than a whole line."""
    indent = head[: len(head) - len(head.lstrip(" "))] + CONTINUATION
    lines, line, sep = [], head, "  "
    for item in items:
        if len(line) + len(sep) + len(item) <= WIDTH:
            line += sep + item
        else:
            lines.append(line)
            line = indent + fit(item, WIDTH - len(indent))
        sep = " "
    return [*lines, line]


def serving_settings(cfg: StackConfig) -> dict[str, Any]:
    """How the fleets serve and switch versions, as resolved from the config (an image from tfServingVersion too)."""
    return {
        "tfServingImage": cfg.tfs_image,
        "agentPollSeconds": cfg.agent_poll_seconds,
        "agentStoreTimeoutSeconds": cfg.agent_store_timeout_seconds,
        "modelConfigPollSeconds": cfg.model_config_poll_seconds,
        "versionSwitch": cfg.version_switch,
    }


def key_settings(resource: PlannedResource) -> dict[str, Any]:
    return {k: resource.inputs[k] for k in KEY_INPUTS if k in resource.inputs and resource.inputs[k] is not None}


def _short_type(type_: str) -> str:
    """`gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager` → `gcp:RegionInstanceGroupManager`."""
    parts = type_.split(":")
    return f"{parts[0]}:{parts[-1]}" if len(parts) == 3 else type_


# --- the vCPUs a rolling update needs ---------------------------------------------------------------------------
#
# While a new template rolls in, a fleet runs its old VMs and the new ones beside them: a GCP regional MIG creates up
# to `maxSurgeFixed` VMs above its target size (and removes none first: maxUnavailable 0), one per VM it replaces;
# an AWS instance refresh and the instance maintenance policy keep up to `maxHealthyPercentage` (200 %) of the
# desired capacity in service or pending. At the top of its range a fleet therefore needs (max + surge) VMs, and both
# fleets roll at once when a change reaches both templates (a TF Serving or agent upgrade). The numbers come from the
# planned graph (autoscaler / group maximum, update policy, machine type), not from the config.

# vCPUs of GCP machine types whose name does not end with the count (`<family>-<kind>-<vCPUs>`, `*-custom-<vCPUs>-*`).
GCP_VCPUS: Mapping[str, int] = {
    "e2-micro": 2,
    "e2-small": 2,
    "e2-medium": 2,
    "f1-micro": 1,
    "g1-small": 1,
    **{f"a2-highgpu-{n}g": 12 * n for n in (1, 2, 4, 8)},
    "a2-megagpu-16g": 96,
    **{f"a2-ultragpu-{n}g": 12 * n for n in (1, 2, 4, 8)},
    **{f"a3-highgpu-{n}g": 26 * n for n in (1, 2, 4, 8)},
    "a3-megagpu-8g": 208,
    "a3-edgegpu-8g": 208,
}
# vCPUs of AWS sizes below `large` (x86 burstable types); from `large` on: large 2, xlarge 4, <n>xlarge 4n.
AWS_SMALL_VCPUS: Mapping[str, int] = {
    **{f"t2.{size}": 1 for size in ("nano", "micro", "small")},
    "t2.medium": 2,
    **{f"{family}.{size}": 2 for family in ("t3", "t3a") for size in ("nano", "micro", "small", "medium")},
}
_GCP_COUNT = re.compile(r"^(?:[a-z0-9]+-)?(?:custom-(\d+)-\d+(?:-ext)?|[a-z0-9]+-[a-z]+-(\d+)(?:-lssd)?)$")
_AWS_SIZE = re.compile(r"^[a-z0-9-]+\.(?:(\d*)xlarge|large)$")


def vcpus(cloud: str, machine_type: str) -> int | None:
    """The vCPUs of a machine type, from the name where it says so, else from the tables above; None if unknown."""
    if cloud == "gcp":
        if machine_type in GCP_VCPUS:
            return GCP_VCPUS[machine_type]
        m = _GCP_COUNT.match(machine_type)
        return int(m.group(1) or m.group(2)) if m else None
    if machine_type in AWS_SMALL_VCPUS:
        return AWS_SMALL_VCPUS[machine_type]
    m = _AWS_SIZE.match(machine_type)
    if not m:
        return None
    if m.group(1) is None:
        return 2  # large
    return 4 * int(m.group(1) or 1)


# AWS's vCPU-based On-Demand quotas, by the instance family's leading letters (Service Quotas, "Amazon EC2").
_AWS_QUOTAS = (
    ("trn", "Running On-Demand Trn instances"),
    ("hpc", "Running On-Demand HPC instances"),
    ("inf", "Running On-Demand Inf instances"),
    ("dl", "Running On-Demand DL instances"),
    ("vt", "Running On-Demand G and VT instances"),
    ("g", "Running On-Demand G and VT instances"),
    ("p", "Running On-Demand P instances"),
    ("x", "Running On-Demand X instances"),
    ("f", "Running On-Demand F instances"),
    ("u", "Running On-Demand High Memory instances"),
)
AWS_STANDARD_QUOTA = "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances"
GCP_SHARED_CPU_FAMILIES = ("e2", "n1", "f1", "g1")  # counted against the regional CPUS quota


def cpu_quota(cloud: str, machine_type: str) -> str:
    """The regional vCPU quota a machine type counts against."""
    if cloud == "gcp":
        family = machine_type.split("-", 1)[0]
        if family == "custom":
            family = "n1"
        return "CPUS" if family in GCP_SHARED_CPU_FAMILIES else f"{family.upper()}_CPUS"
    family = machine_type.split(".", 1)[0]
    for prefix, quota in _AWS_QUOTAS:
        if family.startswith(prefix):
            return quota
    return AWS_STANDARD_QUOTA


@dataclass(frozen=True)
class FleetPeak:
    fleet: str
    machine_type: str | None
    vcpus_per_vm: int | None
    max_vms: int
    surge_vms: int
    peak_vms: int
    peak_vcpus: int | None
    quota: str | None


def _number(value: Any) -> int:
    return int(value) if isinstance(value, int | float) else 0


def _fleet_peak(cloud: str, fleet: str, members: list[PlannedResource]) -> FleetPeak:
    by_type = {r.type.rsplit(":", 1)[-1]: r.inputs for r in members}
    if cloud == "gcp":
        machine = by_type.get("InstanceTemplate", {}).get("machineType")
        max_vms = _number((by_type.get("RegionAutoscaler", {}).get("autoscalingPolicy") or {}).get("maxReplicas"))
        surge = _number((by_type.get("RegionInstanceGroupManager", {}).get("updatePolicy") or {}).get("maxSurgeFixed"))
        surge = min(surge, max_vms)  # one new VM per VM replaced, at most
    else:
        machine = by_type.get("LaunchTemplate", {}).get("instanceType")
        group = by_type.get("Group", {})
        max_vms = _number(group.get("maxSize"))
        prefs = (group.get("instanceRefresh") or {}).get("preferences") or {}
        healthy = _number(prefs.get("maxHealthyPercentage")) or 100
        surge = math.ceil(max_vms * healthy / 100) - max_vms
    per_vm = vcpus(cloud, machine) if isinstance(machine, str) else None
    peak = max_vms + surge
    return FleetPeak(
        fleet,
        machine if isinstance(machine, str) else None,
        per_vm,
        max_vms,
        surge,
        peak,
        None if per_vm is None else peak * per_vm,
        cpu_quota(cloud, machine) if isinstance(machine, str) else None,
    )


def rolling_update_peak(cfg: StackConfig, plan: Plan) -> list[FleetPeak]:
    """Per fleet (``modelfleet:<cloud>:ServingFleet`` component): its VMs and vCPUs at the top of a rolling update."""
    fleets = {r.urn: r.name for r in plan.resources if not r.custom and r.type.endswith(":ServingFleet")}
    members: dict[str, list[PlannedResource]] = defaultdict(list)
    for r in plan.resources:
        if r.parent in fleets:
            members[r.parent].append(r)
    peaks = [_fleet_peak(cfg.cloud, name.rsplit("-", 1)[-1], members[urn]) for urn, name in fleets.items()]
    return sorted(peaks, key=lambda p: p.fleet, reverse=True)  # stable, then canary


# GCP GPU quotas of machine types that bring their GPUs (the longest matching prefix wins), and GPUs per VM of G2.
GCP_GPU_QUOTAS: Mapping[str, str] = {
    "g2-": "NVIDIA_L4_GPUS",
    "a2-ultragpu-": "NVIDIA_A100_80GB_GPUS",
    "a2-": "NVIDIA_A100_GPUS",
    "a3-megagpu-": "NVIDIA_H100_MEGA_GPUS",
    "a3-": "NVIDIA_H100_GPUS",
}
G2_GPUS = {4: 1, 8: 1, 12: 1, 16: 1, 32: 1, 24: 2, 48: 4, 96: 8}


def gcp_gpus(cfg: StackConfig, machine_type: str) -> tuple[str, int] | None:
    """(GPU quota, GPUs per VM) of a GCP fleet VM, or None without GPUs (N1: the one ``gpuType`` accelerator)."""
    if not cfg.gpu:
        return None
    if machine_type.startswith("n1-"):
        model = cfg.gpu_type.removeprefix("nvidia-").removeprefix("tesla-").replace("-", "_").upper()
        return f"NVIDIA_{model}_GPUS", 1
    prefix = max((p for p in GCP_GPU_QUOTAS if machine_type.startswith(p)), key=len, default=None)
    if prefix is None:
        return None
    count = re.search(r"-(\d+)g$", machine_type)
    per_vm = int(count.group(1)) if count else G2_GPUS.get(vcpus("gcp", machine_type) or 0, 1)
    return GCP_GPU_QUOTAS[prefix], per_vm


@dataclass(frozen=True)
class QuotaNeed:
    quota: str
    amount: int
    unit: str  # vCPUs, GPUs, GB, TiB


def quotas_to_check(cfg: StackConfig, peaks: list[FleetPeak]) -> list[QuotaNeed]:
    """What the rolling update peak of both fleets needs of each quota of the region (project / account), free on
    top of what else runs there."""
    need: dict[tuple[str, str], int] = defaultdict(int)
    disk_gb = 0
    for peak in peaks:
        if not peak.peak_vms or peak.machine_type is None:
            continue
        disk_gb += peak.peak_vms * cfg.disk_size_gb
        if peak.quota is not None and peak.peak_vcpus:
            need[peak.quota, "vCPUs"] += peak.peak_vcpus
            if cfg.cloud == "gcp":
                need["CPUS_ALL_REGIONS", "vCPUs"] += peak.peak_vcpus
        gpus = gcp_gpus(cfg, peak.machine_type) if cfg.cloud == "gcp" else None
        if gpus is not None:
            need[gpus[0], "GPUs"] += gpus[1] * peak.peak_vms
            need["GPUS_ALL_REGIONS", "GPUs"] += gpus[1] * peak.peak_vms
    if disk_gb:
        if cfg.cloud == "gcp":
            need["SSD_TOTAL_GB", "GB"] += disk_gb  # pd-balanced boot disks count as SSD
        else:
            need["Storage for General Purpose SSD (gp3) volumes", "TiB"] += math.ceil(disk_gb / 1024)
    return [QuotaNeed(quota, amount, unit) for (quota, unit), amount in sorted(need.items())]


def _peak_lines(cfg: StackConfig, plan: Plan) -> list[str]:
    peaks = rolling_update_peak(cfg, plan)
    if not peaks:
        return []
    lines = ["rolling update peak (each fleet at its maximum, old and new VMs side by side):"]
    for p in peaks:
        if not p.peak_vms:
            lines.append(f"  {p.fleet}: not running (0 VMs)")
            continue
        per_vm = "? vCPUs" if p.vcpus_per_vm is None else f"{p.vcpus_per_vm} vCPUs"
        total = "? vCPUs (unknown machine type: check its vCPUs)" if p.peak_vcpus is None else f"{p.peak_vcpus} vCPUs"
        lines.append(
            f"  {p.fleet}: ({p.max_vms} max + {p.surge_vms} surge) x {p.machine_type} ({per_vm}) = {p.peak_vms} VMs, "
            f"{total}"
        )
    needs = quotas_to_check(cfg, peaks)
    if needs:
        lines.append(f"quotas to check in {cfg.region} (free, on top of what else runs there):")
        lines += [f"  {n.quota}: {n.amount} {n.unit}" for n in needs]
    return lines


AFTER_DEPLOY = "(known after deploy)"


def _marked(plan: Plan, key: str, value: Any, width: int) -> list[str]:
    """``setting_items``, each holding an offline placeholder marked as such (and the mark kept within ``width``)."""
    if not plan.after_deploy(value):
        return setting_items(key, value, width)
    room = width - len(AFTER_DEPLOY) - 1
    return [f"{fit(i, room)} {AFTER_DEPLOY}" if plan.after_deploy(i) else i for i in setting_items(key, value, room)]


def render_text(cfg: StackConfig, plan: Plan, warnings: Sequence[str] = ()) -> str:
    """The plan for a person: 120 columns, what the offline provider made up marked, ``warnings`` last (so they are
    what a terminal shows)."""
    children: dict[str | None, list[PlannedResource]] = defaultdict(list)
    urns = {r.urn for r in plan.resources}
    for r in plan.resources:
        children[r.parent if r.parent in urns else None].append(r)
    lines = [
        f"stack {plan.stack} ({cfg.cloud}, {cfg.region}): {len(plan.resources)} resources, "
        f"models {', '.join(cfg.models)}, canary weight {cfg.canary_weight_percent}%",
    ]
    protected = [r for r in plan.resources if r.protect]
    if protected:
        open_ = sorted(r.name for r in plan.resources if not r.protect)
        lines.append(
            f"deletion protection: {len(protected)} of {len(plan.resources)} resources protected"
            + (f" (routinely replaced, not protected: {', '.join(open_)})" if open_ else "")
        )
    lines.append("serving: " + " ".join(f"{k}={v}" for k, v in serving_settings(cfg).items()))
    lines = [part for line in lines for part in wrap(line)]

    def walk(parent: str | None, depth: int) -> None:
        for r in sorted(children[parent], key=lambda r: (r.custom, r.type, r.name)):
            head = f"{'  ' * depth}{_short_type(r.type)} {r.name}"
            width = WIDTH - len(head) + len(head.lstrip(" ")) - len(CONTINUATION)  # of a continuation line
            settings = [i for k, v in key_settings(r).items() for i in _marked(plan, k, v, width)]
            lines.extend(pack(head, settings))
            walk(r.urn, depth + 1)

    walk(None, 1)
    lines.append("outputs:")
    for k, v in sorted(plan.outputs.items()):
        mark = f" {AFTER_DEPLOY}" if plan.after_deploy(v) else ""
        lines.append(fit(f"  {k}: {_compact(v)}", WIDTH - len(mark)) + mark)
    lines += [part for line in _peak_lines(cfg, plan) for part in wrap(line)]
    if warnings:
        lines.append("warnings:")
        lines += [part for w in warnings for part in wrap(f"  {w}")]
    return "\n".join(lines)


def render_json(cfg: StackConfig, plan: Plan) -> dict[str, Any]:
    peaks = rolling_update_peak(cfg, plan)
    return {
        "stack": plan.stack,
        "cloud": cfg.cloud,
        "region": cfg.region,
        "serving": serving_settings(cfg),
        "resources": [
            {
                "type": r.type,
                "name": r.name,
                "parent": r.parent_name,
                "protected": r.protect,
                "settings": key_settings(r),
                "knownAfterDeploy": sorted(k for k, v in key_settings(r).items() if plan.after_deploy(v)),
            }
            for r in plan.resources
        ],
        "outputs": plan.outputs,
        # Outputs holding an offline placeholder (an IP address, the AWS account id, ...): the real values come
        # from `pulumi stack output` after `pulumi up`.
        "knownAfterDeploy": sorted(k for k, v in plan.outputs.items() if plan.after_deploy(v)),
        "rollingUpdatePeak": {
            "fleets": [_camel(asdict(p)) for p in peaks],
            "quotas": [asdict(n) for n in quotas_to_check(cfg, peaks)],
        },
    }


def _camel(d: dict[str, Any]) -> dict[str, Any]:
    return {re.sub(r"_(\w)", lambda m: m.group(1).upper(), k): v for k, v in d.items()}
