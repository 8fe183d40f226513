"""``modelfleet``: a thin command line over the library. Each command parses, makes one library call, formats.

Exit codes: 0 ok, 1 the operation failed, 2 bad input (nothing was written).

A command's module is imported only when that command runs (``COMMANDS`` names it), so ``modelfleet agent`` on a VM
never pays for the predict client or Pulumi, and ``modelfleet --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from model_export.errors import ModelfleetError, one_line
from modelfleet import __version__

# command -> (module that registers it, one-line summary: the first line of the command's docstring).
COMMANDS: dict[str, tuple[str, str]] = {
    "publish": ("store_cmds", "Publish a SavedModel directory as the next version of a model."),
    "models": ("store_cmds", "List the models in a store with their labels and latest version."),
    "versions": ("store_cmds", "List a model's versions and labels."),
    "history": (
        "store_cmds",
        "Show a model's label history (publish, label, promote, rollback, canary decisions), newest last.",
    ),
    "show": ("store_cmds", "Show one version: files with sha256 and size, signature, source."),
    "label": (
        "store_cmds",
        "Point a label (stable, canary or any [A-Za-z0-9_]+) at a version, or remove it with --clear.",
    ),
    "promote": ("store_cmds", "Make the canary version stable and clear the canary label."),
    "rollback": ("store_cmds", "Move stable back to the previous stable version (from the history), or to --to N."),
    "prune": (
        "store_cmds",
        "Delete old versions, keeping the N newest, every labeled version and the previous stable.",
    ),
    "diff": ("lifecycle_cmds", "Compare two versions of a model: signature, files, size, source and labels."),
    "delete": ("lifecycle_cmds", "Delete one version of a model (--version N), or the whole model (--all)."),
    "status": (
        "fleet_cmds",
        "Show what the fleets serve: live instances, versions, states, convergence and traffic.",
    ),
    "canary": (
        "fleet_cmds",
        "Canary a version: point canary at it, wait for the canary fleet, bake, compare with stable, promote or abort.",
    ),
    "agent": (
        "agent_cmd",
        "Follow the manifests of some models and keep the local TF Serving serving this fleet's version.",
    ),
    "predict": ("client_cmds", "Send one predict request to TF Serving and print the outputs as JSON."),
    "smoke": (
        "client_cmds",
        "Check that TF Serving serves a model: an AVAILABLE version, then one predict that succeeds.",
    ),
    "plan": ("plan_cmd", "Print a stack's resource tree and key settings, evaluated offline under Pulumi's mocks."),
    "completion": (
        "completion",
        "Print the script that enables tab completion of commands, options and model names in bash, zsh or fish.",
    ),
    "demo": (
        "demo_cmd",
        "Train a digits model, publish two versions, canary, promote, roll back; print the versions table.",
    ),
}
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a command killed by a closed pipe
DESCRIPTION = (
    "Ship TensorFlow models to self-hosted TF Serving fleets: publish versions to a model store, label, promote and "
    "roll back; run the agent on serving VMs; query TF Serving; plan a stack offline."
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the bad value and what is valid), exit 2: the usage block it prints by
    default is a screen of options in front of the one line that matters. ``--help`` still shows it all."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see `{self.prog} --help`)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for ``command`` (its module's commands in full), or, for ``None``, the list of every command."""
    parser = _Parser(prog="modelfleet", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"modelfleet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if command in COMMANDS:
        module = importlib.import_module(f"modelfleet.cli.{COMMANDS[command][0]}")
        module.register(sub)
    else:
        for name, (_, summary) in COMMANDS.items():
            sub.add_parser(name, help=summary, add_help=False)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The first argument that is not an option: options come only after the command."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and "_ARGCOMPLETE" in os.environ:  # the shell asks for completions (modelfleet completion)
        from modelfleet.cli.completion import complete

        complete(build_parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_command_of(argv)).parse_args(argv)
    try:
        code: int = args.run(args)
        sys.stdout.flush()  # a reader that went away fails here, in the handler below, not at the interpreter's exit
        return code
    except BrokenPipeError:
        # The reader stopped reading (`modelfleet versions | head -3`): stop quietly, as `cat` does. stdout then goes
        # to /dev/null so the interpreter's last flush cannot fail again (Python's "Note on SIGPIPE" recipe).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except ModelfleetError as e:
        print(f"modelfleet: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("modelfleet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
