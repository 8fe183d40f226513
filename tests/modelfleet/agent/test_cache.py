"""The local model root: nothing half-done ever carries a version name; the cache keeps the last K versions."""

from __future__ import annotations

import errno
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from model_export.constants import STABLE
from model_export.errors import ModelfleetError
from model_export.manifest import load_manifest
from model_export.publish import publish
from model_export.store import open_store
from model_export.store.base import ProgressFn, Store
from model_export.versions import rollback
from modelfleet.agent.cache import DiskTooSmall, LocalCache
from modelfleet.agent.tfs import TfsClient
from tests.support.agent import MODEL, CountingStore, Fleet, leftovers, make_agent, served
from tests.support.tfserving_standin import TFServingStandIn


class DiskFullStore(CountingStore):
    """Writes the first half of a file, then fails as a full disk does."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.full = True

    def download_file(self, key: str, path: Path, *, progress: ProgressFn | None = None) -> None:
        if not self.full:
            super().download_file(key, path, progress=progress)
            return
        data = self.inner.read(key).data
        path.write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(path))


class FakeTfs(TfsClient):
    """Reports a fixed set of AVAILABLE versions (the TF Serving stand-in covers the REST side)."""

    def __init__(self, available: set[int]) -> None:
        super().__init__("http://127.0.0.1:9")
        self.versions = available

    def model_status(self, model: str) -> dict[int, str]:
        return dict.fromkeys(self.versions, "AVAILABLE")


@pytest.fixture
def file_store(tmp_path: Path) -> str:
    (tmp_path / "store").mkdir()
    return f"file://{tmp_path / 'store'}"


def test_disk_full_leaves_nothing_half_renamed(file_store: str, savedmodels: dict[str, Path], tmp_path: Path) -> None:
    # TF Serving runs (the stand-in applies each config the agent writes): the config is then what TF Serving is told,
    # and a disk that fills up mid-download must not change it.
    store = DiskFullStore(open_store(file_store))
    publish(savedmodels["v1"], store.inner, MODEL, label=STABLE)
    store.full = False
    with (
        TFServingStandIn(grpc=False) as tfs,
        make_agent(store, tmp_path / "root", STABLE, tfs=TfsClient(tfs.rest_url)) as agent,
    ):
        fleet = Fleet(agent, tfs)
        assert fleet.settle()
        assert served(agent.config_path) == {MODEL: ([1], {STABLE: 1})}
        config = agent.config_path.read_bytes()
        publish(savedmodels["v2"], store.inner, MODEL, label=STABLE)
        store.full = True
        reports = agent.tick()
        assert reports[0].transient and "No space left on device" in (reports[0].error or "")
        assert agent.cache.versions(MODEL) == [1]
        assert leftovers(agent.root) == []
        assert agent.states[MODEL].target == 1
        assert agent.config_path.read_bytes() == config  # TF Serving is told nothing new
        assert agent.status.counters()[2] == {}  # the version is not blamed: it is retried
        store.full = False
        assert fleet.settle()
        assert served(agent.config_path) == {MODEL: ([2], {STABLE: 2})}
        assert tfs.labels(MODEL) == {STABLE: 2}


def test_not_enough_free_space_is_a_clear_error(
    file_store: str, savedmodels: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(file_store)
    publish(savedmodels["v1"], store, MODEL, label=STABLE)
    cache = LocalCache(tmp_path / "root")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**9, 10**9 - 100, 100))
    with pytest.raises(
        DiskTooSmall, match=r"^disk too small for digits v1: needs 256\.\d MiB \(.* headroom\), free 100 B "
    ):
        cache.fetch(store, MODEL, load_manifest(store, MODEL)[0].get(1))
    assert cache.versions(MODEL) == [] and leftovers(cache.root) == []


def test_keeps_the_last_k_versions_and_rolls_back_from_the_cache(
    file_store: str, savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    # With TF Serving running, each version goes through its label move ({old, new} then {new}): the cache must keep
    # what the config names throughout, and settle on the last K used.
    store = CountingStore(open_store(file_store))
    with (
        TFServingStandIn(grpc=False) as tfs,
        make_agent(store, tmp_path / "root", STABLE, keep_local=2, tfs=TfsClient(tfs.rest_url)) as agent,
    ):
        fleet = Fleet(agent, tfs)
        for n in range(1, 5):
            publish(savedmodels["v1" if n % 2 else "v2"], store, MODEL, label=STABLE)
            assert fleet.settle()
            assert served(agent.config_path) == {MODEL: ([n], {STABLE: n})}
        assert agent.cache.versions(MODEL) == [3, 4]
        store.reset()
        rollback(store, MODEL)
        assert fleet.settle()
        assert served(agent.config_path) == {MODEL: ([3], {STABLE: 3})}
        assert tfs.labels(MODEL) == {STABLE: 3}
        assert store.calls["download_file"] == 0
        assert agent.cache.versions(MODEL) == [3, 4]


def test_never_deletes_a_version_the_config_references(
    file_store: str, savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    store = open_store(file_store)
    publish(savedmodels["v1"], store, MODEL, label=STABLE)
    tfs = FakeTfs({1})
    with make_agent(store, tmp_path / "root", STABLE, keep_local=1, tfs=tfs) as agent:
        assert agent.run_once()
        publish(savedmodels["v2"], store, MODEL, label=STABLE)
        assert agent.run_once()
        # v2 is not AVAILABLE yet: the config still needs v1 (its label), so both stay despite keep_local=1.
        assert served(agent.config_path) == {MODEL: ([1, 2], {STABLE: 1})}
        assert agent.cache.versions(MODEL) == [1, 2]
        tfs.versions = {1, 2}
        agent.tick(poll_store=False)
        assert served(agent.config_path) == {MODEL: ([2], {STABLE: 2})}
        assert agent.cache.versions(MODEL) == [2]


def test_leftovers_of_an_interrupted_run_are_removed_and_state_survives_a_restart(
    file_store: str, savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    store = open_store(file_store)
    publish(savedmodels["v1"], store, MODEL, label=STABLE)
    root = tmp_path / "root"
    with make_agent(store, root, STABLE) as agent:
        assert agent.run_once()
    (root / MODEL / ".tmp-2-abc" / "variables").mkdir(parents=True)
    (root / MODEL / ".tmp-2-abc" / "saved_model.pb").write_bytes(b"half")
    config = (root / "models.config").read_bytes()
    broken = open_store(f"file://{tmp_path / 'gone'}")  # a store that cannot answer
    with make_agent(broken, root, STABLE) as agent:
        assert leftovers(root) == []
        assert agent.status.models()[0].target == 1  # resumed from the state file
        reports = agent.tick()
        assert reports[0].error is not None
        assert (root / "models.config").read_bytes() == config


def test_a_second_agent_on_the_same_root_is_refused(file_store: str, tmp_path: Path) -> None:
    with (
        make_agent(file_store, tmp_path / "root", STABLE),
        pytest.raises(ModelfleetError, match="another modelfleet agent is running"),
    ):
        make_agent(file_store, tmp_path / "root", STABLE)
