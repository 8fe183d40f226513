"""The agent's heartbeat: one PUT of ``layout.heartbeat_key(fleet, instance)`` every ``--heartbeat`` seconds, and one
as soon as what the VM serves changes (at most one a second), so ``--wait`` learns of a switch within a second or two
rather than an interval. Nothing else is written. The document is ``model_export.heartbeat.Heartbeat``.

The request counters come from TF Serving's own Prometheus page (:mod:`modelfleet.agent.tfs_metrics`), scraped at
each heartbeat; a heartbeat whose scrape failed still goes out, with the samples it had.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from model_export import layout
from model_export.errors import ModelfleetError
from model_export.heartbeat import (
    MAX_SAMPLES,
    SAMPLES_SECONDS,
    TFS_LATENCY_BOUNDS_US,
    Heartbeat,
    ModelReport,
    Sample,
)
from model_export.store import Store
from modelfleet.agent.tfs_metrics import Scrape, without_own

log = logging.getLogger("modelfleet.agent")
MIN_GAP_SECONDS = 1.0  # between two heartbeats written because the state changed
CHECK_SECONDS = 0.25  # how often the state is compared with the last one written


@dataclass(frozen=True)
class HeartbeatOptions:
    instance: str
    zone: str | None
    interval: float
    agent_version: str


class HeartbeatWriter:
    """Builds and writes heartbeats. ``snapshot`` gives the per-model state (no samples) under the agent's lock;
    ``scrape`` TF Serving's counters (or ``None``); ``own_errors`` the failed status polls the agent made per model
    since TF Serving started; ``since`` when the agent first saw this TF Serving answer."""

    def __init__(
        self,
        store: Store,
        fleet: str,
        options: HeartbeatOptions,
        *,
        snapshot: Callable[[], Mapping[str, ModelReport]],
        scrape: Callable[[], Scrape | None],
        own_errors: Callable[[], Mapping[str, int]],
        since: Callable[[], float | None],
        clock: Callable[[], float] = time.time,
        on_write: Callable[[bool, float], None] | None = None,
    ) -> None:
        self.store = store
        self.fleet = fleet
        self.options = options
        self.key = layout.heartbeat_key(fleet, options.instance)
        self._snapshot = snapshot
        self._scrape = scrape
        self._own_errors = own_errors
        self._since = since
        self._clock = clock
        self._on_write = on_write or (lambda ok, at: None)
        self.started = clock()
        self._samples: dict[str, list[Sample]] = {}
        self._bounds: tuple[float, ...] = TFS_LATENCY_BOUNDS_US
        self._written_state: str | None = None
        self.writes = 0
        self.failures = 0
        self.last_written: float | None = None

    @staticmethod
    def _state_of(models: Mapping[str, ModelReport]) -> str:
        return json.dumps({n: m.to_json() for n, m in sorted(models.items())}, sort_keys=True)

    def changed(self) -> bool:
        """What the VM serves differs from the last heartbeat written."""
        return self._state_of(self._snapshot()) != self._written_state

    def _sample(self, now: float) -> None:
        scraped = self._scrape()
        if scraped is None:
            return
        if scraped.bounds:
            self._bounds = scraped.bounds
        since, own = self._since(), self._own_errors()
        for model, counters in scraped.models.items():
            sample = Sample(
                now, since, counters.ok, without_own(counters.errors, own.get(model, 0)), counters.latency(self._bounds)
            )
            samples = self._samples.setdefault(model, [])
            # Heartbeats written because the state changed come close together: keep one sample per half interval.
            if samples and now - samples[-1].at < self.options.interval / 2 and len(samples) > 1:
                samples[-1] = sample
            else:
                samples.append(sample)
            del samples[: max(0, len(samples) - MAX_SAMPLES)]
            while len(samples) > 1 and now - samples[0].at > SAMPLES_SECONDS:
                del samples[0]

    def build(self, *, stopping: bool = False) -> tuple[Heartbeat, str]:
        now = self._clock()
        models = dict(self._snapshot())
        state = self._state_of(models)
        self._sample(now)
        with_samples = {n: replace(m, samples=tuple(self._samples.get(n, ()))) for n, m in models.items()}
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
            models=with_samples,
        )
        return beat, state

    def write(self, *, stopping: bool = False) -> bool:
        """Build and write one heartbeat; ``False`` (logged, counted) when the store refused it."""
        beat, state = self.build(stopping=stopping)
        try:
            self.store.write(self.key, beat.dumps())
        except (ModelfleetError, OSError) as e:
            self.failures += 1
            self._on_write(False, beat.at)
            log.warning("heartbeat not written to %s/%s: %s", self.store.uri, self.key, e)
            return False
        self.writes += 1
        self.last_written = beat.at
        self._written_state = state
        self._on_write(True, beat.at)
        return True

    def run(self, stop: threading.Event) -> None:
        """A heartbeat every interval, and one as soon as the state changes (at most one per ``MIN_GAP_SECONDS``);
        after ``stop``, a last one saying the agent stopped."""
        next_due = 0.0
        last_try = -MIN_GAP_SECONDS
        while not stop.is_set():
            now = time.monotonic()
            try:
                due = now >= next_due or (now - last_try >= MIN_GAP_SECONDS and self.changed())
                if due:
                    last_try = now
                    self.write()
                    next_due = now + self.options.interval
            except Exception:  # the heartbeat must outlive any one bad tick
                log.exception("heartbeat failed unexpectedly")
                next_due = now + self.options.interval
            stop.wait(CHECK_SECONDS)
        try:
            self.write(stopping=True)
        except Exception:
            log.exception("last heartbeat failed")
