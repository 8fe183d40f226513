"""Bounded boot and brownouts (issue 10, item 5): the store never holds up TF Serving.

- At boot, the start-up config (the versions TF Serving has loaded on this VM before, from the agent's state file) is
  written before any store request: a black-holed store costs TF Serving's start nothing. The boot unit runs
  ``--startup-config``, which makes no store request at all; ``--once`` writes it first, then polls the store.
- The store poll runs in its own thread and releases the state lock around store requests, so reconciling with TF
  Serving (the label move of a transition in progress) goes on while a store request hangs.

Times are asserted as bounds well under the store budget, not measured as benchmarks.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from model_export.constants import STABLE
from model_export.publish import publish
from model_export.store import open_store
from model_export.store.base import REQUEST_BUDGET_ENV, Blob, DelegatingStore, Store
from modelfleet.agent.main import STATE_NAME
from modelfleet.agent.tfs import TfsClient
from modelfleet.agent.tfs_config import ModelEntry, render
from modelfleet.cli import main
from modelfleet.cli.agent_cmd import store_budget
from tests.support.agent import MODEL, make_agent, served, wait_until
from tests.support.servers import BlackHole, black_hole, free_port, point_s3_at
from tests.support.tfserving_standin import TFServingStandIn

BUDGET = 5.0  # the store budget in these tests


@pytest.fixture
def hole(monkeypatch: pytest.MonkeyPatch) -> Iterator[BlackHole]:
    with black_hole() as it:
        point_s3_at(monkeypatch, it.endpoint)
        monkeypatch.delenv(REQUEST_BUDGET_ENV, raising=False)
        yield it


def rebooted_root(root: Path, version: int = 1) -> str:
    """A model root after a reboot: ``version`` on disk, and the agent's state saying TF Serving loaded it here (it
    served, labeled). Returns the start-up config the agent must write: that version alone, no label."""
    vdir = root / MODEL / str(version)
    (vdir / "variables").mkdir(parents=True)
    (vdir / "saved_model.pb").write_bytes(b"\0" * 64)
    state = {
        "schema": 2,
        "role": STABLE,
        "models": {
            MODEL: {
                "target": version,
                "desired": version,
                "config": {"versions": [version], "labels": {STABLE: version}},
                "last_good": version,
                "proven": [version],
                "failed": {},
                "crashes": {},
            }
        },
    }
    (root / STATE_NAME).write_text(json.dumps(state))
    return render([ModelEntry(MODEL, str(root / MODEL), (version,), {})])


def written(config: Path, expected: str) -> bool:
    try:
        return config.read_text() == expected
    except FileNotFoundError:
        return False


def test_once_writes_the_startup_config_before_any_store_request(hole: BlackHole, tmp_path: Path) -> None:
    root = tmp_path / "root"
    expected = rebooted_root(root)
    result: list[bool] = []
    with store_budget(BUDGET), make_agent("s3://black-hole/models", root, STABLE) as agent:
        t0 = time.monotonic()
        thread = threading.Thread(target=lambda: result.append(agent.run_once()), daemon=True)
        thread.start()
        wait_until("the start-up config names version 1", lambda: written(agent.config_path, expected), BUDGET)
        # Ordering, not timing: the config is there while the store request is still unanswered.
        assert thread.is_alive() and not result
        thread.join(BUDGET + 30)
        total = time.monotonic() - t0
    assert result == [False]  # the store poll that followed failed within its budget: not ready
    assert total < BUDGET + 30, total
    assert hole.held  # it did poll the store, after the config was written
    assert agent.config_path.read_text() == expected  # a failed poll changes nothing


def test_the_boot_step_makes_no_store_request(hole: BlackHole, tmp_path: Path) -> None:
    """``--startup-config`` (the boot unit, before TF Serving): the config from local state, and exit."""
    root = tmp_path / "root"
    expected = rebooted_root(root)
    argv = ["agent", "--store", "s3://black-hole/models", "--models", MODEL, "--root", str(root), "--role", STABLE]
    argv += ["--tfs-url", f"http://127.0.0.1:{free_port()}", "--startup-config", "--store-timeout", str(BUDGET)]
    assert main(argv) == 0
    assert (root / "models.config").read_text() == expected
    assert not hole.held  # not one connection to the store


def test_the_boot_step_on_a_new_vm_leaves_the_placeholder(hole: BlackHole, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    placeholder = "model_config_list {\n}\n"
    (root / "models.config").write_text(placeholder)
    argv = ["agent", "--store", "s3://black-hole/models", "--models", MODEL, "--root", str(root), "--role", STABLE]
    assert main([*argv, "--tfs-url", f"http://127.0.0.1:{free_port()}", "--startup-config"]) == 0
    assert (root / "models.config").read_text() == placeholder  # nothing known: nothing written, no store request
    assert not hole.held


def test_once_and_startup_config_exclude_each_other(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["agent", "--store", f"file://{tmp_path}", "--models", MODEL, "--root", str(tmp_path / "root")]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--role", STABLE, "--once", "--startup-config"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


class HangingStore(DelegatingStore):
    """``read_if_changed`` hangs (until ``release``) once ``armed``: a store that black-holes mid-transition."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.armed = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()

    def read_if_changed(self, key: str, token: str | None) -> Blob | None:
        if self.armed.is_set():
            self.entered.set()
            self.release.wait(60)
        return self.inner.read_if_changed(key, token)


def test_a_hanging_store_poll_does_not_stall_the_label_move(savedmodels: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    uri = f"file://{tmp_path / 'store'}"
    publish(savedmodels["v1"], uri, MODEL, label=STABLE)
    store = HangingStore(open_store(uri))
    port = free_port()
    tfs_client = TfsClient(f"http://127.0.0.1:{port}", timeout=1.0)
    stop = threading.Event()
    with make_agent(store, tmp_path / "root", STABLE, tfs=tfs_client, poll_seconds=0.1) as agent:
        assert agent.run_once()
        tfs = TFServingStandIn(
            faithful=True,
            grpc=False,
            rest_api_port=port,
            model_config_file=agent.config_path,
            model_config_file_poll_wait_seconds=0.05,
            load_seconds=1.0,  # v2 loads long enough for the store to hang mid-transition
            unload_seconds=0.1,
            file_system_poll_wait_seconds=0.1,
        )
        tfs.start()
        loop = threading.Thread(target=agent.run, args=(stop,), daemon=True)
        try:
            loop.start()
            wait_until("v1 serves, labeled", lambda: served(agent.config_path) == {MODEL: ([1], {STABLE: 1})}, 20)
            publish(savedmodels["v2"], uri, MODEL, label=STABLE)
            wait_until("v2 is the target", lambda: agent.states[MODEL].target == 2, 10, every=0.01)
            store.armed.set()
            wait_until("a store poll hangs", store.entered.is_set, 5, every=0.01)
            assert served(agent.config_path) == {MODEL: ([1, 2], {STABLE: 1})}  # the transition is in progress
            wait_until("the label moves to v2", lambda: served(agent.config_path) == {MODEL: ([2], {STABLE: 2})}, 10)
            assert not store.release.is_set()  # the store request was still hanging all along
            tfs.wait_idle()
            assert tfs.versions(MODEL).get(2) == "AVAILABLE"
        finally:
            store.release.set()
            stop.set()
            loop.join(10)
            tfs.stop()
    assert not loop.is_alive()
