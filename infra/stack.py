"""Pick the cloud's stack builder from the config; find and evaluate a stack file offline for `modelfleet plan`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra.config import STACK_CONFIG_DIR, ConfigError, StackConfig, load_config, read_stack_file

if TYPE_CHECKING:
    from infra.offline import Plan

# infra/ lives in the Pulumi project directory (beside Pulumi.yaml, which infra.config generates).
STACKS_DIR = Path(__file__).resolve().parent.parent / STACK_CONFIG_DIR

Outputs = Mapping[str, Any]


def _build_gcp(cfg: StackConfig) -> Outputs:
    from infra.gcp.stack import build

    return build(cfg)


def _build_aws(cfg: StackConfig) -> Outputs:
    from infra.aws.stack import build

    return build(cfg)


# cloud -> the function creating that cloud's stack; each imports its provider SDK (seconds) only when called.
BUILDERS: Mapping[str, Callable[[StackConfig], Outputs]] = {"gcp": _build_gcp, "aws": _build_aws}


def build_stack(cfg: StackConfig) -> Outputs:
    """Create every resource of the stack and return its outputs."""
    return BUILDERS[cfg.cloud](cfg)


def stacks_dir_of(project_file: Path) -> Path:
    """Where a project's stack files are: its Pulumi.yaml's ``stackConfigDir``, else beside Pulumi.yaml (Pulumi's
    own default)."""
    import yaml

    try:
        doc = yaml.safe_load(project_file.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read the project file {project_file}: {e}") from None
    configured = doc.get("stackConfigDir") if isinstance(doc, dict) else None
    return project_file.parent / (configured if isinstance(configured, str) and configured else ".")


def stack_config(stack: str, stacks_dir: Path = STACKS_DIR) -> StackConfig:
    path = stacks_dir / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        known = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in stacks_dir.glob("Pulumi.*.yaml"))
        raise ConfigError(f"no stack {stack!r}: {path} does not exist (stacks: {', '.join(known) or 'none'})")
    return load_config(read_stack_file(path), stack)


def plan_stack(stack: str, stacks_dir: Path = STACKS_DIR) -> tuple[StackConfig, Plan]:
    """The resource graph of a stack file, evaluated offline: no CLI, no credentials."""
    from infra.offline import evaluate  # not needed by `pulumi up`

    cfg = stack_config(stack, stacks_dir)
    return cfg, evaluate(stack, lambda: build_stack(cfg), cloud=cfg.cloud)
