"""Argument and output helpers shared by the command modules."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

Runner = Callable[[argparse.Namespace], int]


def command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, run: Runner, doc: str | None
) -> argparse.ArgumentParser:
    """A subcommand whose help is ``run``'s docstring (first line: summary; the rest, with its Example:, verbatim)."""
    text = inspect.cleandoc(doc or "")
    summary = text.splitlines()[0] if text else name
    p = sub.add_parser(name, help=summary, description=text, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(run=run)
    return p


STORE_ENV = "MODELFLEET_STORE"  # the default of --store
MODEL_ENV = "MODELFLEET_MODEL"  # the default of --model


def _given(flag: str, env: str) -> Callable[[str], str]:
    """An argparse ``type`` that refuses an empty value. argparse also runs it on a string default, so an option whose
    default is an unset variable ("") fails as a one-line usage error naming both the flag and the variable."""

    def parse(text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError(f"missing: pass {flag} or set {env}")
        return text

    return parse


def env_option(p: argparse.ArgumentParser, flag: str, env: str, metavar: str, help: str) -> None:
    """``flag``, defaulting to ``$env``; without either, a usage error (exit 2) that names both."""
    p.add_argument(
        flag,
        default=os.environ.get(env, ""),
        type=_given(f"{flag} {metavar}", env),
        metavar=metavar,
        help=f"{help} (default: ${env})",
    )


def store_args(p: argparse.ArgumentParser, *, model: bool = True) -> None:
    env_option(p, "--store", STORE_ENV, "URI", "file:///path, gs://bucket/prefix or s3://bucket/prefix")
    if model:
        env_option(p, "--model", MODEL_ENV, "NAME", "model name in the store")


def json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def emit_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=1)
    sys.stdout.write("\n")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` for integers ``>= minimum`` (argparse turns the error into exit 2 with the message)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be {minimum} or more")
        return value

    return parse


def positive_seconds(text: str) -> float:
    """An argparse ``type`` for a duration in seconds, more than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def progress_line(quiet: bool) -> Callable[[str], None] | None:
    """Progress on a terminal (stderr, one line rewritten in place); nothing when quiet or not a terminal."""
    if quiet or not sys.stderr.isatty():
        return None
    last = [0.0]

    def show(text: str) -> None:
        if time.monotonic() - last[0] >= 0.5:
            last[0] = time.monotonic()
            sys.stderr.write(f"\r\033[K{text}")
            sys.stderr.flush()

    return show
