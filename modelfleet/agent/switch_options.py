"""How the agent switches a model to a new version: ``modelfleet agent --switch ... --memory-budget-bytes ...
--drain-wait-seconds ... --fleet-size ... --max-draining-percent ...``, validated into one ``SwitchOptions``.

- ``mode``: ``overlap`` (TF Serving's own order: the new version loads beside the old one, so RAM briefly holds
  both), ``drain`` (leave the load balancer, unload, load, come back), ``auto`` (drain only when both versions would
  not fit ``memory_budget_bytes``).
- ``drain_wait_seconds``: how long the load balancer needs to stop sending requests once ``/healthz`` answers 503:
  its health check's interval x unhealthy threshold. The stacks compute it from their own checks and the bootstrap
  passes it.
- ``fleet_size`` and ``max_draining_percent``: the drain slots of the fleet
  (``modelfleet.agent.lease.drain_slots``); the bootstrap passes the fleet's minimum replica count and the stack's
  ``maxDrainingPercent``.
"""

from __future__ import annotations

from dataclasses import dataclass

from model_export.constants import (
    DEFAULT_DRAIN_WAIT_SECONDS,
    DEFAULT_MAX_DRAINING_PERCENT,
    DEFAULT_VERSION_SWITCH,
    VERSION_SWITCHES,
)
from model_export.errors import BadInput
from modelfleet.agent.lease import MAX_FLEET_SIZE, drain_slots

MAX_DRAIN_WAIT_SECONDS = 3600.0


@dataclass(frozen=True)
class SwitchOptions:
    mode: str = DEFAULT_VERSION_SWITCH  # overlap | drain | auto
    memory_budget_bytes: int | None = None  # auto: what both versions together may take; None: the agent's default
    drain_wait_seconds: float = float(DEFAULT_DRAIN_WAIT_SECONDS)
    fleet_size: int = 1
    max_draining_percent: int = DEFAULT_MAX_DRAINING_PERCENT

    def __post_init__(self) -> None:
        if self.mode not in VERSION_SWITCHES:
            raise BadInput(f"--switch {self.mode!r} is invalid; use one of {', '.join(VERSION_SWITCHES)}")
        if self.memory_budget_bytes is not None and self.memory_budget_bytes < 1:
            raise BadInput(f"--memory-budget-bytes {self.memory_budget_bytes} is invalid; must be 1 or more")
        if not 0 <= self.drain_wait_seconds <= MAX_DRAIN_WAIT_SECONDS:
            raise BadInput(
                f"--drain-wait-seconds {self.drain_wait_seconds:g} is invalid; must be from 0 to "
                f"{MAX_DRAIN_WAIT_SECONDS:g}"
            )
        if not 1 <= self.fleet_size <= MAX_FLEET_SIZE:
            raise BadInput(f"--fleet-size {self.fleet_size} is invalid; must be from 1 to {MAX_FLEET_SIZE}")
        if not 1 <= self.max_draining_percent <= 100:
            raise BadInput(f"--max-draining-percent {self.max_draining_percent} is invalid; must be from 1 to 100")

    @property
    def drain_slots(self) -> int:
        """How many VMs of the fleet may drain at once (at least one)."""
        return drain_slots(self.fleet_size, self.max_draining_percent)

    def describe(self) -> str:
        budget = "default" if self.memory_budget_bytes is None else f"{self.memory_budget_bytes} bytes"
        return (
            f"version switch {self.mode} (memory budget {budget}); drain: wait {self.drain_wait_seconds:g} s for the "
            f"load balancer, at most {self.drain_slots} of {self.fleet_size} VMs at once "
            f"({self.max_draining_percent} %)"
        )
