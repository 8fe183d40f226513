"""Shell completion through argcomplete: ``modelfleet completion bash|zsh|fish`` prints the script to source.

argcomplete completes from the argparse parser itself, so options never drift from ``--help``. Our parser is built
per command (``build_parser(command)``): :func:`complete` builds the one the line being completed names (all command
names while none is typed yet), adds the model-name completer, and hands it to argcomplete, which answers and exits.
argcomplete is imported only here, when completing or printing the script: ``modelfleet agent`` never loads it.
"""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Callable
from typing import Any

SHELLS = ("bash", "zsh", "fish")
PROG = "modelfleet"


def command_being_completed(line: str) -> str | None:
    """The command a partial command line names: its first complete word after the program that is not an option.
    The word under the cursor is still being typed, so it names nothing yet (``modelfleet pro`` names no command)."""
    try:
        words = shlex.split(line)
    except ValueError:  # an open quote: the user is inside a quoted word
        words = line.split()
    if words and not line[-1:].isspace():
        words = words[:-1]
    return next((w for w in words[1:] if not w.startswith("-")), None)


def _models(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """The model names in the store given so far (--store or $MODELFLEET_STORE); none when that store cannot be read:
    a completion never prints an error."""
    from model_export.errors import ModelfleetError
    from model_export.store.base import REQUEST_BUDGET_ENV
    from model_export.versions import model_names

    store = getattr(parsed_args, "store", None) or os.environ.get("MODELFLEET_STORE")
    if not store:
        return []
    # A shell waiting on a Tab press: an unreachable store gives no names after a few seconds, not the usual 30.
    os.environ[REQUEST_BUDGET_ENV] = "3"
    try:
        return [m for m in model_names(store) if m.startswith(prefix)]
    except (ModelfleetError, OSError):
        return []


def _add_model_completer(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if "--model" in action.option_strings:
            action.completer = _models  # type: ignore[attr-defined]  # argcomplete's hook on an action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _add_model_completer(sub)


def complete(build_parser: Callable[[str | None], argparse.ArgumentParser]) -> None:
    """Answer argcomplete's request (the shell set ``_ARGCOMPLETE``, ``COMP_LINE`` and ``COMP_POINT``) and exit."""
    import argcomplete

    line = os.environ.get("COMP_LINE", "")
    raw = os.environ.get("COMP_POINT", "")
    point = int(raw) if raw.isascii() and raw.isdigit() else len(line)
    os.environ["COMP_POINT"] = str(point)  # argcomplete reads it too: a missing cursor is the end, not a traceback
    parser = build_parser(command_being_completed(line[:point]))
    _add_model_completer(parser)
    argcomplete.autocomplete(parser)


def cmd_completion(args: argparse.Namespace) -> int:
    """Print the script that enables tab completion of commands, options and model names in bash, zsh or fish.

    Model names come from --store (or $MODELFLEET_STORE) as typed so far on the line.

    Example:
      source <(modelfleet completion bash)          # in ~/.bashrc
      modelfleet completion zsh > "${fpath[1]}/_modelfleet"
      modelfleet completion fish > ~/.config/fish/completions/modelfleet.fish
    """
    from argcomplete.shell_integration import shellcode

    print(shellcode([PROG], shell=args.shell), end="")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from modelfleet.cli.common import command

    p = command(sub, "completion", cmd_completion, cmd_completion.__doc__)
    p.add_argument("shell", choices=SHELLS, metavar="SHELL", help=f"one of {', '.join(SHELLS)}")
