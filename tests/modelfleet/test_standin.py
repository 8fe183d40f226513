"""The TF Serving stand-in's faithful behaviours (tests/support/tfserving_standin.py): each test fails on the kind
in-process behaviour (instant loads, instant unloads, ports open before loading, no process to kill).

The tensorflow/serving 2.20 source each one follows is named in the stand-in's module docstring and comments."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
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
