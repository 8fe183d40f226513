"""Pick the cloud's stack builder from the config; check that a stack can be deployed; protect a prod stack as a
whole; find and evaluate a stack file offline for `modelfleet plan`.

`pulumi up` (``__main__.py``) and `modelfleet plan` run the same checks in the same order: the keys' own rules
(``infra.config.load_config``), then what only a deployment cannot use (``deploy_blockers``: example values, a stack
name that would share GCP names, GPUs on GCP), then the warnings (``deploy_warnings``). `pulumi up` stops on a
blocker before any cloud call; `plan` still draws the graph and prints the same line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pulumi

from infra import naming
from infra.config import (
    PROJECT,
    STACK_CONFIG_DIR,
    ConfigError,
    StackConfig,
    config_warnings,
    example_values,
    from_pulumi,
    load_config,
    read_stack_file,
)
from model_export.constants import ROLES

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
    """Create every resource of the stack and return its outputs; with ``deletionProtection``, every resource
    registered from here on is protected (``protect_stack``)."""
    if cfg.deletion_protection:
        pulumi.runtime.register_stack_transformation(protect_stack)
    return BUILDERS[cfg.cloud](cfg)


# --- whole-stack protection -------------------------------------------------------------------------------------
#
# A stack transformation (the SDK runs it on every resource registered after it, providers and components included,
# before the registration reaches the engine) sets Pulumi's `protect`: a `pulumi destroy`, a resource dropped from
# the program and a replacement all fail on it ("unable to delete/replace resource ... marked for protection") until
# deletionProtection is lifted and `pulumi up` has run. The SDK-side transformation is used rather than an
# engine-side transform (`pulumi.runtime.register_resource_transform`) because its result is in the registration
# the engine receives, which the offline graph records; the mock monitor registers engine-side transforms but does
# not run them (pulumi `sdk/python/lib/pulumi/runtime/mocks.py`).
#
# Protecting what a routine `pulumi up` replaces or removes would make that `up` fail, so these are not protected:

# Types every change to a fleet replaces by design.
ROUTINELY_REPLACED_TYPES: Mapping[str, str] = {
    "gcp:compute/instanceTemplate:InstanceTemplate": "a change to a fleet's VMs is a new instance template (templates "
    "are immutable; GCP refuses to delete one a managed instance group still uses)",
}
# Resources that exist only while the canary fleet runs (canaryWeightPercent > 0 or canaryKeepWarm).
CANARY_ONLY = {"aws:lb/listenerRule:ListenerRule": re.compile(rf"-label-(?:{'|'.join(ROLES)})$")}


def routinely_replaced(type_: str, name: str, retain_on_delete: bool | None) -> str | None:
    """Why a resource stays unprotected in a protected stack, or None (it is protected)."""
    if retain_on_delete:
        return "kept in the cloud when Pulumi deletes it (the content-addressed agent artefacts)"
    if type_ in ROUTINELY_REPLACED_TYPES:
        return ROUTINELY_REPLACED_TYPES[type_]
    pattern = CANARY_ONLY.get(type_)
    if pattern is not None and pattern.search(name):
        return "exists only while the canary fleet runs"
    return None


def protect_stack(args: pulumi.ResourceTransformationArgs) -> pulumi.ResourceTransformationResult:
    """The stack transformation: ``protect`` on every resource but the routinely replaced ones (explicitly off)."""
    keep_open = routinely_replaced(args.type_, args.name, args.opts.retain_on_delete) is not None
    opts = pulumi.ResourceOptions.merge(args.opts, pulumi.ResourceOptions(protect=not keep_open))
    return pulumi.ResourceTransformationResult(args.props, opts)


# --- can this stack be deployed? --------------------------------------------------------------------------------


def _gcp_name_clash(cfg: StackConfig) -> str | None:
    """A stack name sharing the GCP names (service account ids, default bucket) of another stack's name."""
    canonical = naming.canonical_stack_name(cfg.stack)
    if cfg.cloud != "gcp" or canonical == cfg.stack or not cfg.gcp_project:
        return None
    from infra.gcp.stack import default_bucket_name

    accounts = naming.stack_prefix(cfg.stack) == naming.stack_prefix(canonical)
    bucket = default_bucket_name(cfg.gcp_project, cfg.stack)
    shared_bucket = cfg.bucket_name is None and bucket == default_bucket_name(cfg.gcp_project, canonical)
    shared = [what for what, same in (("service account ids", accounts), ("bucket name", shared_bucket)) if same]
    if not shared:
        return None
    fix = (
        f"rename it: pulumi stack rename {canonical} (its resources keep their cloud names)"
        if accounts
        else f"set {PROJECT}:bucketName to {bucket!r} (this stack's bucket) or rename the stack"
    )
    return (
        f"stack name {cfg.stack!r} is not a GCP name: stack {canonical!r} would get the same "
        f"{' and '.join(shared)}, and the second stack's `pulumi up` fails with 409; {fix}"
    )


def _gcp_gpu(cfg: StackConfig) -> str | None:
    if cfg.cloud != "gcp" or not cfg.gpu:
        return None
    from infra.gcp.fleet import GPU_IMAGE

    return (
        f"{PROJECT}:gpu = true on gcp: Google does not document Docker or the NVIDIA container toolkit in the GPU "
        f"image {GPU_IMAGE.rsplit('/', 1)[-1]}, and the bootstrap runs TF Serving with docker run --gpus all "
        "without installing them; set gpu to false, or serve GPUs on aws"
    )


def deploy_blockers(cfg: StackConfig) -> list[str]:
    """What `pulumi up` refuses in a valid config, one finding each, the key first."""
    found = example_values(cfg)
    for check in (_gcp_name_clash, _gcp_gpu):
        finding = check(cfg)
        if finding is not None:
            found.append(finding)
    return found


def deploy_warnings(cfg: StackConfig) -> list[str]:
    """What `pulumi up` warns about (``pulumi.log.warn``) and `modelfleet plan` prints."""
    return config_warnings(cfg)


def not_deployable(cfg: StackConfig) -> str | None:
    """The one line `pulumi up` stops with, or None."""
    found = deploy_blockers(cfg)
    return f"stack {cfg.stack!r} cannot be deployed as it is: {'; '.join(found)}" if found else None


def check_deployable(cfg: StackConfig) -> None:
    """Raise ``ConfigError`` with ``not_deployable``'s line."""
    line = not_deployable(cfg)
    if line is not None:
        raise ConfigError(line)


def program_config(stack: str, get: Callable[[str], str | None]) -> StackConfig:
    """What `pulumi up` runs before building: the config from Pulumi (``get``), its warnings logged, then the
    deployment checks; raises ``ConfigError`` before any resource or cloud call."""
    cfg = from_pulumi(stack, get)
    for warning in deploy_warnings(cfg):
        pulumi.log.warn(warning)
    check_deployable(cfg)
    return cfg


# --- stack files ------------------------------------------------------------------------------------------------


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
    """The resource graph of a stack file, evaluated offline: no CLI, no credentials. Draws the graph of a stack
    that `pulumi up` would refuse too (``not_deployable`` says why)."""
    from infra.offline import evaluate  # not needed by `pulumi up`

    cfg = stack_config(stack, stacks_dir)
    return cfg, evaluate(stack, lambda: build_stack(cfg), cloud=cfg.cloud)
