"""The local disk: a full cache never blocks an update, and a local disk fault never blames the store's copy.

Real file systems where it matters: each test mounts its own small tmpfs (``size=`` for space, ``nr_inodes=`` for
inodes) and unmounts it; CI runs as root. Without the right to mount, those tests fail rather than skip: a green run
must mean the full-disk paths ran.
"""

from __future__ import annotations

import errno
import random
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from model_export.constants import STABLE
from model_export.errors import StoreError
from model_export.manifest import VersionEntry, load_manifest
from model_export.publish import publish
from model_export.store import open_store
from model_export.store.base import ProgressFn, Store
from modelfleet.agent import cache as cache_module
from modelfleet.agent.cache import DiskTooSmall, LocalCache
from modelfleet.agent.health import check_health, render_metrics
from modelfleet.agent.tfs import AVAILABLE, TfsClient
from tests.support.agent import MODEL, CountingStore, leftovers, make_agent, metrics, served, versions_in

KIB = 1024
MIB = 1024 * KIB
BLOB = 1 * MIB  # what makes each test version about 1 MiB
HEADROOM = 64 * KIB  # the tests' headroom (the default, 256 MiB, is for real disks)


class FakeTfs(TfsClient):
    """Reports the versions in ``available`` AVAILABLE (all of them when ``None``)."""

    def __init__(self, available: set[int] | None = None) -> None:
        super().__init__("http://127.0.0.1:9")
        self.available = available

    def model_status(self, model: str) -> dict[int, str]:
        return dict.fromkeys(self.available if self.available is not None else range(1, 100), AVAILABLE)


@contextmanager
def tmpfs(where: Path, **options: int) -> Iterator[Path]:
    """A tmpfs of its own at ``where`` (e.g. ``size=…``, ``nr_inodes=…``), unmounted on exit."""
    where.mkdir()
    opts = ",".join(f"{k}={v}" for k, v in options.items())
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (these tests need root, as CI has): {proc.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(where)], check=False)


@pytest.fixture
def file_store(tmp_path: Path) -> Store:
    (tmp_path / "store").mkdir()
    return open_store(f"file://{tmp_path / 'store'}")


@pytest.fixture
def big(savedmodels: dict[str, Path], tmp_path: Path) -> Path:
    """A real SavedModel plus a 1 MiB asset."""
    dest = tmp_path / "big"
    shutil.copytree(savedmodels["v1"], dest)
    (dest / "assets").mkdir(exist_ok=True)
    (dest / "assets" / "blob.bin").write_bytes(random.Random(1).randbytes(BLOB))
    return dest


def entry_of(store: Store, model: str, version: int) -> VersionEntry:
    return load_manifest(store, model)[0].get(version)


def on_disk(entry: VersionEntry) -> int:
    """What one version takes on a tmpfs (4 KiB pages), without the headroom."""
    return LocalCache(Path("/"), headroom_bytes=0).space_needed(entry, 4096)


def pages(n: float) -> int:
    return int(n) // 4096 * 4096


def test_a_full_disk_evicts_unused_versions_so_every_update_lands(file_store: Store, big: Path, tmp_path: Path) -> None:
    """Room for three and a half versions, keep_local 3: before, the 4th version never came (the cache held three
    and refused to fetch); now the least recently used unused version is evicted first, at every publish."""
    publish(big, file_store, MODEL, label=STABLE)
    size = on_disk(entry_of(file_store, MODEL, 1))
    with (
        tmpfs(tmp_path / "mnt", size=pages(3.5 * size)) as mnt,
        make_agent(file_store, mnt / "root", STABLE, tfs=FakeTfs(), keep_local=3) as agent,
    ):
        agent.cache.headroom_bytes = HEADROOM
        assert agent.run_once()
        for n in range(2, 7):
            publish(big, file_store, MODEL, label=STABLE)
            assert agent.run_once(), agent.status.models()[0].problem
            assert served(agent.config_path) == {MODEL: ([n], {STABLE: n})}
            cached = agent.cache.versions(MODEL)
            assert cached == list(range(max(1, n - 2), n + 1)), cached  # the newest three: the oldest went first
        assert leftovers(agent.root) == []
        assert agent.status.counters()[2] == {}
        assert agent.status.disk() == ({}, {MODEL: False})


def test_versions_in_use_are_never_evicted_and_a_short_disk_is_reported_not_refused(
    file_store: Store, big: Path, tmp_path: Path
) -> None:
    """Room for two and a half versions, mid-transition: the config names 1 (labeled, serving) and 2 (loading), so
    3 cannot fit. That is reported (health note, gauge), never a refusal; once 2 is AVAILABLE, 1 is no longer in use,
    and the next poll evicts it and fetches 3."""
    publish(big, file_store, MODEL, label=STABLE)
    size = on_disk(entry_of(file_store, MODEL, 1))
    tfs = FakeTfs({1})
    with (
        tmpfs(tmp_path / "mnt", size=pages(2.5 * size)) as mnt,
        make_agent(file_store, mnt / "root", STABLE, tfs=tfs) as agent,
    ):
        agent.cache.headroom_bytes = HEADROOM
        assert agent.run_once()
        publish(big, file_store, MODEL, label=STABLE)
        agent.tick()
        assert served(agent.config_path) == {MODEL: ([1, 2], {STABLE: 1})}

        publish(big, file_store, MODEL, label=STABLE)
        (report,) = agent.tick()
        assert report.transient and report.disk_too_small and not report.local_disk and report.refused is None
        assert (report.error or "").startswith("disk too small for digits v3: needs ")
        assert "with every cached version not in use evicted (in use: digits [1, 2])" in (report.error or "")
        assert agent.cache.versions(MODEL) == [1, 2]
        assert served(agent.config_path) == {MODEL: ([1, 2], {STABLE: 1})}
        assert agent.states[MODEL].refused == {}
        ok, lines = check_health(agent.status, tfs)
        assert ok, lines  # version 1 keeps serving: the fleet stays in the load balancer
        assert lines[1].startswith("digits: note: disk too small for digits v3: needs ")
        assert lines[1].endswith("; keeping version 2")
        scraped = metrics(render_metrics(agent.status))
        assert scraped['modelfleet_agent_disk_too_small{model="digits"}'] == 1
        assert scraped['modelfleet_agent_refused_versions_total{model="digits"}'] == 0

        tfs.available = {1, 2}
        agent.tick(poll_store=False)  # labels move to 2; 1 is cached but no longer in use
        assert served(agent.config_path) == {MODEL: ([2], {STABLE: 2})}
        assert agent.cache.versions(MODEL) == [1, 2]
        (report,) = agent.tick()
        assert report.error is None, report.error
        assert agent.cache.versions(MODEL) == [2, 3]
        assert served(agent.config_path) == {MODEL: ([2, 3], {STABLE: 2})}
        assert metrics(render_metrics(agent.status))['modelfleet_agent_disk_too_small{model="digits"}'] == 0


def test_a_disk_too_small_for_one_version_is_a_local_condition_not_a_refusal(
    file_store: Store, big: Path, tmp_path: Path
) -> None:
    publish(big, file_store, MODEL, label=STABLE)
    size = on_disk(entry_of(file_store, MODEL, 1))
    store = CountingStore(file_store)
    with (
        tmpfs(tmp_path / "mnt", size=pages(size / 2)) as mnt,
        make_agent(store, mnt / "root", STABLE, tfs=FakeTfs()) as agent,
    ):
        agent.cache.headroom_bytes = HEADROOM
        for _ in range(2):  # retried at every poll (it is not the version's fault), never downloaded
            (report,) = agent.tick()
            assert report.transient and report.disk_too_small and report.refused is None
            assert (report.error or "").startswith("disk too small for digits v1: needs 1.1 MiB (")
        assert store.calls["download_file"] == 0
        assert agent.states[MODEL].refused == {} and agent.status.counters()[2] == {}
        ok, lines = check_health(agent.status, agent.tfs)
        assert not ok and lines[0].startswith("digits: no version to serve yet: disk too small for digits v1: ")
        assert agent.status.disk() == ({}, {MODEL: True})
        assert agent.cache.versions(MODEL) == [] and leftovers(agent.root) == []


def test_running_out_of_inodes_is_a_local_disk_error_not_a_bad_version(
    file_store: Store, savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    """Before, no free inode for a version's subdirectory was reported as a failed download of the store's copy:
    version refused for 300 s and counted in refused_versions_total."""
    publish(savedmodels["v1"], file_store, MODEL, label=STABLE)
    with (
        tmpfs(tmp_path / "mnt", size=16 * MIB, nr_inodes=64) as mnt,
        make_agent(file_store, mnt / "root", STABLE, tfs=FakeTfs(), workers=1) as agent,
    ):
        agent.cache.headroom_bytes = HEADROOM
        assert agent.run_once()
        config = agent.config_path.read_bytes()
        publish(savedmodels["v2"], file_store, MODEL, label=STABLE)
        filler = mnt / "filler"
        filler.mkdir()
        made: list[Path] = []
        with pytest.raises(OSError, match="No space left on device"):  # every inode taken...
            while True:
                made.append(filler / str(len(made)))
                made[-1].touch()
        made.pop()
        for path in made[:5]:  # ...but 5: the temp directory and 4 more, fewer than version 2 needs
            path.unlink()

        (report,) = agent.tick()
        assert report.refused is None and report.transient and report.local_disk and not report.disk_too_small
        assert (report.error or "").startswith(f"digits: local disk: cannot write version 2 under {mnt}/root/digits:")
        assert "No space left on device" in (report.error or "") and "(no free inodes: all 64 in use)" in (
            report.error or ""
        )
        assert agent.states[MODEL].refused == {} and agent.status.counters()[2] == {}
        assert agent.status.disk() == ({MODEL: 1}, {MODEL: False})
        scraped = metrics(render_metrics(agent.status))
        assert scraped['modelfleet_agent_local_disk_errors_total{model="digits"}'] == 1
        _, lines = check_health(agent.status, agent.tfs)
        assert lines[1].startswith("digits: note: local disk: cannot write version 2 under ")
        assert agent.cache.versions(MODEL) == [1] and leftovers(agent.root) == []
        assert agent.config_path.read_bytes() == config

        shutil.rmtree(filler)  # inodes again: the next poll fetches version 2 (it was never refused)
        assert agent.run_once()
        assert versions_in(agent.config_path) == {MODEL: [2]}


class FailingStore(CountingStore):
    """Fails every download with ``error`` (after writing part of the file, as a disk that fills up does)."""

    def __init__(self, inner: Store, error: BaseException) -> None:
        super().__init__(inner)
        self.error = error

    def download_file(self, key: str, path: Path, *, progress: ProgressFn | None = None) -> None:
        path.write_bytes(b"part")
        raise self.error


def _wrapped(cause: OSError) -> StoreError:
    try:
        raise StoreError(f"cannot copy to the model root: {cause.strerror}") from cause
    except StoreError as e:
        return e


@pytest.mark.parametrize(
    ("error", "local"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
        (OSError(errno.EROFS, "Read-only file system"), True),
        (_wrapped(OSError(errno.ENOSPC, "No space left on device")), True),  # the file store's copy
        (StoreError("S3 endpoint http://s3 did not answer within 10 s"), False),  # the store's failure
    ],
    ids=["ENOSPC", "EDQUOT", "EROFS", "ENOSPC-in-store-error", "store"],
)
def test_download_faults_are_classified_by_where_they_are(
    error: BaseException, local: bool, file_store: Store, savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    publish(savedmodels["v1"], file_store, MODEL, label=STABLE)
    with make_agent(FailingStore(file_store, error), tmp_path / "root", STABLE, tfs=FakeTfs()) as agent:
        (report,) = agent.tick()
        assert report.transient and report.refused is None and report.local_disk is local
        assert (report.error or "").startswith("digits: local disk: ") is local
        assert agent.status.counters()[2] == {} and agent.status.disk()[0] == ({MODEL: 1} if local else {})
        assert leftovers(agent.root) == []


@pytest.mark.parametrize("where", ["verify", "fsync"])
def test_an_io_error_on_our_own_disk_is_local(
    where: str, file_store: Store, savedmodels: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EIO reading a downloaded file back to hash it (inside download_tree: before, a refusal), or flushing it."""

    def eio(path: Path) -> None:
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(
        "model_export.transfer.sha256_file" if where == "verify" else f"{cache_module.__name__}.fsync_tree", eio
    )
    publish(savedmodels["v1"], file_store, MODEL, label=STABLE)
    with make_agent(file_store, tmp_path / "root", STABLE, tfs=FakeTfs()) as agent:
        (report,) = agent.tick()
        assert report.refused is None and report.transient and report.local_disk
        assert "Input/output error" in (report.error or "")
        assert agent.states[MODEL].refused == {}
        monkeypatch.undo()
        assert agent.run_once()


def test_eviction_takes_only_versions_neither_a_config_nor_a_target_needs_in_any_model(
    file_store: Store, big: Path, tmp_path: Path
) -> None:
    """Models share the disk: the least recently used unused version goes, whichever model it is of. In use: what
    the written config names (``prune``/``mark_in_use``) and the target (``touch``); a model the cache knows neither
    of (here d) is left alone entirely."""
    for model in ("a", "b", "c", "d"):
        publish(big, file_store, model, label=STABLE)
    publish(big, file_store, "a", label=STABLE)
    size = on_disk(entry_of(file_store, "a", 1))
    with tmpfs(tmp_path / "mnt", size=pages(3.5 * size)) as mnt:
        cache = LocalCache(mnt / "root", headroom_bytes=HEADROOM)
        assert cache.fetch(file_store, "d", entry_of(file_store, "d", 1)) > 0
        assert cache.fetch(file_store, "a", entry_of(file_store, "a", 1)) > 0
        cache.touch("a", 1)
        assert cache.fetch(file_store, "a", entry_of(file_store, "a", 2)) > 0
        cache.touch("a", 2)
        cache.prune("a", 3, [2])  # the config names a 2 only: a 1 stays cached, unused
        # b 1 needs room: a 1 (unused) goes; a 2 (in use) and d 1 (unknown) stay.
        assert cache.fetch(file_store, "b", entry_of(file_store, "b", 1)) > 0
        cache.touch("b", 1)
        assert (cache.versions("a"), cache.versions("b"), cache.versions("d")) == ([2], [1], [1])
        # c 1: nothing left that may go.
        with pytest.raises(DiskTooSmall, match=r"^disk too small for c v1: needs .* \(in use: a \[2\], b \[1\]\)$"):
            cache.fetch(file_store, "c", entry_of(file_store, "c", 1))
        assert (cache.versions("a"), cache.versions("b"), cache.versions("c")) == ([2], [1], [])
        assert leftovers(cache.root) == []
