"""``modelfleet``: a thin command line over the library. Each command parses, makes one library call, formats.

Exit codes: 0 ok, 1 the operation failed, 2 bad input (nothing was written).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from model_export.cli import agent_cmd, client_cmds, demo_cmd, plan_cmd, store_cmds
from model_export.errors import ModelfleetError

COMMAND_GROUPS = (store_cmds, agent_cmd, client_cmds, plan_cmd, demo_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelfleet",
        description="Publish TensorFlow SavedModels to a model store and manage their versions.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
        return code
    except ModelfleetError as e:
        print(f"modelfleet: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("modelfleet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
