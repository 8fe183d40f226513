"""``modelfleet plan``: see a stack's infrastructure without a cloud account or the Pulumi CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

from modelfleet.cli.common import command, emit_json, json_arg


def cmd_plan(args: argparse.Namespace) -> int:
    """Print a stack's resource tree and key settings, evaluated offline under Pulumi's mocks.

    Reads stacks/Pulumi.<STACK>.yaml with the same validation as `pulumi up`; needs the `infra` extra,
    no credentials and no Pulumi CLI.

    Example:
      modelfleet plan --stack staging
      modelfleet plan --stack aws-prod --json
    """
    from infra.plan import render_json, render_text
    from infra.stack import STACKS_DIR, plan_stack

    cfg, plan = plan_stack(args.stack, args.stacks_dir or STACKS_DIR)
    if args.json:
        emit_json(render_json(cfg, plan))
    else:
        print(render_text(cfg, plan))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = command(sub, "plan", cmd_plan, cmd_plan.__doc__)
    p.add_argument("--stack", required=True, metavar="NAME", help="stack name: stacks/Pulumi.<NAME>.yaml")
    p.add_argument("--stacks-dir", type=Path, help="where the stack files are (default: the repo's stacks/)")
    json_arg(p)
