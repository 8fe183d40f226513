"""`modelfleet plan`: the resource tree of a stack file with its key settings, evaluated offline."""

from __future__ import annotations

import json
from collections import defaultdict
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
_MAX = 160


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


def _short(value: Any) -> str:
    text = json.dumps(_tidy(value), sort_keys=True, separators=(",", ":"), default=str)
    return text if len(text) <= _MAX else text[: _MAX - 1] + "…"


def key_settings(resource: PlannedResource) -> dict[str, Any]:
    return {k: resource.inputs[k] for k in KEY_INPUTS if k in resource.inputs and resource.inputs[k] is not None}


def _short_type(type_: str) -> str:
    """`gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager` → `gcp:RegionInstanceGroupManager`."""
    parts = type_.split(":")
    return f"{parts[0]}:{parts[-1]}" if len(parts) == 3 else type_


def render_text(cfg: StackConfig, plan: Plan) -> str:
    children: dict[str | None, list[PlannedResource]] = defaultdict(list)
    urns = {r.urn for r in plan.resources}
    for r in plan.resources:
        children[r.parent if r.parent in urns else None].append(r)
    lines = [
        f"stack {plan.stack} ({cfg.cloud}, {cfg.region}): {len(plan.resources)} resources, "
        f"models {', '.join(cfg.models)}, canary weight {cfg.canary_weight_percent}%",
    ]

    def walk(parent: str | None, depth: int) -> None:
        for r in sorted(children[parent], key=lambda r: (r.custom, r.type, r.name)):
            settings = " ".join(f"{k}={_short(v)}" for k, v in key_settings(r).items())
            lines.append(f"{'  ' * depth}{_short_type(r.type)} {r.name}" + (f"  {settings}" if settings else ""))
            walk(r.urn, depth + 1)

    walk(None, 1)
    lines.append("outputs:")
    lines += [f"  {k}: {_short(v)}" for k, v in sorted(plan.outputs.items())]
    return "\n".join(lines)


def render_json(cfg: StackConfig, plan: Plan) -> dict[str, Any]:
    return {
        "stack": plan.stack,
        "cloud": cfg.cloud,
        "region": cfg.region,
        "resources": [
            {"type": r.type, "name": r.name, "parent": r.parent_name, "settings": key_settings(r)}
            for r in plan.resources
        ],
        "outputs": plan.outputs,
    }
