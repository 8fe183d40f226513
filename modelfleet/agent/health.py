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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from model_export.constants import HEALTH_PATH, METRICS_PATH
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
    metric("modelfleet_agent_bytes_fetched_total", "counter", "Bytes downloaded from the store.", [("", fetched)])
    return "\n".join(out) + "\n"


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

    def __init__(self, address: tuple[str, int], status: AgentStatus, tfs: TfsClient) -> None:
        super().__init__(address, _Handler)
        self.status = status
        self.tfs = tfs
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
