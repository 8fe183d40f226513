"""Commands over the model store: publish, models, versions, history, show, label, promote, rollback, prune."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from model_export import versions as ops
from model_export.constants import STABLE
from model_export.errors import BadInput, ModelfleetError, UnknownModel
from model_export.manifest import Manifest
from model_export.publish import publish
from model_export.rollout import DEFAULT_TIMEOUT_SECONDS, RolloutFailed, WaitOutcome, wait_after
from model_export.store import Store, checked_store
from model_export.transfer import DEFAULT_WORKERS, show_progress
from modelfleet.cli.common import (
    command,
    emit_json,
    human_bytes,
    int_at_least,
    json_arg,
    positive_seconds,
    progress_line,
    store_args,
    table,
)


def cmd_publish(args: argparse.Namespace) -> int:
    """Publish a SavedModel directory as the next version of a model.

    The files are validated, uploaded in parallel and verified; the manifest is updated last, so servers never
    see a partial version. Refuses a change of input signature against the stable version unless
    --allow-signature-change. A retry with the same --idempotency-key (default: --job-id) returns the version the
    first run published instead of publishing a duplicate.

    Example:
      modelfleet publish ./export --store gs://acme-models/prod --model digits --label canary --json
    """
    source = dict(kv.split("=", 1) for kv in args.meta)
    if args.git_sha:
        source["git_sha"] = args.git_sha
    if args.job_id is not None:
        if not args.job_id.strip():
            raise BadInput(f"--job-id {args.job_id!r} is empty; pass the training job's id or leave the option out")
        source["job_id"] = args.job_id
    if args.wait and not args.label:
        raise BadInput("--wait needs --label: a version no label names is served by no fleet")
    before = _labels_now(args) if args.wait else {}
    result = publish(
        args.dir,
        args.store,
        args.model,
        label=args.label,
        new_label=args.new_label,
        allow_signature_change=args.allow_signature_change,
        source=source,
        idempotency_key=args.idempotency_key,
        workers=args.workers,
        progress=show_progress(args.json),
    )
    if args.json:
        emit_json(result.to_json())
    elif result.reused:
        labels = f" [{', '.join(result.labels)}]" if result.labels else ""
        print(
            f"already published: {result.model} version {result.version}{labels} has idempotency key "
            f"{result.idempotency_key!r}; nothing uploaded"
        )
    else:
        labels = f" [{', '.join(result.labels)}]" if result.labels else ""
        print(
            f"published {result.model} version {result.version}{labels}: {result.files} files, "
            f"{human_bytes(result.bytes)} in {result.seconds:.1f} s to {result.store}"
        )
    if args.wait:
        after = ops.get_manifest(args.store, args.model)
        _wait(args, lambda: wait_after(checked_store(args.store), args.model, before, after, **_wait_kwargs(args)))
    return 0


def _labels_now(args: argparse.Namespace) -> dict[str, int]:
    try:
        return dict(ops.get_manifest(args.store, args.model).labels)
    except UnknownModel:
        return {}


def _wait_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "timeout": args.timeout,
        "rollback_on_failure": getattr(args, "rollback_on_failure", False),
        "progress": progress_line(args.json),
    }


def _wait(args: argparse.Namespace, run: Callable[[], WaitOutcome]) -> WaitOutcome:
    """Run a wait (the change is made and printed); its outcome on stderr (stdout keeps the command's own output,
    --json included). Interrupted, it says that the change stands."""
    try:
        outcome = run()
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted while waiting for the fleets; the change stands (labels: {_labels_text(args)}), "
            "nothing was rolled back"
        ) from None
    finally:
        if not args.json and sys.stderr.isatty():
            sys.stderr.write("\r\033[K")
    if not outcome.ok:
        raise RolloutFailed(outcome.reason)
    print(f"{args.model}: {outcome.reason}", file=sys.stderr)
    return outcome


class Interrupted(ModelfleetError):
    exit_code = 130


def _labels_text(args: argparse.Namespace) -> str:
    try:
        labels = ops.get_manifest(args.store, args.model).labels
    except ModelfleetError:
        return "unknown: the store did not answer"
    return ", ".join(f"{k}=v{v}" for k, v in sorted(labels.items())) or "none"


def _meta(text: str) -> str:
    if "=" not in text or not text.split("=", 1)[0]:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return text


def _versions_json(m: Manifest) -> dict[str, Any]:
    return {
        "model": m.model,
        "labels": m.labels,
        "last_version": m.last_version,
        "versions": [
            {
                "version": v.version,
                "labels": m.labels_of(v.version),
                "created": v.created,
                "bytes": v.total_bytes,
                "files": len(v.files),
                "source": v.source,
                "validation": None if v.validation is None else v.validation.to_json(),
            }
            for v in sorted(m.versions.values(), key=lambda e: e.version)
        ],
    }


def print_versions(m: Manifest) -> None:
    rows = [["VERSION", "LABELS", "CREATED", "SIZE", "FILES", "VALIDATION", "SOURCE"]]
    for v in sorted(m.versions.values(), key=lambda e: -e.version):
        src = " ".join(f"{k}={val[:12]}" for k, val in sorted(v.source.items()))
        rows.append(
            [
                str(v.version),
                ",".join(m.labels_of(v.version)),
                v.created,
                human_bytes(v.total_bytes),
                str(len(v.files)),
                "-" if v.validation is None else v.validation.text(),
                src,
            ]
        )
    print(f"model {m.model}")
    print(table(rows))


def cmd_versions(args: argparse.Namespace) -> int:
    """List a model's versions and labels.

    Example:
      modelfleet versions --store s3://acme-models/prod --model digits
    """
    m = ops.get_manifest(args.store, args.model)
    if args.json:
        emit_json(_versions_json(m))
    else:
        print_versions(m)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """List the models in a store with their labels and latest version.

    Example:
      modelfleet models --store s3://acme-models/prod
    """
    models = ops.list_models(args.store)
    if args.json:
        emit_json({"store": args.store, "models": [m.to_json() for m in models]})
        return 0
    if not models:
        print(f"no models in {args.store}")
        return 0
    rows = [["MODEL", "LABELS", "LATEST", "VERSIONS"]]
    for m in models:
        labels = ",".join(f"{k}=v{v}" for k, v in m.labels.items())
        rows.append(
            [m.model, labels or "-", "-" if m.latest_version is None else str(m.latest_version), str(m.versions)]
        )
    print(table(rows))
    return 0


def _version_text(version: int | None) -> str:
    return "-" if version is None else f"v{version}"


def cmd_history(args: argparse.Namespace) -> int:
    """Show a model's label history (publish, label, promote, rollback, canary decisions), newest last.

    --json prints the entries as the manifest stores them (with a decision's evidence).

    Example:
      modelfleet history --store gs://acme-models/prod --model digits
    """
    moves = ops.history(args.store, args.model)
    if args.json:
        emit_json({"model": args.model, "history": [h.to_json() for h in moves]})
        return 0
    if not moves:
        print(f"model {args.model}: no label history")
        return 0
    rows = [["TIME", "LABEL", "FROM", "TO", "ACTION", "BY", "REASON"]]
    for h in moves:
        rows.append(
            [
                h.time,
                h.label,
                _version_text(h.from_version),
                _version_text(h.to_version),
                h.action,
                h.by or "-",
                h.reason or "",
            ]
        )
    print(f"model {args.model}")
    print(table(rows))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Show one version: files with sha256 and size, signature, source.

    With the validation score export_model recorded, when it did.

    Example:
      modelfleet show --store s3://acme-models/prod --model digits 7
    """
    m = ops.get_manifest(args.store, args.model)
    entry = m.get(args.version)
    data = {**entry.to_json(), "labels": m.labels_of(entry.version)}
    if args.json:
        emit_json(data)
        return 0
    print(f"{m.model} version {entry.version}  labels: {', '.join(data['labels']) or '-'}  created: {entry.created}")
    for k, v in sorted(entry.source.items()):
        print(f"  {k}: {v}")
    if entry.validation is not None:
        print(f"validation at export: {entry.validation.text()} on {entry.validation.rows} rows")
    sig = entry.signature
    print(f"signature serving_default ({sig.method})")
    for kind, specs in (("input", sig.inputs), ("output", sig.outputs)):
        for name, spec in sorted(specs.items()):
            shape = "?" if spec.shape is None else "[" + ", ".join("?" if d < 0 else str(d) for d in spec.shape) + "]"
            print(f"  {kind:6} {name}: {spec.dtype} {shape}")
    print(f"files ({human_bytes(entry.total_bytes)})")
    for name, f in sorted(entry.files.items()):
        print(f"  {f.sha256[:16]}  {f.size:>12}  {name}")
    return 0


def _print_labels(m: Manifest, args: argparse.Namespace) -> None:
    if args.json:
        emit_json({"model": m.model, "labels": m.labels})
    else:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(m.labels.items())) or "none"
        print(f"{m.model} labels: {labels}")


def cmd_label(args: argparse.Namespace) -> int:
    """Point a label (stable, canary or any [A-Za-z0-9_]+) at a version, or remove it with --clear.

    Example:
      modelfleet label --store gs://acme-models/prod --model digits canary 8
      modelfleet label --store gs://acme-models/prod --model digits canary --clear
    """
    if args.clear == (args.version is not None):
        raise BadInput(f"give either VERSION or --clear for label {args.label!r}, not both or neither")
    if args.rollback_on_failure and (args.label != STABLE or args.clear):
        raise BadInput(f"--rollback-on-failure goes with `label stable N --wait`, not with label {args.label!r}")
    if args.clear:
        change: Callable[[Store], Manifest] = lambda st: ops.clear_label(st, args.model, args.label)  # noqa: E731
    else:
        change = lambda st: ops.set_label(st, args.model, args.label, args.version, new_label=args.new_label)  # noqa: E731
    _change(args, change)
    return 0


def _change(args: argparse.Namespace, change: Callable[[Store], Manifest]) -> None:
    """A label operation, then (with --wait) the wait for the fleets it affects; the labels are printed first."""
    if getattr(args, "rollback_on_failure", False) and not args.wait:
        raise BadInput("--rollback-on-failure needs --wait (it acts on what the wait finds)")
    if not args.wait:
        _print_labels(change(checked_store(args.store)), args)
        return
    st = checked_store(args.store)
    before = dict(ops.get_manifest(st, args.model).labels)
    after = change(st)
    _print_labels(after, args)
    _wait(args, lambda: wait_after(st, args.model, before, after, **_wait_kwargs(args)))


def cmd_promote(args: argparse.Namespace) -> int:
    """Make the canary version stable and clear the canary label.

    Example:
      modelfleet promote --store gs://acme-models/prod --model digits
    """
    _change(args, lambda st: ops.promote(st, args.model))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Move stable back to the previous stable version (from the history), or to --to N.

    Example:
      modelfleet rollback --store gs://acme-models/prod --model digits
      modelfleet rollback --store gs://acme-models/prod --model digits --to 5
    """
    _change(args, lambda st: ops.rollback(st, args.model, args.to))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """Delete old versions, keeping the N newest, every labeled version and the previous stable.

    Also removes what crashed publishes left behind (reservations older than --pending-grace seconds).

    Example:
      modelfleet prune --store gs://acme-models/prod --model digits --keep 5 --dry-run
    """
    plan = ops.prune(args.store, args.model, args.keep, dry_run=args.dry_run, pending_grace_seconds=args.pending_grace)
    if args.json:
        emit_json(plan.to_json())
        return 0
    verb = "would delete" if args.dry_run else "deleted"
    print(
        f"{plan.model}: {verb} versions {plan.versions or '[]'}, crashed-publish leftovers {plan.leftovers or '[]'}"
        f" ({plan.objects} objects, {human_bytes(plan.bytes)})"
    )
    if plan.partial_uploads:
        print(f"{plan.model}: aborted {plan.partial_uploads} incomplete uploads")
    if plan.heartbeats:
        print(f"{'would delete' if args.dry_run else 'deleted'} {plan.heartbeats} heartbeats of instances gone a week")
    if plan.in_progress:
        print(f"{plan.model}: left alone, publishes in progress: {plan.in_progress}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = command(sub, "publish", cmd_publish, cmd_publish.__doc__)
    p.add_argument("dir", metavar="DIR", help="SavedModel directory (with saved_model.pb)")
    store_args(p)
    p.add_argument("--label", help="also point this label (e.g. canary) at the new version")
    new_label_arg(p)
    p.add_argument("--allow-signature-change", action="store_true", help="publish even if the inputs changed")
    p.add_argument("--git-sha", default=os.environ.get("MODELFLEET_GIT_SHA"), help="source commit (default: cwd's)")
    p.add_argument("--job-id", default=os.environ.get("MODELFLEET_JOB_ID") or None, help="training job id")
    p.add_argument(
        "--idempotency-key",
        default=os.environ.get("MODELFLEET_IDEMPOTENCY_KEY") or None,
        metavar="KEY",
        help="a retry with the same key returns the version already published (default: --job-id)",
    )
    p.add_argument("--meta", action="append", default=[], type=_meta, metavar="KEY=VALUE", help="more provenance")
    p.add_argument("--workers", type=int_at_least(1), default=DEFAULT_WORKERS, help="parallel uploads")
    wait_args(p)
    json_arg(p)

    p = command(sub, "versions", cmd_versions, cmd_versions.__doc__)
    store_args(p)
    json_arg(p)

    p = command(sub, "models", cmd_models, cmd_models.__doc__)
    store_args(p, model=False)
    json_arg(p)

    p = command(sub, "history", cmd_history, cmd_history.__doc__)
    store_args(p)
    json_arg(p)

    p = command(sub, "show", cmd_show, cmd_show.__doc__)
    store_args(p)
    p.add_argument("version", metavar="VERSION", type=int_at_least(1))
    json_arg(p)

    p = command(sub, "label", cmd_label, cmd_label.__doc__)
    store_args(p)
    p.add_argument("label", metavar="LABEL")
    p.add_argument("version", metavar="VERSION", type=int_at_least(1), nargs="?")
    p.add_argument("--clear", action="store_true", help="remove the label instead")
    new_label_arg(p)
    wait_args(p, rollback=True)
    json_arg(p)

    p = command(sub, "promote", cmd_promote, cmd_promote.__doc__)
    store_args(p)
    wait_args(p, rollback=True)
    json_arg(p)

    p = command(sub, "rollback", cmd_rollback, cmd_rollback.__doc__)
    store_args(p)
    p.add_argument("--to", type=int_at_least(1), metavar="N", help="roll back to this version")
    wait_args(p)
    json_arg(p)

    p = command(sub, "prune", cmd_prune, cmd_prune.__doc__)
    store_args(p)
    p.add_argument("--keep", type=int_at_least(0), required=True, metavar="N", help="newest versions to keep")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted; delete nothing")
    p.add_argument(
        "--pending-grace",
        type=float,
        default=ops.DEFAULT_PENDING_GRACE_SECONDS,
        metavar="SECONDS",
        help="age after which an unfinished publish counts as crashed (default: %(default)s)",
    )
    json_arg(p)


def new_label_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--new-label",
        action="store_true",
        help="create the label even though it is one typo away from one the model has (stabel vs stable)",
    )


def wait_args(p: argparse.ArgumentParser, *, rollback: bool = False) -> None:
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait until every live instance of the fleets the change affects serves the new version (exit 1 if not)",
    )
    p.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help="with --wait: how long (default: %(default)g)",
    )
    if rollback:
        p.add_argument(
            "--rollback-on-failure",
            action="store_true",
            help="with --wait: when the new stable fails to load or does not converge, move stable back (exit 1)",
        )
