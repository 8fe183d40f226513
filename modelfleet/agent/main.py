"""The agent: poll the store, fetch and verify, write TF Serving's config, serve health and metrics.

Each tick syncs every model (one conditional GET each when nothing changed), then reconciles: asks TF Serving which
versions are AVAILABLE, writes the next config step (see :mod:`modelfleet.agent.plan`), and prunes the local cache.
When the store fails, its polls back off exponentially (capped, jittered) while reconciling goes on at the poll
interval, so a transition in progress still completes and health keeps reporting what TF Serving serves.
"""

from __future__ import annotations

import fcntl
import json
import logging
import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from model_export.constants import AGENT_POLL_SECONDS, AGENT_PORT, HEALTH_PATH, LOCAL_TFS_URL, MODEL_CONFIG_NAME, ROLES
from model_export.errors import BadInput, ModelfleetError
from model_export.manifest import check_model_names
from model_export.store import Store, open_store, parse_uri
from modelfleet.agent.cache import LocalCache
from modelfleet.agent.durable import write_atomic
from modelfleet.agent.health import AgentHTTPServer
from modelfleet.agent.plan import next_entry
from modelfleet.agent.status import AgentStatus
from modelfleet.agent.sync import DEFAULT_REFUSE_RETRY_SECONDS, Follower, ModelReport, ModelState
from modelfleet.agent.tfs import AVAILABLE, TfsClient, TfsNotRunning, TfsUnreachable
from modelfleet.agent.tfs_config import ModelEntry, render

log = logging.getLogger("modelfleet.agent")
STATE_NAME = ".agent-state.json"
LOCK_NAME = ".agent.lock"
STATE_SCHEMA = 1
TRANSITION_TICK_SECONDS = 1.0
DEFAULT_KEEP_LOCAL = 3
DEFAULT_MAX_BACKOFF_SECONDS = 60.0
DEFAULT_LISTEN = ("0.0.0.0", AGENT_PORT)  # noqa: S104 - load balancers health-check it from outside


@dataclass(frozen=True)
class AgentOptions:
    store: str
    models: tuple[str, ...]
    root: Path
    role: str
    poll_seconds: float = AGENT_POLL_SECONDS
    tfs_url: str = LOCAL_TFS_URL
    listen: tuple[str, int] | None = DEFAULT_LISTEN
    keep_local: int = DEFAULT_KEEP_LOCAL
    # The model root as TF Serving sees it (its container's mount point); the config's base paths use it.
    serving_root: Path | None = None
    max_backoff_seconds: float = DEFAULT_MAX_BACKOFF_SECONDS
    refuse_retry_seconds: float = DEFAULT_REFUSE_RETRY_SECONDS
    workers: int = 8

    def validate(self) -> None:
        parse_uri(self.store)
        try:
            check_model_names(self.models)
        except BadInput as e:
            raise type(e)(f"--models {e}") from e
        if self.role not in ROLES:
            raise BadInput(f"role {self.role!r} is not one of {', '.join(ROLES)}")
        if not self.root.is_absolute():
            raise BadInput(f"--root {str(self.root)!r} must be an absolute path (TF Serving's config names it)")
        if self.poll_seconds <= 0:
            raise BadInput(f"--poll must be more than 0 seconds, got {self.poll_seconds}")
        if self.keep_local < 1:
            raise BadInput(f"--keep-local must be 1 or more, got {self.keep_local}")
        if not self.tfs_url.startswith(("http://", "https://")):
            raise BadInput(f"--tfs-url {self.tfs_url!r} must start with http:// or https://")


def backoff_delay(failures: int, base: float, cap: float, rand: random.Random | None = None) -> float:
    """Wait before the next store poll after ``failures`` failed ones in a row: ``base * 2**failures``, at most
    ``cap``, then jittered into its upper half so a fleet of agents does not retry in lockstep."""
    if failures <= 0:
        return base
    delay = min(max(cap, base), base * 2.0 ** min(failures, 30))
    return delay / 2 + (rand or random).uniform(0, delay / 2)


class Agent:
    """One agent over one model root. Use as a context manager: it holds a lock on the root."""

    def __init__(self, options: AgentOptions, *, store: Store | None = None, tfs: TfsClient | None = None) -> None:
        options.validate()
        self.options = options
        self.root = options.root
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._lock_file: IO[str] | None = (self.root / LOCK_NAME).open("a")
        except OSError as e:
            raise BadInput(f"--root {str(self.root)!r} cannot be used: {e.strerror or e}") from e
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self._lock_file.close()
            self._lock_file = None
            raise ModelfleetError(f"another modelfleet agent is running on {self.root} (it holds {LOCK_NAME})") from e
        try:
            self.store = store or open_store(options.store)
            self.tfs = tfs or TfsClient(options.tfs_url)
            self.cache = LocalCache(self.root, workers=options.workers)
            self.follower = Follower(
                self.store, self.cache, options.role, refuse_retry_seconds=options.refuse_retry_seconds
            )
            self.states = {m: ModelState(m) for m in options.models}
            self.entries: dict[str, ModelEntry] = {}
            self.status = AgentStatus(options.role, options.models)
            self.cache.clean_temp(options.models)
            self._load_state()
            self.status.publish(self.states)
        except BaseException:
            self.close()
            raise

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def close(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None

    def __enter__(self) -> Agent:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def config_path(self) -> Path:
        return self.root / MODEL_CONFIG_NAME

    def base_path(self, model: str) -> str:
        return str((self.options.serving_root or self.root) / model)

    # -- one tick --------------------------------------------------------------------------------------------------

    def _labeled(self) -> dict[str, Iterable[int]]:
        """The versions the written config's labels point at, per model."""
        return {name: entry.labels.values() for name, entry in self.entries.items()}

    def tick(self, *, poll_store: bool = True) -> list[ModelReport]:
        """Sync every model from the store (when ``poll_store``), then write the next config and prune the cache."""
        reports = [self.follower.sync(st) for st in self.states.values()] if poll_store else []
        # The labels stay those of the config TF Serving has until the next one is written: health read in between
        # must still see the labeled version serving (without them a mid-move check answered 503).
        self.status.publish(self.states, self._labeled())
        try:
            self.reconcile()
        except (OSError, ValueError) as e:
            why = f"cannot update {self.root}: {e}"
            reports = [*reports, *(ModelReport(m, error=why, transient=True) for m in self.states)]
        for r in reports:
            if r.error:
                log.warning("%s", r.error)
        self.status.publish(self.states, self._labeled())
        if reports:
            self.status.record(reports, at=time.time(), bytes_fetched=self.cache.bytes_fetched)
        return reports

    def reconcile(self) -> bool:
        """Write the config step each model's target calls for (``True`` when the file changed), then prune."""
        entries: dict[str, ModelEntry] = {}
        for name, st in self.states.items():
            if st.target is None:
                continue
            labels = st.manifest.labels if st.manifest is not None else {}
            available, first_config = self._observe(name)
            entries[name] = next_entry(
                name,
                self.base_path(name),
                self.options.role,
                st.target,
                labels,
                self.entries.get(name),
                available,
                first_config=first_config,
            )
        if not entries:
            return False  # never write a config that would unload everything: nothing is known yet
        changed = write_atomic(self.config_path, render(list(entries.values())))
        if changed:
            summary = "; ".join(
                f"{n} versions {list(e.versions)} labels {dict(e.labels)}" for n, e in sorted(entries.items())
            )
            log.info("wrote %s: %s", self.config_path, summary)
        self.entries = entries
        self._save_state()
        for name, entry in entries.items():
            gone = self.cache.prune(name, self.options.keep_local, entry.versions)
            if gone:
                log.info("%s: removed cached versions %s", name, gone)
        return changed

    def _observe(self, model: str) -> tuple[frozenset[int] | None, bool]:
        """``(AVAILABLE versions or None when unknown, whether TF Serving is not running)``."""
        try:
            states = self.tfs.model_status(model)
        except TfsNotRunning:
            return None, True
        except TfsUnreachable as e:
            log.warning("%s", e)
            return None, False
        return frozenset(v for v, s in states.items() if s == AVAILABLE), False

    def shortfalls(self, reports: list[ModelReport]) -> list[str]:
        """Why a sync fell short of what the manifests ask (failures, refusals, models not at their desired version);
        empty when every model is served as desired."""
        reasons = [r.error or r.refused or "" for r in reports if r.error or r.refused]
        for st in self.states.values():
            if st.target is None or st.target != st.desired:
                reasons.append(st.problem or f"{st.name}: serving version {st.target}, desired {st.desired}")
        return list(dict.fromkeys(reasons))

    # -- loops -----------------------------------------------------------------------------------------------------

    def run_once(self) -> bool:
        """One sync; ``True`` when every model is served as desired (the reasons otherwise are logged)."""
        reasons = self.shortfalls(self.tick())
        for reason in reasons:
            log.error("not ready: %s", reason)
        return not reasons

    def run(self, stop: threading.Event) -> None:
        """Tick every ``poll_seconds`` until ``stop``; store polls back off while the store fails."""
        poll = self.options.poll_seconds
        failures = 0
        next_store_poll = 0.0
        while not stop.is_set():
            due = time.monotonic() >= next_store_poll
            try:
                reports = self.tick(poll_store=due)
            except Exception as e:  # the loop must outlive any one bad tick
                log.exception("sync failed unexpectedly")
                reports = [ModelReport(m, error=f"unexpected: {e!r}", transient=True) for m in self.states]
                self.status.record(reports, at=time.time(), bytes_fetched=self.cache.bytes_fetched)
            if due:
                if any(r.transient for r in reports):
                    failures += 1
                    delay = backoff_delay(failures, poll, self.options.max_backoff_seconds)
                    log.warning("store or disk failing (%d in a row); next store poll in %.1f s", failures, delay)
                else:
                    failures, delay = 0, poll
                next_store_poll = time.monotonic() + delay
            stop.wait(poll if self.settled() else min(poll, TRANSITION_TICK_SECONDS))

    def settled(self) -> bool:
        """Every model's config is in its steady state (the target alone, labeled); otherwise a transition waits on
        TF Serving, and the loop ticks faster (local status requests only) to finish it."""
        for name, st in self.states.items():
            entry = self.entries.get(name)
            if st.target is not None and (entry is None or entry.versions != (st.target,) or not entry.labels):
                return False
        return True

    def serve(self, stop: threading.Event) -> None:
        """The long-running agent: the HTTP endpoint (when ``listen``) plus :meth:`run`."""
        http = None
        if self.options.listen is not None:
            try:
                http = AgentHTTPServer(self.options.listen, self.status, self.tfs)
            except OSError as e:
                host, port = self.options.listen
                raise BadInput(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
            http.start()
            log.info("health on %s%s", http.url, HEALTH_PATH)
        try:
            self.run(stop)
        finally:
            if http is not None:
                http.stop()

    # -- state across restarts -------------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.root / STATE_NAME

    def _save_state(self) -> None:
        doc = {
            "schema": STATE_SCHEMA,
            "role": self.options.role,
            "models": {
                name: {"target": st.target, "config": e.to_json() if (e := self.entries.get(name)) else None}
                for name, st in sorted(self.states.items())
                if st.target is not None
            },
        }
        write_atomic(self.state_path, json.dumps(doc, indent=1) + "\n")

    def _load_state(self) -> None:
        """Resume what the last run served (so a restart while the store is down keeps serving it)."""
        try:
            doc = json.loads(self.state_path.read_text())
            if doc.get("schema") != STATE_SCHEMA:
                return
            for name, saved in doc["models"].items():
                st = self.states.get(name)
                target = int(saved["target"])
                if st is None or not self.cache.version_dir(name, target).is_dir():
                    continue
                st.target, st.problem = target, None
                config = saved.get("config")
                if config:
                    on_disk = set(self.cache.versions(name))
                    versions = tuple(int(v) for v in config["versions"] if int(v) in on_disk)
                    labels = {str(k): int(v) for k, v in config["labels"].items() if int(v) in versions}
                    if versions:
                        self.entries[name] = ModelEntry(name, self.base_path(name), versions, labels)
                        self.cache.mark_in_use(name, versions)  # what the config on disk names: never evicted
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            log.warning("ignoring unreadable %s: %s", self.state_path, e)
