"""The agent's heartbeat: one PUT of ``layout.heartbeat_key(fleet, instance)`` every ``--heartbeat`` seconds, and one
as soon as what the VM serves changes (at most one a second), so ``--wait`` learns of a switch within a second or two
rather than an interval. Nothing else is written to the store. The document is ``model_export.heartbeat.Heartbeat``.

The request counters come from TF Serving's own Prometheus page (:mod:`modelfleet.agent.tfs_metrics`), scraped at
each heartbeat; a heartbeat whose scrape failed still goes out, with the samples it had. They count from TF
Serving's start, so the writer keeps, per TF Serving process, ``since`` (when this TF Serving was first seen) and the
status polls of the agent it answered with an error (taken off its error counts); both survive an agent restart in
``<root>/.agent-counters.json``, so an agent restarted under a running TF Serving neither calls that a TF Serving
restart nor counts its predecessor's polls as client errors. A TF Serving restart is what the agent's reconcile saw
(down, then up: :meth:`HeartbeatWriter.tfs_restarted`) or, if it came and went between two looks, counters that went
down.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from model_export import layout
from model_export.errors import ModelfleetError
from model_export.heartbeat import (
    MAX_SAMPLES,
    SAMPLES_SECONDS,
    TFS_LATENCY_BOUNDS_US,
    Heartbeat,
    ModelReport,
    Sample,
    standard_bounds,
)
from model_export.store import Store
from modelfleet.agent.durable import write_atomic
from modelfleet.agent.tfs_metrics import Scrape, without_own

log = logging.getLogger("modelfleet.agent")
MIN_GAP_SECONDS = 1.0  # between two heartbeats written because the state changed
CHECK_SECONDS = 0.25  # how often the state is compared with the last one written
COUNTERS_NAME = ".agent-counters.json"  # in the model root
OwnErrors = dict[str, dict[str, int]]  # model -> status code -> the agent's requests TF Serving answered so


@dataclass(frozen=True)
class HeartbeatOptions:
    instance: str
    zone: str | None
    interval: float
    agent_version: str


class HeartbeatWriter:
    """Builds and writes heartbeats. ``snapshot`` gives the per-model state (no samples, no cache size; cheap: it is
    compared every ``CHECK_SECONDS``); ``cache_bytes`` a model's bytes on disk (walked at write time only);
    ``scrape`` TF Serving's counters (or ``None``); ``own_errors`` the status polls TF Serving answered with an
    error, per model, since the agent started (``TfsClient.own_errors``)."""

    def __init__(
        self,
        store: Store,
        fleet: str,
        options: HeartbeatOptions,
        *,
        snapshot: Callable[[], Mapping[str, ModelReport]],
        cache_bytes: Callable[[str], int | None],
        scrape: Callable[[], Scrape | None],
        own_errors: Callable[[], Mapping[str, Mapping[str, int]]],
        counters_file: Path | None = None,
        clock: Callable[[], float] = time.time,
        on_write: Callable[[bool, float], None] | None = None,
    ) -> None:
        self.store = store
        self.fleet = fleet
        self.options = options
        self.key = layout.heartbeat_key(fleet, options.instance)
        self._snapshot = snapshot
        self._cache_bytes = cache_bytes
        self._scrape = scrape
        self._own_errors = own_errors
        self._clock = clock
        self._on_write = on_write or (lambda ok, at: None)
        self.started = clock()
        self._samples: dict[str, list[Sample]] = {}
        self._bounds: tuple[float, ...] = TFS_LATENCY_BOUNDS_US  # as reported
        self._scraped_bounds: tuple[float, ...] = ()  # as TF Serving printed them (the page's keys)
        self._written_state: str | None = None
        self.writes = 0
        self.failures = 0
        self._failing = 0  # failed writes in a row
        self.last_written: float | None = None
        # Per TF Serving process (reset by tfs_restarted or by counters that went down):
        self._lock = threading.Lock()
        self._since: float | None = None  # when the agent first saw this TF Serving answer
        self._last_total: int | None = None  # all its request counts at the last scrape (they never go down)
        self._carry: OwnErrors = {}  # its error answers to requests of an earlier agent on this VM
        self._own_base: OwnErrors = {}  # own_errors() when this TF Serving was first seen by this agent
        self._counters_file = counters_file
        self._load_counters()

    # -- TF Serving's counters -----------------------------------------------------------------------------------

    def _load_counters(self) -> None:
        if self._counters_file is None:
            return
        try:
            doc = json.loads(self._counters_file.read_text())
            since, total = doc["since"], doc["total"]
            carry = {str(m): {str(c): int(n) for c, n in codes.items()} for m, codes in doc["own_errors"].items()}
            if not isinstance(since, float | int) or not isinstance(total, int):
                raise TypeError("since or total")
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            log.warning("ignoring unreadable %s: %s", self._counters_file, e)
            return
        self._since, self._last_total, self._carry = float(since), total, carry

    def _save_counters(self) -> None:
        if self._counters_file is None or self._since is None or self._last_total is None:
            return
        doc = {"since": self._since, "total": self._last_total, "own_errors": self._own()}
        try:
            write_atomic(self._counters_file, json.dumps(doc) + "\n")
        except OSError as e:
            log.warning("cannot write %s: %s", self._counters_file, e)

    def _own(self) -> OwnErrors:
        """Per model and code, the agent's requests this TF Serving answered with an error (an earlier agent's
        included)."""
        now = self._own_errors()
        out: OwnErrors = {}
        for m in {*now, *self._carry}:
            codes = {*now.get(m, {}), *self._carry.get(m, {})}
            out[m] = {
                c: self._carry.get(m, {}).get(c, 0) + now.get(m, {}).get(c, 0) - self._own_base.get(m, {}).get(c, 0)
                for c in codes
            }
        return out

    def tfs_restarted(self, own_before: Mapping[str, Mapping[str, int]]) -> None:
        """The agent saw TF Serving down, then answering: a new process, whose counters start from zero. The status
        polls counted after ``own_before`` (``own_errors()`` before the requests that found it) were its answers."""
        with self._lock:
            self._since = self._clock()
            self._last_total = None
            self._carry = {}
            self._own_base = {m: dict(codes) for m, codes in own_before.items()}

    def _sample(self, now: float, followed: set[str]) -> None:
        scraped = self._scrape()
        if scraped is None:
            return
        with self._lock:
            if self._last_total is not None and scraped.total < self._last_total:
                log.info("TF Serving's request counters went down: it restarted; counting from zero")
                self._since, self._carry = None, {}
                self._own_base = {m: dict(codes) for m, codes in self._own_errors().items()}
            if self._since is None:
                self._since = now
            self._last_total = scraped.total
            since, own = self._since, self._own()
            self._save_counters()
        if scraped.bounds:  # reported as the standard constant when they are TF Serving's usual ones (printed %g)
            self._scraped_bounds = scraped.bounds
            self._bounds = TFS_LATENCY_BOUNDS_US if standard_bounds(scraped.bounds) else scraped.bounds
        for model, counters in scraped.models.items():
            if model not in followed:
                continue  # clients may ask TF Serving for any name: only the models this VM serves are kept
            sample = Sample(
                now,
                since,
                counters.ok,
                without_own(counters.errors, own.get(model, {})),
                counters.latency(self._scraped_bounds) if self._scraped_bounds else (),  # () until one succeeds
            )
            samples = self._samples.setdefault(model, [])
            # Heartbeats written because the state changed come close together: keep one sample per half interval.
            if len(samples) > 1 and now - samples[-2].at < self.options.interval / 2:
                samples[-1] = sample
            else:
                samples.append(sample)
            del samples[: max(0, len(samples) - MAX_SAMPLES)]
            while len(samples) > 1 and now - samples[0].at > SAMPLES_SECONDS:
                del samples[0]

    # -- the document and its writes -----------------------------------------------------------------------------

    @staticmethod
    def _state_of(models: Mapping[str, ModelReport]) -> str:
        return json.dumps({n: m.to_json() for n, m in sorted(models.items())}, sort_keys=True)

    def changed(self) -> bool:
        """What the VM serves differs from the last heartbeat written."""
        return self._state_of(self._snapshot()) != self._written_state

    def build(self, *, stopping: bool = False) -> tuple[Heartbeat, str]:
        now = self._clock()
        models = dict(self._snapshot())
        state = self._state_of(models)
        self._sample(now, set(models))
        full = {
            n: replace(m, cache_bytes=self._cache_bytes(n), samples=tuple(self._samples.get(n, ())))
            for n, m in models.items()
        }
        beat = Heartbeat(
            instance=self.options.instance,
            fleet=self.fleet,
            started=self.started,
            at=now,
            interval=self.options.interval,
            zone=self.options.zone,
            agent_version=self.options.agent_version,
            stopping=stopping,
            latency_bounds_us=self._bounds,
            models=full,
        )
        return beat, state

    def write(self, *, stopping: bool = False) -> bool:
        """Build and write one heartbeat; ``False`` (logged, counted) when the store refused it."""
        beat, state = self.build(stopping=stopping)
        try:
            self.store.write(self.key, beat.dumps())
        except (ModelfleetError, OSError) as e:
            self.failures += 1
            self._failing += 1
            self._on_write(False, beat.at)
            log.warning("heartbeat not written to %s/%s: %s", self.store.uri, self.key, e)
            return False
        self.writes += 1
        self._failing = 0
        self.last_written = beat.at
        self._written_state = state
        self._on_write(True, beat.at)
        return True

    def _gap(self) -> float:
        """The least time between two writes: ``MIN_GAP_SECONDS``, doubled by each failure in a row up to the
        interval (a store that refuses is not asked every second)."""
        return min(self.options.interval, MIN_GAP_SECONDS * 2.0 ** min(self._failing, 30))

    def run(self, stop: threading.Event) -> None:
        """A heartbeat every interval, and one as soon as the state changes (at most one per ``_gap()``); after
        ``stop``, a last one saying the agent stopped, unless the store refused the last one (a dead store would
        hold the agent's exit for one more store budget)."""
        next_due = 0.0
        last_try = -MIN_GAP_SECONDS
        while not stop.is_set():
            now = time.monotonic()
            try:
                waited = now - last_try >= self._gap()
                if waited and (now >= next_due or self.changed()):
                    last_try = now
                    ok = self.write()
                    next_due = now + (self.options.interval if ok else self._gap())
            except Exception:  # the heartbeat must outlive any one bad tick
                log.exception("heartbeat failed unexpectedly")
                next_due = now + self.options.interval
            stop.wait(CHECK_SECONDS)
        if self._failing:
            log.warning("no last heartbeat: the store refused the one before")
            return
        try:
            self.write(stopping=True)
        except Exception:
            log.exception("last heartbeat failed")
