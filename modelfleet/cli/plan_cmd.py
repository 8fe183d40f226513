"""``modelfleet plan``: see a stack's infrastructure without a cloud account or the Pulumi CLI.

The Pulumi program (``infra/``) is not part of the installed package: it lives in the user's project, the directory
holding ``Pulumi.yaml``. ``plan`` finds that directory (from the working directory upwards, or ``--project-dir``),
imports ``infra`` from it and reads the stack files where its ``Pulumi.yaml`` keeps them (``stackConfigDir``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from model_export.errors import BadInput
from modelfleet.cli.common import command, emit_json, json_arg

PROJECT_FILE = "Pulumi.yaml"
INFRA_EXTRA = "pip install 'modelfleet[infra]'"


def find_project(start: Path) -> Path:
    """The nearest directory at or above ``start`` holding ``Pulumi.yaml``."""
    start = start.resolve()
    for directory in (start, *start.parents):
        if (directory / PROJECT_FILE).is_file():
            return directory
    raise BadInput(
        f"no Pulumi project here: no {PROJECT_FILE} in {start} or above "
        "(run from your modelfleet project, or pass --project-dir)"
    )


def project_dir(given: Path | None) -> Path:
    """``--project-dir`` if given (it must hold Pulumi.yaml), else the project around the working directory."""
    if given is None:
        return find_project(Path.cwd())
    if not (given / PROJECT_FILE).is_file():
        raise BadInput(f"no Pulumi project in {given}: it has no {PROJECT_FILE}")
    return given.resolve()


@contextmanager
def project_on_path(project: Path) -> Iterator[None]:
    """While inside, ``import infra`` imports the project's own ``infra/`` package (never one installed elsewhere)."""
    package = project / "infra" / "__init__.py"
    if not package.is_file():
        raise BadInput(f"{project} has {PROJECT_FILE} but no infra/ package: is it a modelfleet project?")
    loaded = sys.modules.get("infra")
    if loaded is not None and Path(loaded.__file__ or "").resolve() != package.resolve():
        raise BadInput(f"infra is already imported from {Path(loaded.__file__ or '?').parent}, not from {project}")
    path = str(project)
    sys.path.insert(0, path)
    try:
        yield
    finally:
        if path in sys.path:
            sys.path.remove(path)  # infra's own later imports (infra.gcp, ...) go through the package


def cmd_plan(args: argparse.Namespace) -> int:
    """Print a stack's resource tree and key settings, evaluated offline under Pulumi's mocks.

    Runs from your modelfleet project (the directory holding Pulumi.yaml, or one below it; or pass --project-dir),
    reads the stack file Pulumi.<STACK>.yaml (in the project's stacks/) with the same validation as `pulumi up`;
    needs the `infra` extra (pip install 'modelfleet[infra]'), no credentials and no Pulumi CLI. Ends with the vCPUs
    a rolling update needs at the fleets' maximum and the quotas to check for them, then what `pulumi up` would warn
    about or refuse (example values of the shipped stack files, ...) in a "warnings" section (with --json: on stderr
    and in the "warnings" and "notDeployable" fields). Values only the cloud can tell (addresses, the AWS account,
    ids) are offline placeholders, marked "(known after deploy)" (--json: "knownAfterDeploy").

    Example:
      modelfleet plan --stack staging
      modelfleet plan --stack aws-prod --json
      modelfleet plan --project-dir ~/src/serving --stack staging
    """
    project = project_dir(args.project_dir)
    try:
        with project_on_path(project):
            from infra.plan import render_json, render_text
            from infra.stack import deploy_warnings, not_deployable, plan_stack, stacks_dir_of
        # A cloud's provider SDK is imported only when that cloud's stack is built, inside plan_stack.
        cfg, plan = plan_stack(args.stack, stacks_dir_of(project / PROJECT_FILE))
        warnings = deploy_warnings(cfg)
        refused = not_deployable(cfg)
    except ModuleNotFoundError as e:
        if (e.name or "").partition(".")[0] == "infra":
            raise BadInput(f"{project}/infra is not this modelfleet's Pulumi program: no module {e.name!r}") from None
        # pulumi, PyYAML or a provider SDK is not installed.
        raise BadInput(f"modelfleet plan needs the infra extra: {INFRA_EXTRA} (no module named {e.name!r})") from None
    said = [*warnings, *([f"pulumi up refuses this stack: {refused}"] if refused else [])]
    if args.json:
        for warning in said:  # a person piping the JSON to jq still sees them
            print(f"modelfleet: warning: {warning}", file=sys.stderr)
        emit_json({**render_json(cfg, plan), "warnings": warnings, "notDeployable": refused})
    else:
        print(render_text(cfg, plan, said))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = command(sub, "plan", cmd_plan, cmd_plan.__doc__)
    p.add_argument("--stack", required=True, metavar="NAME", help="the stack file Pulumi.<NAME>.yaml")
    p.add_argument(
        "--project-dir",
        type=Path,
        metavar="DIR",
        help="the Pulumi project (holding Pulumi.yaml and infra/); default: found from the working directory upwards",
    )
    json_arg(p)
