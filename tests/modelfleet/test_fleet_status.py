"""Issue 11: fleets report what they serve (heartbeats through the store); ``status``, ``--wait``, automatic
rollback. Real S3 and GCS servers, real agent processes (SIGKILLable), each with its own faithful TF Serving stand-in.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from model_export import layout
from model_export.constants import CANARY, STABLE
from model_export.fleet_status import model_status
from model_export.heartbeat import Heartbeat
from model_export.publish import publish
from model_export.store import open_store
from model_export.versions import get_manifest
from modelfleet.cli import main
from tests.conftest import new_bucket
from tests.support.agent import MODEL, failing_copy, wait_until
from tests.support.cli import run_cli
from tests.support.fleet import HEARTBEAT, Traffic, fleet

WAIT = 60.0  # generous: agents are processes on a loaded 2-core machine


@pytest.fixture(params=["s3", "gcs"])
def cloud_store(request: pytest.FixtureRequest) -> str:
    kind = request.param
    request.getfixturevalue(f"{kind}_server")
    return f"{'s3' if kind == 's3' else 'gs'}://{new_bucket(kind)}/models"


def status_json(store: str, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["status", "--store", store, "--model", MODEL, "--json", *extra]) == 0
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    return doc


def converged_on(store: str, fleet_name: str, version: int, live: int) -> bool:
    f = model_status(store, MODEL).fleets[fleet_name]
    return f.converged and f.desired == version and len(f.live) == live


def test_status_shows_every_instance_converged_after_a_promote_and_a_killed_agent_turns_stale(
    cloud_store: str, savedmodels: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = cloud_store
    publish(savedmodels["v1"], store, MODEL, label=STABLE)
    with fleet(store, tmp_path, {STABLE: 2, CANARY: 1}) as vms:
        wait_until("both fleets serve v1", lambda: converged_on(store, STABLE, 1, 2), WAIT)
        publish_cmd = ["publish", str(savedmodels["v2"]), "--store", store, "--model", MODEL, "--label", CANARY]
        assert main([*publish_cmd, "--wait", "--timeout", "60"]) == 0
        # --wait returned: the canary fleet's instance serves v2 AVAILABLE now, by its own report
        doc = status_json(store, capsys)
        assert doc["fleets"]["canary"]["converged"] is True
        assert [i["serving"] for i in doc["fleets"]["canary"]["instances"]] == [2]
        assert main(["promote", "--store", store, "--model", MODEL, "--wait", "--timeout", "60"]) == 0
        doc = status_json(store, capsys)
        assert doc["model"] == MODEL and doc["labels"] == {"stable": 2}
        stable = doc["fleets"]["stable"]
        assert stable["desired"] == 2 and stable["converged"] is True
        assert sorted(i["id"] for i in stable["instances"]) == ["s0", "s1"]
        assert all(i["serving"] == 2 and i["state"] == "serving" and i["fresh"] for i in stable["instances"])
        # TF Serving itself serves v2 under the stable label on both (what the heartbeat claims is what is)
        for vm in vms[STABLE]:
            assert vm.tfs.labels(MODEL)[STABLE] == 2

        # A killed agent (SIGKILL: no last word) turns stale after 3 intervals, and does not block --wait.
        vms[STABLE][1].kill()
        wait_until(
            "s1 stale",
            lambda: (
                {i["id"]: i["fresh"] for i in status_json(store, capsys)["fleets"]["stable"]["instances"]}
                == {"s0": True, "s1": False}
            ),
            WAIT,
        )
        killed = next(i for i in status_json(store, capsys)["fleets"]["stable"]["instances"] if i["id"] == "s1")
        assert killed["state"] == "stale"
        assert main(["rollback", "--store", store, "--model", MODEL, "--wait", "--timeout", "60"]) == 0
        assert converged_on(store, STABLE, 1, 1)
        # A stopped agent says so in its last heartbeat: not live at once, no 3-interval wait.
        vms[CANARY][0].stop()
        beat = Heartbeat.loads(open_store(store).read(layout.heartbeat_key(CANARY, "c0")).data, "c0")
        assert beat.stopping and not any(i.fresh for i in model_status(store, MODEL).fleets[CANARY].instances)


def test_promote_wait_fails_on_a_version_that_does_not_load_and_rolls_back(
    s3_server: object, savedmodels: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"s3://{new_bucket('s3')}/models"
    publish(savedmodels["v1"], store, MODEL, label=STABLE)
    bad = failing_copy(savedmodels["v2"], tmp_path / "bad", "INVALID_ARGUMENT: op not registered")
    publish(bad, store, MODEL, label=CANARY)
    with fleet(store, tmp_path, {STABLE: 2}):
        wait_until("stable serves v1", lambda: converged_on(store, STABLE, 1, 2), WAIT)
        # Without --rollback-on-failure: exit 1 naming the instances and the error; stable stays on v2.
        capsys.readouterr()
        assert main(["label", "--store", store, "--model", MODEL, STABLE, "2", "--wait", "--timeout", "60"]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert "failed to load" in err and "op not registered" in err and ("s0" in err or "s1" in err)
        assert get_manifest(store, MODEL).labels[STABLE] == 2
        assert main(["rollback", "--store", store, "--model", MODEL, "--wait", "--timeout", "60"]) == 0

        # promote --wait --rollback-on-failure of another bad version (a first attempt: a version tried again shows
        # TF Serving's earlier END until it reads the new config, which the agent does not take for a new failure):
        # stable goes back to v1, the history says who and why.
        bad3 = failing_copy(savedmodels["v2"], tmp_path / "bad3", "INVALID_ARGUMENT: op not registered")
        publish(bad3, store, MODEL, label=CANARY)
        capsys.readouterr()
        code = main(
            ["promote", "--store", store, "--model", MODEL, "--wait", "--timeout", "60", "--rollback-on-failure"]
        )
        err = capsys.readouterr().err
        assert code == 1 and "rolled stable back to v1" in err, err
        m = get_manifest(store, MODEL)
        assert m.labels[STABLE] == 1
        last = m.history[-1]
        assert (last.action, last.label, last.from_version, last.to_version) == ("auto-rollback", STABLE, 3, 1)
        assert last.reason is not None and last.reason.startswith("auto-rollback: ")
        assert "instances of the stable fleet failed to load v3" in last.reason and "op not registered" in last.reason
        assert last.by
        wait_until("stable serves v1 again", lambda: converged_on(store, STABLE, 1, 2), WAIT)


def test_wait_times_out_with_no_live_instance_and_rollback_on_timeout(
    s3_server: object, savedmodels: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """No fleet reports at all: --wait does not pass on an empty fleet; --rollback-on-failure undoes on timeout."""
    store = f"s3://{new_bucket('s3')}/models"
    publish(savedmodels["v1"], store, MODEL, label=STABLE)
    publish(savedmodels["v2"], store, MODEL, label=CANARY)
    capsys.readouterr()
    code = main(["promote", "--store", store, "--model", MODEL, "--wait", "--timeout", "1.5", "--rollback-on-failure"])
    err = capsys.readouterr().err
    assert code == 1 and "not converged after 1.5 s" in err and "no live instance" in err, err
    assert get_manifest(store, MODEL).labels == {STABLE: 1}


def test_heartbeats_are_written_only_under_the_fleet_status_prefix(
    s3_server: object, savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    """Nothing but the heartbeat keys (and nothing of a model) is written by the agents: list before and after."""
    store = f"s3://{new_bucket('s3')}/models"
    publish(savedmodels["v1"], store, MODEL, label=STABLE)
    st = open_store(store)
    before = {o.key: o.size for o in st.list("")}
    with fleet(store, tmp_path, {STABLE: 1, CANARY: 1}):
        wait_until("both fleets serve v1", lambda: converged_on(store, CANARY, 1, 1), WAIT)
        time.sleep(3 * HEARTBEAT)
    after = {o.key: o.size for o in st.list("")}
    new = sorted(set(after) - set(before))
    assert new == [layout.heartbeat_key(CANARY, "c0"), layout.heartbeat_key(STABLE, "s0")]
    assert all(after[k] == before[k] for k in before)


def run_canary_cli(
    store: str, capsys: pytest.CaptureFixture[str], version: int, bake: float
) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(
        [
            "canary", "--store", store, "--model", MODEL, str(version), "--bake", str(bake),
            "--max-error-rate-increase", "0.1", "--min-requests", "40", "--max-p99-ratio", "3", "--json",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    doc: dict[str, Any] = json.loads(out)
    return code, doc


def test_canary_aborts_on_errors_and_on_latency_is_inconclusive_without_traffic_and_promotes_a_healthy_one(
    s3_server: object, savedmodels: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"s3://{new_bucket('s3')}/models"
    publish(savedmodels["v1"], store, MODEL, label=STABLE)
    publish(savedmodels["v2"], store, MODEL)
    bake = 6.0
    with fleet(store, tmp_path, {STABLE: 1, CANARY: 1}) as vms:
        stable_vm, canary_vm = vms[STABLE][0], vms[CANARY][0]
        wait_until("both fleets serve v1", lambda: converged_on(store, CANARY, 1, 1), WAIT)

        # 1. The canary fails a quarter of its predictions: aborted, canary cleared, exit 1, the evidence recorded.
        canary_vm.tfs.degrade(predict_failure_share=0.25)
        with Traffic([stable_vm, canary_vm], rate=40):
            code, result = run_canary_cli(store, capsys, 2, bake)
        assert (code, result["decision"]) == (1, "abort"), result
        assert "error rate" in result["reason"]
        ev = result["evidence"]
        assert ev["canary_errors"] > 0 and ev["stable_errors"] == 0 and ev["increase_lower_95"] > 0
        assert ev["canary_requests"] >= ev["min_sample"]
        m = get_manifest(store, MODEL)
        assert m.labels == {STABLE: 1}
        assert (m.history[-1].action, m.history[-1].label, m.history[-1].to_version) == ("canary-abort", CANARY, None)
        assert m.history[-1].evidence is not None and m.history[-1].evidence["canary_errors"] == ev["canary_errors"]

        # 2. No failures but 200 ms slower (stable answers in a few ms, tens under load): p99 ratio over 3, aborted.
        canary_vm.tfs.degrade(predict_failure_share=0.0, predict_delay_seconds=0.2)
        with Traffic([stable_vm, canary_vm], rate=40, threads=4):
            code, result = run_canary_cli(store, capsys, 2, bake)
        assert (code, result["decision"]) == (1, "abort"), result
        assert "p99" in result["reason"] and result["evidence"]["p99_ratio"] > 3
        assert result["evidence"]["canary_errors"] == 0

        # 3. Healthy, but no request reaches the canary: inconclusive, exit 1, the canary stays in place.
        canary_vm.tfs.degrade(predict_delay_seconds=0.0)
        with Traffic([stable_vm], rate=40):
            code, result = run_canary_cli(store, capsys, 2, bake)
        assert (code, result["decision"]) == (1, "inconclusive"), result
        # 0: the start of the bake is a heartbeat written after it began, not one holding the end of the last test
        assert result["evidence"]["canary_requests"] == 0, json.dumps(result)
        assert "too little canary traffic" in result["reason"]
        m = get_manifest(store, MODEL)
        assert m.labels == {STABLE: 1, CANARY: 2}
        assert m.history[-1].action == "canary-inconclusive"

        # 4. Healthy with traffic: promoted, exit 0.
        with Traffic([stable_vm, canary_vm], rate=40):
            code, result = run_canary_cli(store, capsys, 2, bake)
        assert (code, result["decision"]) == (0, "promote"), result
        assert result["evidence"]["canary_requests"] >= result["evidence"]["min_sample"] >= 40
        m = get_manifest(store, MODEL)
        assert m.labels == {STABLE: 2}
        assert [h.action for h in m.history[-2:]] == ["canary-promote", "canary-promote"]


def test_a_paused_agent_turns_stale_does_not_block_wait_and_comes_back(
    s3_server: object, savedmodels: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGSTOP past 3 intervals: stale; --wait goes by the live instance; SIGCONT: fresh again, and it catches up."""
    store = f"s3://{new_bucket('s3')}/models"
    publish(savedmodels["v1"], store, MODEL, label=STABLE)
    publish(savedmodels["v2"], store, MODEL)
    with fleet(store, tmp_path, {STABLE: 2}) as vms:
        wait_until("stable serves v1", lambda: converged_on(store, STABLE, 1, 2), WAIT)
        paused = vms[STABLE][1]
        assert paused.proc is not None
        paused.proc.send_signal(signal.SIGSTOP)
        try:
            wait_until("s1 stale", lambda: len(model_status(store, MODEL).fleets[STABLE].live) == 1, WAIT)
            assert main(["label", "--store", store, "--model", MODEL, STABLE, "2", "--wait", "--timeout", "60"]) == 0
            assert paused.tfs.labels(MODEL)[STABLE] == 1  # it really did not move: --wait did not count it
        finally:
            paused.proc.send_signal(signal.SIGCONT)
        wait_until("s1 fresh again, on v2", lambda: converged_on(store, STABLE, 2, 2), WAIT)
        assert paused.tfs.labels(MODEL)[STABLE] == 2


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        (["status", "--window", "0"], "--window: '0' must be more than 0"),
        (["status", "--window", "nan"], "--window"),
        (["status", "--window", "3600"], "at most 900"),
        (["canary", "2", "--bake", "60", "--max-error-rate-increase", "2"], "between 0 and 1"),
        (["canary", "2", "--bake", "-1"], "--bake"),
        (["canary", "2", "--bake", "60", "--max-p99-ratio", "0.5"], "1 or more"),
        (["promote", "--rollback-on-failure"], "--rollback-on-failure needs --wait"),
        (["label", "canary", "1", "--wait", "--rollback-on-failure"], "not with label 'canary'"),
        (["promote", "--wait", "--timeout", "0"], "--timeout"),
        (["status", "--model-typo"], "unrecognized arguments"),
    ],
)
def test_bad_fleet_options_are_one_line_and_change_nothing(
    tmp_path: Path, savedmodels: dict[str, Path], capsys: pytest.CaptureFixture[str], argv: list[str], want: str
) -> None:
    (tmp_path / "store").mkdir()
    store = f"file://{tmp_path / 'store'}"
    publish(savedmodels["v1"], store, MODEL, label=STABLE)
    publish(savedmodels["v2"], store, MODEL, label=CANARY)
    before = get_manifest(store, MODEL).to_json()
    capsys.readouterr()
    code, _, err = run_cli(capsys, argv[0], "--store", store, "--model", MODEL, *argv[1:])
    assert code == 2 and want in err and len(err.strip().splitlines()) == 1, err
    assert get_manifest(store, MODEL).to_json() == before


def test_status_of_an_unknown_model_and_publish_wait_without_a_label_are_bad_input(
    tmp_path: Path, savedmodels: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "store").mkdir()
    store = f"file://{tmp_path / 'store'}"
    assert main(["status", "--store", store, "--model", "nope"]) == 2
    assert "no model 'nope'" in capsys.readouterr().err
    assert main(["publish", str(savedmodels["v1"]), "--store", store, "--model", MODEL, "--wait"]) == 2
    assert "--wait needs --label" in capsys.readouterr().err
    assert not (tmp_path / "store" / MODEL).exists()  # nothing published
