"""The agent's HTTP endpoint: ``HEALTH_PATH`` for load balancers and ``METRICS_PATH`` for Prometheus.

Health is 200 when TF Serving reports, for every model, the version the agent drives it to as AVAILABLE, or, while
a label move is pending, the version the config's labels still name (the one serving until the new version is
AVAILABLE); otherwise 503 with one reason per line. The status code carries the verdict because AWS target-group
health checks can only match status codes; TF Serving's own ``GET /v1/models/NAME`` answers 200 even while a version
is LOADING.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from model_export.constants import HEALTH_PATH, LIVE_PATH, METRICS_PATH
from model_export.errors import ServingError
from modelfleet.agent.status import AgentStatus
from modelfleet.agent.tfs import AVAILABLE, TfsClient, TfsUnreachable

log = logging.getLogger("modelfleet.agent")
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def check_health(status: AgentStatus, tfs: TfsClient) -> tuple[bool, list[str]]:
    """``(healthy, lines)``: one line per model, plus TF Serving's failure when it cannot be asked."""
    ok = True
    lines: list[str] = []
    tfs_down: str | None = None
    for view in sorted(status.models(), key=lambda v: v.name):
        problem = (view.problem or "").removeprefix(f"{view.name}: ")
        if view.target is None:
            ok = False
            lines.append(f"{view.name}: no version to serve yet: {problem or 'not synced yet'}")
            continue
        if tfs_down is None:
            try:
                states = tfs.model_status(view.name)
            except TfsUnreachable as e:
                tfs_down = str(e)
        if tfs_down is not None:
            ok = False
            lines.append(f"{view.name}: version {view.target} not confirmed: {tfs_down}")
            continue
        state = states.get(view.target)
        serving = sorted(v for v in view.labeled if v != view.target and states.get(v) == AVAILABLE)
        if state == AVAILABLE:
            lines.append(f"{view.name}: version {view.target} {AVAILABLE}")
        elif view.draining:
            # --switch drain (or auto, when both versions would not fit): this VM leaves the load balancer, unloads
            # the old version, then loads the target; readiness only comes back once the target is AVAILABLE.
            ok = False
            lines.append(f"{view.name}: {view.draining}; version {view.target} is {state or 'not loaded yet'}")
        elif serving:
            # Mid-transition: every VM of the fleet moves at once, so answering 503 here would take the whole fleet
            # out of the load balancer (and autohealing would recreate it) on every label move, or for good if the
            # new version cannot load. The labeled version keeps serving; the body says what is pending.
            lines.append(
                f"{view.name}: version {serving[-1]} {AVAILABLE} and serving; version {view.target} is "
                f"{state or 'not loaded yet'}, labels move to it once it is {AVAILABLE}"
            )
        else:
            ok = False
            lines.append(f"{view.name}: version {view.target} is {state or 'unknown to TF Serving'}, not {AVAILABLE}")
        if view.degraded:
            # The desired version failed to load; the last good one serves. It fails alike on every VM of the fleet,
            # so it does not take the VM out of service (a 503 would empty the load balancer).
            lines.append(f"degraded: {view.degraded}")
        if problem:
            lines.append(f"{view.name}: note: {problem}")
    return ok, lines


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(status: AgentStatus) -> str:
    last, failures, refused, fetched = status.counters()
    disk_errors, too_small = status.disk()
    views = sorted(status.models(), key=lambda v: v.name)
    out: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, int | float]]) -> None:
        out.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"])
        out.extend(f"{name}{labels} {value!r}" for labels, value in samples)

    def per_model(values: dict[str, int]) -> list[tuple[str, int | float]]:
        return [(f'{{model="{_label(v.name)}"}}', values.get(v.name, 0)) for v in views]

    metric("modelfleet_agent_up", "gauge", "1 while the agent runs.", [(f'{{role="{_label(status.role)}"}}', 1)])
    metric(
        "modelfleet_agent_last_sync_success_timestamp_seconds",
        "gauge",
        "Unix time of the last sync in which every manifest was read and every fetch worked (0: none yet).",
        [("", float(last or 0.0))],
    )
    metric(
        "modelfleet_agent_desired_version",
        "gauge",
        "Version the manifest's labels ask this fleet's role to serve (0: none).",
        per_model({v.name: v.desired or 0 for v in views}),
    )
    metric(
        "modelfleet_agent_current_version",
        "gauge",
        "Complete local version the TF Serving config drives to; health checks this one (0: none).",
        per_model({v.name: v.target or 0 for v in views}),
    )
    metric("modelfleet_agent_sync_failures_total", "counter", "Syncs of a model that failed.", per_model(failures))
    metric(
        "modelfleet_agent_refused_versions_total",
        "counter",
        "Versions refused because the store's copy failed verification (checksum, size or missing file).",
        per_model(refused),
    )
    metric(
        "modelfleet_agent_local_disk_errors_total",
        "counter",
        "Fetches that failed on the local disk (no space, no free inodes, over quota, read-only, I/O error); "
        "retried, the version is not refused.",
        per_model(disk_errors),
    )
    metric(
        "modelfleet_agent_disk_too_small",
        "gauge",
        "1 while the local disk cannot hold the desired version even with every cached version not in use evicted.",
        per_model({m: int(v) for m, v in too_small.items()}),
    )
    metric(
        "modelfleet_agent_degraded",
        "gauge",
        "1 while the desired version is one TF Serving failed to load (an earlier version serves, or none).",
        per_model({v.name: int(v.desired_failed) for v in views}),
    )
    metric(
        "modelfleet_agent_failed_loads_total",
        "counter",
        "Versions TF Serving failed to load (END with an error, or it stopped while loading them); not listed again.",
        per_model(status.load_failures()),
    )
    metric("modelfleet_agent_bytes_fetched_total", "counter", "Bytes downloaded from the store.", [("", fetched)])
    beats, last_beat = status.heartbeat_counters()
    metric(
        "modelfleet_agent_heartbeats_total",
        "counter",
        "Fleet-status heartbeats written to the store, by result (a failed one is tried again at the next).",
        [(f'{{result="{r}"}}', beats.get(r, 0)) for r in ("ok", "failed")],
    )
    metric(
        "modelfleet_agent_last_heartbeat_timestamp_seconds",
        "gauge",
        "Unix time of the last heartbeat the store took (0: none yet).",
        [("", float(last_beat or 0.0))],
    )
    return "\n".join(out) + "\n"


# --- liveness (LIVE_PATH): what replaces VMs acts on it (GCP autohealing, the AWS VM's own health report) ----------
# Independent of readiness (HEALTH_PATH: draining, degraded, a version that cannot load): those are the same on every
# VM of a fleet or pass by themselves, and a new VM would not help. 503 only when:
# - starting: this VM has never been ready (HEALTH_PATH 200) yet. A VM that never gets there is replaced after the
#   group's initial delay, and a rolling update waits for new VMs to be ready before it replaces old ones. Latched
#   once ready, in ``marker`` (the model root) when given, so an agent restart (even mid-drain) does not undo it;
#   a new VM has a new disk;
# - the agent loop stopped beating (``beat``) for ``max_silence_seconds``;
# - TF Serving answered nothing (not listening, or no HTTP answer at all) for ``tfs_down_seconds``: systemd restarts
#   it within seconds, so this long means Docker, the GPU or the disk is broken, or it crash-loops.
LIVE_MARKER = ".agent-live"  # in the model root
TFS_DOWN_SECONDS = 600.0  # a TF Serving restart reloads every model before it listens: allow for big ones


def liveness_window(poll_seconds: float) -> float:
    """How long the loop may go without a beat: a few polls, never under 5 minutes (a tick polls each model within
    the store budget, and beats during long downloads)."""
    return max(5 * poll_seconds, 300.0)


class Liveness:
    """What ``LIVE_PATH`` answers from. The loop calls ``beat()`` after every tick and while a long download makes
    progress; without ``max_silence_seconds`` the loop is not watched (a server nobody wires a heartbeat into)."""

    def __init__(
        self,
        *,
        max_silence_seconds: float | None = None,
        tfs_down_seconds: float = TFS_DOWN_SECONDS,
        marker: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_silence_seconds = max_silence_seconds
        self.tfs_down_seconds = tfs_down_seconds
        self.marker = marker
        self._clock = clock
        self._lock = threading.Lock()
        self._beat = self._tfs_seen = clock()
        self._ready = marker is not None and marker.exists()

    def beat(self) -> None:
        with self._lock:
            self._beat = self._clock()

    def _latch_ready(self) -> None:
        self._ready = True
        if self.marker is not None:
            try:
                self.marker.touch()
            except OSError as e:
                log.warning("cannot write %s: %s", self.marker, e)

    def check(self, status: AgentStatus, tfs: TfsClient) -> tuple[bool, list[str]]:
        """``(live, lines)``."""
        ok, lines = True, []
        now = self._clock()
        with self._lock:
            silent = now - self._beat
        if self.max_silence_seconds is not None:
            ok = silent <= self.max_silence_seconds
            lines.append(
                f"agent loop: last tick {silent:.0f} s ago"
                + ("" if ok else f", over the {self.max_silence_seconds:.0f} s limit")
            )
        models = sorted(v.name for v in status.models())
        why: str | None = None
        if models:
            try:
                tfs.model_status(models[0])
            except TfsUnreachable as e:
                cause = e.__cause__
                if not (isinstance(cause, ServingError) and cause.http_status is not None):
                    why = str(e)  # no HTTP answer at all (an HTTP error still means the server runs)
        with self._lock:
            if why is None:
                self._tfs_seen = now
            down = now - self._tfs_seen
        if why is None:
            lines.append("TF Serving: answering")
        elif down > self.tfs_down_seconds:
            ok = False
            lines.append(f"TF Serving: no answer for {down:.0f} s, over the {self.tfs_down_seconds:.0f} s limit: {why}")
        else:
            lines.append(f"TF Serving: no answer for {down:.0f} s (limit {self.tfs_down_seconds:.0f} s): {why}")
        if not self._ready and check_health(status, tfs)[0]:
            self._latch_ready()
        if not self._ready:
            ok = False
            lines.append(f"starting: not ready ({HEALTH_PATH}) since this VM started")
        return ok, lines


class _Handler(BaseHTTPRequestHandler):
    server: AgentHTTPServer

    def _answer(self, code: int, body: str, content_type: str, *, head: bool) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _route(self, *, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == HEALTH_PATH:
            ok, lines = check_health(self.server.status, self.server.tfs)
            body = "\n".join(["ok" if ok else "unhealthy", *lines]) + "\n"
            self._answer(200 if ok else 503, body, "text/plain; charset=utf-8", head=head)
        elif path == LIVE_PATH:
            ok, lines = self.server.liveness.check(self.server.status, self.server.tfs)
            body = "\n".join(["live" if ok else "not live", *lines]) + "\n"
            self._answer(200 if ok else 503, body, "text/plain; charset=utf-8", head=head)
        elif path == METRICS_PATH:
            self._answer(200, render_metrics(self.server.status), PROMETHEUS_TEXT, head=head)
        else:
            self._answer(404, f"not found; try {HEALTH_PATH} or {METRICS_PATH}\n", "text/plain", head=head)

    def do_GET(self) -> None:
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._route(head=True)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("http %s " + format, self.client_address[0], *args)


class AgentHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], status: AgentStatus, tfs: TfsClient, liveness: Liveness | None = None
    ) -> None:
        super().__init__(address, _Handler)
        self.status = status
        self.tfs = tfs
        self.liveness = liveness or Liveness()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="agent-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join()
