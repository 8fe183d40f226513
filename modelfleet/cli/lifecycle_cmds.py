"""Commands over a model's versions as a whole: diff two versions, delete one version or a whole model."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from model_export import delete, diff
from model_export.errors import BadInput
from modelfleet.cli.common import command, emit_json, human_bytes, int_at_least, json_arg, store_args

SHORT_DIGEST = 12  # hex characters of a sha256 shown in text (show uses 16 for one version; a diff line has two)


def _spec(spec: dict[str, Any] | None) -> str:
    if spec is None:
        return "-"
    shape = spec["shape"]
    dims = "?" if shape is None else "[" + ", ".join("?" if d < 0 else str(d) for d in shape) + "]"
    return f"{spec['dtype']} {dims}"


def _file(f: dict[str, Any] | None) -> str:
    return "-" if f is None else f"{f['size']} B {f['sha256'][:SHORT_DIGEST]}"


_MARK = {"added": "+", "removed": "-", "changed": "~"}


def print_diff(d: diff.VersionDiff) -> None:
    def side(version: int, labels: list[str]) -> str:
        return f"v{version}" + (f" [{', '.join(labels)}]" if labels else "")

    print(f"{d.model}: {side(d.a.version, d.labels_a)} -> {side(d.b.version, d.labels_b)}")
    if d.same:
        print("same signature, files and source")
        return
    method = f"{d.a.signature.method} -> {d.b.signature.method}" if d.method_changed else d.a.signature.method
    tensors = [("input", c) for c in d.inputs] + [("output", c) for c in d.outputs]
    differ = (
        "same tensors" if not tensors else "1 tensor differs" if len(tensors) == 1 else f"{len(tensors)} tensors differ"
    )
    print(f"signature ({method}): {differ}")
    for kind, c in tensors:
        print(f"  {_MARK[c.change]} {kind:6} {c.name}: {_spec(c.a)} -> {_spec(c.b)}")
    counts = {k: sum(c.change == k for c in d.files) for k in _MARK}
    print(
        f"files: {counts['added']} added, {counts['removed']} removed, {counts['changed']} changed, "
        f"{d.unchanged_files} unchanged"
    )
    for c in d.files:
        print(f"  {_MARK[c.change]} {c.name}: {_file(c.a)} -> {_file(c.b)}")
    change = d.b.total_bytes - d.a.total_bytes
    sign = "+" if change >= 0 else "-"
    print(f"size: {human_bytes(d.a.total_bytes)} -> {human_bytes(d.b.total_bytes)} ({sign}{human_bytes(abs(change))})")
    if d.source:
        print("source:")
        for c in d.source:
            before, after = (x["value"] if x else "-" for x in (c.a, c.b))
            print(f"  {_MARK[c.change]} {c.name}: {before} -> {after}")


def cmd_diff(args: argparse.Namespace) -> int:
    """Compare two versions of a model: signature, files, size, source and labels.

    A and B are version numbers or labels (stable, canary, ...). Files are compared by sha256: added (+),
    removed (-), changed (~). --json prints one object with the same content.

    Example:
      modelfleet diff --store gs://acme-models/prod --model digits stable canary
      modelfleet diff --store gs://acme-models/prod --model digits 6 7 --json
    """
    d = diff.diff(args.store, args.model, args.a, args.b)
    if args.json:
        emit_json(d.to_json())
    else:
        print_diff(d)
    return 0


def _confirmation(args: argparse.Namespace) -> Callable[[delete.Deletion], bool]:
    """The ``confirm`` of ``delete_model``: with --yes, yes; on a terminal, the user types the model's name;
    otherwise refused, since nobody can answer. Called once the model is known to exist and to be followed by no
    live agent, so those errors come first."""

    def ask(plan: delete.Deletion) -> bool:
        if args.yes:
            return True
        if not sys.stdin.isatty():
            raise BadInput(f"delete --all of model {plan.model!r} needs --yes when not on a terminal; nothing deleted")
        labels = ", ".join(f"{k}=v{v}" for k, v in plan.labels.items())
        served = f"; fleets following its labels ({labels}) will have nothing to serve" if labels else ""
        print(
            f"This deletes model {plan.model!r} from {args.store}: {len(plan.versions)} versions, {plan.objects} "
            f"objects ({human_bytes(plan.bytes)}){served}.",
            file=sys.stderr,
        )
        try:
            answer = input("Type the model name to confirm: ").strip()
        except EOFError:
            answer = ""
        if answer != plan.model:
            raise BadInput(f"model {plan.model!r} was not deleted: {answer!r} is not its name")
        return True

    return ask


def cmd_delete(args: argparse.Namespace) -> int:
    """Delete one version of a model (--version N), or the whole model (--all).

    A version goes out of the manifest first, then its files; a labelled version and the rollback target (the
    previous stable) are refused. --all deletes the manifest, every version and every other key under the model,
    after you type the model's name on a terminal (or with --yes); it is refused while live agents follow the model
    (their heartbeats say so) unless --force. A run cut short is finished by running it again.

    Example:
      modelfleet delete --store s3://acme-models/prod --model digits --version 3
      modelfleet delete --store s3://acme-models/prod --model digits-old --all --yes
    """
    if not args.all and (args.yes or args.force):
        raise BadInput("--yes and --force go with --all; deleting one version asks nothing")
    if args.all:
        result = delete.delete_model(args.store, args.model, force=args.force, confirm=_confirmation(args))
    else:
        result = delete.delete_version(args.store, args.model, args.version)
    if args.json:
        emit_json(result.to_json())
    elif args.all:
        print(f"deleted model {result.model}: {result.objects} objects ({human_bytes(result.bytes)})")
    elif result.leftover:
        print(
            f"{result.model}: version {args.version} was already out of the manifest; deleted its {result.objects} "
            "leftover files"
        )
    else:
        print(f"deleted {result.model} version {args.version}: {result.objects} files ({human_bytes(result.bytes)})")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = command(sub, "diff", cmd_diff, cmd_diff.__doc__)
    store_args(p)
    p.add_argument("a", metavar="A", help="version number or label")
    p.add_argument("b", metavar="B", help="version number or label")
    json_arg(p)

    p = command(sub, "delete", cmd_delete, cmd_delete.__doc__)
    store_args(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", type=int_at_least(1), metavar="N", help="delete this version")
    which.add_argument("--all", action="store_true", help="delete the whole model")
    p.add_argument("--yes", action="store_true", help="with --all: do not ask (needed when not on a terminal)")
    p.add_argument("--force", action="store_true", help="with --all: delete even while live agents follow the model")
    json_arg(p)
