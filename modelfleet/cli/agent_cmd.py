"""``modelfleet agent``: keep the local TF Serving serving what the manifests say (runs on each serving VM)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path

from model_export.constants import (
    AGENT_POLL_SECONDS,
    AGENT_PORT,
    AGENT_STORE_TIMEOUT_SECONDS,
    DEFAULT_DRAIN_WAIT_SECONDS,
    DEFAULT_MAX_DRAINING_PERCENT,
    DEFAULT_VERSION_SWITCH,
    LOCAL_TFS_URL,
    ROLES,
    VERSION_SWITCHES,
)
from model_export.errors import BadInput
from model_export.heartbeat import DEFAULT_INTERVAL_SECONDS
from model_export.store.base import REQUEST_BUDGET_ENV, request_budget
from modelfleet.agent import Agent, AgentOptions
from modelfleet.agent.main import DEFAULT_KEEP_LOCAL, DEFAULT_LISTEN
from modelfleet.agent.switch_options import MAX_DRAIN_WAIT_SECONDS, SwitchOptions
from modelfleet.cli.common import command, int_at_least, positive_seconds


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise BadInput(f"--listen {text!r} is not HOST:PORT (e.g. 0.0.0.0:{AGENT_PORT})")
    return host, int(port)


def parse_models(text: str) -> tuple[str, ...]:
    """Split ``a,b``; the names are checked by ``AgentOptions.validate`` (``manifest.check_model_names``)."""
    return tuple(m.strip() for m in text.split(",")) if text.strip() else ()


def budget_seconds(text: str) -> float:
    """An argparse ``type`` for ``--store-timeout``: seconds from 1 to 3600 (the store layer's range)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} must be from 1 to 3600 seconds")
    return value


def store_timeout(flag: float | None) -> float:
    """The agent's store budget: ``--store-timeout``, else ``$MODELFLEET_STORE_TIMEOUT`` when set, else
    ``AGENT_STORE_TIMEOUT_SECONDS`` (shorter than the store layer's 30 s: a poll must not hang on a dead store)."""
    if flag is not None:
        return flag
    if os.environ.get(REQUEST_BUDGET_ENV, "").strip():
        return request_budget()  # BadInput when invalid
    return AGENT_STORE_TIMEOUT_SECONDS


@contextlib.contextmanager
def store_budget(seconds: float) -> Iterator[None]:
    """Every store request of this agent (the backends read ``$MODELFLEET_STORE_TIMEOUT``) ends within ``seconds``,
    the SDK's retries included; the variable is restored on exit (the CLI also runs in-process, in tests)."""
    before = os.environ.get(REQUEST_BUDGET_ENV)
    os.environ[REQUEST_BUDGET_ENV] = f"{seconds:g}"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(REQUEST_BUDGET_ENV, None)
        else:
            os.environ[REQUEST_BUDGET_ENV] = before


def percent(text: str) -> int:
    """An argparse ``type`` for ``--max-draining-percent``: an integer from 1 to 100."""
    value = int_at_least(1)(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"{text!r} must be from 1 to 100")
    return value


def drain_wait(text: str) -> float:
    """An argparse ``type`` for ``--drain-wait-seconds``: seconds from 0 to ``MAX_DRAIN_WAIT_SECONDS``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= MAX_DRAIN_WAIT_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r} must be from 0 to {MAX_DRAIN_WAIT_SECONDS:g} seconds")
    return value


def switch_options(args: argparse.Namespace) -> SwitchOptions:
    """The version-switch flags as one validated ``SwitchOptions`` (``BadInput`` names the flag)."""
    return SwitchOptions(
        mode=args.switch,
        memory_budget_bytes=args.memory_budget_bytes,
        drain_wait_seconds=args.drain_wait_seconds,
        fleet_size=args.fleet_size,
        max_draining_percent=args.max_draining_percent,
    )


def cmd_agent(args: argparse.Namespace) -> int:
    """Follow the manifests of some models and keep the local TF Serving serving this fleet's version.

    Downloads each version into --root, verifies every file's sha256 and size, renames it into place, and writes
    ROOT/models.config (run TF Serving with --model_config_file=ROOT/models.config and
    --model_config_file_poll_wait_seconds). Serves health (200 only when TF Serving reports the fleet's version
    AVAILABLE for every model) and Prometheus metrics on --listen. --once syncs once: exit 0 when every model is
    ready, 1 otherwise. --startup-config writes the config from the agent's state alone (the versions TF Serving has
    loaded on this VM before), with no store request, and exits: the boot step before TF Serving starts.

    Example:
      modelfleet agent --store gs://acme-models/prod --models digits --root /var/lib/modelfleet/models --role stable
      modelfleet agent --store s3://acme-models/prod --models digits,iris --root /srv/models --role canary --once
    """
    listen = parse_listen(args.listen)
    switch = switch_options(args)
    options = AgentOptions(
        store=args.store,
        models=parse_models(args.models),
        root=args.root.absolute(),
        role=args.role,
        poll_seconds=args.poll,
        tfs_url=args.tfs_url,
        listen=None if args.once or args.startup_config else listen,
        keep_local=args.keep_local,
        serving_root=args.serving_root,
        switch=switch,
        heartbeat_seconds=None if args.once or args.startup_config or args.heartbeat == 0 else args.heartbeat,
        instance_id=args.instance_id,
    )
    if options.serving_root is not None and not options.serving_root.is_absolute():
        raise BadInput(f"--serving-root {str(options.serving_root)!r} must be an absolute path")
    budget = store_timeout(args.store_timeout)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("modelfleet.agent").info("%s", switch.describe())
    with store_budget(budget), Agent(options) as agent:
        if args.startup_config:
            return 0 if agent.write_startup_config() else 1
        if args.once:
            return 0 if agent.run_once() else 1
        stop = threading.Event()

        def on_signal(signum: int, frame: types.FrameType | None) -> None:
            del frame
            logging.getLogger("modelfleet.agent").info("%s: stopping", signal.Signals(signum).name)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        agent.serve(stop)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = command(sub, "agent", cmd_agent, cmd_agent.__doc__)
    p.add_argument(
        "--store", required=True, metavar="URI", help="file:///path, gs://bucket/prefix or s3://bucket/prefix"
    )
    p.add_argument("--models", required=True, metavar="A,B", help="comma-separated model names to serve")
    p.add_argument("--root", required=True, type=Path, metavar="DIR", help="local model root TF Serving reads")
    p.add_argument(
        "--role", required=True, choices=ROLES, help="stable serves the stable label; canary serves canary, else stable"
    )
    p.add_argument(
        "--poll", type=positive_seconds, default=AGENT_POLL_SECONDS, metavar="SECONDS", help="default: %(default)s"
    )
    once = p.add_mutually_exclusive_group()
    once.add_argument("--once", action="store_true", help="sync once and exit: 0 ready, 1 failed")
    once.add_argument(
        "--startup-config",
        action="store_true",
        help="write TF Serving's start-up config from the agent's state (versions proven on this VM) and exit, "
        "without any store request (at boot, before TF Serving)",
    )
    p.add_argument("--tfs-url", default=LOCAL_TFS_URL, metavar="URL", help="TF Serving REST (%(default)s)")
    p.add_argument(
        "--listen", default="{}:{}".format(*DEFAULT_LISTEN), metavar="HOST:PORT", help="health/metrics (%(default)s)"
    )
    p.add_argument(
        "--keep-local",
        type=int_at_least(1),
        default=DEFAULT_KEEP_LOCAL,
        metavar="K",
        help="versions kept on disk (%(default)s)",
    )
    p.add_argument(
        "--store-timeout",
        type=budget_seconds,
        metavar="SECONDS",
        help=f"longest a store request may take, retries included (default: ${REQUEST_BUDGET_ENV}, else "
        f"{AGENT_STORE_TIMEOUT_SECONDS})",
    )
    p.add_argument(
        "--switch",
        choices=VERSION_SWITCHES,
        default=DEFAULT_VERSION_SWITCH,
        help="how a model moves to a new version: overlap (load beside the old one), drain (leave the load balancer, "
        "unload, load), auto (drain only when both would not fit --memory-budget-bytes); default: %(default)s",
    )
    p.add_argument(
        "--memory-budget-bytes",
        type=int_at_least(1),
        metavar="N",
        help="--switch auto: the memory both versions together may take (default: the VM's MemTotal minus 1 GiB)",
    )
    p.add_argument(
        "--drain-wait-seconds",
        type=drain_wait,
        default=float(DEFAULT_DRAIN_WAIT_SECONDS),
        metavar="SECONDS",
        help="how long the load balancer needs to stop sending once health says 503 (its check's interval x unhealthy "
        "threshold); default: %(default)g",
    )
    p.add_argument(
        "--fleet-size",
        type=int_at_least(1),
        default=1,
        metavar="N",
        help="VMs in this fleet (the stack passes its minimum) for the drain slots; default: %(default)s",
    )
    p.add_argument(
        "--max-draining-percent",
        type=percent,
        default=DEFAULT_MAX_DRAINING_PERCENT,
        metavar="P",
        help="at most P %% of the fleet (at least one VM) drain at once; default: %(default)s",
    )
    p.add_argument(
        "--heartbeat",
        type=float,
        default=DEFAULT_INTERVAL_SECONDS,
        metavar="SECONDS",
        help="write this VM's fleet-status heartbeat to the store this often, and when what it serves changes "
        "(0: never); default: %(default)g",
    )
    p.add_argument(
        "--instance-id",
        metavar="ID",
        help="this VM in the heartbeat; default: the cloud's instance name (GCP) or id (AWS), else the host name",
    )
    p.add_argument(
        "--serving-root",
        type=Path,
        metavar="DIR",
        help="--root as TF Serving sees it, when it runs in a container with another mount point (default: --root)",
    )
