"""What the sync loop publishes for the HTTP endpoint: per-model versions and problems, and the counters."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from modelfleet.agent.sync import ModelReport, ModelState


@dataclass(frozen=True)
class ModelView:
    name: str
    desired: int | None
    target: int | None
    problem: str | None
    # Versions the written config's labels name: during a transition, the version still serving while the target
    # loads (labels move only once the target is AVAILABLE).
    labeled: frozenset[int] = frozenset()
    # The desired version failed to load and another one is the target: "digits v5 failed to load (…); serving v4".
    degraded: str | None = None
    desired_failed: bool = False  # the desired version is one TF Serving failed to load (degraded, or nothing served)
    # The VM is draining to switch this model (``--switch drain``/``auto``): health is 503 with this text until TF
    # Serving reports the target AVAILABLE.
    draining: str | None = None

    @classmethod
    def of(cls, st: ModelState, labeled: Iterable[int] = (), draining: str | None = None) -> ModelView:
        failed = st.desired is not None and st.desired in st.failed
        return cls(st.name, st.desired, st.target, st.problem, frozenset(labeled), st.degraded, failed, draining)


class AgentStatus:
    """Written by the loop thread, read by the HTTP threads; every access holds the lock."""

    def __init__(self, role: str, models: Iterable[str]) -> None:
        self.role = role
        self._lock = threading.Lock()
        self._models = {m: ModelView(m, None, None, "not synced yet") for m in models}
        self.last_success: float | None = None
        self.sync_failures: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.local_disk_errors: Counter[str] = Counter()
        self.disk_too_small: dict[str, bool] = {}  # per model, as of its last store poll
        self.failed_loads: Counter[str] = Counter()  # versions TF Serving failed to load, per model
        self.bytes_fetched = 0
        self.heartbeats: Counter[str] = Counter()  # heartbeat writes by result ("ok", "failed")
        self.last_heartbeat: float | None = None  # Unix time of the last heartbeat the store took

    def models(self) -> list[ModelView]:
        with self._lock:
            return list(self._models.values())

    def publish(
        self,
        states: Mapping[str, ModelState],
        labeled: Mapping[str, Iterable[int]] | None = None,
        draining: Mapping[str, str] | None = None,
    ) -> None:
        labeled = labeled or {}
        draining = draining or {}
        with self._lock:
            self._models = {
                name: ModelView.of(st, labeled.get(name, ()), draining.get(name)) for name, st in states.items()
            }

    def record(self, reports: Iterable[ModelReport], *, at: float, bytes_fetched: int) -> None:
        """Count one sync's outcome. A sync succeeds when every manifest was read and every fetch that ran worked
        (a refused version is a correct outcome, counted apart)."""
        ok = True
        reports = list(reports)
        with self._lock:
            for r in reports:
                if r.error:
                    self.sync_failures[r.model] += 1
                    ok = False
                if r.refused:
                    self.refused[r.model] += 1
                if r.local_disk:
                    self.local_disk_errors[r.model] += 1
            for model in {r.model for r in reports}:
                self.disk_too_small[model] = any(r.disk_too_small for r in reports if r.model == model)
            self.bytes_fetched = bytes_fetched
            if ok:
                self.last_success = at

    def count_failed_load(self, model: str) -> None:
        with self._lock:
            self.failed_loads[model] += 1

    def load_failures(self) -> dict[str, int]:
        """Versions TF Serving failed to load, per model, since the agent started."""
        with self._lock:
            return dict(self.failed_loads)

    def counters(self) -> tuple[float | None, dict[str, int], dict[str, int], int]:
        with self._lock:
            return self.last_success, dict(self.sync_failures), dict(self.refused), self.bytes_fetched

    def disk(self) -> tuple[dict[str, int], dict[str, bool]]:
        """``(local disk errors per model, whether the disk is too small for each model's desired version)``."""
        with self._lock:
            return dict(self.local_disk_errors), dict(self.disk_too_small)

    def count_heartbeat(self, ok: bool, at: float) -> None:
        with self._lock:
            self.heartbeats["ok" if ok else "failed"] += 1
            if ok:
                self.last_heartbeat = at

    def heartbeat_counters(self) -> tuple[dict[str, int], float | None]:
        with self._lock:
            return dict(self.heartbeats), self.last_heartbeat
