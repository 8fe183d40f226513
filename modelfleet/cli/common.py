"""Argument and output helpers shared by the command modules."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from model_export.errors import ModelfleetError

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


def emit_data_json(obj: Any) -> None:
    """``obj`` on stdout as JSON sized for its reader: one line when piped (one record per line for jq, grep, a
    log), ``readable_json`` on a terminal. For answers that hold arrays of numbers, which ``emit_json`` would print
    one number per line."""
    sys.stdout.write((readable_json(obj) if sys.stdout.isatty() else json.dumps(obj, separators=(",", ":"))) + "\n")


def readable_json(obj: Any, indent: str = "  ") -> str:
    """JSON with objects and nested arrays indented, but an array of scalars (a row of numbers, the innermost
    dimension of a tensor) or an object of scalars (``{"b64": ...}``) on one line."""
    return _readable(obj, indent, "")


def _is_flat(value: Any) -> bool:
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return not any(isinstance(item, dict | list) and item for item in items)  # [] and {} fit on any line


def _readable(value: Any, indent: str, prefix: str) -> str:
    if not isinstance(value, dict | list) or _is_flat(value):
        return json.dumps(value, separators=(", ", ": "))
    inner = prefix + indent
    if isinstance(value, dict):
        body = [f"{inner}{json.dumps(str(k))}: {_readable(v, indent, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(body) + f"\n{prefix}}}"
    body = [inner + _readable(v, indent, inner) for v in value]
    return "[\n" + ",\n".join(body) + f"\n{prefix}]"


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


# TensorFlow's start-up chatter on stderr. Most of it is written by C++ (absl) before TF_CPP_MIN_LOG_LEVEL is read,
# even at level 3: "I0000 00:00:... port.cc:153] oneDNN custom operations are on", "E0000 ... failed call to
# cuInit: ... CUDA error", and absl's pre-init notice; so the only way to hide it is at the file descriptor.
_TF_LOG = re.compile(
    r"[IWEF]\d{4} [\d:.]+\s+\d+ [\w.+-]+:\d+\] "  # absl/glog: severity, date, time, thread, file:line]
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] "  # TensorFlow's own C++ log before 2.16
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
    r"|To enable the following instructions: .*rebuild TensorFlow"  # the second line of cpu_feature_guard's notice
    r"|(?:INFO|WARNING):(?:tensorflow|absl):"  # Python's absl logging, e.g. "INFO:tensorflow:Assets written to"
)


@contextlib.contextmanager
def tensorflow_logs_hidden() -> Iterator[None]:
    """Run the block with fd 2 going to a temporary file; then write back what is not a TensorFlow log line.

    When the block fails unexpectedly (not one of our own errors, which say what went wrong in one line, nor Ctrl-C
    or a reader that closed the pipe), everything it wrote goes back, TensorFlow's lines included: they may be the
    only account of the failure.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to hide
        yield
        return
    show_all = False
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except (ModelfleetError, KeyboardInterrupt, BrokenPipeError):  # each says what happened: no TF log needed
            raise
        except BaseException:
            show_all = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", "replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if show_all or not _TF_LOG.match(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()
