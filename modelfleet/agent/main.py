"""The agent: poll the store, fetch and verify, write TF Serving's config, serve health and metrics.

Two loops share the per-model state (``ModelState``) under one lock. The store poll (a thread of :meth:`Agent.run`)
syncs every model (one conditional GET each when nothing changed) and fetches new versions; it releases the lock
around every store request, so a slow or black-holed store never holds up the other loop. The reconcile loop asks TF
Serving which versions are AVAILABLE or failed, records what it proved (``proven``, ``last_good``) and what it could
not load (``failed``), writes the next config step (see :mod:`modelfleet.agent.plan`) from the last known state, and
prunes the local cache; it runs every tick whatever the store does. A config TF Serving may read at start-up (it is
not running, or still starting) names only versions it has already loaded on this VM, so it always starts; a version
never loaded here is added by a reload, where a failure is not fatal. That start-up config is written from the state
file before any store request (:meth:`Agent.write_startup_config`, and first in :meth:`Agent.run_once`), so a dead
store costs TF Serving's start nothing. When the store fails, its polls back off exponentially (capped, jittered)
while reconciling goes on, so a transition in progress still completes and health keeps reporting what TF Serving
serves.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

from model_export.constants import AGENT_POLL_SECONDS, AGENT_PORT, HEALTH_PATH, LOCAL_TFS_URL, MODEL_CONFIG_NAME, ROLES
from model_export.errors import BadInput, ModelfleetError
from model_export.heartbeat import ModelReport as HeartbeatModel
from model_export.layout import check_instance_id
from model_export.manifest import check_model_names
from model_export.store import Store, open_store, parse_uri
from modelfleet import __version__
from modelfleet.agent.cache import LocalCache
from modelfleet.agent.durable import write_atomic
from modelfleet.agent.health import LIVE_MARKER, AgentHTTPServer, Liveness, liveness_window
from modelfleet.agent.heartbeat import COUNTERS_NAME, HeartbeatOptions, HeartbeatWriter
from modelfleet.agent.identity import default_identity
from modelfleet.agent.lease import DEFAULT_SKEW_SECONDS, DEFAULT_TTL_SECONDS, DrainLeases, Lease
from modelfleet.agent.plan import next_entry, startup_version
from modelfleet.agent.status import AgentStatus
from modelfleet.agent.switch_options import SwitchOptions
from modelfleet.agent.sync import (
    DEFAULT_FAILED_RETRY_SECONDS,
    DEFAULT_REFUSE_RETRY_SECONDS,
    Follower,
    LoadFailure,
    ModelReport,
    ModelState,
    degraded_reason,
)
from modelfleet.agent.tfs import AVAILABLE, TfsClient, TfsNotRunning, TfsUnreachable, load_errors
from modelfleet.agent.tfs_config import ModelEntry, render
from modelfleet.agent.tfs_metrics import scrape

log = logging.getLogger("modelfleet.agent")
STATE_NAME = ".agent-state.json"
LOCK_NAME = ".agent.lock"
STATE_SCHEMA = 2  # 1: target and config per model (still read)
# TF Serving stopping this many times while a version was loading (and before it was ever AVAILABLE) marks the
# version failed: a load that kills the server (out of memory) never reports an error.
CRASHES_TO_FAIL = 2
# After a failed version is tried again, TF Serving still shows the old END (with its error) until it reads the new
# config: that END is not a new failure until TF Serving shows another state for the version, or this long.
RETRY_GRACE_SECONDS = 120.0
TRANSITION_TICK_SECONDS = 1.0
DEFAULT_KEEP_LOCAL = 3
DEFAULT_MAX_BACKOFF_SECONDS = 60.0
DEFAULT_LISTEN = ("0.0.0.0", AGENT_PORT)  # noqa: S104 - load balancers health-check it from outside
# --switch auto: a version takes its files' size x this in RAM once loaded (TF Serving's own estimate of a SavedModel,
# servables/tensorflow/util.cc: x 1.2), and drains when what TF Serving holds plus the new version would exceed the
# memory budget. The default budget is the VM's MemTotal minus MEMORY_HEADROOM_BYTES (the OS, Docker, the agent).
MEMORY_FACTOR = 1.2
MEMORY_HEADROOM_BYTES = 1 << 30
# --switch drain: after --drain-wait-seconds (the load balancer has stopped sending), requests it sent just before
# still run; TF Serving exposes no in-flight count, so the agent waits this much longer before it unloads.
DRAIN_SETTLE_SECONDS = 5.0
HOLDING_MEMORY = frozenset({"LOADING", "AVAILABLE", "UNLOADING"})  # a version in these states is in TF Serving's RAM
OVERLAP = SwitchOptions(mode="overlap")


def default_memory_budget(meminfo: Path = Path("/proc/meminfo")) -> int:
    """What both versions may take with ``--switch auto`` when ``--memory-budget-bytes`` is not given: the VM's
    ``MemTotal`` minus ``MEMORY_HEADROOM_BYTES`` (at least 1 byte)."""
    total = 0
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        total = 0
    if total <= 0:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1, total - MEMORY_HEADROOM_BYTES)


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
    failed_retry_seconds: float = DEFAULT_FAILED_RETRY_SECONDS
    workers: int = 8
    # How a model moves to a version not loaded yet (docs/agent.md "Version switch"); overlap by default here, the
    # CLI's default is ``auto``.
    switch: SwitchOptions = OVERLAP
    lease_ttl_seconds: float = DEFAULT_TTL_SECONDS
    lease_skew_seconds: float = DEFAULT_SKEW_SECONDS
    drain_settle_seconds: float = DRAIN_SETTLE_SECONDS
    holder: str | None = None  # the drain-lease holder id; default: the host name (unique in a fleet, stable)
    # --heartbeat: write the fleet-status heartbeat this often (None: never; the CLI's default is 30 s)
    heartbeat_seconds: float | None = None
    instance_id: str | None = None  # the heartbeat's instance; default: the cloud's instance name/id, else the host
    zone: str | None = None

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
        if self.drain_settle_seconds < 0:
            raise BadInput(f"drain settle = {self.drain_settle_seconds} s is invalid; must be 0 or more")
        if self.heartbeat_seconds is not None and not self.heartbeat_seconds > 0:
            raise BadInput(f"--heartbeat {self.heartbeat_seconds:g} is invalid: a number of seconds more than 0")
        if self.instance_id is not None:
            try:
                check_instance_id(self.instance_id)
            except ValueError as e:
                raise BadInput(f"--instance-id: {e}") from None


def backoff_delay(failures: int, base: float, cap: float, rand: random.Random | None = None) -> float:
    """Wait before the next store poll after ``failures`` failed ones in a row: ``base * 2**failures``, at most
    ``cap``, then jittered into its upper half so a fleet of agents does not retry in lockstep."""
    if failures <= 0:
        return base
    delay = min(max(cap, base), base * 2.0 ** min(failures, 30))
    return delay / 2 + (rand or random).uniform(0, delay / 2)


@dataclass
class Drain:
    """A drain in progress on this VM (one at a time, for all its models: one lease, one 503). ``since``: when
    ``/healthz`` began answering 503 (wall clock, kept across restarts); ``models``: per model, the version serving
    before and the target; ``out``: the drain wait and settle are over, the load balancer sends nothing, the models
    may be unloaded."""

    since: float
    models: dict[str, tuple[int | None, int]]
    lease: Lease | None = None
    out: bool = False
    renewed: float = 0.0  # monotonic time of the last successful lease write

    def to_json(self) -> dict[str, object]:
        return {
            "since": self.since,
            "out": self.out,
            "slot": None if self.lease is None else self.lease.slot,
            "models": {n: {"from": f, "to": t} for n, (f, t) in sorted(self.models.items())},
        }


@dataclass(frozen=True)
class Observation:
    """What TF Serving said about one model: ``up`` (it answered: ``states``, and ``errors`` of failed versions),
    ``down`` (nothing serves its port: stopped, or starting; the next config it reads may be its first) or
    ``unknown`` (it did not answer usefully: timeout, HTTP error; it is running)."""

    kind: Literal["up", "down", "unknown"]
    states: Mapping[int, str] = field(default_factory=dict)
    errors: Mapping[int, str] = field(default_factory=dict)

    @property
    def available(self) -> frozenset[int]:
        return frozenset(v for v, s in self.states.items() if s == AVAILABLE)


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
                self.store,
                self.cache,
                options.role,
                refuse_retry_seconds=options.refuse_retry_seconds,
                failed_retry_seconds=options.failed_retry_seconds,
            )
            # ModelState is changed only with this lock held; the store poll releases it around store requests.
            self._lock = threading.Lock()
            self._store_busy = False  # a store request (maybe a download into the cache) is under way: no prune
            self._wake = threading.Event()  # a store poll finished: reconcile now
            self.follower.unlocked = self._store_request
            self.states = {m: ModelState(m) for m in options.models}
            self.entries: dict[str, ModelEntry] = {}
            self._tfs_up = False  # TF Serving answered at the last reconcile
            # per model, the versions never loaded here that the config written while it answered lists
            self._loading: dict[str, frozenset[int]] = {}
            # --switch drain / auto (docs/agent.md "Version switch")
            self.switch = options.switch
            self.memory_budget = options.switch.memory_budget_bytes or default_memory_budget()
            self.leases: DrainLeases | None = None
            if options.switch.mode != "overlap":
                self.leases = DrainLeases(
                    self.store,
                    fleet=options.role,
                    slots=options.switch.drain_slots,
                    ttl_seconds=options.lease_ttl_seconds,
                    holder=options.holder or socket.gethostname(),
                    skew_seconds=options.lease_skew_seconds,
                )
            self.drain: Drain | None = None
            self._waiting: dict[str, tuple[int | None, int]] = {}  # need a drain, no slot free yet: keep serving
            self._next_lease_try = 0.0
            self._may_drain = True  # False for --once: it never starts or resumes a drain (TF Serving is not up)
            self._decided: dict[str, tuple[int, str]] = {}  # per model, the last switch decision logged
            self.liveness = Liveness(
                max_silence_seconds=liveness_window(options.poll_seconds), marker=self.root / LIVE_MARKER
            )
            self.status = AgentStatus(options.role, options.models)
            self._observations: dict[str, Observation] = {}  # TF Serving's answers at the last reconcile
            self._tfs_seen_down = False  # TF Serving did not answer at the last reconcile that could tell
            self._label_seen: dict[str, int] = {}  # per model, the version TF Serving serves under the role label
            self.heartbeat: HeartbeatWriter | None = None
            if options.heartbeat_seconds is not None:
                self.heartbeat = self._heartbeat_writer(options.heartbeat_seconds)
            self.cache.clean_temp(options.models)
            self._load_state()
            self.status.publish(self.states, draining=self._draining())
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
        """Per model, the versions serving while the target loads: what the written config's labels point at, and
        the last version that served if the config still names it (a config TF Serving started from has no label)."""
        out: dict[str, Iterable[int]] = {}
        for name, entry in self.entries.items():
            good = self.states[name].last_good if name in self.states else None
            out[name] = {*entry.labels.values(), *([good] if good is not None and good in entry.versions else [])}
        return out

    @contextlib.contextmanager
    def _store_request(self) -> Iterator[None]:
        """Around one store request of the store poll (which holds the lock): release the lock meanwhile."""
        self._store_busy = True
        self._lock.release()
        try:
            yield
        finally:
            self._lock.acquire()
            self._store_busy = False

    def tick(self, *, poll_store: bool = True) -> list[ModelReport]:
        """Sync every model from the store (when ``poll_store``), then write the next config and prune the cache."""
        with self._lock:
            reports = self._poll_store() if poll_store else []
            return [*reports, *self._reconcile_tick()]

    def _poll_store(self) -> list[ModelReport]:
        """One store poll of every model (the caller holds the lock; it is released around each store request)."""
        reports = [self.follower.sync(st) for st in self.states.values()]
        for r in reports:
            if r.error:
                log.warning("%s", r.error)
        # The labels stay those of the config TF Serving has until the next one is written: health read in between
        # must still see the labeled version serving (without them a mid-move check answered 503).
        self.status.publish(self.states, self._labeled(), self._draining())
        self.status.record(reports, at=time.time(), bytes_fetched=self.cache.bytes_fetched)
        return reports

    def _reconcile_tick(self) -> list[ModelReport]:
        """Reconcile from the last known state (the caller holds the lock); the failures, if it could not."""
        reports: list[ModelReport] = []
        try:
            self.reconcile()
        except (OSError, ValueError) as e:
            why = f"cannot update {self.root}: {e}"
            reports = [ModelReport(m, error=why, transient=True) for m in self.states]
            log.warning("%s", why)
        self.status.publish(self.states, self._labeled(), self._draining())
        if reports:
            self.status.record(reports, at=time.time(), bytes_fetched=self.cache.bytes_fetched)
        return reports

    def reconcile(self) -> bool:
        """Ask TF Serving, learn what it loaded and failed, write the config step each model's target calls for
        (``True`` when the file changed), then prune."""
        own_before = self.tfs.own_errors()
        observations = self._observe_all()
        entries: dict[str, ModelEntry] = {}
        for name, st in self.states.items():
            self._learn(name, st, observations[name])
        self._plan_drain(observations)
        for name, st in self.states.items():
            obs = observations[name]
            entry = self._switch_entry(name, st, obs)
            if entry is not None:
                entries[name] = entry
            if obs.kind == "up":  # what it may be loading until the next reconcile: never loaded here before
                listed = frozenset(entry.versions) if entry is not None else frozenset()
                self._loading[name] = listed - obs.available - st.proven - st.failed.keys()
        kinds = {obs.kind for obs in observations.values()}
        if kinds & {"up", "down"}:
            if "up" in kinds and self._tfs_seen_down and self.heartbeat is not None:
                self.heartbeat.tfs_restarted(own_before)  # a new TF Serving: its counters start from zero
            self._tfs_seen_down = "up" not in kinds
            self._tfs_up = "up" in kinds
        self._observations = observations
        if not entries and not self.entries and all(st.target is None for st in self.states.values()):
            return False  # never write a config that would unload everything: nothing is known yet
        # With no model safe to list (TF Serving not running and no version proven yet, or only failed ones), the
        # config is an empty model list: TF Serving starts with it and has nothing to fail on.
        changed = write_atomic(self.config_path, render(list(entries.values())))
        if changed:
            summary = "; ".join(
                f"{n} versions {list(e.versions)} labels {dict(e.labels)}" for n, e in sorted(entries.items())
            )
            log.info("wrote %s: %s", self.config_path, summary or "no model")
        self.entries = entries
        if self.heartbeat is not None and "up" in kinds:
            self._confirm_labels(observations)
        self._save_state()
        if self._store_busy:
            return changed  # the store poll may be downloading into the cache: prune at the next tick
        for name, st in self.states.items():
            entry = entries.get(name)
            referenced = {*(entry.versions if entry else ()), *(v for v in (st.target, st.last_good) if v is not None)}
            if not referenced:
                continue
            gone = self.cache.prune(name, self.options.keep_local, referenced)
            if gone:
                log.info("%s: removed cached versions %s", name, gone)
        return changed

    def _confirm_labels(self, observations: Mapping[str, Observation]) -> None:
        """Ask TF Serving which version the fleet's label serves, for each model whose written label it has not
        confirmed yet (it applies a config at its next poll of the file): what the heartbeat reports as serving is
        TF Serving's answer, not the config the agent wrote."""
        role = self.options.role
        for name, entry in self.entries.items():
            labeled = entry.labels.get(role)
            obs = observations.get(name)
            if labeled is None or obs is None or obs.kind != "up" or self._label_seen.get(name) == labeled:
                continue
            try:
                found = self.tfs.label_version(name, role)
            except TfsUnreachable as e:
                log.debug("%s", e)
                continue
            if found is None:
                self._label_seen.pop(name, None)
            else:
                self._label_seen[name] = found

    def _labels_unconfirmed(self) -> bool:
        """A written label TF Serving has not been seen serving yet (only watched when heartbeats are on)."""
        if self.heartbeat is None:
            return False
        role = self.options.role
        return any(
            e.labels.get(role) is not None and self._label_seen.get(n) != e.labels.get(role)
            for n, e in self.entries.items()
        )

    def _observe_all(self) -> dict[str, Observation]:
        """One status request per model; once TF Serving is found not listening, the other models are too."""
        out: dict[str, Observation] = {}
        down = False
        for name in self.states:
            if down:
                out[name] = Observation("down")
                continue
            try:
                states = self.tfs.model_status(name)
            except TfsNotRunning as e:
                log.debug("%s", e)
                out[name], down = Observation("down"), True
                continue
            except TfsUnreachable as e:
                log.warning("%s", e)
                out[name] = Observation("unknown")
                continue
            out[name] = Observation("up", dict(states), load_errors(states))
        return out

    def _learn(self, name: str, st: ModelState, obs: Observation) -> None:
        """Record what TF Serving proved (AVAILABLE: ``proven``, ``last_good``) and what it could not load
        (``failed``: END with an error, or it stopped while loading the version ``CRASHES_TO_FAIL`` times); move
        the target off a failed version."""
        if obs.kind == "down":
            if self._tfs_up:  # it was answering at the last reconcile: it stopped (crashed, killed) since
                for v in sorted(self._loading.get(name, frozenset()) - st.proven - st.failed.keys()):
                    st.crashes[v] = st.crashes.get(v, 0) + 1
                    log.warning("%s: TF Serving stopped while loading version %d (%d times)", name, v, st.crashes[v])
                    if st.crashes[v] >= CRASHES_TO_FAIL:
                        error = f"TF Serving stopped {st.crashes[v]} times while loading it (killed: out of memory?)"
                        self._failed(name, st, v, error)
            self._loading[name] = frozenset()
        elif obs.kind == "up":
            now = time.monotonic()
            for v in sorted(obs.available & st.failed.keys()):
                log.info("%s: version %d, which had failed to load, is AVAILABLE", name, v)
                del st.failed[v]
            available = obs.available
            for v in sorted(available - st.proven):
                log.info("%s: TF Serving loaded version %d", name, v)
            st.proven |= available
            for v, state in obs.states.items():
                if state != "END":  # a fresh attempt of a version being tried again has begun
                    st.retrying.pop(v, None)
                if state == AVAILABLE:
                    st.crashes.pop(v, None)
            for v, error in sorted(obs.errors.items()):
                if v in st.failed:
                    continue
                started = st.retrying.get(v)
                if started is not None and now - started < RETRY_GRACE_SECONDS:
                    continue  # the END of the earlier attempt, until TF Serving reads the config that lists it again
                st.retrying.pop(v, None)
                self._failed(name, st, v, error)
            if st.target is not None and st.target in available:
                st.last_good = st.target
            elif available:
                st.last_good = max(available)  # what answers unversioned requests while the target loads
        if st.target is not None and st.target in st.failed:
            self.follower.fall_back(st)

    def _failed(self, name: str, st: ModelState, version: int, error: str) -> None:
        st.failed[version] = LoadFailure(error, time.time())
        st.proven.discard(version)
        st.crashes.pop(version, None)
        if st.last_good == version:
            st.last_good = None
        self.status.count_failed_load(name)
        log.error("%s: TF Serving could not load version %d: %s; it is not listed again", name, version, error)

    def _entry(self, name: str, st: ModelState, obs: Observation) -> ModelEntry | None:
        """The config entry to write now, or ``None`` to leave the model out."""
        labels = st.manifest.labels if st.manifest is not None else {}
        if obs.kind == "down":
            # The file may be read at start-up, where a version that fails to load makes TF Serving exit and a
            # label makes it exit: only a version it has loaded here before, no label.
            on_disk = {v for v in st.proven if self.cache.version_dir(name, v).is_dir()}
            safe = startup_version(st.target, st.last_good, on_disk)
            if safe is None:
                return None
            role = self.options.role
            return next_entry(name, self.base_path(name), role, safe, labels, None, None, first_config=True)
        if st.target is None:
            return None
        keep = st.last_good if st.last_good is not None and st.last_good not in st.failed else None
        return next_entry(
            name,
            self.base_path(name),
            self.options.role,
            st.target,
            labels,
            self.entries.get(name),
            obs.available if obs.kind == "up" else None,
            keep=keep,
        )

    # -- version switch: overlap, drain, auto (docs/agent.md "Version switch") ----------------------------------------

    def _version_bytes(self, name: str, version: int) -> int:
        """A version's size: the manifest's ``total_bytes``, else (no manifest read yet) its files on disk."""
        st = self.states[name]
        entry = st.manifest.versions.get(version) if st.manifest is not None else None
        if entry is not None:
            return entry.total_bytes
        root = self.cache.version_dir(name, version)
        return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.is_dir() else 0

    def _needs_drain(
        self, name: str, st: ModelState, observations: Mapping[str, Observation]
    ) -> tuple[int | None, int] | None:
        """``(serving version, target)`` when moving ``name`` to its target must drain: the target is not loaded,
        TF Serving holds another version of the model, and the mode is ``drain``, or ``auto`` and what TF Serving
        holds (every model, the target aside) plus the target, x ``MEMORY_FACTOR``, exceeds the budget."""
        obs = observations[name]
        target = st.target
        if self.switch.mode == "overlap" or obs.kind != "up" or target is None or target in obs.available:
            return None
        held = {v for v, state in obs.states.items() if state in HOLDING_MEMORY and v != target}
        entry = self.entries.get(name)
        if not held or (entry is not None and target in entry.versions):
            return None  # nothing to unload (a plain load), or an overlap switch already under way: let it finish
        serving = st.last_good if st.last_good in held else max(held)
        why = "--switch drain"
        if self.switch.mode == "auto":
            holding = sum(
                self._version_bytes(m, v)
                for m, o in observations.items()
                for v, state in o.states.items()
                if state in HOLDING_MEMORY and not (m == name and v == target)
            )
            need = int((holding + self._version_bytes(name, target)) * MEMORY_FACTOR)
            fits = need <= self.memory_budget
            why = f"{need} B (held + new, x {MEMORY_FACTOR:g}) {'fit' if fits else 'exceed'} {self.memory_budget} B"
            if self._decided.get(name) != (target, why):
                self._decided[name] = (target, why)
                how = "overlap" if fits else "drain"
                log.info("%s: switch %s -> %d by %s (--switch auto: %s)", name, serving, target, how, why)
            if fits:
                return None
        return serving, target

    def _plan_drain(self, observations: Mapping[str, Observation]) -> None:
        """Start, advance or end this VM's drain. One drain at a time for the whole VM: one lease, ``/healthz`` 503
        until every model in it serves its target; a model that needs a drain while one runs joins it."""
        need = {name: pair for name, st in self.states.items() if (pair := self._needs_drain(name, st, observations))}
        drain = self.drain
        if drain is None:
            self._waiting = {}
            if not need or self.leases is None:
                return
            self._waiting = need
            if not self._may_drain or time.monotonic() < self._next_lease_try:
                return
            lease = self._acquire()
            if lease is None:
                self._next_lease_try = time.monotonic() + self.options.poll_seconds
                log.info("waiting for a drain slot of fleet %s to switch %s; serving meanwhile", self.options.role,
                         ", ".join(f"{n} {f} -> {t}" for n, (f, t) in sorted(need.items())))  # fmt: skip
                return
            self.drain = Drain(time.time(), dict(need), lease, renewed=time.monotonic())
            self._waiting = {}
            log.warning(
                "draining (slot %d of fleet %s): /healthz answers 503 for %g s + %g s settle, then %s",
                lease.slot,
                self.options.role,
                self.switch.drain_wait_seconds,
                self.options.drain_settle_seconds,
                "; ".join(f"{n}: unload {f}, load {t}" for n, (f, t) in sorted(need.items())),
            )
            return
        if not self._may_drain:
            return  # --once: a drain in progress is left to the long-running agent
        for name, pair in need.items():
            if name not in drain.models:
                drain.models[name] = pair
                log.info("%s: joins the drain in progress (%s -> %d)", name, pair[0], pair[1])
        for name, (before, _) in list(drain.models.items()):
            target = self.states[name].target
            if target is not None and drain.models[name][1] != target:  # fell back, or retargeted
                drain.models[name] = (before, target)
        if not self._keep_lease(drain):
            return
        if not drain.out and time.time() >= drain.since + self.switch.drain_wait_seconds + (
            self.options.drain_settle_seconds
        ):
            drain.out = True
            log.info("drained: the load balancer sends nothing now; unloading %s", ", ".join(sorted(drain.models)))
        done = all(
            (t := self.states[name].target) is None or t in observations[name].available for name in drain.models
        )
        if done:
            self.drain = None
            if drain.lease is not None and self.leases is not None:
                try:
                    self.leases.release(drain.lease)
                except (ModelfleetError, OSError) as e:
                    log.warning("cannot release drain slot %d (it expires by itself): %s", drain.lease.slot, e)
            log.info("drain over: %s", ", ".join(f"{n} serves {self.states[n].target}" for n in sorted(drain.models)))

    def _acquire(self) -> Lease | None:
        assert self.leases is not None
        try:
            return self.leases.acquire()
        except (ModelfleetError, OSError) as e:
            log.warning("cannot take a drain slot of fleet %s: %s", self.options.role, e)
            return None

    def _keep_lease(self, drain: Drain) -> bool:
        """Hold (take back after a restart, renew) the drain's lease; ``False`` when the drain was called off: the
        lease is lost before anything was unloaded (the old versions keep serving, ``/healthz`` 200 again). Once
        models may have been unloaded the drain goes on without a lease: finishing it is the quickest way back."""
        assert self.leases is not None
        now = time.monotonic()
        if drain.lease is None:
            drain.lease = self._acquire()  # after a restart: the same holder takes its own slot back first
            if drain.lease is not None:
                drain.renewed = now
        elif now >= drain.renewed + self.leases.renew_interval_seconds:
            lease = drain.lease
            try:
                if self.leases.renew(lease):
                    drain.renewed = now
                else:
                    log.warning("drain slot %d was taken over (lease expired)", lease.slot)
                    drain.lease = None
            except (ModelfleetError, OSError) as e:
                log.warning("cannot renew drain slot %d (retrying): %s", lease.slot, e)
                if not self.leases.held(lease):
                    drain.lease = None
        if drain.lease is None and not drain.out:
            log.warning("drain called off before unloading (no drain slot); serving the old versions")
            self.drain = None
            self._next_lease_try = now + self.options.poll_seconds
            return False
        return True

    def _switch_entry(self, name: str, st: ModelState, obs: Observation) -> ModelEntry | None:
        """The config entry under the version switch: a model waiting for a drain, or in one before the load balancer
        has stopped sending, keeps serving its old version; once drained it leaves the config until TF Serving has
        unloaded it (dropping a model is the only way to unload first: server.cc hard-codes the availability-
        preserving policy, which loads the new version before it unloads the old), then the target alone comes back,
        labeled once AVAILABLE. TF Serving down: the start-up rules as ever."""
        drain = self.drain
        pair = drain.models.get(name) if drain is not None else self._waiting.get(name)
        if pair is None or obs.kind == "down":
            return self._entry(name, st, obs)
        if obs.kind == "unknown":
            return self.entries.get(name)  # nothing confirmed: leave the written entry as it is
        before = pair[0]
        if st.target is None:
            return None
        labels = st.manifest.labels if st.manifest is not None else {}
        role, base = self.options.role, self.base_path(name)
        if drain is None or not drain.out:
            if before is None or before not in obs.available:
                return self.entries.get(name)
            return next_entry(name, base, role, before, labels, self.entries.get(name), obs.available)
        if any(state in HOLDING_MEMORY and v != st.target for v, state in obs.states.items()):
            return None  # unloading: the model is out of the config until TF Serving holds none of its versions
        return next_entry(name, base, role, st.target, labels, None, obs.available)

    def _draining(self) -> dict[str, str]:
        """Per model in the drain, what ``/healthz`` says (503) until its target is AVAILABLE."""
        drain = self.drain
        if drain is None:
            return {}
        out: dict[str, str] = {}
        for name, (before, target) in drain.models.items():
            if drain.out:
                out[name] = f"draining: switching from version {before} to {target} (unload first, then load)"
            else:
                left = max(0.0, drain.since + self.switch.drain_wait_seconds + self.options.drain_settle_seconds
                           - time.time())  # fmt: skip
                out[name] = (
                    f"draining: leaving the load balancer ({left:.0f} s left) to switch from version {before} to "
                    f"{target} (both would not fit in memory)"
                )
        return out

    def shortfalls(self, reports: list[ModelReport]) -> list[str]:
        """Why a sync fell short of what the manifests ask (failures, refusals, models not at their desired version);
        empty when every model is served as desired."""
        reasons = [r.error or r.refused or "" for r in reports if r.error or r.refused]
        for st in self.states.values():
            if st.target is None or st.target != st.desired:
                why = st.degraded or st.problem
                reasons.append(why or f"{st.name}: serving version {st.target}, desired {st.desired}")
        return list(dict.fromkeys(reasons))

    # -- heartbeat -------------------------------------------------------------------------------------------------

    def _heartbeat_writer(self, interval: float) -> HeartbeatWriter:
        instance, zone = self.options.instance_id, self.options.zone
        if instance is None:
            instance, found_zone = default_identity()
            zone = zone or found_zone
        options = HeartbeatOptions(check_instance_id(instance), zone, interval, __version__)
        return HeartbeatWriter(
            self.store,
            self.options.role,
            options,
            snapshot=self.report,
            cache_bytes=self.cache.model_bytes,
            scrape=lambda: scrape(self.tfs.url),
            own_errors=self.tfs.own_errors,
            counters_file=self.root / COUNTERS_NAME,
            on_write=self.status.count_heartbeat,
        )

    def report(self) -> dict[str, HeartbeatModel]:
        """What each model's heartbeat says, but the counters and the cache size: desired, target, the version TF
        Serving serves under the fleet's label (its answer, and AVAILABLE at the last reconcile), TF Serving's states
        and failures. Cheap: the heartbeat compares it every 0.25 s, under the agent's lock."""
        with self._lock:
            draining = self._draining()
            out: dict[str, HeartbeatModel] = {}
            for name, st in self.states.items():
                obs = self._observations.get(name, Observation("unknown"))
                seen = self._label_seen.get(name)
                serving = seen if seen is not None and obs.states.get(seen) == AVAILABLE else None
                out[name] = HeartbeatModel(
                    desired=st.desired,
                    target=st.target,
                    serving=serving,
                    states=dict(obs.states),
                    failed={v: f.error for v, f in st.failed.items()},
                    degraded=st.degraded,
                    draining=draining.get(name),
                    problem=st.problem,
                )
            return out

    # -- loops -----------------------------------------------------------------------------------------------------

    def write_startup_config(self) -> bool:
        """Write TF Serving's config from the agent's state alone, without any store request: at boot, before TF
        Serving starts, the versions it has loaded on this VM before (rule 4), so a dead store costs its start
        nothing. ``False`` when the config could not be written."""
        self._may_drain = False
        try:
            return not self.tick(poll_store=False)
        finally:
            self._may_drain = True

    def run_once(self) -> bool:
        """The start-up config from the state (no store request), then one sync; ``True`` when every model is served
        as desired (the reasons otherwise are logged). It never starts or resumes a drain: a model that needs one
        keeps its old version until the long-running agent drains."""
        self.write_startup_config()
        self._may_drain = False
        try:
            reasons = self.shortfalls(self.tick())
        finally:
            self._may_drain = True
        for reason in reasons:
            log.error("not ready: %s", reason)
        return not reasons

    def run(self, stop: threading.Event) -> None:
        """Reconcile every tick until ``stop``, while a thread polls the store every ``poll_seconds`` (backing off
        while the store fails): a slow store poll never delays reconciling with TF Serving."""
        poller = threading.Thread(target=self._poll_loop, args=(stop,), name="modelfleet-store-poll", daemon=True)
        poller.start()
        beating = None
        if self.heartbeat is not None:
            beating = threading.Thread(
                target=self.heartbeat.run, args=(stop,), name="modelfleet-heartbeat", daemon=True
            )
            beating.start()
        try:
            self._reconcile_loop(stop)
        finally:
            stop.set()
            poller.join()  # a store request in flight ends within the store budget (a download: when it is done)
            if beating is not None:
                beating.join()  # its last heartbeat ("stopped") ends within the store budget

    def _reconcile_loop(self, stop: threading.Event) -> None:
        poll = self.options.poll_seconds
        while not stop.is_set():
            try:
                with self._lock:
                    self._reconcile_tick()
                    settled = self.settled()
            except Exception as e:  # the loop must outlive any one bad tick
                log.exception("reconcile failed unexpectedly")
                reports = [ModelReport(m, error=f"unexpected: {e!r}", transient=True) for m in self.states]
                self.status.record(reports, at=time.time(), bytes_fetched=self.cache.bytes_fetched)
                settled = False
            self.liveness.beat()
            deadline = time.monotonic() + (poll if settled else min(poll, TRANSITION_TICK_SECONDS))
            # wake early when a store poll finished (a new target) or on stop
            while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
                if self._wake.wait(min(left, 0.25)):
                    break
            self._wake.clear()

    def _poll_loop(self, stop: threading.Event) -> None:
        """Poll the store every ``poll_seconds``; after failed polls, back off exponentially (jittered, capped)."""
        poll = self.options.poll_seconds
        failures = 0
        while not stop.is_set():
            try:
                with self._lock:
                    reports = self._poll_store()
            except Exception as e:  # the loop must outlive any one bad poll
                log.exception("store poll failed unexpectedly")
                reports = [ModelReport(m, error=f"unexpected: {e!r}", transient=True) for m in self.states]
                self.status.record(reports, at=time.time(), bytes_fetched=self.cache.bytes_fetched)
            self._wake.set()
            if any(r.transient for r in reports):
                failures += 1
                delay = backoff_delay(failures, poll, self.options.max_backoff_seconds)
                log.warning("store or disk failing (%d in a row); next store poll in %.1f s", failures, delay)
            else:
                failures, delay = 0, poll
            stop.wait(delay)

    def settled(self) -> bool:
        """Every model's config is in its steady state (the target alone, labeled); otherwise a transition waits on
        TF Serving, and the loop ticks faster (local status requests only) to finish it."""
        if self.drain is not None or self._waiting or self._labels_unconfirmed():
            return False
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
                http = AgentHTTPServer(self.options.listen, self.status, self.tfs, liveness=self.liveness)
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
                name: {
                    "target": st.target,
                    "desired": st.desired,
                    "config": e.to_json() if (e := self.entries.get(name)) else None,
                    "last_good": st.last_good,
                    "proven": sorted(v for v in st.proven if self.cache.version_dir(name, v).is_dir()),
                    "failed": {
                        str(v): {"error": f.error, "at": f.at}
                        for v, f in sorted(st.failed.items())
                        if st.manifest is None or v in st.manifest.versions  # forgotten once pruned from the store
                    },
                    "crashes": {str(v): n for v, n in sorted(st.crashes.items())},
                }
                for name, st in sorted(self.states.items())
                if st.target is not None or st.failed or st.proven or st.crashes
            },
        }
        if self.drain is not None:  # resumed after a restart (docs/agent.md "Version switch")
            doc["drain"] = self.drain.to_json()
        write_atomic(self.state_path, json.dumps(doc, indent=1) + "\n")

    def _load_state(self) -> None:
        """Resume what the last run served (so a restart while the store is down keeps serving it), and what TF
        Serving proved and failed on this VM. Schema 1 (no ``proven``): the versions its config's labels named were
        AVAILABLE when it was written, so they are the proven ones."""
        try:
            doc = json.loads(self.state_path.read_text())
            schema = doc.get("schema")
            if schema not in (1, STATE_SCHEMA):
                log.warning("ignoring %s: schema %r is not one this agent reads", self.state_path, schema)
                return
            for name, saved in doc["models"].items():
                st = self.states.get(name)
                if st is None:
                    continue
                on_disk = set(self.cache.versions(name))
                config = saved.get("config")
                labeled = {int(v) for v in config["labels"].values()} if config else set()
                if schema == 1:
                    proven = labeled
                    last_good = max(labeled) if len(labeled) == 1 else None
                else:
                    proven = {int(v) for v in saved.get("proven", [])}
                    last_good = None if saved.get("last_good") is None else int(saved["last_good"])
                    failed = saved.get("failed", {})
                    st.failed = {int(v): LoadFailure(str(f["error"]), float(f["at"])) for v, f in failed.items()}
                    st.crashes = {int(v): int(n) for v, n in saved.get("crashes", {}).items()}
                    st.desired = None if saved.get("desired") is None else int(saved["desired"])
                st.proven = (proven & on_disk) - st.failed.keys()
                st.last_good = last_good if last_good in st.proven else None
                target = saved.get("target")
                if target is not None and int(target) in on_disk and int(target) not in st.failed:
                    st.target, st.problem = int(target), None
                elif st.last_good is not None:
                    st.target, st.problem = st.last_good, None
                failure = None if st.desired is None else st.failed.get(st.desired)
                if st.desired is not None and failure is not None and st.target not in (None, st.desired):
                    st.degraded = degraded_reason(name, st.desired, failure.error, st.target)
                if config:
                    versions = tuple(int(v) for v in config["versions"] if int(v) in on_disk)
                    labels = {str(k): int(v) for k, v in config["labels"].items() if int(v) in versions}
                    if versions:
                        self.entries[name] = ModelEntry(name, self.base_path(name), versions, labels)
                        self.cache.mark_in_use(name, versions)  # what the config on disk names: never evicted
            saved_drain = doc.get("drain")
            if saved_drain and self.leases is not None:
                models = {
                    str(n): (None if m["from"] is None else int(m["from"]), int(m["to"]))
                    for n, m in saved_drain["models"].items()
                    if n in self.states
                }
                if models:
                    self.drain = Drain(float(saved_drain["since"]), models, out=bool(saved_drain["out"]))
                    log.warning("resuming a drain (%s); its lease is taken back at the next tick", saved_drain)
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            log.warning("ignoring unreadable %s: %s", self.state_path, e)
