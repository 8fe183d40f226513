"""A STAND-IN for TF Serving (``tensorflow_model_server``) for the tests. It is not TF Serving and runs no model.

TF Serving cannot run on our test machines (no Docker, no binary), so this serves its documented REST and gRPC APIs
on free 127.0.0.1 ports, with what the tests need to control: which versions are in which state, the labels, the
signature, and a Python function per model that plays the model.

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
        tfs.reset()                               # forget every model, label, call and config

``set_model(name, versions=None, labels=None, predict=None, inputs=None, outputs=None)``: arguments left out keep
their current value (defaults for a new model: no versions, no labels, input ``x`` float32 ``[-1, -1]``, output
``y`` float32 ``[-1]``, ``predict=default_predict``: ``y = version * x.sum(axis=-1)``, so a test can tell which
version answered). ``predict`` is ``fn(inputs: dict[str, np.ndarray], version: int) -> {name: array}``, or a dict
``{version: fn}``; it may raise ``Status("INVALID_ARGUMENT", "...")`` to answer with an error. ``inputs``/``outputs``
are ``{name: (dtype, shape)}`` with dtype names as in ``model_export.savedmodel`` ("float32", "int64", "bool",
"string") and ``None`` for an unknown rank; they make the metadata and are checked like a real graph would.

What it does as TF Serving does (tensorflow/serving 2.x sources: http_rest_api_handler.cc, http_rest_api_util.cc,
get_model_status_impl.cc, server_core.cc):

* REST: ``GET /v1/models/NAME[/versions/N|/labels/L][/metadata]``, ``POST /v1/models/NAME[/versions/N|/labels/L]
  :predict`` (row ``instances`` and columnar ``inputs``, ``{"b64": ...}`` for bytes; outputs named ``*_bytes`` are
  answered as b64), ``GET /monitoring/prometheus/metrics`` (request counts only). Errors are ``{ "error": "..." }``
  with TF Serving's HTTP status for the gRPC code (NOT_FOUND 404, INVALID_ARGUMENT 400, FAILED_PRECONDITION 400).
* ``GET /v1/models/NAME`` answers 200 as soon as any version is known, LOADING and END included; 404 for a model it
  does not know. A label in a status request is IGNORED: every version is listed (get_model_status_impl.cc).
* An unversioned request is served by the highest AVAILABLE version. An unknown or not-AVAILABLE version is NOT_FOUND
  ``Servable not found for request: Specific(m, 7)``; an unknown label is INVALID_ARGUMENT (REST 400)
  ``Unrecognized servable version label: L``.
* gRPC: ``PredictionService.Predict`` / ``GetModelMetadata``, ``ModelService.GetModelStatus`` /
  ``HandleReloadConfigRequest``, messages up to 2 GiB both ways (TF Serving allows INT_MAX). Request tensors are
  decoded by TensorFlow's own ``tf.make_ndarray`` (``tensor_content`` or typed fields); dtypes must match the
  signature. Answers use the typed fields (``float_val``...) as TF Serving does by default, or ``tensor_content``
  with ``TFServingStandIn(tensor_content_responses=True)`` (``--enable_serialization_as_tensor_content``).
* Config (``load_config``, ``HandleReloadConfigRequest``, the poll): every model needs ``model_platform:
  "tensorflow"`` and an absolute ``base_path``; names must not repeat. The new config replaces the whole set:
  versions and models left out are unloaded (state END). ``specific`` loads the listed versions whose directory
  exists under ``base_path`` (``require_version_dirs=False``: all listed versions, no disk access); ``latest``
  (default, 1) and ``all`` scan the directory. A version directory without ``saved_model.pb`` fails to load (END,
  NOT_FOUND). Labels are checked BEFORE anything loads, against the versions AVAILABLE at that moment: a label on a
  version this same config adds is refused (FAILED_PRECONDITION ``Request to assign label to version 2 of model m,
  which is not currently available for inference``) and NOTHING of that config is applied. So at start-up every
  label fails unless ``allow_version_labels_for_unavailable_models=True`` (the flag), which admits labels on
  unavailable versions only when the label is new or keeps its version. ``load_config`` raises ``ConfigError``;
  the poll records the message in ``config_errors`` and keeps going, as TF Serving logs it and keeps polling.

Where it differs: loading is instant (no START/LOADING phase unless a test sets it), no warmup, no batching, no
classify/regress (UNIMPLEMENTED), models are Python functions, error texts other than the ones quoted above are
close to but not exactly TF Serving's, only local ``base_path`` directories can be scanned.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import urllib.parse
from collections.abc import Callable, Mapping
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
DEFAULT_SIGNATURE = "serving_default"
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
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


class Status(Exception):
    """An error answer: ``code`` is a gRPC status name (``NOT_FOUND``...). A predict function may raise it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ConfigError(Status):
    """TF Serving refused a model config (``load_config``)."""


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


@dataclass
class _Model:
    versions: dict[int, _Version] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    inputs: dict[str, Spec] = field(default_factory=lambda: {"x": ("float32", (-1, -1))})
    outputs: dict[str, Spec] = field(default_factory=lambda: {"y": ("float32", (-1,))})
    predict: PredictFn | Mapping[int, PredictFn] | None = None


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


class TFServingStandIn:
    """See the module docstring. Use as a context manager; ``start()``/``stop()`` also work."""

    def __init__(
        self,
        *,
        grpc: bool = True,
        tensor_content_responses: bool = False,
        allow_version_labels_for_unavailable_models: bool = False,
        require_version_dirs: bool = True,
        model_config_file: str | Path | None = None,
        model_config_file_poll_wait_seconds: float = 0.0,
    ) -> None:
        self.grpc_enabled = grpc
        self.tensor_content_responses = tensor_content_responses
        self.allow_version_labels_for_unavailable_models = allow_version_labels_for_unavailable_models
        self.require_version_dirs = require_version_dirs
        self._config_file = model_config_file
        self._poll_seconds = model_config_file_poll_wait_seconds
        self._lock = threading.RLock()
        self._models: dict[str, _Model] = {}
        self.calls: list[Call] = []
        self.config_errors: list[str] = []
        self.config: Any = None  # the last ModelServerConfig applied
        self._counts: dict[tuple[str, str], int] = {}
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
        if self._config_file is not None:
            self.load_config(self._config_file)  # TF Serving exits when its first config fails
        standin = self

        class Handler(_RestHandler):
            tfs = standin

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self._spawn(self._http.serve_forever)
        if self.grpc_enabled:
            self._start_grpc()
        if self._config_file is not None and self._poll_seconds > 0:
            self.watch_config(self._config_file, self._poll_seconds)

    def stop(self) -> None:
        self._stop.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace=None)
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, daemon=True, name="tfserving-standin")
        thread.start()
        self._threads.append(thread)

    @property
    def rest_url(self) -> str:
        assert self._http is not None, "the stand-in is not started"
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
                model.versions = {int(v): _Version(s) for v, s in versions.items()}
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
            self._models.setdefault(name, _Model()).versions[version] = _Version(state, error_code, error_message)

    def remove_model(self, name: str) -> None:
        with self._lock:
            self._models.pop(name, None)

    def versions(self, name: str) -> dict[int, str]:
        with self._lock:
            model = self._models.get(name)
            return {v: s.state for v, s in sorted(model.versions.items())} if model else {}

    def labels(self, name: str) -> dict[str, int]:
        with self._lock:
            model = self._models.get(name)
            return dict(model.labels) if model else {}

    def reset(self) -> None:
        with self._lock:
            self._models.clear()
            self.calls.clear()
            self.config_errors.clear()
            self._counts.clear()
            self.config = None

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
        with self._lock:
            which = config.WhichOneof("config")
            if which is None:
                return  # "Taking no action for empty config."
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
                        f"Expected model {entry.name} to have an absolute path or URI; "
                        f"got base_path()={entry.base_path}",
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
            loads = {entry.name: self._aspired(entry) for entry in entries}
            # Everything checked: apply (new versions first, then unload the others, as TF Serving does).
            for name, aspired in loads.items():
                model = self._models.setdefault(name, _Model())
                for version, state in aspired.items():
                    model.versions[version] = state
                for version, state in model.versions.items():
                    if version not in aspired and state.state != "END":
                        model.versions[version] = _Version("END")
                model.labels = new_labels[name]
            for name, model in self._models.items():
                if name not in loads:
                    model.versions = {v: _Version("END") for v in model.versions}
                    model.labels = {}
            self.config = config

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

    def _aspired(self, entry: Any) -> dict[int, _Version]:
        """The versions TF Serving would load for one config entry, with the state they reach."""
        policy = entry.model_version_policy
        kind = policy.WhichOneof("policy_choice") or "latest"
        listed = sorted(set(policy.specific.versions)) if kind == "specific" else []
        if kind == "specific" and not self.require_version_dirs:
            return {v: _Version(AVAILABLE) for v in listed}
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
        out = {}
        for version in chosen:
            vdir = base / str(version)
            if (vdir / "saved_model.pb").is_file() or (vdir / "saved_model.pbtxt").is_file():
                out[version] = _Version(AVAILABLE)
            else:
                out[version] = _Version(
                    "END",
                    "NOT_FOUND",
                    f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {vdir}",
                )
        return out

    # --- the serving logic, shared by REST and gRPC ------------------------------------------------------------

    def _record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)
            if call.method == "predict":
                key = (call.model, call.code)
                self._counts[key] = self._counts.get(key, 0) + 1

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

    def handle_rest(self, method: str, raw_path: str, body: bytes) -> tuple[int, str, bytes]:
        """(HTTP status, content type, body) for one request."""
        path = urllib.parse.urlsplit(raw_path).path
        if method == "GET" and path == PROMETHEUS_PATH:
            return 200, "text/plain", self._prometheus().encode()
        if not re.fullmatch(r"(?i)/v1/.*", path):
            return 404, "text/plain", b"Not Found"
        try:
            return 200, "application/json", json.dumps(self._rest_v1(method, path, body), indent=1).encode()
        except Status as s:
            text = '{ "error": ' + json.dumps(s.message) + " }"
            return _HTTP_STATUS.get(s.code, 500), "application/json", text.encode()

    def _rest_v1(self, method: str, path: str, body: bytes) -> dict[str, Any]:
        predict = _PREDICT_RE.fullmatch(path) if method == "POST" else None
        status = _STATUS_RE.fullmatch(path) if method == "GET" else None
        match = predict or status
        if match is None:
            raise Status("INVALID_ARGUMENT", f"Malformed request: {method} {path}")
        name = urllib.parse.unquote(match.group(1) or "")
        version = int(match.group(2)) if match.group(2) else None
        label = urllib.parse.unquote(match.group(3)) if match.group(3) else None
        kind = "predict" if predict else "metadata" if match.group(4) else "status"
        if predict and match.group(4).lower() != "predict":
            raise Status("UNIMPLEMENTED", f"the stand-in does not implement :{match.group(4)}")
        if not name:
            raise Status("INVALID_ARGUMENT", "Missing model name in request.")
        served = None
        request_format = None
        try:
            if version is not None and label is not None:
                raise Status("INVALID_ARGUMENT", "Both model version and model version label cannot be supplied.")
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
        lines = ["# TYPE :tensorflow:serving:request_count counter"]
        with self._lock:
            for (model, code), count in sorted(self._counts.items()):
                lines.append(f':tensorflow:serving:request_count{{model_name="{model}",status="{code}"}} {count}')
        return "\n".join(lines) + "\n"

    # --- gRPC --------------------------------------------------------------------------------------------------

    def _start_grpc(self) -> None:
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        unlimited = 2**31 - 1
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8),
            options=[("grpc.max_receive_message_length", unlimited), ("grpc.max_send_message_length", unlimited)],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionServicer(self), self._grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelServicer(self), self._grpc)
        self._grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._grpc.start()

    def grpc_call(
        self, method: str, spec: Any, context: Any, work: Callable[[str, int | None, str | None], Any]
    ) -> Any:
        """Run ``work(name, version, label)``; a ``Status`` becomes the RPC's error."""
        import grpc

        choice = spec.WhichOneof("version_choice")
        version = int(spec.version.value) if choice == "version" else None
        label = spec.version_label if choice == "version_label" else None
        try:
            result = work(spec.name, version, label)
        except Status as s:
            self._record(Call("grpc", method, spec.name, version, label, None, s.code))
            context.abort(grpc.StatusCode[s.code], s.message)
        served = int(result.model_spec.version.value) if method in ("predict", "metadata") else None
        self._record(Call("grpc", method, spec.name, version, label, served, "OK"))
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


def _array_to_json(key: str, arr: NDArray) -> Any:
    """TF Serving's JSON of an output: numbers as numbers; strings as text, or b64 for outputs named ``*_bytes``."""
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
            "predict", request.model_spec, context, lambda n, v, lb: self.tfs.grpc_predict(request, n, v, lb)
        )

    def GetModelMetadata(self, request: Any, context: Any) -> Any:
        return self.tfs.grpc_call(
            "metadata", request.model_spec, context, lambda n, v, lb: self.tfs.grpc_metadata(request, n, v, lb)
        )

    def Classify(self, request: Any, context: Any) -> Any:
        _unimplemented(context, "Classify")

    def Regress(self, request: Any, context: Any) -> Any:
        _unimplemented(context, "Regress")

    def MultiInference(self, request: Any, context: Any) -> Any:
        _unimplemented(context, "MultiInference")


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
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, content_type, payload = self.tfs.handle_rest(method, self.path, body)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass
