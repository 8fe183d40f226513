"""Publishers in separate processes: concurrent version allocation, and a publish killed mid-upload."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from model_export.manifest import load_manifest
from model_export.store import open_store
from model_export.transfer import download_tree


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelfleet", *args]


def test_eight_concurrent_publishers_get_distinct_versions(
    store_uri: str, savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    procs = [
        subprocess.Popen(
            _cli(
                "publish",
                str(savedmodels["v1"]),
                "--store",
                store_uri,
                "--model",
                "m",
                "--json",
                "--job-id",
                f"job-{i}",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert sorted(r["version"] for r in results) == list(range(1, 9))
    assert all(r["model"] == "m" for r in results)

    st = open_store(store_uri)
    manifest, _ = load_manifest(st, "m")
    assert sorted(manifest.versions) == list(range(1, 9))
    assert manifest.last_version == 8
    by_job = {manifest.get(v).source["job_id"] for v in manifest.versions}
    assert by_job == {f"job-{i}" for i in range(8)}
    for v, entry in manifest.versions.items():
        download_tree(st, f"m/{v}", entry.files, tmp_path / str(v))  # verifies every sha256 and size
    assert not [o.key for o in st.list("m/_pending/")]


def _big_model(src: Path, dest: Path, files: int, size: int) -> Path:
    shutil.copytree(src, dest)
    (dest / "assets").mkdir(exist_ok=True)
    block = os.urandom(size)
    for i in range(files):
        (dest / "assets" / f"blob-{i:03}.bin").write_bytes(block[i:] + block[:i])
    return dest


def _settled(listing: Callable[[], set[str]], quiet: float = 2.0, bound: float = 30.0) -> set[str]:
    """What a listing shows once it stops changing: a request the killed process had sent in full may still complete
    on the server after the kill (a CI run saw one more object appear between two listings)."""
    deadline = time.monotonic() + bound
    last, since = listing(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = listing()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def test_publish_killed_mid_upload_leaves_manifest_unchanged(
    store_uri: str, savedmodels: dict[str, Path], tmp_path: Path
) -> None:
    st = open_store(store_uri)
    first = subprocess.run(
        _cli("publish", str(savedmodels["v1"]), "--store", store_uri, "--model", "m", "--label", "stable"),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "version 1" in first.stdout
    manifest_before = st.read("m/manifest.json").data

    big = _big_model(savedmodels["v1"], tmp_path / "big", files=60, size=4 * 1024 * 1024)
    proc = subprocess.Popen(
        _cli("publish", str(big), "--store", store_uri, "--model", "m", "--workers", "1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    uploaded: list[str] = []
    while time.monotonic() < deadline and len(uploaded) < 3:
        uploaded = [o.key for o in st.list("m/2/")]
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    leftovers = _settled(lambda: {o.key for o in st.list("m/2/")})
    assert 3 <= len(leftovers) < 60 + 4, "the kill must land mid-upload"
    assert st.read("m/manifest.json").data == manifest_before

    # A prune right away treats the fresh reservation as a publish in progress and deletes nothing.
    plan = subprocess.run(
        _cli("prune", "--store", store_uri, "--model", "m", "--keep", "5", "--json"),
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(plan.stdout)["in_progress"] == [2]
    assert {o.key for o in st.list("m/2/")} == leftovers

    rerun = subprocess.run(
        _cli("publish", str(big), "--store", store_uri, "--model", "m", "--json"),
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(rerun.stdout)["version"] == 3

    cleaned = subprocess.run(
        _cli("prune", "--store", store_uri, "--model", "m", "--keep", "5", "--pending-grace", "0", "--json"),
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(cleaned.stdout)
    assert (report["leftovers"], report["versions"], report["objects"]) == ([2], [], len(leftovers))
    assert list(st.list("m/2/")) == []
    assert list(st.list("m/_pending/")) == []
    manifest, _ = load_manifest(st, "m")
    assert sorted(manifest.versions) == [1, 3]
    download_tree(st, "m/3", manifest.get(3).files, tmp_path / "v3")
