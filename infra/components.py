"""What the GCP and AWS components share: argument types for the same concepts, and the decisions both make.

- ``FleetCapacity``: a fleet's replica range and whether it runs at all (a canary with no traffic that is not kept
  warm scales to zero).
- ``AutoscalingTarget``: what autoscaling aims at (CPU percent or requests per second per VM).
- ``HealthCheck``: how often and how patiently a health check probes the agent.
- User data: both fleets take the rendered cloud-config text (``fleet_user_data``) as ``user_data``.
- ``traffic_weights``: the stable / canary split both load balancers apply.
- ``canary_traffic_order``: which of the canary's capacity and its traffic changes first in one ``pulumi up``.
Time settings are ``*_seconds`` everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from infra import config
from infra.bootstrap import AgentWheel, fleet_bootstrap_args, render_user_data
from infra.config import FleetSize, StackConfig
from model_export.constants import CANARY, STABLE

Metric = Literal["cpu", "requests"]
# "capacity-first": the canary fleet's size changes (and, where the provider can, is waited for) before the load
# balancer resources that send it traffic; "traffic-first": those resources stop sending it traffic first.
TrafficOrder = Literal["capacity-first", "traffic-first"]


@dataclass(frozen=True)
class FleetCapacity:
    size: FleetSize
    running: bool = True  # False: min = max = 0

    @property
    def bounds(self) -> tuple[int, int]:
        """(min, max) replicas."""
        return (self.size.min_replicas, self.size.max_replicas) if self.running else (0, 0)


@dataclass(frozen=True)
class AutoscalingTarget:
    metric: Metric
    target_cpu_percent: int = 60
    target_requests_per_second: int = 50  # per VM

    def __post_init__(self) -> None:
        if self.metric not in get_args(Metric):
            raise ValueError(f"autoscaling metric must be one of {', '.join(get_args(Metric))}, got {self.metric!r}")


@dataclass(frozen=True)
class HealthCheck:
    interval_seconds: int = 10
    timeout_seconds: int = 5
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3


def fleet_capacity(cfg: StackConfig, role: str) -> FleetCapacity:
    """The stable fleet always runs; the canary runs while it gets traffic or is kept warm."""
    if role == STABLE:
        return FleetCapacity(cfg.stable, running=True)
    return FleetCapacity(cfg.canary, running=cfg.canary_fleet_runs)


def autoscaling_target(cfg: StackConfig) -> AutoscalingTarget:
    metric: Metric = "requests" if cfg.autoscaling_metric == "requests" else "cpu"
    return AutoscalingTarget(metric, cfg.target_cpu_percent, cfg.target_requests_per_second)


def fleet_user_data(cfg: StackConfig, role: str, store_uri: str, wheel: AgentWheel) -> str:
    """The fleet VMs' cloud-config (``infra.bootstrap``)."""
    return render_user_data(fleet_bootstrap_args(cfg, role, store_uri, wheel))


def traffic_weights(canary_weight_percent: int) -> dict[str, int]:
    """``{stable: 100 - w, canary: w}``; refuses a weight outside the ``canaryWeightPercent`` range."""
    config.validate("canaryWeightPercent", canary_weight_percent)
    return {STABLE: 100 - canary_weight_percent, CANARY: canary_weight_percent}


def canary_traffic_order(canary_fleet_runs: bool) -> TrafficOrder:
    """The order of one ``pulumi up`` that changes the canary: a canary fleet that runs (``StackConfig.
    canary_fleet_runs``) gets its VMs before any weight or label route sends to it (capacity first); one that stops
    running loses its weight and routes before its VMs go (traffic first). Pulumi updates a resource after the
    resources it depends on, so each cloud's stack turns this into ``depends_on`` between the canary's capacity
    resource and the load balancer resources that carry its traffic: on AWS the auto scaling group (whose update waits
    for its new minimum in service), on GCP ``infra.gcp.wait.FleetHealthy`` after the autoscaler (it waits for the
    group's healthy VMs) (docs/gcp.md, docs/aws.md "Canary on and off")."""
    return "capacity-first" if canary_fleet_runs else "traffic-first"


def store_uri(scheme: str, bucket: str, prefix: str) -> str:
    """Exactly what ``modelfleet publish --store`` takes: ``<scheme>://<bucket>[/<prefix>]``."""
    return f"{scheme}://{bucket}/{prefix}" if prefix else f"{scheme}://{bucket}"
