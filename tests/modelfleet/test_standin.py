"""The TF Serving stand-in's faithful behaviours (tests/support/tfserving_standin.py): each test fails on the kind
in-process behaviour (instant loads, instant unloads, ports open before loading, no process to kill).

The tensorflow/serving 2.20 source each one follows is named in the stand-in's module docstring and comments."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.tfserving_standin import (
    EXIT_STARTUP_FAILED,
    FAIL_LOAD,
    ConfigError,
    Event,
    StandInExited,
    StandInProcess,
    TFServingStandIn,
)

FAST = 10_000  # a 10 ms retry interval (--load_retry_interval_micros)


def version_dir(base: Path, version: int, *, size: int = 100, loads: bool = True, fail: str | None = None) -> Path:
    """A version directory of ``size`` bytes; without saved_model.pb unless ``loads``; ``fail``: a FAIL_LOAD text."""
    path = base / str(version)
    path.mkdir(parents=True, exist_ok=True)
    (path / ("saved_model.pb" if loads else "variables.data")).write_bytes(b"x" * size)
    if fail is not None:
        (path / FAIL_LOAD).write_text(fail)
    return path


def write_config(
    path: Path, models: Mapping[str, tuple[Path, list[int] | None]], labels: Mapping[str, dict[str, int]] = {}
) -> Path:
    """A ModelServerConfig: per model its base path and ``specific`` versions (None: the default ``latest``)."""
    lines = ["model_config_list {"]
    for name, (base, versions) in models.items():
        lines += ["  config {", f'    name: "{name}"', f'    base_path: "{base}"', '    model_platform: "tensorflow"']
        if versions is not None:
            lines += ["    model_version_policy { specific {", *[f"      versions: {v}" for v in versions], "    } }"]
        lines += [f'    version_labels {{ key: "{k}" value: {v} }}' for k, v in labels.get(name, {}).items()]
        lines.append("  }")
    path.write_text("\n".join([*lines, "}", ""]))
    return path


def faithful(**options: Any) -> TFServingStandIn:
    return TFServingStandIn(grpc=False, faithful=True, manage_state_interval_seconds=0.01, **options)


def wait_for(what: str, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def predict(rest_url: str, model: str) -> float:
    body = json.dumps({"instances": [[1.0, 2.0]]}).encode()
    request = urllib.request.Request(f"{rest_url}/v1/models/{model}:predict", body, method="POST")
    with urllib.request.urlopen(request, timeout=5) as answer:
        return float(json.loads(answer.read())["predictions"][0]) / 3.0  # the default model: version * sum


def states(events: list[Event], model: str, version: int) -> list[str]:
    return [e.state for e in events if (e.model, e.version) == (model, version)]


def when(events: list[Event], model: str, version: int, state: str) -> float:
    return next(e.time for e in events if (e.model, e.version, e.state) == (model, version, state))


# --- process mode: start-up, ports, kill -9, OOM -----------------------------------------------------------------


def test_process_exits_255_when_the_first_config_has_a_version_that_cannot_load(tmp_path: Path) -> None:
    """server_core.cc: the start-up config waits for every model; a failed one fails BuildAndStart and main.cc
    returns -1 (exit status 255) after printing the error. Kind: it started serving with version 1 END."""
    version_dir(tmp_path / "m", 1, loads=False)
    config = write_config(tmp_path / "models.config", {"m": (tmp_path / "m", [1])})
    server = StandInProcess(config, max_num_load_retries=2, load_retry_interval_micros=FAST)
    with pytest.raises(StandInExited) as info:
        server.start()
    assert info.value.returncode == EXIT_STARTUP_FAILED
    assert (
        "Failed to start server. Error: UNKNOWN: 1 servable(s) did not become available: "
        "{{{name: m version: 1} due to error: NOT_FOUND: Could not find SavedModel .pb or .pbtxt at supplied export "
        f"directory path: {tmp_path}/m/1}}, }}"
    ) in info.value.output
    assert "Retrying of Loading servable: {name: m version: 1} retry: 2" in info.value.output  # 1 + 2 attempts
    assert not accepts(server.rest_api_port) and not accepts(server.port)


def test_process_exits_255_on_a_label_in_the_first_config_unless_the_flag_allows_it(tmp_path: Path) -> None:
    version_dir(tmp_path / "m", 1)
    config = write_config(tmp_path / "models.config", {"m": (tmp_path / "m", [1])}, {"m": {"stable": 1}})
    with pytest.raises(StandInExited) as info:
        StandInProcess(config).start()
    assert info.value.returncode == EXIT_STARTUP_FAILED
    assert (
        "Failed to start server. Error: FAILED_PRECONDITION: Request to assign label to version 1 of model m, "
        "which is not currently available for inference"
    ) in info.value.output
    assert "Loading servable version" not in info.value.output  # labels are checked before anything loads
    with StandInProcess(config, allow_version_labels_for_unavailable_models=True) as server:
        assert get(f"{server.rest_url}/v1/models/m/labels/stable")[0] == 200


def test_process_ports_are_refused_until_the_start_up_load_is_done_and_stay_open_during_a_reload(
    tmp_path: Path,
) -> None:
    base = tmp_path / "m"
    version_dir(base, 1)
    version_dir(base, 2)
    config = write_config(tmp_path / "models.config", {"m": (base, [1])})
    server = StandInProcess(config, poll_seconds=0.05, load_seconds=0.5)
    try:
        server.start(wait=False)
        server.wait_output("Loading servable version {name: m version: 1}")
        assert not accepts(server.rest_api_port) and not accepts(server.port)  # loading: nothing listens yet
        server.wait_ready()
        assert "Successfully loaded servable version {name: m version: 1}" in server.output
        status = get(f"{server.rest_url}/v1/models/m")[1]["model_version_status"]
        assert [(s["version"], s["state"]) for s in status] == [("1", "AVAILABLE")]

        write_config(config, {"m": (base, [2])})  # a later reload: the ports stay open, version 1 keeps serving
        wait_for("version 2 LOADING", lambda: '"LOADING"' in json.dumps(get(f"{server.rest_url}/v1/models/m")[1]))
        status = get(f"{server.rest_url}/v1/models/m")[1]["model_version_status"]
        assert [(s["version"], s["state"]) for s in status] == [("2", "LOADING"), ("1", "AVAILABLE")]
        assert predict(server.rest_url, "m") == 1.0
        wait_for("version 1 unloaded", lambda: predict(server.rest_url, "m") == 2.0)
    finally:
        server.stop()


def test_process_kill_9_and_restart_from_the_config_file(tmp_path: Path) -> None:
    base = tmp_path / "m"
    version_dir(base, 1)
    version_dir(base, 2)
    config = write_config(tmp_path / "models.config", {"m": (base, [1])})
    with StandInProcess(config) as server:
        assert predict(server.rest_url, "m") == 1.0
        assert server.kill() == -9
        assert not accepts(server.rest_api_port)
        write_config(config, {"m": (base, [2])})  # what the agent wrote while it was down
        server.restart()
        assert server.starts == 2
        assert predict(server.rest_url, "m") == 2.0
        assert get(f"{server.rest_url}/v1/models/m/versions/1")[0] == 404  # a new process: version 1 never known


def test_process_oom_kill_when_two_versions_overlap_above_the_memory_limit(tmp_path: Path) -> None:
    """AvailabilityPreservingPolicy loads version 2 while version 1 still serves: 600 + 600 bytes held at once."""
    base = tmp_path / "m"
    version_dir(base, 1, size=600)
    version_dir(base, 2, size=600)
    config = write_config(tmp_path / "models.config", {"m": (base, [1])})
    with StandInProcess(config, poll_seconds=0.05, memory_limit_bytes=1000, load_seconds=0.1) as server:
        metrics = server.metrics()
        assert (metrics[":standin_memory_bytes"], metrics[":standin_peak_memory_bytes"]) == (600, 600)
        write_config(config, {"m": (base, [2])})  # dropping 1 does not free it before 2 loads
        assert server.wait_exit(10) == -9  # SIGKILL, as the kernel's OOM killer (137 in Docker)
        assert "standin: OOM kill: the models hold 1200 bytes, more than --memory_limit_bytes=1000" in server.output


# --- in-process faithful mode: the manager -----------------------------------------------------------------------


def test_the_old_version_serves_while_the_new_one_loads_and_is_unloaded_only_once_it_is_available(
    tmp_path: Path,
) -> None:
    base = tmp_path / "m"
    version_dir(base, 1)
    version_dir(base, 2)
    config = write_config(tmp_path / "c", {"m": (base, [1])})
    with faithful(model_config_file=config, load_seconds=0.3) as tfs:
        assert tfs.versions("m") == {1: "AVAILABLE"}  # start() returned after the load
        tfs.load_config(write_config(config, {"m": (base, [2])}))
        wait_for("version 2 loading", lambda: tfs.versions("m").get(2) == "LOADING")
        assert tfs.versions("m") == {1: "AVAILABLE", 2: "LOADING"}
        assert predict(tfs.rest_url, "m") == 1.0
        tfs.wait_idle()
        assert tfs.versions("m") == {1: "END", 2: "AVAILABLE"}
        assert states(tfs.events, "m", 2) == ["START", "LOADING", "AVAILABLE"]
        assert states(tfs.events, "m", 1) == ["START", "LOADING", "AVAILABLE", "UNLOADING", "END"]
        assert when(tfs.events, "m", 1, "UNLOADING") >= when(tfs.events, "m", 2, "AVAILABLE")


def test_a_failing_load_is_retried_then_ends_with_its_error_and_the_old_version_keeps_serving(tmp_path: Path) -> None:
    base = tmp_path / "m"
    version_dir(base, 1)
    version_dir(base, 2, fail="INTERNAL: bad graph")
    config = write_config(tmp_path / "c", {"m": (base, [1])})
    with faithful(model_config_file=config, max_num_load_retries=3, load_retry_interval_micros=50_000) as tfs:
        tfs.load_config(write_config(config, {"m": (base, [2])}))
        tfs.wait_idle()
        assert tfs.versions("m") == {1: "AVAILABLE", 2: "END"}
        assert tfs.load_attempts[("m", 2)] == 4  # the first attempt and 3 retries (util/retrier.cc)
        assert states(tfs.events, "m", 2) == ["START", "LOADING", "END"]  # LOADING all along the retries
        assert when(tfs.events, "m", 2, "END") - when(tfs.events, "m", 2, "LOADING") >= 3 * 0.05
        status = get(f"{tfs.rest_url}/v1/models/m")[1]["model_version_status"]
        assert status[0] == {
            "version": "2",
            "state": "END",
            "status": {"error_code": "INTERNAL", "error_message": "bad graph"},
        }
        assert predict(tfs.rest_url, "m") == 1.0
        # Still listed, the failed version is not tried again (only new versions are loaded).
        tfs.load_config(config)
        tfs.wait_idle()
        assert tfs.load_attempts[("m", 2)] == 4


def test_loads_are_parallel_at_start_up_then_one_at_a_time(tmp_path: Path) -> None:
    models = {name: (tmp_path / name, [1]) for name in ("a", "b")}
    for base, _ in models.values():
        version_dir(base, 1)
        version_dir(base, 2)
    config = write_config(tmp_path / "c", models)
    with faithful(model_config_file=config, load_seconds=0.3) as tfs:
        # start-up (num_initial_load_threads): both LOADING before either is AVAILABLE
        assert max(when(tfs.events, n, 1, "LOADING") for n in "ab") < min(
            when(tfs.events, n, 1, "AVAILABLE") for n in "ab"
        )
        tfs.load_config(write_config(config, {name: (base, [2]) for name, (base, _) in models.items()}))
        wait_for("one new version loading", lambda: "LOADING" in (tfs.versions("a").get(2), tfs.versions("b").get(2)))
        assert sorted((tfs.versions("a")[2], tfs.versions("b")[2])) == ["LOADING", "START"]  # the other one queued
        tfs.wait_idle()
        first, second = sorted("ab", key=lambda n: when(tfs.events, n, 2, "LOADING"))
        assert when(tfs.events, second, 2, "LOADING") >= when(tfs.events, first, 2, "AVAILABLE")


def test_a_version_dropped_while_it_loads_still_loads_serves_and_is_then_unloaded(tmp_path: Path) -> None:
    """After start-up a load runs in the manager's own thread (InlineExecutor): the config that drops the version
    is only taken once the load is over, so the version becomes AVAILABLE (the highest: it answers unversioned
    requests) until the next round unloads it."""
    base = tmp_path / "m"
    version_dir(base, 1)
    version_dir(base, 2)
    config = write_config(tmp_path / "c", {"m": (base, [1])})
    with faithful(model_config_file=config, load_seconds=0.2) as tfs:
        tfs.load_config(write_config(config, {"m": (base, [1, 2])}))
        wait_for("version 2 loading", lambda: tfs.versions("m").get(2) == "LOADING")
        tfs.load_config(write_config(config, {"m": (base, [1])}))
        tfs.wait_idle()
        assert tfs.versions("m") == {1: "AVAILABLE", 2: "END"}
        assert states(tfs.events, "m", 2) == ["START", "LOADING", "AVAILABLE", "UNLOADING", "END"]


def test_a_failing_version_blocks_every_other_load_through_its_retries_even_once_dropped(tmp_path: Path) -> None:
    for name in ("m", "n"):
        version_dir(tmp_path / name, 1)
        version_dir(tmp_path / name, 2)
    version_dir(tmp_path / "m", 3, loads=False)
    config = write_config(tmp_path / "c", {"m": (tmp_path / "m", [1]), "n": (tmp_path / "n", [1])})
    with faithful(model_config_file=config, max_num_load_retries=2, load_retry_interval_micros=200_000) as tfs:
        tfs.load_config(write_config(config, {"m": (tmp_path / "m", [1, 3]), "n": (tmp_path / "n", [1])}))
        wait_for("the first attempt", lambda: tfs.load_attempts.get(("m", 3)) == 1)
        tfs.load_config(write_config(config, {"m": (tmp_path / "m", [1]), "n": (tmp_path / "n", [2])}))
        tfs.wait_idle()
        assert tfs.load_attempts[("m", 3)] == 3  # dropping it cancelled nothing: the manager was busy retrying
        assert tfs.status("m", 3)[:2] == ("END", "NOT_FOUND")
        assert when(tfs.events, "n", 2, "LOADING") >= when(tfs.events, "m", 3, "END")
        assert tfs.versions("n") == {1: "END", 2: "AVAILABLE"}


def test_a_version_dropped_during_the_parallel_start_up_load_is_cancelled_and_fails_the_start_up(
    tmp_path: Path,
) -> None:
    """Start-up loads run on a pool, so the manager sees a new version directory (latest policy) while version 1
    loads: 1 is cancelled (loader_harness.cc: END, CANCELLED) and, reached first, fails the start-up."""
    base = tmp_path / "m"
    version_dir(base, 1)
    config = write_config(tmp_path / "c", {"m": (base, None)})
    tfs = faithful(model_config_file=config, load_seconds=0.6, file_system_poll_wait_seconds=0.02)

    def publish_version_2() -> None:  # midway through version 1's load: it ends well before version 2's
        wait_for("version 1 loading", lambda: states(tfs.events, "m", 1)[-1:] == ["LOADING"])
        time.sleep(0.25)
        version_dir(base, 2)

    helper = threading.Thread(target=publish_version_2)
    helper.start()
    with pytest.raises(ConfigError) as info:
        tfs.start()
    helper.join()
    assert info.value.message == (
        "1 servable(s) did not become available: {{{name: m version: 1} due to error: CANCELLED: Loading of "
        "servable cancelled}, }"
    )
    assert states(tfs.events, "m", 1) == ["START", "LOADING", "END"]


def test_a_version_wanted_again_before_it_is_unloaded_waits_until_it_is(tmp_path: Path) -> None:
    """aspired_versions_manager.cc ContainsAnyReaspiredVersions: {1} -> {2} -> {1} while 2 loads: version 1 stays
    loaded (unwanted) until 2 is AVAILABLE, is unloaded, and only then loaded again."""
    base = tmp_path / "m"
    version_dir(base, 1)
    version_dir(base, 2)
    config = write_config(tmp_path / "c", {"m": (base, [1])})
    with faithful(model_config_file=config, load_seconds=0.2) as tfs:
        tfs.load_config(write_config(config, {"m": (base, [2])}))
        wait_for("version 2 loading", lambda: tfs.versions("m").get(2) == "LOADING")
        tfs.load_config(write_config(config, {"m": (base, [1])}))
        tfs.wait_idle()
        assert tfs.versions("m") == {1: "AVAILABLE", 2: "END"}
        assert states(tfs.events, "m", 2) == ["START", "LOADING", "AVAILABLE", "UNLOADING", "END"]
        assert states(tfs.events, "m", 1)[3:] == ["UNLOADING", "END", "START", "LOADING", "AVAILABLE"]


def test_dropping_a_model_unloads_it_and_a_new_model_in_a_reload_is_waited_for(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        version_dir(tmp_path / name, 1)
    version_dir(tmp_path / "d", 1, loads=False)
    config = write_config(tmp_path / "models.config", {"a": (tmp_path / "a", None), "b": (tmp_path / "b", None)})
    with faithful(model_config_file=config, unload_seconds=0.2, load_seconds=0.1, max_num_load_retries=0) as tfs:
        tfs.load_config(write_config(config, {"a": (tmp_path / "a", None), "c": (tmp_path / "c", None)}))
        assert tfs.versions("c") == {1: "AVAILABLE"}  # ReloadConfig returned only once the new model loaded
        tfs.wait_idle()
        assert states(tfs.events, "b", 1)[-2:] == ["UNLOADING", "END"]
        assert when(tfs.events, "b", 1, "END") - when(tfs.events, "b", 1, "UNLOADING") >= 0.2
        with pytest.raises(ConfigError) as info:
            tfs.load_config(write_config(config, {"a": (tmp_path / "a", None), "d": (tmp_path / "d", None)}))
        assert info.value.code == "UNKNOWN"
        assert info.value.message.startswith("1 model(s) did not become available: {{{name: d version: 1} due to")


def test_labels_are_checked_before_anything_of_the_config_is_applied(tmp_path: Path) -> None:
    base = tmp_path / "m"
    version_dir(base, 1)
    version_dir(base, 2)
    config = write_config(tmp_path / "c", {"m": (base, [1])})
    with faithful(model_config_file=config) as tfs:
        with pytest.raises(ConfigError, match="label to version 2 of model m, which is not currently available"):
            tfs.load_config(write_config(config, {"m": (base, [1, 2])}, {"m": {"stable": 2}}))
        tfs.wait_idle()
        assert tfs.versions("m") == {1: "AVAILABLE"} and tfs.labels("m") == {}  # version 2 not even START
        tfs.load_config(write_config(config, {"m": (base, [1, 2])}, {"m": {"stable": 1}}))
        assert tfs.labels("m") == {"stable": 1}


def test_start_up_failure_in_process_raises_and_opens_no_port_while_the_kind_mode_serves(tmp_path: Path) -> None:
    version_dir(tmp_path / "m", 1, loads=False)
    config = write_config(tmp_path / "c", {"m": (tmp_path / "m", [1])})
    port = _free_port()
    tfs = faithful(model_config_file=config, rest_api_port=port, max_num_load_retries=0)
    with pytest.raises(ConfigError, match=r"^UNKNOWN: 1 servable\(s\) did not become available"):
        tfs.start()
    assert not accepts(port)
    with TFServingStandIn(grpc=False, model_config_file=config) as kind:  # the kind default: serves, version END
        assert kind.versions("m") == {1: "END"}


def test_new_version_directories_are_found_by_the_file_system_poll(tmp_path: Path) -> None:
    base = tmp_path / "m"
    version_dir(base, 1)
    with faithful(
        model_config_file=write_config(tmp_path / "c", {"m": (base, None)}), file_system_poll_wait_seconds=0.05
    ) as tfs:
        version_dir(base, 2)  # the default policy, latest 1: version 2 replaces 1, with no new config
        wait_for("version 2 serving alone", lambda: tfs.versions("m") == {1: "END", 2: "AVAILABLE"})


def test_versions_a_test_set_are_adopted_by_the_manager(tmp_path: Path) -> None:
    version_dir(tmp_path / "m", 2)
    with faithful(load_seconds=0.2) as tfs:
        tfs.set_model("m", versions={1: "AVAILABLE"})
        tfs.load_config(write_config(tmp_path / "c", {"m": (tmp_path / "m", [2])}))
        wait_for("version 2 loading", lambda: tfs.versions("m").get(2) == "LOADING")
        assert tfs.versions("m")[1] == "AVAILABLE"
        tfs.wait_idle()
        assert tfs.versions("m") == {1: "END", 2: "AVAILABLE"}


# --- memory ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["kind", "faithful"])
def test_memory_peak_counts_both_versions_of_a_transition(tmp_path: Path, mode: str) -> None:
    base = tmp_path / "m"
    version_dir(base, 1, size=600)
    version_dir(base, 2, size=600)
    config = write_config(tmp_path / "c", {"m": (base, [1])})
    tfs = (
        faithful(model_config_file=config)
        if mode == "faithful"
        else TFServingStandIn(grpc=False, model_config_file=config)
    )
    with tfs:
        tfs.load_config(write_config(config, {"m": (base, [2])}))
        tfs.wait_idle()
        assert (tfs.memory_bytes, tfs.peak_memory_bytes, tfs.oom) == (600, 1200, False)


def test_memory_above_the_limit_kills_the_in_process_stand_in(tmp_path: Path) -> None:
    base = tmp_path / "m"
    version_dir(base, 1, size=600)
    version_dir(base, 2, size=600)
    config = write_config(tmp_path / "c", {"m": (base, [1])})
    with faithful(model_config_file=config, memory_limit_bytes=1000, memory_factor=1.5, load_seconds=0.1) as tfs:
        assert tfs.memory_bytes == 900  # 600 bytes on disk x 1.5
        port = int(tfs.rest_url.rsplit(":", 1)[1])
        tfs.load_config(write_config(config, {"m": (base, [2])}))
        wait_for("the OOM kill", lambda: tfs.oom and not accepts(port))
        assert tfs.peak_memory_bytes == 1800


def test_manager_options_need_faithful_mode() -> None:
    with pytest.raises(ValueError, match="load_seconds: only with faithful=True"):
        TFServingStandIn(load_seconds=1.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- metrics (/monitoring/prometheus/metrics) and the test options that degrade predictions -----------------------

COUNT = ":tensorflow:serving:request_count"
LATENCY = ":tensorflow:serving:request_latency"
SAMPLE = re.compile(r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>.*)\} (?P<value>\S+)")
LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')
ROW = {"instances": [[1.0, 2.0]]}
PREDICT_REST = {"model_name": "m", "API": "predict", "entrypoint": "REST"}
GET_REST = {"model_name": "m", "API": "", "entrypoint": "REST"}  # GETs set no method: API=""


@dataclass(frozen=True)
class Sample:
    name: str
    labels: tuple[tuple[str, str], ...]  # in the order printed
    value: str


def scrape(rest_url: str) -> str:
    with urllib.request.urlopen(rest_url + "/monitoring/prometheus/metrics", timeout=5) as answer:
        assert answer.status == 200 and answer.headers["Content-Type"] == "text/plain"
        text: str = answer.read().decode()
    return text


def samples(text: str) -> list[Sample]:
    """The samples that have labels; each label list must parse whole (``name="value"`` joined by commas)."""
    out = []
    for line in text.split("\n"):
        found = SAMPLE.fullmatch(line)
        if found is None:
            continue
        labels = list(LABEL.finditer(found["labels"]))
        assert ",".join(m[0] for m in labels) == found["labels"], line
        pairs = tuple((m["key"], re.sub(r"\\(.)", r"\1", m["value"])) for m in labels)
        out.append(Sample(found["name"], pairs, found["value"]))
    return out


def value(found: list[Sample], name: str, **labels: str) -> float:
    """The value of the sample with exactly these labels; 0 when there is none."""
    hits = [s for s in found if s.name == name and dict(s.labels) == labels]
    assert len(hits) <= 1, hits
    return float(hits[0].value) if hits else 0.0


def metrics_of(rest_url: str) -> list[Sample]:
    return samples(scrape(rest_url))


def requests(found: list[Sample], model: str, status: str) -> float:
    return value(found, COUNT, model_name=model, status=status)


def latencies(found: list[Sample], cell: Mapping[str, str]) -> float:
    return value(found, f"{LATENCY}_count", **cell)


def buckets(found: list[Sample], cell: Mapping[str, str]) -> list[tuple[str, int]]:
    """(le, cumulative count) of one latency cell, in page order."""
    lines = [s for s in found if s.name == f"{LATENCY}_bucket" and s.labels[:-1] == tuple(cell.items())]
    assert all(s.labels[-1][0] == "le" for s in lines)
    return [(s.labels[-1][1], int(s.value)) for s in lines]


def post(url: str, doc: Any) -> tuple[int, Any]:
    request = urllib.request.Request(url, json.dumps(doc).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def rest_only() -> Iterator[TFServingStandIn]:
    with TFServingStandIn(grpc=False) as tfs:
        tfs.set_model("m", versions={1: "AVAILABLE"})
        yield tfs


def test_metrics_page_has_tf_servings_names_labels_and_latency_buckets(rest_only: TFServingStandIn) -> None:
    """util/prometheus_exporter.cc: "/" made ":", "# TYPE" lines, a counter's ``NAME{labels} N``, a histogram's
    cumulative ``_bucket`` lines (labels in declared order, then ``le``), ``_sum``, ``_count``; util.cc's latency
    buckets Exponential(10, 1.8, 33) plus the last one up to DBL_MAX, printed "+Inf"."""
    assert post(f"{rest_only.rest_url}/v1/models/m:predict", ROW)[0] == 200
    text = scrape(rest_only.rest_url)
    assert text.endswith("\n") and "\n\n" not in text and "\r" not in text
    lines = text.split("\n")[:-1]
    count_line = f'{COUNT}{{model_name="m",status="OK"}} 1'
    first_bucket = f'{LATENCY}_bucket{{model_name="m",API="predict",entrypoint="REST",le="10"}} 0'
    last_bucket = f'{LATENCY}_bucket{{model_name="m",API="predict",entrypoint="REST",le="+Inf"}} 1'
    assert lines.index(f"# TYPE {COUNT} counter") < lines.index(count_line)
    assert lines.index(count_line) < lines.index(f"# TYPE {LATENCY} histogram") < lines.index(first_bucket)
    last = lines.index(last_bucket)
    assert last - lines.index(first_bucket) == 33  # 34 bucket lines
    assert re.fullmatch(rf'{LATENCY}_sum\{{model_name="m",API="predict",entrypoint="REST"\}} \d+', lines[last + 1])
    assert lines[last + 2] == f'{LATENCY}_count{{model_name="m",API="predict",entrypoint="REST"}} 1'

    found = samples(text)
    assert [k for k, _ in next(s for s in found if s.name == f"{LATENCY}_bucket").labels] == [
        "model_name", "API", "entrypoint", "le"
    ]  # fmt: skip
    cell = buckets(found, PREDICT_REST)
    limits = [le for le, _ in cell]
    assert len(limits) == 34
    assert limits[:5] == ["10", "18", "32.4", "58.32", "104.976"]
    assert limits[8] == "1102"  # 10 x 1.8^8 = 1101.996...: 6 significant digits, as absl::StrCat(double)
    assert limits[-3:] == ["8.19309e+08", "1.47476e+09", "+Inf"]
    assert [float(x) for x in limits[:-1]] == sorted({float(x) for x in limits[:-1]})
    cumulative = [n for _, n in cell]
    assert cumulative == sorted(cumulative) and cumulative[-1] == 1
    took = value(found, f"{LATENCY}_sum", **PREDICT_REST)  # one sample: its microseconds
    bucket = cumulative.index(1)  # the sample's bucket: [the limit before, its limit)
    assert (float(limits[bucket - 1]) if bucket else 0.0) <= took < float(limits[bucket])


def test_every_rest_request_counts_and_ok_ones_add_latency_with_the_paths_method(rest_only: TFServingStandIn) -> None:
    """http_server.cc ProcessRequest: RecordModelRequestCount for every request, RecordRequestLatency(model_name,
    api=method, "REST") when the answer is 200; the path parser sets ``method`` for POSTs only."""
    url = rest_only.rest_url
    before = metrics_of(url)
    assert (requests(before, "m", "OK"), latencies(before, PREDICT_REST), latencies(before, GET_REST)) == (0, 0, 0)

    assert post(f"{url}/v1/models/m:predict", ROW)[0] == 200
    found = metrics_of(url)
    assert (requests(found, "m", "OK"), latencies(found, PREDICT_REST), latencies(found, GET_REST)) == (1, 1, 0)

    assert get(f"{url}/v1/models/m")[0] == 200  # status
    found = metrics_of(url)
    assert (requests(found, "m", "OK"), latencies(found, PREDICT_REST), latencies(found, GET_REST)) == (2, 1, 1)

    assert get(f"{url}/v1/models/m/metadata")[0] == 200
    found = metrics_of(url)
    assert (requests(found, "m", "OK"), latencies(found, PREDICT_REST), latencies(found, GET_REST)) == (3, 1, 2)
    assert {s.name for s in found if s.name.startswith(LATENCY)} == {
        f"{LATENCY}_bucket", f"{LATENCY}_sum", f"{LATENCY}_count"
    }  # fmt: skip
    assert {dict(s.labels)["API"] for s in found if s.name == f"{LATENCY}_count"} == {"predict", ""}


@pytest.mark.parametrize(
    ("method", "path", "doc", "http", "model", "status"),
    [
        ("POST", "/v1/models/m:predict", {"instances": [{"z": [1.0]}]}, 400, "m", "INVALID_ARGUMENT"),  # bad input
        ("POST", "/v1/models/m/versions/7:predict", ROW, 404, "m", "NOT_FOUND"),
        ("POST", "/v1/models/m/labels/nope:predict", ROW, 400, "m", "INVALID_ARGUMENT"),
        ("GET", "/v1/models/nope", None, 404, "nope", "NOT_FOUND"),
        ("GET", "/v1/models/nope/metadata", None, 404, "nope", "NOT_FOUND"),
        ("POST", "/v1/models/m", ROW, 400, "", "INVALID_ARGUMENT"),  # no parse: no model name
        ("GET", "/v1/models", None, 400, "", "INVALID_ARGUMENT"),  # Missing model name in request.
        ("POST", "/v1/models/m:PREDICT", ROW, 400, "m", "INVALID_ARGUMENT"),  # parsed (?i), dispatched as written
    ],
)
def test_failed_rest_requests_count_under_their_code_and_add_no_latency(
    rest_only: TFServingStandIn, method: str, path: str, doc: Any, http: int, model: str, status: str
) -> None:
    url = rest_only.rest_url + path
    code, answer = post(url, doc) if method == "POST" else get(url)
    assert code == http and set(answer) == {"error"}
    found = metrics_of(rest_only.rest_url)
    assert [(dict(s.labels), s.value) for s in found if s.name == COUNT] == [
        ({"model_name": model, "status": status}, "1")
    ]
    assert not [s for s in found if s.name.startswith(LATENCY)]


def test_label_values_are_escaped_and_paths_outside_v1_count_nowhere(rest_only: TFServingStandIn) -> None:
    url = rest_only.rest_url
    assert post(f"{url}/v1/models/a%22b%5Cc:predict", ROW)[0] == 404  # model a"b\c
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{url}/v2/models/m", timeout=5)  # http_server.cc Dispatch: not ours, not counted
    assert info.value.code == 404
    text = scrape(url)
    assert f'{COUNT}{{model_name="a\\"b\\\\c",status="NOT_FOUND"}} 1\n' in text
    assert [s.labels for s in samples(text) if s.name == COUNT] == [(("model_name", 'a"b\\c'), ("status", "NOT_FOUND"))]


def test_predict_failure_share_fails_exactly_that_share_with_internal_and_can_change_at_run_time() -> None:
    with TFServingStandIn(grpc=False, predict_failure_share=0.5) as tfs:
        tfs.set_model("m", versions={1: "AVAILABLE"})
        url = f"{tfs.rest_url}/v1/models/m:predict"
        answers = [post(url, ROW) for _ in range(10)]
        assert [code for code, _ in answers] == [200, 500] * 5
        assert answers[1][1] == {"error": "the stand-in failed this prediction on purpose (predict_failure_share=0.5)"}
        found = metrics_of(tfs.rest_url)
        assert (requests(found, "m", "OK"), requests(found, "m", "INTERNAL")) == (5, 5)
        assert latencies(found, PREDICT_REST) == 5  # the failed ones add none
        assert post(url, {"instances": [{"z": [1.0]}]})[0] == 400  # bad input fails as it would: not a share's turn
        assert post(url, ROW)[0] == 200  # the 11th prediction: floor(11 x 0.5) = 5, no new failure

        tfs.degrade(predict_failure_share=0.25)  # a canary going bad while it serves: counted afresh
        assert [post(url, ROW)[0] for _ in range(8)] == [200, 200, 200, 500] * 2
        tfs.predict_failure_share = 0.0
        assert [post(url, ROW)[0] for _ in range(4)] == [200] * 4
        assert tfs.predict_failure_share == 0.0
        tfs.reset()  # the constructor's share again
        tfs.set_model("m", versions={1: "AVAILABLE"})
        assert [post(url, ROW)[0] for _ in range(2)] == [200, 500]
        assert requests(metrics_of(tfs.rest_url), "m", "INTERNAL") == 1  # reset() forgot the counts too
        with pytest.raises(ValueError, match=re.escape("predict_failure_share must be within 0..1, got 1.5")):
            tfs.degrade(predict_failure_share=1.5)


def test_predict_delay_seconds_puts_the_requests_latency_above_the_delay(rest_only: TFServingStandIn) -> None:
    url = rest_only.rest_url
    rest_only.degrade(predict_delay_seconds=0.05)
    for _ in range(3):
        assert post(f"{url}/v1/models/m:predict", ROW)[0] == 200
    found = metrics_of(url)
    cell = buckets(found, PREDICT_REST)
    assert all(n == 0 for le, n in cell if le != "+Inf" and float(le) <= 50_000), cell  # 50 ms = 50000 us
    assert cell[-1] == ("+Inf", 3)
    assert value(found, f"{LATENCY}_sum", **PREDICT_REST) >= 150_000
    with pytest.raises(
        ValueError, match=re.escape("predict_delay_seconds must be a finite number of seconds >= 0, got -1")
    ):
        rest_only.degrade(predict_delay_seconds=-1)


def test_grpc_predict_counts_with_entrypoint_grpc_and_metadata_and_status_count_nowhere() -> None:
    """prediction_service_impl.cc: Predict records request_count always and request_latency (API "Predict",
    entrypoint "GRPC") when OK; GetModelMetadata and ModelService.GetModelStatus record nothing."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    with TFServingStandIn() as tfs, grpc.insecure_channel(tfs.grpc_target) as channel:
        tfs.set_model("m", versions={1: "AVAILABLE"})
        prediction = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def predict(model: str) -> Any:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model
            request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0, 2.0]], dtype=tf.float32))
            return prediction.Predict(request, timeout=30)

        assert list(predict("m").outputs["y"].float_val) == [3.0]
        with pytest.raises(grpc.RpcError) as info:
            predict("nope")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        metadata.model_spec.name = "m"
        prediction.GetModelMetadata(metadata, timeout=30)
        status = get_model_status_pb2.GetModelStatusRequest()
        status.model_spec.name = "m"
        model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status, timeout=30)
        tfs.degrade(predict_failure_share=1.0)
        with pytest.raises(grpc.RpcError) as info:
            predict("m")
        assert info.value.code() == grpc.StatusCode.INTERNAL

        found = metrics_of(tfs.rest_url)
        counted = [(*dict(s.labels).values(), s.value) for s in found if s.name == COUNT]
        assert counted == [("m", "INTERNAL", "1"), ("m", "OK", "1"), ("nope", "NOT_FOUND", "1")]  # in label order
        assert [s.labels for s in found if s.name == f"{LATENCY}_count"] == [
            (("model_name", "m"), ("API", "Predict"), ("entrypoint", "GRPC"))
        ]
        assert latencies(found, {"model_name": "m", "API": "Predict", "entrypoint": "GRPC"}) == 1


def test_process_flags_degrade_predictions(tmp_path: Path) -> None:
    version_dir(tmp_path / "m", 1)
    config = write_config(tmp_path / "models.config", {"m": (tmp_path / "m", [1])})
    with StandInProcess(config, predict_failure_share=0.5, predict_delay_seconds=0.05) as server:
        assert "--predict_failure_share=0.5" in server.args and "--predict_delay_seconds=0.05" in server.args
        assert [post(f"{server.rest_url}/v1/models/m:predict", ROW)[0] for _ in range(4)] == [200, 500] * 2
        metrics = server.metrics()
        assert metrics[f'{COUNT}{{model_name="m",status="OK"}}'] == 2
        assert metrics[f'{COUNT}{{model_name="m",status="INTERNAL"}}'] == 2
        assert metrics[f'{LATENCY}_bucket{{model_name="m",API="predict",entrypoint="REST",le="37481.3"}}'] == 0
        assert metrics[f'{LATENCY}_count{{model_name="m",API="predict",entrypoint="REST"}}'] == 2
    bad = StandInProcess(config, extra_args=["--predict_failure_share=2"])
    with pytest.raises(StandInExited) as info:
        bad.start()
    assert "predict_failure_share must be within 0..1, got 2.0" in info.value.output
