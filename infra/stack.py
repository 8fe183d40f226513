"""Pick the cloud's stack builder from the config; evaluate a stack file offline for `modelfleet plan`."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from infra.config import ConfigError, StackConfig, load_config, read_stack_file
from infra.mocks import Plan, evaluate

STACKS_DIR = Path(__file__).resolve().parent.parent / "stacks"


def build_stack(cfg: StackConfig) -> Mapping[str, Any]:
    """Create every resource of the stack and return its outputs (`infra/<cloud>/stack.py: build`)."""
    module = importlib.import_module(f"infra.{cfg.cloud}.stack")
    outputs: Mapping[str, Any] = module.build(cfg)
    return outputs


def stack_config(stack: str, stacks_dir: Path = STACKS_DIR) -> StackConfig:
    path = stacks_dir / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        known = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in stacks_dir.glob("Pulumi.*.yaml"))
        raise ConfigError(f"no stack {stack!r}: {path} does not exist (stacks: {', '.join(known) or 'none'})")
    return load_config(read_stack_file(path), stack)


def plan_stack(stack: str, stacks_dir: Path = STACKS_DIR) -> tuple[StackConfig, Plan]:
    """The resource graph of a stack file under Pulumi's mocks: no CLI, no credentials."""
    cfg = stack_config(stack, stacks_dir)
    fakes = importlib.import_module(f"infra.{cfg.cloud}.mock_calls")
    plan = evaluate(stack, lambda: build_stack(cfg), state=fakes.STATE, calls=fakes.CALLS)
    return cfg, plan
