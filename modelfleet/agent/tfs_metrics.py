"""Read TF Serving's own request counters from its Prometheus endpoint (``TFS_METRICS_PATH`` on the REST port,
enabled by the monitoring config the bootstrap writes).

TF Serving 2.20 exports (servables/tensorflow/util.cc, util/prometheus_exporter.cc):

* ``:tensorflow:serving:request_count{model_name, status}``: every request, by status code name ("OK",
  "INVALID_ARGUMENT", ...); on REST that includes model status and metadata GETs (http_server.cc ProcessRequest),
  so the agent's own status polls are in it.
* ``:tensorflow:serving:request_latency{model_name, API, entrypoint}``: a histogram in microseconds
  (``Buckets::Exponential(10, 1.8, 33)``), recorded for successful requests only.

So a model's successful inference requests are the ``_count`` of ``request_latency`` over the inference APIs, and its
failed requests the non-OK ``request_count`` minus the agent's own requests TF Serving answered with an error
(status polls, label checks: ``TfsClient.own_errors``), code by code.
"""

from __future__ import annotations

import math
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field

from model_export.constants import TFS_METRICS_PATH

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
# The API label of inference requests: REST's method names (http_rest_api_handler.cc) and gRPC's
# (prediction_service_impl.cc). Status and metadata requests are not inference.
INFERENCE_APIS = frozenset({"predict", "classify", "regress", "Predict", "Classify", "Regress", "MultiInference"})
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass
class ModelCounters:
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    cumulative: dict[float, int] = field(default_factory=dict)  # le -> cumulative count (inf for +Inf)

    def latency(self, bounds: tuple[float, ...]) -> tuple[int, ...]:
        """Per-bucket counts (not cumulative) at ``bounds`` and one above them."""
        out: list[int] = []
        previous = 0
        for le in (*bounds, math.inf):
            at = self.cumulative.get(le, previous)
            out.append(max(0, at - previous))
            previous = max(previous, at)
        return tuple(out)


@dataclass(frozen=True)
class Scrape:
    models: Mapping[str, ModelCounters]
    bounds: tuple[float, ...]  # the finite bucket limits TF Serving reported
    total: int = 0  # every request_count on the page: it only goes down when TF Serving restarted


def _unescape(value: str) -> str:
    return value.replace('\\"', '"').replace("\\\\", "\\")


def parse(text: str) -> Scrape:
    """The per-model counters in a Prometheus text page of TF Serving; lines of other metrics are ignored."""
    models: dict[str, ModelCounters] = {}
    bounds: set[float] = set()
    total = 0
    for line in text.splitlines():
        if not line.startswith(REQUEST_COUNT) and not line.startswith(REQUEST_LATENCY):
            continue
        m = _LINE.match(line)
        if m is None:
            continue
        name, raw_labels, raw_value = m.groups()
        labels = {k: _unescape(v) for k, v in _LABEL.findall(raw_labels or "")}
        model = labels.get("model_name", "")
        try:  # a line TF Serving would not write (inf, nan, a bad number) is skipped, not the page
            number = float(raw_value)
            value = int(number) if math.isfinite(number) and number >= 0 else None
            le = labels.get("le")
            limit = None if le is None else (math.inf if le == "+Inf" else float(le))
        except ValueError:
            continue
        if value is None or (limit is not None and not (limit > 0)):
            continue
        if name == REQUEST_COUNT:
            total += value
        if not model:
            continue
        counters = models.setdefault(model, ModelCounters())
        if name == REQUEST_COUNT:
            status = labels.get("status", "")
            if status and status != "OK":
                counters.errors[status] = counters.errors.get(status, 0) + value
        elif labels.get("API") in INFERENCE_APIS:
            if name == f"{REQUEST_LATENCY}_count":
                counters.ok += value
            elif name == f"{REQUEST_LATENCY}_bucket" and limit is not None:
                counters.cumulative[limit] = counters.cumulative.get(limit, 0) + value
                if limit != math.inf:
                    bounds.add(limit)
    return Scrape(models, tuple(sorted(bounds)), total)


def scrape(tfs_url: str, timeout: float = 2.0) -> Scrape | None:
    """TF Serving's counters now; ``None`` when it does not answer (stopped, starting, monitoring off)."""
    try:
        with urllib.request.urlopen(tfs_url.rstrip("/") + TFS_METRICS_PATH, timeout=timeout) as answer:  # noqa: S310
            return parse(answer.read().decode("utf-8", "replace"))
    except (OSError, urllib.error.URLError, ValueError):
        return None


def without_own(errors: Mapping[str, int], own: Mapping[str, int]) -> dict[str, int]:
    """``errors`` (by status code) less the agent's own requests TF Serving answered with those codes (never below 0):
    its status polls of a model it has no version of yet (NOT_FOUND), its label checks before TF Serving knows the
    label (INVALID_ARGUMENT)."""
    out = {code: n - min(n, own.get(code, 0)) for code, n in errors.items()}
    return {c: n for c, n in out.items() if n > 0}
