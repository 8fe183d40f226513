"""The file store's own guarantees beyond the shared contract: create-only ``put_file`` from one read, cleanup of a
killed writer's temp files, and deletes that race writers in the same directories."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from model_export.errors import PreconditionFailed, TransferError
from model_export.store import open_store
from model_export.store.file import FileStore

HOUR = dt.timedelta(hours=1)


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    root = tmp_path / "store"
    root.mkdir()
    return FileStore(f"file://{root}", str(root))


def _temps(st: FileStore) -> list[Path]:
    return sorted(p for p in st.root.rglob(".mf-tmp-*"))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def test_put_file_never_replaces_other_content(store: FileStore, tmp_path: Path) -> None:
    src = tmp_path / "w.bin"
    src.write_bytes(b"new bytes")
    (store.root / "m" / "1").mkdir(parents=True)
    (store.root / "m" / "1" / "w.bin").write_bytes(b"old bytes")  # same size, other content
    with pytest.raises(PreconditionFailed, match=r"m/1/w\.bin already exists with other content"):
        store.put_file("m/1/w.bin", src)
    assert (store.root / "m" / "1" / "w.bin").read_bytes() == b"old bytes"
    assert _temps(store) == []


def test_put_file_of_the_same_content_again_is_success(store: FileStore, tmp_path: Path) -> None:
    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(100_000))
    first = store.put_file("m/1/w.bin", src)
    inode = (store.root / "m" / "1" / "w.bin").stat().st_ino
    again = store.put_file("m/1/w.bin", src)  # a retry whose first reply was lost
    assert again == first
    assert (store.root / "m" / "1" / "w.bin").stat().st_ino == inode  # not replaced
    assert _temps(store) == []


def test_put_file_reports_the_sha256_of_the_stored_file(store: FileStore, tmp_path: Path) -> None:
    src = tmp_path / "w.bin"
    payload = os.urandom(9 * 1024 * 1024 + 123)  # several blocks and a short tail
    src.write_bytes(payload)
    sent: list[int] = []
    stored = store.put_file("m/1/variables/w.bin", src, progress=sent.append)
    on_disk = (store.root / "m" / "1" / "variables" / "w.bin").read_bytes()
    digest = hashlib.sha256(on_disk).hexdigest()
    assert on_disk == payload
    assert (stored.sha256, stored.size, stored.checksum) == (digest, len(payload), f"sha256:{digest}")
    assert len(sent) > 1 and sum(sent) == len(payload)
    assert _temps(store) == []


def _check_consistent_or_refused(store: FileStore, key: str, src: Path) -> str:
    """put_file of a source that changes meanwhile: either an error (nothing stored) or a digest of what was stored."""
    try:
        stored = store.put_file(key, src)
    except TransferError:
        assert not store._path(key).exists()
        return "refused"
    on_disk = store._path(key).read_bytes()
    assert (stored.sha256, stored.size) == (hashlib.sha256(on_disk).hexdigest(), len(on_disk))
    return "stored"


def test_put_file_of_a_file_rewritten_meanwhile_never_records_other_bytes(store: FileStore, tmp_path: Path) -> None:
    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(16 * 1024 * 1024))
    stop = threading.Event()

    def rewrite_in_place() -> None:
        with src.open("r+b") as fh:
            while not stop.is_set():
                fh.seek(int.from_bytes(os.urandom(3), "big") * 16)
                fh.write(os.urandom(64 * 1024))
                fh.flush()

    writer = threading.Thread(target=rewrite_in_place)
    writer.start()
    try:
        outcomes = [_check_consistent_or_refused(store, f"m/1/w{i}.bin", src) for i in range(4)]
    finally:
        stop.set()
        writer.join()
    assert outcomes
    assert _temps(store) == []


def test_put_file_of_a_file_rewritten_after_its_first_block(store: FileStore, tmp_path: Path) -> None:
    src = tmp_path / "w.bin"
    src.write_bytes(b"a" * (10 * 1024 * 1024))
    rewritten = False

    def rewrite_once(_: int) -> None:
        nonlocal rewritten
        if not rewritten:
            rewritten = True
            with src.open("r+b") as fh:
                fh.write(b"b" * (10 * 1024 * 1024))

    try:
        stored = store.put_file("m/1/w.bin", src, progress=rewrite_once)
    except TransferError as e:
        assert "changed while it was being uploaded" in str(e)
        assert not (store.root / "m" / "1" / "w.bin").exists()
    else:
        on_disk = (store.root / "m" / "1" / "w.bin").read_bytes()
        assert stored.sha256 == hashlib.sha256(on_disk).hexdigest()
    assert rewritten and _temps(store) == []


def test_abort_partial_uploads_removes_only_temp_files_older_than_the_cutoff(store: FileStore) -> None:
    def temp(rel: str, age: dt.timedelta) -> Path:
        path = store.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 1000)
        when = (_now() - age).timestamp()
        os.utime(path, (when, when))
        return path

    old = temp("m/1/variables/.mf-tmp-killed", 2 * HOUR)
    old_beside_pb = temp("m/1/.mf-tmp-killed2", 3 * HOUR)
    fresh = temp("m/1/variables/.mf-tmp-live", dt.timedelta(0))
    other_version = temp("m/10/.mf-tmp-killed", 2 * HOUR)  # "m/10/" does not start with "m/1/"
    other_model = temp("n/1/.mf-tmp-killed", 2 * HOUR)
    (store.root / "m" / "1" / "variables" / "w.bin").write_bytes(b"data")

    assert store.abort_partial_uploads("m/1/", _now() - HOUR) == 2
    assert not old.exists() and not old_beside_pb.exists()
    assert fresh.exists() and other_version.exists() and other_model.exists()
    assert (store.root / "m" / "1" / "variables" / "w.bin").read_bytes() == b"data"
    assert store.abort_partial_uploads("m/1/", _now() - HOUR) == 0
    # A prefix is a key prefix, as in list(): "m/1" also covers "m/10/".
    assert store.abort_partial_uploads("m/1", _now() - HOUR) == 1
    assert not other_version.exists() and not (store.root / "m" / "10").exists()  # emptied directory removed
    assert store.abort_partial_uploads("", _now() + HOUR) == 2  # everything left, fresh or not
    assert _temps(store) == []
    assert store.abort_partial_uploads("absent/", _now()) == 0


def test_abort_partial_uploads_removes_what_a_sigkilled_writer_left(store: FileStore, tmp_path: Path) -> None:
    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(6 * 1024 * 1024))
    child = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from model_export.store.file import FileStore\n"
        "st = FileStore('file://' + sys.argv[1], sys.argv[1])\n"
        "st.put_file('m/1/w.bin', Path(sys.argv[2]), progress=lambda n: os.kill(os.getpid(), signal.SIGKILL))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", child, str(store.root), str(src)], capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == -9, proc.stderr
    [left] = _temps(store)
    assert left.stat().st_size > 0  # at least one block was written before the kill
    assert list(store.list("")) == []  # never listed as an object
    assert store.abort_partial_uploads("m/", _now() - HOUR) == 0  # too recent to judge
    assert store.abort_partial_uploads("m/", _now() + dt.timedelta(seconds=1)) == 1
    assert _temps(store) == [] and not (store.root / "m").exists()


def test_abort_partial_uploads_keeps_the_temp_file_of_a_running_write(store: FileStore, tmp_path: Path) -> None:
    src = tmp_path / "w.bin"
    payload = os.urandom(6 * 1024 * 1024)
    src.write_bytes(payload)
    cutoff = _now() - dt.timedelta(seconds=5)  # e.g. "before this publish started"
    in_flight, resume = threading.Event(), threading.Event()

    def pause(_: int) -> None:
        in_flight.set()
        resume.wait(30)

    result: list[object] = []
    writer = threading.Thread(target=lambda: result.append(store.put_file("m/1/w.bin", src, progress=pause)))
    writer.start()
    try:
        assert in_flight.wait(30)
        assert len(_temps(store)) == 1
        assert store.abort_partial_uploads("m/", cutoff) == 0
        assert len(_temps(store)) == 1
    finally:
        resume.set()
        writer.join()
    assert len(result) == 1
    assert (store.root / "m" / "1" / "w.bin").read_bytes() == payload
    assert _temps(store) == []


def test_write_leaves_no_temp_files(store: FileStore) -> None:
    token = store.write("m/manifest.json", b"one", if_absent=True)
    with pytest.raises(PreconditionFailed):
        store.write("m/manifest.json", b"two", if_absent=True)
    token = store.write("m/manifest.json", b"three", if_token=token)
    with pytest.raises(PreconditionFailed):
        store.write("m/manifest.json", b"four", if_token="stale")
    new = store.write("m/manifest.json", b"five")
    assert store.read("m/manifest.json").token == new != token
    assert _temps(store) == []


def test_concurrent_deletes_and_writes_in_the_same_directories_never_fail(store: FileStore, tmp_path: Path) -> None:
    """Regression: delete() prunes the directories it empties while another writer creates a file in them (the
    directory vanishes between its mkdir and its temp file). Every write and delete must still succeed."""
    src = tmp_path / "w.bin"
    src.write_bytes(b"weights")
    deadline = time.monotonic() + 3
    errors: list[BaseException] = []

    def churn(worker: int) -> None:
        i = 0
        try:
            while time.monotonic() < deadline:
                keys = [f"m/1/variables/{worker}-{i}.bin", f"m/1/assets/{worker}-{i}.txt"]
                store.put_file(keys[0], src)
                store.write(keys[1], b"asset")
                store.delete(keys)
                i += 1
        except BaseException as e:
            errors.append(e)

    workers = [threading.Thread(target=churn, args=(w,)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    assert list(store.list("")) == [] and _temps(store) == []
    assert not (store.root / "m").exists()


def test_stored_objects_get_the_mode_of_a_new_file_not_mkstemps_0600(tmp_path: Path) -> None:
    """Agents on a shared filesystem often run as another user: they must be able to read what was published."""
    root = tmp_path / "store"
    root.mkdir()
    st = open_store(f"file://{root}")
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 10)
    st.put_file("m/1/a.bin", src)
    st.write("m/manifest.json", b"{}")
    umask = os.umask(0o022)
    os.umask(umask)
    for rel in ("m/1/a.bin", "m/manifest.json"):
        assert stat.S_IMODE((root / rel).stat().st_mode) == 0o666 & ~umask
