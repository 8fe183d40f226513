"""``modelfleet demo``: the whole publish → canary → promote → rollback cycle on a local file store."""

from __future__ import annotations

import argparse
from pathlib import Path

from model_export.manifest import Manifest
from modelfleet.cli.common import command, tensorflow_logs_hidden
from modelfleet.cli.store_cmds import print_versions

DEFAULT_DIR = Path(".demo")


def cmd_demo(args: argparse.Namespace) -> int:
    """Train a digits model, publish two versions, canary, promote, roll back; print the versions table.

    Runs offline on a local file store (default: ./.demo/store); pass --store to use a bucket instead.

    Example:
      modelfleet demo
      modelfleet demo --store s3://my-bucket/demo
    """
    from modelfleet.demo import run_demo

    workdir = args.workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    store = args.store or f"file://{workdir / 'store'}"

    def show(m: Manifest) -> None:
        print()
        print_versions(m)
        print()

    with tensorflow_logs_hidden():
        run_demo(store, workdir, show=show)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = command(sub, "demo", cmd_demo, cmd_demo.__doc__)
    p.add_argument("--store", metavar="URI", help="store URI (default: file store under --workdir)")
    p.add_argument("--workdir", type=Path, default=DEFAULT_DIR, help="where exports and the default store go")
