"""A publisher paused past prune's grace (SIGSTOP, as a sleeping laptop or a frozen pod) can never commit a broken
version, nor touch another publisher's files: prune fences its number in the manifest before deleting anything.

Each test runs the real CLI in a subprocess that stops itself at one phase (tests/support/paused_publish.py), then
runs prune and a competing publisher, then resumes it, on all three stores.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from model_export.errors import ModelfleetError
from model_export.manifest import load_manifest
from model_export.publish import publish
from model_export.store import ObjectInfo, Store, open_store
from model_export.store.base import DelegatingStore
from model_export.transfer import download_tree
from model_export.versions import prune
from tests.support.paused_publish import FILES_BEFORE_PAUSE, PHASES, start_paused

GRACE = 1.0
# Bounds for a loaded 2-core machine; the waits end as soon as their condition holds.
STOP_TIMEOUT = 120.0
EXIT_TIMEOUT = 120.0


def _model_with_assets(src: Path, dest: Path, tag: str, files: int = 6) -> Path:
    shutil.copytree(src, dest)
    (dest / "assets").mkdir(exist_ok=True)
    for i in range(files):
        (dest / "assets" / f"{tag}-{i}.bin").write_bytes(f"{tag}:{i}:".encode() * 20_000)
    return dest


@pytest.mark.parametrize("phase", PHASES)
def test_paused_publisher_cannot_commit_after_prune_gave_its_version_up(
    store_uri: str, savedmodels: dict[str, Path], tmp_path: Path, phase: str
) -> None:
    st = open_store(store_uri)
    publish(savedmodels["v1"], st, "m", label="stable")
    paused_model = _model_with_assets(savedmodels["v1"], tmp_path / "paused", "paused")
    rival_model = _model_with_assets(savedmodels["v1"], tmp_path / "rival", "rival")

    proc = start_paused(phase, paused_model, store_uri, STOP_TIMEOUT)
    try:
        if phase == "uploading":  # paused mid-upload: some files stored, not all
            total = sum(1 for p in paused_model.rglob("*") if p.is_file())
            assert FILES_BEFORE_PAUSE <= len(list(st.list("m/2/"))) < total
        time.sleep(GRACE + 0.5)  # the paused reservation is now older than the grace

        plan = prune(st, "m", keep=10, pending_grace_seconds=GRACE)
        assert plan.leftovers == [2] and plan.in_progress == []
        rival = publish(rival_model, st, "m")
        assert rival.version == 3, "a version given up is never handed out again"
    finally:
        proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=EXIT_TIMEOUT)

    assert proc.returncode == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "version 2" in lines[0] and "nothing was committed" in lines[0], err
    manifest, _ = load_manifest(st, "m")
    assert sorted(manifest.versions) == [1, 3]
    assert 2 in manifest.abandoned and manifest.last_version == 3
    assert manifest.labels == {"stable": 1}, "the paused publish's --label never landed"
    # Every listed version is complete and intact (no file of one publisher overwritten by another) ...
    for v, entry in manifest.versions.items():
        download_tree(st, f"m/{v}", entry.files, tmp_path / "check" / str(v))
    # ... and the abandoned number holds nothing, not even what the paused publisher uploaded after resuming.
    assert list(st.list("m/2/")) == []
    assert list(st.list("m/_pending/")) == []


def test_prune_with_a_live_heartbeat_leaves_the_publish_alone(store_uri: str, savedmodels: dict[str, Path]) -> None:
    """The fence only takes versions whose reservation is older than the grace: a running publish is untouched."""
    st = open_store(store_uri)
    publish(savedmodels["v1"], st, "m")
    st.write("m/_pending/2.json", b'{"publisher": "x"}', if_absent=True)
    plan = prune(st, "m", keep=10, pending_grace_seconds=600)
    assert (plan.in_progress, plan.leftovers) == ([2], [])
    manifest, _ = load_manifest(st, "m")
    assert manifest.abandoned == {}
    assert [o.key for o in st.list("m/_pending/")] == ["m/_pending/2.json"]


class _Wiping(DelegatingStore):
    """A store reset (or a person deleting objects) at one chosen instant of a publish."""

    def __init__(self, inner: Store, when: Callable[[str, str], bool], keep: Callable[[str], bool]) -> None:
        super().__init__(inner)
        self.when, self.keep, self.wiped = when, keep, False

    def _maybe_wipe(self, call: str, key: str) -> None:
        if not self.wiped and self.when(call, key):
            self.wiped = True
            self.inner.delete([o.key for o in self.inner.list("") if not self.keep(o.key)])

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        self._maybe_wipe("list", prefix)
        return self.inner.list(prefix)

    def write(self, key: str, data: bytes, *, if_token: str | None = None, if_absent: bool = False) -> str:
        self._maybe_wipe("write", key)
        return self.inner.write(key, data, if_token=if_token, if_absent=if_absent)


def _no_file_entries(st: Store) -> list[int]:
    manifest, _ = load_manifest(st, "m")
    return sorted(manifest.versions)


def test_a_store_reset_after_the_upload_is_listed_commits_nothing(tmp_path: Path, savedmodels: dict[str, Path]) -> None:
    """Found by an attack: the publisher paused at its verify listing, the S3 server was restarted empty, and the
    publish then committed a version with all its files missing, exit 0."""
    root = tmp_path / "store"
    root.mkdir()
    st = _Wiping(open_store(f"file://{root}"), lambda call, key: call == "list" and key == "m/1/", lambda k: False)
    with pytest.raises(ModelfleetError) as e:
        publish(savedmodels["v1"], st, "m", label="stable")
    assert st.wiped and "\n" not in str(e.value)
    assert _no_file_entries(st.inner) == []


def test_files_that_vanish_as_the_commit_lands_withdraw_the_version(
    tmp_path: Path, savedmodels: dict[str, Path]
) -> None:
    root = tmp_path / "store"
    root.mkdir()
    st = open_store(f"file://{root}")
    publish(savedmodels["v1"], st, "m", label="stable")
    wiping = _Wiping(
        st,
        lambda call, key: call == "write" and key == "m/manifest.json",
        lambda k: not k.startswith("m/2/"),  # only the new version's files go
    )
    with pytest.raises(ModelfleetError, match="vanished") as e:
        publish(savedmodels["v2"], wiping, "m", label="stable")
    assert "\n" not in str(e.value)
    manifest, _ = load_manifest(st, "m")
    assert sorted(manifest.versions) == [1] and manifest.labels == {"stable": 1}
    assert 2 in manifest.abandoned and manifest.last_version == 2


def test_a_manifest_deleted_during_a_publish_is_not_recreated_from_scratch(
    tmp_path: Path, savedmodels: dict[str, Path]
) -> None:
    root = tmp_path / "store"
    root.mkdir()
    st = open_store(f"file://{root}")
    publish(savedmodels["v1"], st, "m")
    publish(savedmodels["v1"], st, "m")
    wiping = _Wiping(st, lambda call, key: call == "list" and key == "m/3/", lambda k: k != "m/manifest.json")
    with pytest.raises(ModelfleetError, match="went back") as e:
        publish(savedmodels["v1"], wiping, "m")
    assert "\n" not in str(e.value)
    assert not (root / "m" / "manifest.json").exists(), "a fresh manifest would restart numbering at 1"
