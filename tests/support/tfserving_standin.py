"""A STAND-IN for TF Serving (``tensorflow_model_server``) for the tests. It is not TF Serving and runs no model.

TF Serving cannot run on our test machines (no Docker, no binary), so this serves its documented REST and gRPC APIs
on 127.0.0.1 ports, with what the tests need to control: which versions are in which state, the labels, the
signature, and a Python function per model that plays the model. It runs in the test's process
(``TFServingStandIn``) or as a process of its own with TF Serving's command line (``StandInProcess``).

API (other test modules rely on it; keep it stable)::

    from tests.support.tfserving_standin import TFServingStandIn

    with TFServingStandIn() as tfs:              # REST + gRPC; TFServingStandIn(grpc=False): REST only, no TF import
        tfs.rest_url                              # "http://127.0.0.1:PORT"
        tfs.grpc_target                           # "127.0.0.1:PORT"
        tfs.set_model("m", versions={1: "AVAILABLE", 2: "LOADING"}, labels={"stable": 1})
        tfs.set_state("m", 2, "AVAILABLE")        # or "END" with error_code="NOT_FOUND", error_message="..."
        tfs.versions("m"), tfs.labels("m")        # {1: "AVAILABLE", 2: "AVAILABLE"}, {"stable": 1}
        tfs.load_config("/srv/models.config")     # a ModelServerConfig text file, as --model_config_file
        tfs.watch_config(path, poll_seconds=0.05) # as --model_config_file_poll_wait_seconds; tfs.wait_reload()
        tfs.calls                                 # [Call(protocol, method, model, version, label, served, code)]
        tfs.reset()                               # forget every model, label, call, config and metric
        tfs.degrade(predict_failure_share=0.25, predict_delay_seconds=0.05)  # test options, see below

    # As TF Serving loads and unloads (see "Faithful mode" below):
    with TFServingStandIn(faithful=True, load_seconds=0.2, load_retry_interval_micros=10_000,
                          model_config_file=path, model_config_file_poll_wait_seconds=0.05) as tfs:
        tfs.wait_idle()                           # until the manager has nothing left to do
        tfs.events                                # [Event(time, model, version, state)], every state change
        tfs.load_attempts                         # {(model, version): attempts}
        tfs.memory_bytes, tfs.peak_memory_bytes, tfs.oom

    # As a process, from a config file (kill -9 and restart it like a crashed server):
    from tests.support.tfserving_standin import StandInProcess

    with StandInProcess(config_path, poll_seconds=0.05, load_seconds=0.2) as server:   # started, ports open
        server.rest_url, server.grpc_target
        server.metrics()                          # {':tensorflow:serving:request_count{...}': 3.0, ...}
        server.kill(); server.restart()           # SIGKILL; the same command line, the same ports
        server.wait_exit()                        # the exit status (255: failed start-up; -9: OOM or kill)

``set_model(name, versions=None, labels=None, predict=None, inputs=None, outputs=None)``: arguments left out keep
their current value (defaults for a new model: no versions, no labels, input ``x`` float32 ``[-1, -1]``, output
``y`` float32 ``[-1]``, ``predict=default_predict``: ``y = version * x.sum(axis=-1)``, so a test can tell which
version answered). ``predict`` is ``fn(inputs: dict[str, np.ndarray], version: int) -> {name: array}``, or a dict
``{version: fn}``; it may raise ``Status("INVALID_ARGUMENT", "...")`` to answer with an error. ``inputs``/``outputs``
are ``{name: (dtype, shape)}`` with dtype names as in ``model_export.savedmodel`` ("float32", "int64", "bool",
"string") and ``None`` for an unknown rank; they make the metadata and are checked like a real graph would.

What it does as TF Serving does (tensorflow/serving 2.20 sources, file names below under
``tensorflow_serving/``: model_servers/http_rest_api_handler.cc, http_rest_api_util.cc, http_server.cc,
prediction_service_impl.cc, get_model_status_impl.cc, server_core.cc, server.cc, main.cc;
core/aspired_versions_manager.cc, availability_preserving_policy.cc, basic_manager.cc, loader_harness.cc,
servable_state_monitor.cc, load_servables_fast.cc; servables/tensorflow/util.cc; util/retrier.cc,
prometheus_exporter.cc; line numbers in comments are those of the 2.20.0 tag):

* REST: ``GET /v1/models/NAME[/versions/N|/labels/L][/metadata]``, ``POST /v1/models/NAME[/versions/N|/labels/L]
  :predict`` (row ``instances`` and columnar ``inputs``, ``{"b64": ...}`` for bytes; outputs named ``*_bytes`` are
  answered as b64), ``GET /monitoring/prometheus/metrics`` (see "Metrics"). Errors are ``{ "error": "..." }`` with
  TF Serving's HTTP status for the gRPC code (NOT_FOUND 404, INVALID_ARGUMENT 400, FAILED_PRECONDITION 400,
  INTERNAL 500). The method after the colon is matched without case but dispatched as written: ``:Predict`` is
  ``Malformed request: POST PATH`` (400), as is a path that does not parse.
* Metrics, as TF Serving counts requests (util.cc, http_server.cc, prediction_service_impl.cc,
  util/prometheus_exporter.cc): ``:tensorflow:serving:request_count{model_name,status}`` (status: the code's name,
  "OK", "NOT_FOUND", ...) counts EVERY REST request under ``/v1/``, status and metadata GETs included, failed ones
  too (``model_name=""`` when the path does not parse), and every gRPC ``Predict``/``Classify``/``Regress``; gRPC
  ``GetModelMetadata``, ``MultiInference`` and ``ModelService`` count nowhere.
  ``:tensorflow:serving:request_latency{model_name,API,entrypoint}`` (a histogram in microseconds) takes only OK
  answers: REST with ``API`` the path's method ("predict"; "" for GETs) and ``entrypoint="REST"``, gRPC with
  ``API="Predict"``, ``entrypoint="GRPC"``. Its buckets are ``Buckets::Exponential(10, 1.8, 33)``: ``le`` 10, 18,
  32.4, ... 1.47476e+09, "+Inf" (34 lines), printed as ``absl::StrCat`` does (``%g``); a sample equal to a limit
  counts in the next bucket (``std::upper_bound``). Lines: ``# TYPE NAME counter|histogram``, ``NAME{labels} N``,
  ``NAME_bucket{labels,le="L"} CUMULATIVE``, ``NAME_sum{labels} S``, ``NAME_count{labels} N``. Then stand-in-only
  ``:standin_*`` lines: memory held, its peak, load attempts.
* ``GET /v1/models/NAME`` answers 200 as soon as any version is known, START, LOADING and END included; 404 for a
  model it does not know. A label in a status request is IGNORED: every version is listed (get_model_status_impl.cc).
  A failed load shows as ``END`` with ``status.error_code``/``error_message``.
* An unversioned request is served by the highest AVAILABLE version. An unknown or not-AVAILABLE version is NOT_FOUND
  ``Servable not found for request: Specific(m, 7)``; an unknown label is INVALID_ARGUMENT (REST 400)
  ``Unrecognized servable version label: L``.
* gRPC: ``PredictionService.Predict`` / ``GetModelMetadata``, ``ModelService.GetModelStatus`` /
  ``HandleReloadConfigRequest``, messages up to 2 GiB both ways (TF Serving allows INT_MAX). Request tensors are
  decoded by TensorFlow's own ``tf.make_ndarray`` (``tensor_content`` or typed fields); dtypes must match the
  signature. Answers use the typed fields (``float_val``...) as TF Serving does by default, or ``tensor_content``
  with ``TFServingStandIn(tensor_content_responses=True)`` (``--enable_serialization_as_tensor_content``). The
  services are registered without importing TensorFlow; the first gRPC request imports it (seconds).
* Config (``load_config``, ``HandleReloadConfigRequest``, the poll): every model needs ``model_platform:
  "tensorflow"`` and an absolute ``base_path``; names must not repeat. The new config replaces the whole set:
  versions and models left out are unloaded. ``specific`` aspires the listed versions whose directory exists under
  ``base_path`` (``require_version_dirs=False``: all listed versions, no disk access); ``latest`` (default, 1) and
  ``all`` scan the directory. A version directory without ``saved_model.pb`` (or holding a file ``FAIL_LOAD``,
  stand-in only: its text ``CODE: message`` is the error) fails to load (END, NOT_FOUND ``Could not find SavedModel
  .pb or .pbtxt at supplied export directory path: DIR``). Labels are checked BEFORE anything loads
  (server_core.cc ``ReloadConfig``: ``UpdateModelVersionLabelMap`` runs before ``AddModelsViaModelConfigList``),
  against the versions AVAILABLE at that moment: a label on a version this same config adds is refused
  (FAILED_PRECONDITION ``Request to assign label to version 2 of model m, which is not currently available for
  inference``) and NOTHING of that config is applied. So at start-up every label fails unless
  ``allow_version_labels_for_unavailable_models=True`` (the flag), which admits labels on unavailable versions only
  when the label is new or keeps its version. ``load_config`` raises ``ConfigError``; the poll records the message
  in ``config_errors`` and keeps going, as TF Serving logs it and keeps polling (server.cc
  ``PollFilesystemAndReloadConfig``).

Faithful mode (``faithful=True``; always in process mode) adds what TF Serving's manager does:

* Start-up (server.cc ``BuildAndStart``, server_core.cc ``ServerCore::Create``): the first config is loaded
  before any port opens; ``start()`` returns (the ports open) only when every model has a version that reached
  AVAILABLE or END, whichever comes first, highest version first (servable_state_monitor.cc
  ``HasAnyServableInStreamReachedState``). END fails the start-up: ``ConfigError`` ``UNKNOWN: 1 servable(s) did not
  become available: {{name: m version: 1} due to error: NOT_FOUND: ...}, }`` (load_servables_fast.cc); a bad label or
  file fails it too. The process prints ``Failed to start server. Error: ...`` and exits 255 (main.cc ``return
  -1``). A model with no version on disk is waited for forever, as TF Serving does (the helper's wait is bounded).
  Start-up loads run in parallel on ``num_initial_load_threads`` (server_core.h: 4 x CPUs); later ones serially.
* The manager (aspired_versions_manager.cc): every ``manage_state_interval_seconds`` (100 ms, its
  ``manage_state_interval_micros``) it drops finished versions nobody wants, takes the newest aspired versions
  from the config (a request naming a version that is still loaded but no longer wanted waits until that version
  is fully unloaded: ``ContainsAnyReaspiredVersions``), and performs ONE action over all models, unloads before
  loads. Loads and unloads run inline in that thread (basic_manager.cc: ``num_load_threads`` 0 and
  ``num_unload_threads`` 0 make an ``InlineExecutor``), so one load at a time and nothing else meanwhile.
* Availability-preserving policy (server.cc hard-codes ``AvailabilityPreservingPolicy``;
  availability_preserving_policy.cc): a version the config dropped is unloaded only when no version is wanted, when
  a wanted version is AVAILABLE, or when another dropped version is also still serving (the lowest goes first). If
  the wanted version fails, the old one keeps serving. It loads the highest wanted new version first.
* A load is START (queued, basic_manager.cc ``ManageServableInternal``), then LOADING for ``load_seconds`` per
  attempt; a failed attempt is retried ``max_num_load_retries`` times (5) ``load_retry_interval_micros`` apart
  (60 s; util/retrier.cc, loader_harness.cc ``Load``), the version staying LOADING, then END with the last error. A
  failed version is not retried while the config keeps it (only ``kNew`` versions are loaded:
  aspired_version_policy.cc); drop it and add it back. As the manager's thread runs the load, a config that
  drops a loading version is only taken once the load and ALL its retries are over (nothing else loads or unloads
  meanwhile): a version dropped while loading becomes AVAILABLE, answers unversioned requests if it is the
  highest, and is unloaded at the next round. Only during the start-up pool is a dropped version cancelled
  (``CancelLoadServableRetry``: no more retries; a load that still succeeds ends END with CANCELLED ``Loading of
  servable cancelled``, loader_harness.cc, and can fail the start-up). Unloading is UNLOADING for
  ``unload_seconds``, then END. A version dropped while still START keeps showing START (``StopManagingServable``
  publishes nothing).
* A reload that adds a NEW model waits until it is AVAILABLE or END (server_core.cc ``WaitUntilModelsAvailable``,
  with a fresh monitor) and fails with ``N model(s) did not become available`` (the poll logs it). Version
  directories are re-scanned every ``file_system_poll_wait_seconds`` (1 s, server.h), apart from config polls.
* Memory (stand-in only accounting): a LOADING, AVAILABLE or UNLOADING version holds the size of its files on disk
  x ``memory_factor`` (TF Serving's own estimate is x 1.2, servables/tensorflow/util.cc, but it enforces no limit:
  ``total_model_memory_limit_bytes`` is unlimited and has no flag). ``memory_bytes``/``peak_memory_bytes`` record
  it in both modes; above ``memory_limit_bytes`` the stand-in dies as an OOM kill would: the process SIGKILLs
  itself (exit -9 / 137), in-process ``oom`` is set and the ports close.
* Process mode: ports open only after the start-up load (connections are refused until then) and stay open during
  later reloads; no SIGTERM handler (the process dies of it, as TF Serving in its container, #1853).

Test options (stand-in only: TF Serving has no such flags), as keyword arguments of ``TFServingStandIn`` and
``StandInProcess``, flags of the process, and ``tfs.degrade(...)`` (or the attributes of the same names) on a running
in-process stand-in, so a test can degrade a canary while it serves; ``reset()`` restores the constructor's values:

* ``predict_failure_share`` (0..1, default 0; ``--predict_failure_share``): that share of the predictions that reach
  the model (REST and gRPC; after the request's checks, so a bad input still fails INVALID_ARGUMENT) fails with
  INTERNAL (REST 500, ``{ "error": "the stand-in failed this prediction on purpose ..." }``), counted as TF Serving
  counts any error: request_count ``status="INTERNAL"``, no request_latency. Deterministic, not random: the n-th
  prediction since the share was set fails when floor(n x share) grows (0.25: every 4th, 0.5: every 2nd).
* ``predict_delay_seconds`` (>= 0, default 0; ``--predict_delay_seconds``): each prediction not failed on purpose
  waits that long before the model runs, inside the request, so it shows in request_latency.

In-process default (``faithful=False``), kinder than TF Serving and what existing tests rely on: a config is
applied at once and synchronously (new versions AVAILABLE or END, dropped ones END, in the same call; a failed
version in a later config is tried again), no retries, ports open even when the first config has a version that
fails (only a refused config makes ``start()`` raise), and version directories are scanned only when a config is
applied. Every faithful behaviour is there in process with ``faithful=True``, its timings as options
(``load_seconds``, ``unload_seconds``, ``max_num_load_retries``, ``load_retry_interval_micros``,
``num_initial_load_threads``, ``file_system_poll_wait_seconds``, ``manage_state_interval_seconds``: faithful mode
only; ``memory_limit_bytes`` and ``memory_factor``: both modes; ``port``/``rest_api_port``: fixed ports).
``set_model``/``set_state`` write states directly in both modes (in faithful mode AVAILABLE versions set so are
adopted by the manager: a later config can unload them; other states they set are left to the test). Existing
tests that assert states right after ``load_config`` (tests/support/agent.py ``Fleet.settle``, the stand-in tests in
test_client.py) need the kind mode; with ``faithful=True`` call ``wait_idle()`` first.

Where it differs: no warmup, no batching, no classify/regress (UNIMPLEMENTED, counted so in request_count), of TF
Serving's metrics only request_count and request_latency (no runtime_latency, request_example_counts, load or
batching metrics, not even their ``# TYPE`` lines), models are Python functions, memory is taken whole when LOADING
starts, error texts other than the ones quoted above are close to but not exactly TF Serving's, only local
``base_path`` directories can be scanned, ports bind 127.0.0.1 (not 0.0.0.0), process mode needs
``--model_config_file`` (no ``--model_name``/``--model_base_path``), takes fractional seconds for the polls, and exits
255 when the REST port is taken (TF Serving logs it and serves gRPC only). After an empty start-up config, a first
real config that fails is not treated as a first config again at the next poll (TF Serving's
``AddModelsViaModelConfigList`` does, and logs the failure at every poll).
"""

from __future__ import annotations

import argparse
import base64
import bisect
import contextlib
import importlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

NDArray = npt.NDArray[Any]
PredictFn = Callable[[dict[str, NDArray], int], Mapping[str, Any]]
Spec = tuple[str, "tuple[int, ...] | None"]

STATES = ("UNKNOWN", "START", "LOADING", "AVAILABLE", "UNLOADING", "END")
AVAILABLE = "AVAILABLE"
HOLDING_MEMORY = ("LOADING", "AVAILABLE", "UNLOADING")
DEFAULT_SIGNATURE = "serving_default"
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
FAIL_LOAD = "FAIL_LOAD"  # stand-in only: a version directory holding this file fails every load attempt
EXIT_STARTUP_FAILED = 255  # main.cc: "Failed to start server. Error: ..." then `return -1`
# server.h / main.cc flag defaults
DEFAULT_MAX_NUM_LOAD_RETRIES = 5
DEFAULT_LOAD_RETRY_INTERVAL_MICROS = 60 * 1000 * 1000
DEFAULT_FILE_SYSTEM_POLL_WAIT_SECONDS = 1.0
DEFAULT_MANAGE_STATE_INTERVAL_SECONDS = 0.1  # aspired_versions_manager.h manage_state_interval_micros
# tensorflow/core/framework/types.proto
_DT_NAMES = {
    "float32": "DT_FLOAT", "float64": "DT_DOUBLE", "int32": "DT_INT32", "uint8": "DT_UINT8", "int16": "DT_INT16",
    "int8": "DT_INT8", "string": "DT_STRING", "complex64": "DT_COMPLEX64", "int64": "DT_INT64", "bool": "DT_BOOL",
    "bfloat16": "DT_BFLOAT16", "uint16": "DT_UINT16", "complex128": "DT_COMPLEX128", "float16": "DT_HALF",
    "uint32": "DT_UINT32", "uint64": "DT_UINT64",
}  # fmt: skip
# http_server.cc ToHTTPStatusCode
_HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400,
    "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNAVAILABLE": 503,
    "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}  # fmt: skip
# http_rest_api_util.cc
_PREDICT_RE = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)"
)
_STATUS_RE = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?")
_INFERENCE_METHODS = ("classify", "regress", "predict")  # http_rest_api_handler.cc:85-96, compared as written

# --- metrics (tensorflow_serving/ files of the 2.20.0 tag; TensorFlow's monitoring library under xla/tsl/lib/) ---
# servables/tensorflow/util.cc:66-68 Counter<2> "/tensorflow/serving/request_count" (model_name, status) and :80-89
# Sampler<3> "/tensorflow/serving/request_latency" (model_name, API, entrypoint) in microseconds, both exported by
# util/prometheus_exporter.cc:53-63 with every character outside [a-zA-Z0-9_] made ":".
REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"


def _exponential_limits(scale: float, growth_factor: float, bucket_count: int) -> tuple[float, ...]:
    """xla/tsl/lib/monitoring/sampler.cc ``ExponentialBuckets::ComputeBucketLimits`` (scale, scale x g, ... by
    repeated multiplication, ``bucket_count`` limits), then ``ExplicitBuckets`` appends DBL_MAX: the last bucket."""
    limits = []
    bound = scale
    for _ in range(bucket_count):
        limits.append(bound)
        bound *= growth_factor
    return (*limits, sys.float_info.max)


# util.cc:89 Buckets::Exponential(10, 1.8, 33): 10, 18, 32.4, ... 1.47e9 us (~25 min), then DBL_MAX; 34 buckets.
REQUEST_LATENCY_LIMITS = _exponential_limits(10.0, 1.8, 33)


@dataclass
class _Histogram:
    """One cell of a Sampler (xla/tsl/lib/histogram/histogram.cc ``Histogram`` with custom limits)."""

    buckets: list[int] = field(default_factory=lambda: [0] * len(REQUEST_LATENCY_LIMITS))
    total: float = 0.0

    def add(self, value: float) -> None:
        # Histogram::Add: std::upper_bound, so a sample equal to a limit counts in the NEXT bucket (limits are
        # exclusive upper bounds, unlike Prometheus's "le").
        self.buckets[min(bisect.bisect_right(REQUEST_LATENCY_LIMITS, value), len(self.buckets) - 1)] += 1
        self.total += value


def _six_digits(value: float) -> str:
    """``absl::StrCat(double)`` (absl SixDigitsToBuffer): printf's ``%g``, 6 significant digits, ``1.23457e+06``."""
    return format(value, "g")


def _prometheus_labels(pairs: Iterable[tuple[str, str]]) -> str:
    """``name="value"`` joined by commas, in the order the metric declares its labels (collection_registry.h
    ``CollectValue``); prometheus_exporter.cc:32-40 ``SanitizeLabelValue`` escapes only backslash and double quote."""
    escaped = ((name, value.replace("\\", "\\\\").replace('"', '\\"')) for name, value in pairs)
    return ",".join(f'{name}="{value}"' for name, value in escaped)


def _checked_failure_share(value: float) -> float:
    """The one check of ``predict_failure_share`` (constructor, ``degrade``, the process flag)."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"predict_failure_share must be within 0..1, got {value}")
    return float(value)


def _checked_delay_seconds(value: float) -> float:
    """The one check of ``predict_delay_seconds``."""
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"predict_delay_seconds must be a finite number of seconds >= 0, got {value}")
    return float(value)


class Status(Exception):
    """An error answer: ``code`` is a gRPC status name (``NOT_FOUND``...). A predict function may raise it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ConfigError(Status):
    """TF Serving refused a model config (``load_config``)."""


@dataclass
class _RestRequest:
    """What the REST path parser found, for the metrics (http_server.cc:163-164 ``model_name``, ``method``)."""

    model_name: str = ""
    method: str = ""


@dataclass(frozen=True)
class Call:
    protocol: str  # "rest" or "grpc"
    method: str  # "predict", "status", "metadata", "reload"
    model: str
    version: int | None  # as asked
    label: str | None  # as asked
    served: int | None  # the version that answered a predict/metadata request
    code: str  # "OK" or the error's code
    request_format: str | None = None  # REST predict: "row" (instances) or "columnar" (inputs)


@dataclass
class _Version:
    state: str
    error_code: str = "OK"
    error_message: str = ""
    seq: int = 0  # when it was published (the event bus order)


@dataclass
class _Model:
    versions: dict[int, _Version] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    inputs: dict[str, Spec] = field(default_factory=lambda: {"x": ("float32", (-1, -1))})
    outputs: dict[str, Spec] = field(default_factory=lambda: {"y": ("float32", (-1,))})
    predict: PredictFn | Mapping[int, PredictFn] | None = None


@dataclass(frozen=True)
class Event:
    """One state change of one version, as the servable event bus publishes it (``tfs.events``)."""

    time: float  # time.monotonic()
    model: str
    version: int
    state: str
    error_code: str = "OK"


_FLUSHED = ("new", "disabled", "error")  # AspiredVersionsManager::FlushServables


@dataclass(eq=False)
class _Harness:
    """A version the manager manages (loader_harness.h ``LoaderHarness``, its states simplified):
    new -> loading -> ready -> unloading -> disabled, or -> error."""

    state: str
    path: Path | None = None  # the version directory; None: loads without disk (require_version_dirs=False)
    aspired: bool = True
    cancelled: bool = False  # BasicManager::CancelLoadServableRetry
    by_test: bool = False  # set through set_model/set_state: the manager only unloads it


def default_predict(inputs: dict[str, NDArray], version: int) -> dict[str, NDArray]:
    """``y = version * (sum over the last axis of every numeric input)``: the answer says which version ran."""
    total: NDArray | None = None
    for arr in inputs.values():
        if arr.dtype.kind not in "biuf":
            raise Status("INVALID_ARGUMENT", "the stand-in's default model takes numeric inputs only")
        part = (arr.astype(np.float64) * version).sum(axis=-1) if arr.ndim else arr.astype(np.float64) * version
        total = part if total is None else total + part
    if total is None:
        raise Status("INVALID_ARGUMENT", "no inputs")
    return {"y": total.astype(np.float32)}


def _np_dtype(name: str) -> np.dtype[Any]:
    if name == "string":
        return np.dtype(object)
    if name == "bfloat16":
        import ml_dtypes

        bfloat16: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
        return bfloat16
    return np.dtype(name)


def _dtype_name(dtype: np.dtype[Any]) -> str:
    return "string" if dtype.kind in "SUO" else dtype.name


def _availability_preserving_action(harnesses: Mapping[int, _Harness]) -> tuple[str, int] | None:
    """availability_preserving_policy.cc ``GetNextAction`` for one model: ("unload" | "load", version) or None."""
    has_aspired = any(h.aspired for h in harnesses.values())
    has_aspired_serving = any(h.aspired and h.state == "ready" for h in harnesses.values())
    unaspired_serving = sorted(v for v, h in harnesses.items() if not h.aspired and h.state == "ready")
    # "If there is no aspired version, there is at least one aspired version that is ready, or there are more than
    # one un-aspired versions that are ready, unload the lowest non-aspired version."
    if unaspired_serving and (not has_aspired or has_aspired_serving or len(unaspired_serving) > 1):
        return "unload", unaspired_serving[0]
    # aspired_version_policy.cc GetHighestAspiredNewServableId: only versions never tried (kNew) are loaded.
    new = [v for v, h in harnesses.items() if h.aspired and h.state == "new" and not h.by_test]
    return ("load", max(new)) if new else None


def _load_error(path: Path | None) -> tuple[str, str] | None:
    """Why loading the version directory ``path`` fails (code, message), or None when it loads."""
    if path is None:
        return None
    marker = path / FAIL_LOAD
    if marker.is_file():
        text = marker.read_text().strip()
        code, sep, message = text.partition(": ")
        if sep and code in _HTTP_STATUS and code != "OK":
            return code, message
        return "UNKNOWN", text or f"the stand-in was told to fail loading {path} (a file {FAIL_LOAD})"
    if not (path / "saved_model.pb").is_file() and not (path / "saved_model.pbtxt").is_file():
        return "NOT_FOUND", f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {path}"
    return None


def _servable(name: str, version: int) -> str:
    return f"{{name: {name} version: {version}}}"  # servable_id.h ServableId::DebugString


class TFServingStandIn:
    """See the module docstring. Use as a context manager; ``start()``/``stop()`` also work."""

    def __init__(
        self,
        *,
        grpc: bool = True,
        rest: bool = True,
        port: int = 0,
        rest_api_port: int = 0,
        tensor_content_responses: bool = False,
        allow_version_labels_for_unavailable_models: bool = False,
        require_version_dirs: bool = True,
        model_config_file: str | Path | None = None,
        model_config_file_poll_wait_seconds: float = 0.0,
        faithful: bool = False,
        load_seconds: float | None = None,
        unload_seconds: float | None = None,
        max_num_load_retries: int | None = None,
        load_retry_interval_micros: int | None = None,
        num_initial_load_threads: int | None = None,
        file_system_poll_wait_seconds: float | None = None,
        manage_state_interval_seconds: float | None = None,
        memory_limit_bytes: int | None = None,
        memory_factor: float = 1.0,
        predict_failure_share: float = 0.0,
        predict_delay_seconds: float = 0.0,
        process_mode: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> None:
        """``port``/``rest_api_port``: 0 picks free ports. The options from ``faithful`` on are described in the
        module docstring; those about loading need ``faithful=True``. ``predict_failure_share`` and
        ``predict_delay_seconds`` are test options TF Serving does not have ("Test options" in the module
        docstring; ``degrade()`` changes them on a running stand-in). ``process_mode`` (set by ``python -m``): an
        OOM SIGKILLs the process. ``log``: where TF Serving's log lines go (none by default)."""
        manager_options = {
            "load_seconds": load_seconds,
            "unload_seconds": unload_seconds,
            "max_num_load_retries": max_num_load_retries,
            "load_retry_interval_micros": load_retry_interval_micros,
            "num_initial_load_threads": num_initial_load_threads,
            "file_system_poll_wait_seconds": file_system_poll_wait_seconds,
            "manage_state_interval_seconds": manage_state_interval_seconds,
        }
        if not faithful and any(v is not None for v in manager_options.values()):
            given = sorted(k for k, v in manager_options.items() if v is not None)
            raise ValueError(f"{', '.join(given)}: only with faithful=True (the kind mode loads at once)")
        self.grpc_enabled = grpc
        self.rest_enabled = rest
        self.tensor_content_responses = tensor_content_responses
        self.allow_version_labels_for_unavailable_models = allow_version_labels_for_unavailable_models
        self.require_version_dirs = require_version_dirs
        self.faithful = faithful
        self.load_seconds = load_seconds or 0.0
        self.unload_seconds = unload_seconds or 0.0
        self.max_num_load_retries = (
            DEFAULT_MAX_NUM_LOAD_RETRIES if max_num_load_retries is None else max_num_load_retries
        )
        self.load_retry_interval_micros = (
            DEFAULT_LOAD_RETRY_INTERVAL_MICROS if load_retry_interval_micros is None else load_retry_interval_micros
        )
        self.num_initial_load_threads = (
            4 * (os.cpu_count() or 1) if num_initial_load_threads is None else num_initial_load_threads
        )
        self.file_system_poll_wait_seconds = (
            DEFAULT_FILE_SYSTEM_POLL_WAIT_SECONDS if file_system_poll_wait_seconds is None
            else file_system_poll_wait_seconds
        )  # fmt: skip
        self.manage_state_interval_seconds = (
            DEFAULT_MANAGE_STATE_INTERVAL_SECONDS if manage_state_interval_seconds is None
            else manage_state_interval_seconds
        )  # fmt: skip
        self.memory_limit_bytes = memory_limit_bytes
        self.memory_factor = memory_factor
        # test options (see degrade()): the constructor's values come back on reset()
        self._degradation = (
            _checked_failure_share(predict_failure_share),
            _checked_delay_seconds(predict_delay_seconds),
        )
        self._failure_share, self._delay_seconds = self._degradation
        self._degraded_runs = 0  # predictions run since the share was set
        self._failed_runs = 0  # of which failed on purpose
        self.process_mode = process_mode
        self._log: Callable[[str], None] = log or (lambda message: None)
        self._config_file = model_config_file
        self._poll_seconds = model_config_file_poll_wait_seconds
        self._wanted_ports = (port, rest_api_port)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # every published state change
        self._config_mu = threading.Lock()  # server_core.cc config_mu_: one config at a time
        self._models: dict[str, _Model] = {}
        self.calls: list[Call] = []
        self.config_errors: list[str] = []
        self.config: Any = None  # the last ModelServerConfig applied
        self.events: list[Event] = []
        self.load_attempts: dict[tuple[str, int], int] = {}
        self.memory_bytes = 0
        self.peak_memory_bytes = 0
        self.oom = False
        self._sizes: dict[tuple[str, int], int] = {}
        self._seq = 0
        # faithful mode: the manager's harnesses, the source's pending and last aspired versions per model
        self._harnesses: dict[str, dict[int, _Harness]] = {}
        self._pending: dict[str, dict[int, Path | None]] = {}
        self._sources: dict[str, dict[int, Path | None]] = {}
        self._source_started = False
        self._pool_lock = threading.Lock()
        self._load_pool: futures.ThreadPoolExecutor | None = None
        self._request_count: dict[tuple[str, str], int] = {}  # (model_name, status) -> requests
        self._request_latency: dict[tuple[str, str, str], _Histogram] = {}  # (model_name, API, entrypoint)
        self._http: ThreadingHTTPServer | None = None
        self._grpc: Any = None
        self._grpc_port = 0
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._reloaded = threading.Condition()
        self._reloads = 0

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def __enter__(self) -> TFServingStandIn:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Load the first config (if any), then open the ports. Faithful: only when every model of it is AVAILABLE,
        else ``ConfigError`` and nothing keeps running, as TF Serving exits (server.cc ``BuildAndStart``)."""
        if self.faithful:
            self._spawn(self._manager_loop)
            self._spawn(self._file_system_poll_loop)  # the source polls from its creation on, start-up included
        if self._config_file is not None:
            try:
                self.load_config(self._config_file)
            except ConfigError:
                self.stop()
                raise
        if self._config_file is not None and self._poll_seconds > 0:
            self.watch_config(self._config_file, self._poll_seconds)  # server.cc: started before the ports open
        if self.grpc_enabled:
            self._start_grpc()
        if self.rest_enabled:
            self._start_http()

    def stop(self) -> None:
        self._stop.set()
        self._close_ports()
        pool = self._load_pool
        if pool is not None:
            pool.shutdown(wait=False)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5)

    def _close_ports(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace=None)

    def _die(self) -> None:
        """What an OOM kill leaves of the in-process stand-in: nothing running, ports closed."""
        self._stop.set()
        threading.Thread(target=self._close_ports, daemon=True, name="tfserving-standin-oom").start()

    def _spawn(self, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, daemon=True, name="tfserving-standin")
        thread.start()
        self._threads.append(thread)

    def _start_http(self) -> None:
        standin = self

        class Handler(_RestHandler):
            tfs = standin

        self._http = ThreadingHTTPServer(("127.0.0.1", self._wanted_ports[1]), Handler)
        self._http.daemon_threads = True
        self._spawn(self._http.serve_forever)

    @property
    def rest_url(self) -> str:
        assert self._http is not None, "the stand-in is not started (or serves no REST)"
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    @property
    def grpc_target(self) -> str:
        if not self._grpc_port:
            raise RuntimeError("gRPC is off: TFServingStandIn(grpc=True) and start it")
        return f"127.0.0.1:{self._grpc_port}"

    # --- what the tests control --------------------------------------------------------------------------------

    def set_model(
        self,
        name: str,
        versions: Mapping[int, str] | None = None,
        labels: Mapping[str, int] | None = None,
        predict: PredictFn | Mapping[int, PredictFn] | None = None,
        inputs: Mapping[str, Spec] | None = None,
        outputs: Mapping[str, Spec] | None = None,
    ) -> None:
        with self._lock:
            model = self._models.setdefault(name, _Model())
            if versions is not None:
                for state in versions.values():
                    if state not in STATES:
                        raise ValueError(f"state {state!r} is not one of {STATES}")
                wanted = {int(v): s for v, s in versions.items()}
                for version in [v for v in model.versions if v not in wanted]:
                    del model.versions[version]
                    self._harnesses.get(name, {}).pop(version, None)
                for version, state in wanted.items():
                    self._set(name, version, state, "OK", "")
            if labels is not None:
                model.labels = dict(labels)
            if predict is not None:
                model.predict = predict
            if inputs is not None:
                model.inputs = {k: (d, None if s is None else tuple(s)) for k, (d, s) in inputs.items()}
            if outputs is not None:
                model.outputs = {k: (d, None if s is None else tuple(s)) for k, (d, s) in outputs.items()}

    def set_state(
        self, name: str, version: int, state: str, *, error_code: str = "OK", error_message: str = ""
    ) -> None:
        if state not in STATES:
            raise ValueError(f"state {state!r} is not one of {STATES}")
        with self._lock:
            self._set(name, version, state, error_code, error_message)

    def _set(self, name: str, version: int, state: str, error_code: str, error_message: str) -> None:
        """A test's word for a version's state; in faithful mode the manager adopts it (see the module docstring)."""
        self._publish(name, version, state, error_code, error_message)
        if not self.faithful:
            return
        harnesses = self._harnesses.setdefault(name, {})
        kind = {"START": "new", "LOADING": "loading", "AVAILABLE": "ready", "UNLOADING": "unloading"}.get(state)
        if state == "END":
            kind = "error" if error_code != "OK" else "disabled"
        if kind is None:
            harnesses.pop(version, None)
            return
        current = harnesses.get(version)
        harnesses[version] = _Harness(kind, aspired=current.aspired if current else True, by_test=True)

    def remove_model(self, name: str) -> None:
        with self._lock:
            self._models.pop(name, None)
            self._harnesses.pop(name, None)

    def versions(self, name: str) -> dict[int, str]:
        with self._lock:
            model = self._models.get(name)
            return {v: s.state for v, s in sorted(model.versions.items())} if model else {}

    def labels(self, name: str) -> dict[str, int]:
        with self._lock:
            model = self._models.get(name)
            return dict(model.labels) if model else {}

    def status(self, name: str, version: int) -> tuple[str, str, str]:
        """(state, error_code, error_message) of one version, as ``GET /v1/models/NAME`` shows it."""
        with self._lock:
            model = self._models.get(name)
            state = model.versions.get(version) if model else None
            return (state.state, state.error_code, state.error_message) if state else ("UNKNOWN", "OK", "")

    def degrade(
        self, *, predict_failure_share: float | None = None, predict_delay_seconds: float | None = None
    ) -> None:
        """Test options (stand-in only), for a running stand-in: a canary that starts failing or slowing down.
        Arguments left out keep their value; setting a share starts its count afresh (see the module docstring)."""
        with self._lock:
            if predict_failure_share is not None:
                self._failure_share = _checked_failure_share(predict_failure_share)
                self._degraded_runs = self._failed_runs = 0
            if predict_delay_seconds is not None:
                self._delay_seconds = _checked_delay_seconds(predict_delay_seconds)

    @property
    def predict_failure_share(self) -> float:
        with self._lock:
            return self._failure_share

    @predict_failure_share.setter
    def predict_failure_share(self, value: float) -> None:
        self.degrade(predict_failure_share=value)

    @property
    def predict_delay_seconds(self) -> float:
        with self._lock:
            return self._delay_seconds

    @predict_delay_seconds.setter
    def predict_delay_seconds(self, value: float) -> None:
        self.degrade(predict_delay_seconds=value)

    def reset(self) -> None:
        """Forget every model, label, call, config and metric; the test options go back to the constructor's."""
        with self._lock:
            self._models.clear()
            self.calls.clear()
            self.config_errors.clear()
            self._request_count.clear()
            self._request_latency.clear()
            self._failure_share, self._delay_seconds = self._degradation
            self._degraded_runs = self._failed_runs = 0
            self.config = None
            self.events.clear()
            self.load_attempts.clear()
            self._sizes.clear()
            self._harnesses.clear()
            self._pending.clear()
            self._sources.clear()
            self.memory_bytes = self.peak_memory_bytes = 0

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Faithful mode: block until the manager has nothing left to do (no config waiting, no load or unload
        running or due; versions a test holds in LOADING do not count). Kind mode: nothing to wait for."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._busy():
                if self._stop.is_set():
                    raise RuntimeError("the stand-in has stopped (or died of an OOM) with work left")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"the stand-in's manager still busy after {timeout} s: {self._harnesses}")
                self._changed.wait(min(remaining, 0.01))

    def _busy(self) -> bool:
        if self._pending:
            return True
        for harnesses in self._harnesses.values():
            if any(h.state in ("loading", "unloading") and not h.by_test for h in harnesses.values()):
                return True
            if _availability_preserving_action(harnesses) is not None:
                return True
        return False

    # --- model config (--model_config_file) --------------------------------------------------------------------

    def load_config(self, path: str | Path) -> None:
        """Apply a ModelServerConfig text file as TF Serving would; ``ConfigError`` when it refuses it."""
        from google.protobuf import text_format
        from tensorflow_serving.config import model_server_config_pb2

        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError("NOT_FOUND", f"Failed to read ModelServerConfig file {path}: {e}") from e
        config = model_server_config_pb2.ModelServerConfig()
        try:
            text_format.Parse(text, config)
        except text_format.ParseError as e:
            raise ConfigError("INVALID_ARGUMENT", f"Failed to parse ModelServerConfig file {path}: {e}") from e
        self.apply_config(config)

    def watch_config(self, path: str | Path, poll_seconds: float) -> None:
        """Re-apply ``path`` every ``poll_seconds`` until stopped (each poll re-reads the file, like TF Serving)."""

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.load_config(path)
                except ConfigError as e:
                    with self._lock:
                        self.config_errors.append(str(e))
                    self._log(f"PollFilesystemAndReloadConfig failed to ReloadConfig: {e}")
                with self._reloaded:
                    self._reloads += 1
                    self._reloaded.notify_all()
                self._stop.wait(poll_seconds)

        self._spawn(loop)

    def wait_reload(self, timeout: float = 5.0) -> None:
        """Block until the poll has finished one more reload than when called (at most ``timeout`` s)."""
        with self._reloaded:
            target = self._reloads + 1
            if not self._reloaded.wait_for(lambda: self._reloads >= target, timeout):
                raise TimeoutError(f"no config reload within {timeout} s")

    def apply_config(self, config: Any) -> None:
        """Apply a ``ModelServerConfig`` message (what ``load_config`` and ``HandleReloadConfigRequest`` do)."""
        if self.faithful:
            self._apply_faithfully(config)
        else:
            self._apply_at_once(config)

    def _checked(self, config: Any) -> dict[str, tuple[dict[str, int], dict[int, Path | None]]] | None:
        """server_core.cc ``ReloadConfig``'s checks, labels before anything loads. Per model: its labels and the
        versions the file system source aspires. ``None`` for an empty config ("Taking no action for empty
        config."). Call with the lock held."""
        which = config.WhichOneof("config")
        if which is None:
            return None
        if which != "model_config_list":
            raise ConfigError("FAILED_PRECONDITION", "the stand-in supports model_config_list only")
        entries = list(config.model_config_list.config)
        names = [c.name for c in entries]
        for entry in entries:
            if names.count(entry.name) > 1:
                raise ConfigError(
                    "INVALID_ARGUMENT", f"Illegal to list model {entry.name} multiple times in config list"
                )
            parts = urllib.parse.urlsplit(entry.base_path)
            if not parts.scheme and not parts.netloc and not entry.base_path.startswith("/"):
                raise ConfigError(
                    "INVALID_ARGUMENT",
                    f"Expected model {entry.name} to have an absolute path or URI; got base_path()={entry.base_path}",
                )
        new_labels = {entry.name: self._checked_labels(entry) for entry in entries}
        for entry in entries:
            if not entry.model_platform:
                raise ConfigError(
                    "INVALID_ARGUMENT",
                    "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                    "ModelServerConfig::model_platform.",
                )
            if entry.model_platform != "tensorflow":
                raise ConfigError(
                    "INVALID_ARGUMENT", f"Model {entry.name} requests unsupported platform {entry.model_platform}"
                )
        return {entry.name: (new_labels[entry.name], self._source_versions(entry)) for entry in entries}

    def _apply_at_once(self, config: Any) -> None:
        """The kind mode: every load and unload done before returning, new versions first."""
        with self._lock:
            checked = self._checked(config)
            if checked is None:
                return
            for name, (labels, wanted) in checked.items():
                model = self._models.setdefault(name, _Model())
                for version, path in wanted.items():
                    current = model.versions.get(version)
                    if current is not None and current.state == AVAILABLE:
                        continue
                    self._sizes[(name, version)] = self._size_of(path)
                    self.load_attempts[(name, version)] = self.load_attempts.get((name, version), 0) + 1
                    error = _load_error(path)
                    if error is None:
                        self._publish(name, version, AVAILABLE)
                    else:
                        self._publish(name, version, "END", *error)
                for version, state in list(model.versions.items()):
                    if version not in wanted and state.state != "END":
                        self._publish(name, version, "END")
                model.labels = labels
            for name, model in self._models.items():
                if name not in checked:
                    for version, state in list(model.versions.items()):
                        if state.state != "END":
                            self._publish(name, version, "END")
                    model.labels = {}
            self.config = config

    def _apply_faithfully(self, config: Any) -> None:
        """server_core.cc ``ReloadConfig``: labels, then the source's new aspired versions go to the manager. The
        first config waits for every model (load_servables_fast.cc, parallel loads); a later one waits for its new
        models only (``WaitUntilModelsAvailable``)."""
        with self._config_mu:
            with self._lock:
                checked = self._checked(config)
                if checked is None:
                    return
                first = not self._source_started
                previous = set(self._sources)
                since = 0 if first else self._seq  # the server's monitor at start-up, a fresh one after
                if first:  # load_servables_fast.cc: the pool is there before the source sends anything
                    self._set_load_threads(self.num_initial_load_threads)
                for name, (labels, wanted) in checked.items():
                    self._models.setdefault(name, _Model()).labels = labels
                    self._aspire(name, wanted)
                for name in previous - set(checked):  # the source tears down models left out
                    if name in self._models:
                        self._models[name].labels = {}
                    self._aspire(name, {})
                    del self._sources[name]
                self.config = config
                self._source_started = True
            awaited = sorted(checked) if first else sorted(set(checked) - previous)
            try:
                if awaited:
                    self._await_models(awaited, since, "servable(s)" if first else "model(s)")
            finally:
                if first:
                    self._set_load_threads(0)

    def _aspire(self, name: str, wanted: Mapping[int, Path | None]) -> None:
        """Source::SetAspiredVersions: the newest request per model waits for the manager's next round."""
        self._pending[name] = dict(wanted)
        self._sources[name] = dict(wanted)

    def _await_models(self, names: Iterable[str], since: int, what: str) -> None:
        """ServableStateMonitor::WaitUntilServablesReachState for ``Latest(name)`` of each model, counting only
        events after ``since``: done when, per model, the highest version in AVAILABLE or END is found."""
        reached: dict[str, tuple[int, _Version]] = {}
        with self._changed:
            while True:
                for name in names:
                    found = self._reached(name, since)
                    if found is not None:
                        reached[name] = found
                if all(name in reached for name in names):
                    break
                if self._stop.is_set():
                    raise ConfigError("CANCELLED", "the stand-in stopped while models were loading")
                self._changed.wait(0.05)
        failed = [(name, version, state) for name, (version, state) in reached.items() if state.state != AVAILABLE]
        if failed:
            parts = ""
            for name, version, state in failed:
                error = f" due to error: {state.error_code}: {state.error_message}" if state.error_code != "OK" else ""
                parts += "{" + _servable(name, version) + error + "}, "
            raise ConfigError("UNKNOWN", f"{len(failed)} {what} did not become available: {{{parts}}}")

    def _reached(self, name: str, since: int) -> tuple[int, _Version] | None:
        model = self._models.get(name)
        if model is None:
            return None
        for version in sorted(model.versions, reverse=True):
            state = model.versions[version]
            if state.seq > since and state.state in (AVAILABLE, "END"):
                return version, state
        return None

    def _checked_labels(self, entry: Any) -> dict[str, int]:
        model = self._models.get(entry.name)
        current = model.labels if model else {}
        for label, version in entry.version_labels.items():
            state = model.versions.get(version) if model else None
            if state is not None and state.state == AVAILABLE:
                continue
            if self.allow_version_labels_for_unavailable_models and current.get(label, version) == version:
                continue
            raise ConfigError(
                "FAILED_PRECONDITION",
                f"Request to assign label to version {version} of model {entry.name}, "
                "which is not currently available for inference",
            )
        return dict(entry.version_labels)

    def _source_versions(self, entry: Any) -> dict[int, Path | None]:
        """The versions the file system source aspires for one config entry, with their directories
        (file_system_storage_path_source.cc: ``specific`` versions without a directory are not aspired)."""
        policy = entry.model_version_policy
        kind = policy.WhichOneof("policy_choice") or "latest"
        listed = sorted(set(policy.specific.versions)) if kind == "specific" else []
        if kind == "specific" and not self.require_version_dirs:
            return dict.fromkeys(listed)
        base = Path(entry.base_path)
        if urllib.parse.urlsplit(entry.base_path).scheme:
            raise ConfigError("UNIMPLEMENTED", f"the stand-in reads local base paths only, not {entry.base_path}")
        on_disk = (
            sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit()) if base.is_dir() else []
        )
        if kind == "specific":
            chosen = [v for v in listed if v in on_disk]
        elif kind == "all":
            chosen = on_disk
        else:
            chosen = on_disk[-max(policy.latest.num_versions, 1) :] if on_disk else []
        return {version: base / str(version) for version in chosen}

    def _file_system_poll_loop(self) -> None:
        """FileSystemStoragePathSource's own poll: version directories re-scanned apart from config polls; every
        poll re-sends each model's aspired versions to the manager. 0: only when a config is applied (TF Serving:
        polled once)."""
        if self.file_system_poll_wait_seconds <= 0:
            return
        while not self._stop.wait(self.file_system_poll_wait_seconds):
            with self._lock:
                config = self.config
                if config is None or config.WhichOneof("config") != "model_config_list":
                    continue
                for entry in config.model_config_list.config:
                    if entry.name in self._sources:
                        with contextlib.suppress(ConfigError, OSError):
                            self._aspire(entry.name, self._source_versions(entry))

    # --- the manager (faithful mode) ---------------------------------------------------------------------------

    def _manager_loop(self) -> None:
        """AspiredVersionsManager's ManageState thread: flush, take the pending aspired versions, one action."""
        while not self._stop.is_set():
            started = time.monotonic()
            action = self._manage_once()
            if action is not None:
                kind, work = action
                self._execute(kind, work)
            interval = max(self.manage_state_interval_seconds, 0.001)
            self._stop.wait(max(0.0, interval - (time.monotonic() - started)))

    def _manage_once(self) -> tuple[str, Callable[[], None]] | None:
        with self._lock:
            # FlushServables: versions nobody wants that are new, unloaded or failed leave the manager. (A version
            # still START when dropped keeps showing START: StopManagingServable publishes nothing.)
            for harnesses in self._harnesses.values():
                for version in [v for v, h in harnesses.items() if not h.aspired and h.state in _FLUSHED]:
                    del harnesses[version]
            # HandlePendingAspiredVersionsRequests
            for name in list(self._pending):
                wanted = self._pending[name]
                harnesses = self._harnesses.setdefault(name, {})
                if any(v in harnesses and not harnesses[v].aspired for v in wanted):
                    continue  # ContainsAnyReaspiredVersions: wait until that version has left the manager
                del self._pending[name]
                for version, harness in harnesses.items():
                    if version not in wanted:
                        harness.aspired = False
                        harness.cancelled = True  # BasicManager::CancelLoadServableRetry
                for version, path in wanted.items():
                    if version not in harnesses:
                        harnesses[version] = _Harness("new", path)
                        self._publish(name, version, "START")  # BasicManager::ManageServableInternal
            # InvokePolicyAndExecuteAction: one action over all models, unloads first (CompareActions)
            choices = []
            for name in sorted(self._harnesses):
                action = _availability_preserving_action(self._harnesses[name])
                if action is not None:
                    choices.append((action[0] != "unload", name, action[0], action[1]))
            if not choices:
                return None
            _, name, kind, version = min(choices)
            harness = self._harnesses[name][version]
            if kind == "load":
                harness.state = "loading"
                return kind, lambda: self._load(name, version, harness)
            harness.state = "unloading"
            return kind, lambda: self._unload(name, version, harness)

    def _execute(self, kind: str, work: Callable[[], None]) -> None:
        """basic_manager.cc: loads on the load executor (a pool during start-up, else inline), unloads inline."""
        if kind == "load":
            with self._pool_lock:
                pool = self._load_pool
                if pool is not None:
                    pool.submit(work)
                    return
        work()

    def _set_load_threads(self, threads: int) -> None:
        """BasicManager::SetNumLoadThreads; going back to inline loads waits for the pool's loads to finish."""
        with self._pool_lock:
            old = self._load_pool
            self._load_pool = (
                futures.ThreadPoolExecutor(threads, thread_name_prefix="tfserving-standin-load")
                if threads > 0
                else None
            )
            if old is not None:
                old.shutdown(wait=True)

    def _owns(self, name: str, version: int, harness: _Harness) -> bool:
        return self._harnesses.get(name, {}).get(version) is harness

    def _load(self, name: str, version: int, harness: _Harness) -> None:
        """BasicManager::ExecuteLoad + LoaderHarness::Load: attempts retried as util/retrier.cc ``Retry`` does."""
        servable = _servable(name, version)
        with self._lock:
            if not self._owns(name, version, harness):
                return
            self._sizes[(name, version)] = self._size_of(harness.path)
            self._publish(name, version, "LOADING")
        self._log(f"Loading servable version {servable}")
        tries = 0
        while True:
            if tries > 0:
                interval = max(self.load_retry_interval_micros, 0) / 1e6
                if self._stop.wait(interval):
                    return
                self._log(f"Retrying of Loading servable: {servable} retry: {tries}")
            with self._lock:
                self.load_attempts[(name, version)] = self.load_attempts.get((name, version), 0) + 1
            if self._stop.wait(self.load_seconds):
                return
            error = _load_error(harness.path)
            tries += 1
            if error is not None:
                self._log(f"Loading servable: {servable} failed: {error[0]}: {error[1]}")
            if error is None or tries >= self.max_num_load_retries + 1 or harness.cancelled:
                break
        with self._lock:
            if not self._owns(name, version, harness):
                return
            if error is not None:
                harness.state = "error"
                self._publish(name, version, "END", *error)
                self._log(f"Encountered an error for servable version {servable}: {error[0]}: {error[1]}")
            elif harness.cancelled:  # loader_harness.cc: dropped while loading -> UnloadDueToCancelledLoad
                harness.state = "disabled"
                self._publish(name, version, "END", "CANCELLED", "Loading of servable cancelled")
            else:
                harness.state = "ready"
                self._publish(name, version, AVAILABLE)
                self._log(f"Successfully loaded servable version {servable}")

    def _unload(self, name: str, version: int, harness: _Harness) -> None:
        """BasicManager::ExecuteUnload."""
        with self._lock:
            if not self._owns(name, version, harness):
                return
            self._publish(name, version, "UNLOADING")
        if self._stop.wait(self.unload_seconds):
            return
        with self._lock:
            if self._owns(name, version, harness):
                harness.state = "disabled"
                self._publish(name, version, "END")
                self._log(f"Done unloading servable version {_servable(name, version)}")

    # --- state changes and memory ------------------------------------------------------------------------------

    def _publish(self, name: str, version: int, state: str, error_code: str = "OK", error_message: str = "") -> None:
        """The servable event bus: the status every API shows, ``events``, memory. Call with the lock held."""
        model = self._models.setdefault(name, _Model())
        old = model.versions.get(version)
        self._seq += 1
        model.versions[version] = _Version(state, error_code, error_message, self._seq)
        if old is None or (old.state, old.error_code, old.error_message) != (state, error_code, error_message):
            self.events.append(Event(time.monotonic(), name, version, state, error_code))
        self._account()
        self._changed.notify_all()

    def _size_of(self, path: Path | None) -> int:
        total = 0
        if path is not None:
            for root, _dirs, files in os.walk(path):
                for file in files:
                    with contextlib.suppress(OSError):
                        total += (Path(root) / file).stat().st_size
        return int(total * self.memory_factor)

    def _account(self) -> None:
        total = sum(
            self._sizes.get((name, version), 0)
            for name, model in self._models.items()
            for version, state in model.versions.items()
            if state.state in HOLDING_MEMORY
        )
        self.memory_bytes = total
        self.peak_memory_bytes = max(self.peak_memory_bytes, total)
        limit = self.memory_limit_bytes
        if limit is not None and total > limit and not self.oom:
            self.oom = True
            self._log(f"standin: OOM kill: the models hold {total} bytes, more than --memory_limit_bytes={limit}")
            if self.process_mode:
                os.kill(os.getpid(), signal.SIGKILL)  # the kernel's OOM killer sends SIGKILL: exit 137 in Docker
            self._die()

    # --- the serving logic, shared by REST and gRPC ------------------------------------------------------------

    def _record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def _count_request(self, model_name: str, code: str, latency: tuple[str, str, float] | None = None) -> None:
        """servables/tensorflow/util.cc:117-123 ``RecordModelRequestCount`` (status: ``error::Code_Name``, "OK",
        "INVALID_ARGUMENT"...) and, for ``latency`` = (API, entrypoint, start as ``time.monotonic()``),
        util.cc:357-360 ``RecordRequestLatency`` in whole microseconds. The callers pass a latency only for an OK
        answer, as http_server.cc:194-201 and prediction_service_impl.cc:52-59 do."""
        micros = None if latency is None else int((time.monotonic() - latency[2]) * 1e6)
        with self._lock:
            key = (model_name, code)
            self._request_count[key] = self._request_count.get(key, 0) + 1
            if latency is not None and micros is not None:
                cell = (model_name, latency[0], latency[1])
                self._request_latency.setdefault(cell, _Histogram()).add(micros)

    def _degraded_run(self) -> None:
        """The test options, as a prediction is about to run: the n-th one since the share was set fails (INTERNAL)
        when floor(n x share) grows, so 0.25 fails every 4th exactly; the others wait ``predict_delay_seconds``."""
        with self._lock:
            self._degraded_runs += 1
            share = self._failure_share
            fail = math.floor(self._degraded_runs * share + 1e-9) > self._failed_runs
            if fail:
                self._failed_runs += 1
            delay = self._delay_seconds
        if fail:
            raise Status("INTERNAL", f"the stand-in failed this prediction on purpose (predict_failure_share={share})")
        if delay > 0:
            self._stop.wait(delay)

    def _resolve(self, name: str, version: int | None, label: str | None) -> tuple[_Model, int]:
        """server_core.cc ServableRequestFromModelSpec + the manager's handle lookup."""
        with self._lock:
            model = self._models.get(name)
            if label is not None:
                if model is None or label not in model.labels:
                    raise Status("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
                version = model.labels[label]
            if version is not None:
                state = model.versions.get(version) if model is not None else None
                if model is None or state is None or state.state != AVAILABLE:
                    raise Status("NOT_FOUND", f"Servable not found for request: Specific({name}, {version})")
                return model, version
            available = [v for v, s in model.versions.items() if s.state == AVAILABLE] if model is not None else []
            if model is None or not available:
                raise Status("NOT_FOUND", f"Servable not found for request: Latest({name})")
            return model, max(available)

    def status_json(self, name: str, version: int | None) -> dict[str, Any]:
        """GetModelStatusResponse as JSON (a label is ignored: TF Serving lists every version then)."""
        with self._lock:
            model = self._models.get(name)
            if version is not None:
                if model is None or version not in model.versions:
                    raise Status("NOT_FOUND", f"Could not find version {version} of model {name}")
                items = [(version, model.versions[version])]
            else:
                if model is None or not model.versions:
                    raise Status("NOT_FOUND", f"Could not find any versions of model {name}")
                items = sorted(model.versions.items(), reverse=True)  # ServableStateMonitor: std::greater
            return {
                "model_version_status": [
                    {
                        "version": str(v),
                        "state": s.state,
                        "status": {"error_code": s.error_code, "error_message": s.error_message},
                    }
                    for v, s in items
                ]
            }

    def metadata_json(self, name: str, version: int | None, label: str | None) -> dict[str, Any]:
        """GetModelMetadataResponse as TF Serving's REST API prints it (model_spec + SignatureDefMap)."""
        model, served = self._resolve(name, version, label)

        def info(specs: Mapping[str, Spec]) -> dict[str, Any]:
            out = {}
            for key, (dtype, shape) in specs.items():
                dims = [] if shape is None else [{"size": str(d), "name": ""} for d in shape]
                out[key] = {
                    "dtype": _DT_NAMES[dtype],
                    "tensor_shape": {"dim": dims, "unknown_rank": shape is None},
                    "name": f"{DEFAULT_SIGNATURE}_{key}:0",
                }
            return out

        init_op = {
            "inputs": {},
            "outputs": {
                "__saved_model_init_op": {
                    "dtype": "DT_INVALID",
                    "tensor_shape": {"dim": [], "unknown_rank": True},
                    "name": "NoOp",
                }
            },
            "method_name": "",
            "defaults": {},
        }
        serving = {
            "inputs": info(model.inputs),
            "outputs": info(model.outputs),
            "method_name": "tensorflow/serving/predict",
            "defaults": {},
        }
        return {
            "model_spec": {"name": name, "signature_name": "", "version": str(served)},
            "metadata": {
                "signature_def": {"signature_def": {"__saved_model_init_op": init_op, DEFAULT_SIGNATURE: serving}}
            },
        }

    def run(self, model: _Model, version: int, inputs: dict[str, NDArray]) -> dict[str, NDArray]:
        """Check the inputs against the signature as the graph would, run the model's function."""
        sent, wanted = set(inputs), set(model.inputs)
        if sent != wanted:
            raise Status(
                "INVALID_ARGUMENT",
                f"input size does not match signature: {len(sent)}!={len(wanted)} len({{{', '.join(sorted(sent))}}})"
                f" != len({{{', '.join(sorted(wanted))}}}). Sent extra: {{{', '.join(sorted(sent - wanted))}}}. "
                f"Missing but required: {{{', '.join(sorted(wanted - sent))}}}.",
            )
        for key, arr in inputs.items():
            shape = model.inputs[key][1]
            if shape is not None and (
                arr.ndim != len(shape) or any(d >= 0 and d != a for d, a in zip(shape, arr.shape, strict=True))
            ):
                raise Status(
                    "INVALID_ARGUMENT", f"input {key}: shape {list(arr.shape)} is not compatible with {list(shape)}"
                )
        fn = model.predict or default_predict
        if isinstance(fn, Mapping):
            fn = fn.get(version, default_predict)
        self._degraded_run()  # after the checks: a request with bad inputs fails as it would anyway
        try:
            result = fn(dict(inputs), version)
        except Status:
            raise
        except Exception as e:  # the test's model failed: TF Serving would answer with the kernel's error
            raise Status("INTERNAL", f"{type(e).__name__}: {e}") from e
        out = {}
        for key, value in result.items():
            arr = np.asarray(value)
            if key in model.outputs and model.outputs[key][0] != "string":
                arr = arr.astype(_np_dtype(model.outputs[key][0]), copy=False)
            out[key] = arr
        return out

    # --- REST --------------------------------------------------------------------------------------------------

    def handle_rest(
        self, method: str, raw_path: str, body: bytes, started: float | None = None
    ) -> tuple[int, str, bytes]:
        """(HTTP status, content type, body) for one request; ``started`` (``time.monotonic()``, before the body was
        read: http_server.cc:153) is where its request_latency begins."""
        started = time.monotonic() if started is None else started
        path = urllib.parse.urlsplit(raw_path).path
        if method == "GET" and path == PROMETHEUS_PATH:  # http_server.cc:224-239: a handler of its own, not counted
            return 200, "text/plain", self._prometheus().encode()
        if not re.fullmatch(r"(?i)/v1/.*", path):  # http_server.cc:140-149 Dispatch ignores it: not counted
            return 404, "text/plain", b"Not Found"
        seen = _RestRequest()
        try:
            doc = self._rest_v1(method, path, body, seen)
        except Status as s:
            text = '{ "error": ' + json.dumps(s.message) + " }"
            self._count_request(seen.model_name, s.code)  # http_server.cc:194-201: no latency unless HTTP 200
            return _HTTP_STATUS.get(s.code, 500), "application/json", text.encode()
        payload = json.dumps(doc, indent=1).encode()
        self._count_request(seen.model_name, "OK", (seen.method, "REST", started))
        return 200, "application/json", payload

    def _rest_v1(self, method: str, path: str, body: bytes, seen: _RestRequest) -> dict[str, Any]:
        """http_rest_api_handler.cc:65-109 ``ProcessRequest``; ``seen`` gets the model name and method as
        http_rest_api_util.cc:90-131 ``ParseModelInfo`` sets them (both stay "" when the path does not parse)."""
        predict = _PREDICT_RE.fullmatch(path) if method == "POST" else None
        status = _STATUS_RE.fullmatch(path) if method == "GET" else None
        match = predict or status
        if match is None:
            raise Status("INVALID_ARGUMENT", f"Malformed request: {method} {path}")
        name = urllib.parse.unquote(match.group(1) or "")
        seen.model_name = name
        version = int(match.group(2)) if match.group(2) else None
        label = urllib.parse.unquote(match.group(3)) if match.group(3) else None
        if predict:
            seen.method = match.group(4)  # as written: the regex is (?i), the dispatch compares exactly
            if seen.method not in _INFERENCE_METHODS:
                raise Status("INVALID_ARGUMENT", f"Malformed request: {method} {path}")
            if seen.method != "predict":
                raise Status("UNIMPLEMENTED", f"the stand-in does not implement :{seen.method}")
            kind = "predict"
        else:  # a GET sets no method: its latency has API=""
            kind = "metadata" if match.group(4) == "metadata" else "status"
            if not name:
                raise Status("INVALID_ARGUMENT", "Missing model name in request.")
        served = None
        request_format = None
        try:
            if version is not None and label is not None:  # http_rest_api_util.cc:53-58
                raise Status(
                    "INVALID_ARGUMENT",
                    f"Both model version ({version}) and model version label ({label}) cannot be supplied.",
                )
            if kind == "status":
                result = self.status_json(name, version)
            elif kind == "metadata":
                result = self.metadata_json(name, version, label)
                served = int(result["model_spec"]["version"])
            else:
                model, served = self._resolve(name, version, label)
                request_format = _request_format(body)
                result = self._rest_predict(model, served, body)
        except Status as s:
            self._record(Call("rest", kind, name, version, label, served, s.code, request_format))
            raise
        self._record(Call("rest", kind, name, version, label, served, "OK", request_format))
        return result

    def _rest_predict(self, model: _Model, version: int, body: bytes) -> dict[str, Any]:
        try:
            doc = json.loads(body)
        except ValueError as e:
            raise Status("INVALID_ARGUMENT", f"JSON Parse error: {e}") from None
        if not isinstance(doc, dict):
            raise Status("INVALID_ARGUMENT", "JSON Value: not an object")
        signature = doc.get("signature_name") or DEFAULT_SIGNATURE
        if signature != DEFAULT_SIGNATURE:
            raise Status("INVALID_ARGUMENT", f'Serving signature name: "{signature}" not found in signature def')
        if "instances" in doc and "inputs" in doc:
            raise Status("INVALID_ARGUMENT", "Not formatted correctly expecting only one of 'inputs' or 'instances'")
        if "instances" not in doc and "inputs" not in doc:
            raise Status("INVALID_ARGUMENT", "Missing 'inputs' or 'instances' key")
        specs = model.inputs
        row = "instances" in doc
        if row:
            rows = doc["instances"]
            if not isinstance(rows, list) or not rows:
                raise Status("INVALID_ARGUMENT", "'instances' must be a non-empty list")
            if all(isinstance(r, dict) and set(r) != {"b64"} for r in rows):
                try:
                    columns = {k: [r[k] for r in rows] for k in rows[0]}
                except KeyError as e:
                    raise Status("INVALID_ARGUMENT", f"instance is missing named input {e}") from None
            elif len(specs) == 1:
                columns = {next(iter(specs)): rows}
            else:
                raise Status("INVALID_ARGUMENT", "instances must be objects: the signature has several inputs")
        else:
            value = doc["inputs"]
            if isinstance(value, dict) and set(value) != {"b64"}:
                columns = value
            elif len(specs) == 1:
                columns = {next(iter(specs)): value}
            else:
                raise Status("INVALID_ARGUMENT", "inputs must be an object: the signature has several inputs")
        arrays = {k: _json_to_array(k, v, specs.get(k, ("float32", None))[0]) for k, v in columns.items()}
        outputs = self.run(model, version, arrays)
        # json_tensor.cc MakeJsonFromTensors: a single output is written without its name in both formats.
        if not row:
            if len(outputs) == 1:
                ((key, arr),) = outputs.items()
                return {"outputs": _array_to_json(key, arr)}
            return {"outputs": {k: _array_to_json(k, v) for k, v in outputs.items()}}
        sizes = {k: (v.shape[0] if v.ndim else None) for k, v in outputs.items()}
        if None in sizes.values() or len(set(sizes.values())) > 1:
            raise Status("INVALID_ARGUMENT", f"Tensors of the row format must have the same batch size: {sizes}")
        if len(outputs) == 1:
            ((key, arr),) = outputs.items()
            return {"predictions": _array_to_json(key, arr)}
        cols = {k: _array_to_json(k, v) for k, v in outputs.items()}
        return {"predictions": [dict(zip(cols, vals, strict=True)) for vals in zip(*cols.values(), strict=True)]}

    def _prometheus(self) -> str:
        """util/prometheus_exporter.cc ``GeneratePage``: metrics in name order (collected_metrics.h: a std::map),
        each with its ``# TYPE`` line even before it has a sample, cells in label order (std::map of the label
        values); lines joined by "\n" plus a final "\n"."""
        lines = [f"# TYPE {REQUEST_COUNT} counter"]  # SerializeScalar, prometheus_exporter.cc:113-142
        with self._lock:
            for (model_name, code), count in sorted(self._request_count.items()):
                labels = _prometheus_labels([("model_name", model_name), ("status", code)])
                lines.append(f"{REQUEST_COUNT}{{{labels}}} {count}")
            lines.append(f"# TYPE {REQUEST_LATENCY} histogram")  # SerializeHistogram, prometheus_exporter.cc:65-111
            for (model_name, api, entrypoint), histogram in sorted(self._request_latency.items()):
                labels = _prometheus_labels([("model_name", model_name), ("API", api), ("entrypoint", entrypoint)])
                cumulative = 0
                for index, count in enumerate(histogram.buckets):
                    cumulative += count
                    last = index == len(histogram.buckets) - 1  # its limit is DBL_MAX: printed "+Inf"
                    limit = "+Inf" if last else _six_digits(REQUEST_LATENCY_LIMITS[index])
                    lines.append(f'{REQUEST_LATENCY}_bucket{{{labels},le="{limit}"}} {cumulative}')
                lines.append(f"{REQUEST_LATENCY}_sum{{{labels}}} {_six_digits(histogram.total)}")
                lines.append(f"{REQUEST_LATENCY}_count{{{labels}}} {cumulative}")
            # stand-in only: the memory its versions hold (see the module docstring), and load attempts
            lines += ["# TYPE :standin_memory_bytes gauge", f":standin_memory_bytes {self.memory_bytes}"]
            lines += ["# TYPE :standin_peak_memory_bytes gauge", f":standin_peak_memory_bytes {self.peak_memory_bytes}"]
            lines.append("# TYPE :standin_load_attempts counter")
            for (model, version), attempts in sorted(self.load_attempts.items()):
                lines.append(f':standin_load_attempts{{model_name="{model}",version="{version}"}} {attempts}')
        return "\n".join(lines) + "\n"

    # --- gRPC --------------------------------------------------------------------------------------------------

    def _start_grpc(self) -> None:
        """The two services, registered as the generated ``add_*Servicer_to_server`` would, but with request parsers
        that import TensorFlow's protos at the first request: a stand-in process opens its port in a blink."""
        import grpc

        unlimited = 2**31 - 1
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8),
            options=[
                ("grpc.max_receive_message_length", unlimited),
                ("grpc.max_send_message_length", unlimited),
                ("grpc.so_reuseport", 0),  # a second stand-in on the same port must fail, not share it
            ],
        )
        servicers: dict[str, Any] = {
            "tensorflow.serving.PredictionService": _PredictionServicer(self),
            "tensorflow.serving.ModelService": _ModelServicer(self),
        }
        handlers = []
        for service, methods in _GRPC_METHODS.items():
            table = {
                method: grpc.unary_unary_rpc_method_handler(
                    getattr(servicers[service], method),
                    request_deserializer=_lazy_parser(module, message),
                    response_serializer=_serialize,
                )
                for method, (module, message) in methods.items()
            }
            handlers.append(grpc.method_handlers_generic_handler(service, table))
        server.add_generic_rpc_handlers(tuple(handlers))
        try:
            port = server.add_insecure_port(f"127.0.0.1:{self._wanted_ports[0]}")
        except RuntimeError:  # newer grpcio raises where older ones returned 0
            port = 0
        if not port:
            raise Status("INVALID_ARGUMENT", "Failed to BuildAndStart gRPC server")  # server.cc
        server.start()
        self._grpc, self._grpc_port = server, port

    def grpc_call(
        self,
        method: str,
        spec: Any,
        context: Any,
        work: Callable[[str, int | None, str | None], Any],
        api: str | None = None,
    ) -> Any:
        """Run ``work(name, version, label)``; a ``Status`` becomes the RPC's error. ``api`` ("Predict"): counted
        in the metrics as prediction_service_impl.cc:38-62 does (request_count always, request_latency with
        entrypoint "GRPC" when OK); without it nothing is counted (GetModelMetadata, ModelService's methods)."""
        import grpc

        started = time.monotonic()
        choice = spec.WhichOneof("version_choice")
        version = int(spec.version.value) if choice == "version" else None
        label = spec.version_label if choice == "version_label" else None
        try:
            result = work(spec.name, version, label)
        except Status as s:
            self._record(Call("grpc", method, spec.name, version, label, None, s.code))
            if api is not None:
                self._count_request(spec.name, s.code)
            context.abort(grpc.StatusCode[s.code], s.message)
        except Exception:
            if api is not None:
                self._count_request(spec.name, "UNKNOWN")  # what grpcio answers for an exception
            raise
        served = int(result.model_spec.version.value) if method in ("predict", "metadata") else None
        self._record(Call("grpc", method, spec.name, version, label, served, "OK"))
        if api is not None:
            self._count_request(spec.name, "OK", (api, "GRPC", started))
        return result

    def grpc_predict(self, request: Any, name: str, version: int | None, label: str | None) -> Any:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        model, served = self._resolve(name, version, label)
        signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
        if signature != DEFAULT_SIGNATURE:
            raise Status("INVALID_ARGUMENT", f'Serving signature name: "{signature}" not found in signature def')
        inputs = {}
        for index, (key, tensor) in enumerate(sorted(request.inputs.items())):
            arr = tf.make_ndarray(tensor)  # TensorFlow's own decoder: the reference for what clients send
            if key in model.inputs and _dtype_name(arr.dtype) != model.inputs[key][0]:
                raise Status(
                    "INVALID_ARGUMENT",
                    f"Expects arg[{index}] to be {model.inputs[key][0]} but {_dtype_name(arr.dtype)} is provided",
                )
            inputs[key] = arr
        outputs = self.run(model, served, inputs)
        wanted = list(request.output_filter) or list(outputs)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = name
        response.model_spec.version.value = served
        response.model_spec.signature_name = signature
        for key in wanted:
            if key not in outputs:
                raise Status("INVALID_ARGUMENT", f"output tensor alias not found in signature: {key}")
            tensor = response.outputs[key]
            if self.tensor_content_responses:
                tensor.CopyFrom(tf.make_tensor_proto(outputs[key]))
            else:
                _fill_typed_fields(tensor, outputs[key])
        return response

    def grpc_metadata(self, request: Any, name: str, version: int | None, label: str | None) -> Any:
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        if "signature_def" not in request.metadata_field:
            raise Status("INVALID_ARGUMENT", "Metadata field signature_def must be requested")
        doc = self.metadata_json(name, version, label)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = name
        response.model_spec.version.value = int(doc["model_spec"]["version"])
        signatures = json_format.ParseDict(doc["metadata"]["signature_def"], get_model_metadata_pb2.SignatureDefMap())
        response.metadata["signature_def"].Pack(signatures)
        return response

    def grpc_status(self, name: str, version: int | None) -> Any:
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_status_pb2

        return json_format.ParseDict(self.status_json(name, version), get_model_status_pb2.GetModelStatusResponse())


def _request_format(body: bytes) -> str | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    return "row" if "instances" in doc else "columnar" if "inputs" in doc else None


def _json_to_array(key: str, value: Any, dtype: str) -> NDArray:
    """A JSON input value as an array of the signature's dtype (TF Serving's json_tensor.cc rules, roughly)."""

    def decode(item: Any) -> Any:
        if isinstance(item, list):
            return [decode(i) for i in item]
        if isinstance(item, dict):
            if set(item) != {"b64"}:
                raise Status("INVALID_ARGUMENT", f"JSON Value: {json.dumps(item)[:60]} is not a tensor value")
            return base64.b64decode(item["b64"])
        return item.encode() if isinstance(item, str) else item

    try:
        if dtype == "string":
            raw = np.asarray(decode(value), dtype=object)
            if any(not isinstance(x, bytes) for x in raw.ravel()):
                raise Status("INVALID_ARGUMENT", f"JSON Value for input {key} is not of expected type: string")
            return raw
        raw = np.asarray(value)
    except ValueError as e:
        raise Status("INVALID_ARGUMENT", f"input {key}: {e}") from None
    target = _np_dtype(dtype)
    allowed = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}.get(target.kind, "iuf")
    if raw.dtype.kind not in allowed:
        raise Status(
            "INVALID_ARGUMENT",
            f"JSON Value: {json.dumps(value)[:60]} Type: {raw.dtype} is not of expected type: {dtype}",
        )
    return raw.astype(target)


def _write_decimal(value: Any) -> float:
    """util/json_tensor.cc ``WriteDecimal`` for a float32: ``absl::StrCat`` (six digits, as ``%g``), or ``%.9g`` when
    that does not read back as the same float, so 0.1f is written 0.1, not the 0.10000000149011612 a widening to
    double would give; returned as the float64 that text parses to (NaN and +-Infinity as they are)."""
    if not np.isfinite(value):
        return float(value)
    text = f"{value:g}"
    return float(text if np.float32(text) == value else f"{value:.9g}")


def _array_to_json(key: str, arr: NDArray) -> Any:
    """TF Serving's JSON of an output: numbers as numbers; strings as text, or b64 for outputs named ``*_bytes``.

    ``MakeRowFormatJsonFromTensors``/``MakeColumnarFormatJsonFromTensors`` (util/json_tensor.cc) name the outputs
    only when there are several (``elements_are_objects = tensor_map.size() > 1``): a single output's values stand
    alone under "predictions"/"outputs" and its name is lost; ``_rest_predict`` does the same."""
    if arr.dtype in (np.float32, np.float16):
        return np.vectorize(_write_decimal, otypes=[np.float64])(arr).tolist() if arr.size else arr.tolist()
    if arr.dtype.kind not in "SUO":
        return arr.tolist()

    def encode(item: Any) -> Any:
        if isinstance(item, list):
            return [encode(i) for i in item]
        data = item.encode() if isinstance(item, str) else bytes(item)
        if key.endswith("_bytes"):
            return {"b64": base64.b64encode(data).decode("ascii")}
        return data.decode("utf-8", "replace")

    return encode(arr.tolist())


# Tensor::AsProtoField: the typed field for each dtype (and how its values are stored).
_TYPED = {
    "float32": "float_val", "float64": "double_val", "int32": "int_val", "int16": "int_val", "int8": "int_val",
    "uint8": "int_val", "uint16": "int_val", "int64": "int64_val", "bool": "bool_val", "uint32": "uint32_val",
    "uint64": "uint64_val", "float16": "half_val", "bfloat16": "half_val", "complex64": "scomplex_val",
    "complex128": "dcomplex_val",
}  # fmt: skip


def _fill_typed_fields(tensor: Any, arr: NDArray) -> None:
    import tensorflow as tf

    name = _dtype_name(arr.dtype)
    tensor.dtype = tf.string.as_datatype_enum if name == "string" else tf.as_dtype(arr.dtype).as_datatype_enum
    for size in arr.shape:
        tensor.tensor_shape.dim.add(size=size)
    tensor.tensor_shape.SetInParent()
    flat = arr.ravel()
    if name == "string":
        tensor.string_val.extend(x.encode() if isinstance(x, str) else bytes(x) for x in flat.tolist())
    elif name in ("float16", "bfloat16"):
        tensor.half_val.extend(flat.view(np.uint16).tolist())
    elif name in ("complex64", "complex128"):
        getattr(tensor, _TYPED[name]).extend(flat.view(flat.real.dtype).tolist())
    else:
        getattr(tensor, _TYPED[name]).extend(flat.tolist())


class _PredictionServicer:
    """tensorflow.serving.PredictionService (Predict, GetModelMetadata); the others answer UNIMPLEMENTED."""

    def __init__(self, tfs: TFServingStandIn) -> None:
        self.tfs = tfs

    def Predict(self, request: Any, context: Any) -> Any:
        return self.tfs.grpc_call(
            "predict",
            request.model_spec,
            context,
            lambda n, v, lb: self.tfs.grpc_predict(request, n, v, lb),
            api="Predict",  # prediction_service_impl.cc:53
        )

    def GetModelMetadata(self, request: Any, context: Any) -> Any:
        return self.tfs.grpc_call(
            "metadata", request.model_spec, context, lambda n, v, lb: self.tfs.grpc_metadata(request, n, v, lb)
        )

    def Classify(self, request: Any, context: Any) -> Any:
        self.tfs._count_request(request.model_spec.name, "UNIMPLEMENTED")  # prediction_service_impl.cc:98
        _unimplemented(context, "Classify")

    def Regress(self, request: Any, context: Any) -> Any:
        self.tfs._count_request(request.model_spec.name, "UNIMPLEMENTED")  # prediction_service_impl.cc:126
        _unimplemented(context, "Regress")

    def MultiInference(self, request: Any, context: Any) -> Any:
        _unimplemented(context, "MultiInference")  # prediction_service_impl.cc:131-146 counts nothing


class _ModelServicer:
    """tensorflow.serving.ModelService (GetModelStatus, HandleReloadConfigRequest)."""

    def __init__(self, tfs: TFServingStandIn) -> None:
        self.tfs = tfs

    def GetModelStatus(self, request: Any, context: Any) -> Any:
        return self.tfs.grpc_call("status", request.model_spec, context, lambda n, v, lb: self.tfs.grpc_status(n, v))

    def HandleReloadConfigRequest(self, request: Any, context: Any) -> Any:
        import grpc
        from tensorflow_serving.apis import model_management_pb2

        response = model_management_pb2.ReloadConfigResponse()
        try:
            self.tfs.apply_config(request.config)
        except Status as s:
            self.tfs._record(Call("grpc", "reload", "", None, None, None, s.code))
            context.abort(grpc.StatusCode[s.code], s.message)
        self.tfs._record(Call("grpc", "reload", "", None, None, None, "OK"))
        return response


def _unimplemented(context: Any, what: str) -> None:
    import grpc

    context.abort(grpc.StatusCode.UNIMPLEMENTED, f"the stand-in does not implement {what}")


class _RestHandler(BaseHTTPRequestHandler):
    tfs: TFServingStandIn
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def _answer(self, method: str) -> None:
        started = time.monotonic()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, content_type, payload = self.tfs.handle_rest(method, self.path, body, started)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


# The services and request messages of tensorflow_serving/apis/*_service_pb2_grpc.py.
_GRPC_METHODS = {
    "tensorflow.serving.PredictionService": {
        "Classify": ("classification_pb2", "ClassificationRequest"),
        "Regress": ("regression_pb2", "RegressionRequest"),
        "Predict": ("predict_pb2", "PredictRequest"),
        "MultiInference": ("inference_pb2", "MultiInferenceRequest"),
        "GetModelMetadata": ("get_model_metadata_pb2", "GetModelMetadataRequest"),
    },
    "tensorflow.serving.ModelService": {
        "GetModelStatus": ("get_model_status_pb2", "GetModelStatusRequest"),
        "HandleReloadConfigRequest": ("model_management_pb2", "ReloadConfigRequest"),
    },
}


def _lazy_parser(module: str, message: str) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        return getattr(importlib.import_module(f"tensorflow_serving.apis.{module}"), message).FromString(data)

    return parse


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


# --- process mode: python -m tests.support.tfserving_standin --------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class StandInExited(RuntimeError):
    """The stand-in process exited while a test waited for it to serve."""

    def __init__(self, returncode: int, output: str) -> None:
        super().__init__(f"the TF Serving stand-in exited with status {returncode}:\n{output}")
        self.returncode = returncode
        self.output = output


class StandInProcess:
    """``tensorflow_model_server`` played by ``python -m tests.support.tfserving_standin``, for tests: started with
    TF Serving's flags, waited for (bounded) until its ports accept connections, killed with SIGKILL and restarted
    from the same config file on the same ports, as a crashed server restarted by Docker or systemd."""

    def __init__(
        self,
        model_config_file: str | Path,
        *,
        poll_seconds: float = 0.0,
        max_num_load_retries: int = DEFAULT_MAX_NUM_LOAD_RETRIES,
        load_retry_interval_micros: int = DEFAULT_LOAD_RETRY_INTERVAL_MICROS,
        allow_version_labels_for_unavailable_models: bool = False,
        file_system_poll_wait_seconds: float = DEFAULT_FILE_SYSTEM_POLL_WAIT_SECONDS,
        memory_limit_bytes: int | None = None,
        load_seconds: float = 0.0,
        predict_failure_share: float = 0.0,
        predict_delay_seconds: float = 0.0,
        extra_args: Sequence[str] = (),
        port: int | None = None,
        rest_api_port: int | None = None,
    ) -> None:
        self.port = port or _free_port()
        self.rest_api_port = rest_api_port or _free_port()
        self.args = [
            f"--port={self.port}",
            f"--rest_api_port={self.rest_api_port}",
            f"--model_config_file={model_config_file}",
            f"--model_config_file_poll_wait_seconds={poll_seconds}",
            f"--max_num_load_retries={max_num_load_retries}",
            f"--load_retry_interval_micros={load_retry_interval_micros}",
            f"--file_system_poll_wait_seconds={file_system_poll_wait_seconds}",
            f"--load_seconds={load_seconds}",
        ]
        if allow_version_labels_for_unavailable_models:
            self.args.append("--allow_version_labels_for_unavailable_models")
        if memory_limit_bytes is not None:
            self.args.append(f"--memory_limit_bytes={memory_limit_bytes}")
        if predict_failure_share:
            self.args.append(f"--predict_failure_share={_checked_failure_share(predict_failure_share)}")
        if predict_delay_seconds:
            self.args.append(f"--predict_delay_seconds={_checked_delay_seconds(predict_delay_seconds)}")
        self.args += list(extra_args)
        self._dir = tempfile.TemporaryDirectory(prefix="tfserving-standin-")
        self.log_path = Path(self._dir.name) / "output.log"
        self.log_path.touch()
        self._log_start = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def __enter__(self) -> StandInProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        self._dir.cleanup()

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_api_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    @property
    def output(self) -> str:
        """stdout and stderr of the latest start."""
        return self.log_path.read_bytes()[self._log_start :].decode(errors="replace")

    def start(self, *, wait: bool = True, timeout: float = 20.0) -> None:
        """Launch it; with ``wait``, return once both ports accept connections (``StandInExited`` if it exits,
        ``TimeoutError`` after ``timeout`` s)."""
        if self.running:
            raise RuntimeError("the stand-in is already running")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        self._log_start = self.log_path.stat().st_size
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.tfserving_standin", *self.args],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 20.0) -> None:
        assert self.proc is not None, "not started"
        deadline = time.monotonic() + timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise StandInExited(code, self.output)
            if _accepts(self.port) and _accepts(self.rest_api_port):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the TF Serving stand-in did not serve within {timeout} s:\n{self.output}")
            time.sleep(0.02)

    def wait_output(self, text: str, timeout: float = 20.0) -> None:
        """Block until ``text`` appears in the output of the latest start (a log line such as ``Loading servable
        version {name: m version: 1}``)."""
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {text!r} in the stand-in's output within {timeout} s:\n{self.output}")
            time.sleep(0.01)

    def wait_exit(self, timeout: float = 20.0) -> int:
        assert self.proc is not None, "not started"
        return self.proc.wait(timeout)

    def kill(self) -> int:
        """SIGKILL, as a crash or ``docker kill``; the exit status (-9)."""
        assert self.proc is not None, "not started"
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(10)

    def restart(self, *, wait: bool = True, timeout: float = 20.0) -> None:
        """kill -9 if it still runs, then start again: the same flags, so the config file is read anew."""
        if self.running:
            self.kill()
        self.start(wait=wait, timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # TF Serving has no SIGTERM handler: it dies of it
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def metrics(self) -> dict[str, float]:
        """``/monitoring/prometheus/metrics`` as {name with labels: value}: ``:standin_peak_memory_bytes``,
        ``:tensorflow:serving:request_count{model_name="m",status="OK"}``..."""
        import urllib.request

        with urllib.request.urlopen(self.rest_url + PROMETHEUS_PATH, timeout=5) as answer:
            text = answer.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out


def _flag_checked(check: Callable[[float], float]) -> Callable[[str], float]:
    """A float flag checked by ``check`` (its ValueError becomes argparse's message)."""

    def parse(text: str) -> float:
        try:
            return check(float(text))
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _flag_bool(text: str) -> bool:
    if text.lower() in ("true", "1"):
        return True
    if text.lower() in ("false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"not a bool: {text}")


def main(argv: Sequence[str] | None = None) -> int:
    """``tensorflow_model_server`` (main.cc) with the flags below; runs until a signal kills it."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.tfserving_standin",
        description="A stand-in for tensorflow_model_server, for tests (see tests/support/tfserving_standin.py).",
        allow_abbrev=False,
    )
    flag = parser.add_argument
    flag("--port", type=int, default=8500, help="gRPC port (TF Serving's flag)")
    flag("--rest_api_port", type=int, default=0, help="REST port; 0: no REST (TF Serving's flag)")
    flag("--model_config_file", default="")
    flag("--model_config_file_poll_wait_seconds", type=float, default=0.0)
    flag("--file_system_poll_wait_seconds", type=float, default=DEFAULT_FILE_SYSTEM_POLL_WAIT_SECONDS)
    flag("--max_num_load_retries", type=int, default=DEFAULT_MAX_NUM_LOAD_RETRIES)
    flag("--load_retry_interval_micros", type=int, default=DEFAULT_LOAD_RETRY_INTERVAL_MICROS)
    flag("--allow_version_labels_for_unavailable_models", type=_flag_bool, nargs="?", const=True, default=False)
    flag("--enable_serialization_as_tensor_content", type=_flag_bool, nargs="?", const=True, default=False)
    flag("--memory_limit_bytes", type=int, default=None, help="stand-in only: SIGKILL itself above this")
    flag("--memory_factor", type=float, default=1.0, help="stand-in only: memory held per byte on disk")
    flag("--load_seconds", type=float, default=0.0, help="stand-in only: how long each load attempt takes")
    flag("--unload_seconds", type=float, default=0.0, help="stand-in only: how long an unload takes")
    flag(
        "--predict_failure_share",
        type=_flag_checked(_checked_failure_share),
        default=0.0,
        help="stand-in only: this share of predictions fails with INTERNAL (0.25: every 4th)",
    )
    flag(
        "--predict_delay_seconds",
        type=_flag_checked(_checked_delay_seconds),
        default=0.0,
        help="stand-in only: extra seconds each prediction takes",
    )
    args, unknown = parser.parse_known_args(argv)
    for arg in unknown:
        print(f"unknown argument: {arg}", flush=True)  # main.cc reports it and carries on

    def fail(error: str) -> int:
        print(f"Failed to start server. Error: {error}", flush=True)  # main.cc, on stdout
        return EXIT_STARTUP_FAILED

    if args.port == 0:
        return fail(
            "INVALID_ARGUMENT: At least one of server_options.grpc_port or server_options.grpc_socket_path must be set."
        )
    if not args.model_config_file:
        return fail("INVALID_ARGUMENT: the stand-in needs --model_config_file (no --model_name/--model_base_path)")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, signal.SIG_DFL)  # no handlers: a signal kills it, as it kills TF Serving
    tfs = TFServingStandIn(
        faithful=True,
        grpc=True,
        rest=args.rest_api_port != 0,
        port=args.port,
        rest_api_port=args.rest_api_port,
        tensor_content_responses=args.enable_serialization_as_tensor_content,
        allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
        model_config_file=args.model_config_file,
        model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        max_num_load_retries=args.max_num_load_retries,
        load_retry_interval_micros=args.load_retry_interval_micros,
        load_seconds=args.load_seconds,
        unload_seconds=args.unload_seconds,
        memory_limit_bytes=args.memory_limit_bytes,
        memory_factor=args.memory_factor,
        predict_failure_share=args.predict_failure_share,
        predict_delay_seconds=args.predict_delay_seconds,
        process_mode=True,
        log=log,
    )
    try:
        tfs.start()
    except Status as e:
        tfs.stop()
        return fail(f"{e.code}: {e.message}")
    except OSError as e:  # the REST port is taken: TF Serving logs it and serves gRPC only; the stand-in stops
        tfs.stop()
        return fail(f"UNAVAILABLE: cannot listen on the REST port {args.rest_api_port}: {e}")
    log(f"Running gRPC ModelServer at 127.0.0.1:{args.port} ...")
    if args.rest_api_port:
        log(f"Exporting HTTP/REST API at:localhost:{args.rest_api_port} ...")
    threading.Event().wait()  # until a signal kills the process
    return 0


if __name__ == "__main__":
    sys.exit(main())
