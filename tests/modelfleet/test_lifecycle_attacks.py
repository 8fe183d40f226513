"""Attacks on `diff`, `delete` and completion: a publish that reserves its number while `delete --all` waits at its
prompt, `delete --version` racing `delete --all` and a label move, lost replies, a model published again after
`delete --all`, completion against a store that hangs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import boto3
import pytest

from model_export import versions as ops
from model_export.delete import Deletion, delete_model, delete_version
from model_export.errors import BadInput, StoreError, UnknownModel
from model_export.manifest import load_manifest
from model_export.publish import publish
from model_export.store import ObjectInfo, Store, open_store
from model_export.store.base import DelegatingStore
from tests.support.cli import run_cli as run
from tests.support.paused_publish import PHASES, start_paused
from tests.support.proxy import Proxy, conditional_manifest_put
from tests.support.servers import running

MAIN = "import sys\nfrom modelfleet.cli import main\nsys.exit(main())"
BOUND = 120.0  # seconds: any one wait here, on a loaded 2-core machine


def _with_assets(src: Path, dest: Path, files: int = 6) -> Path:
    shutil.copytree(src, dest)
    (dest / "assets").mkdir(exist_ok=True)
    for i in range(files):
        (dest / "assets" / f"paused-{i}.bin").write_bytes(f"paused:{i}:".encode() * 20_000)
    return dest


@pytest.mark.parametrize(
    ("phase", "starts"), [(p, "at the prompt") for p in PHASES] + [("uploading", "before the delete")]
)
def test_delete_all_fences_astart_paused(
    store_uri: str, savedmodels: dict[str, Path], tmp_path: Path, phase: str, starts: str
) -> None:
    """Found by an attack: a publish that reserved its number while `delete --all` waited for the user to type the
    model's name was not fenced (the reservations were listed before the prompt). The next publish got the same
    number while the paused one held it, and the paused one, resumed, wrote its files into that published version."""
    st = open_store(store_uri)
    publish(savedmodels["v1"], st, "m", label="stable")
    paused = _with_assets(savedmodels["v1"], tmp_path / "paused")
    procs: list[subprocess.Popen[str]] = []

    def confirm(plan: Deletion) -> bool:
        if starts == "at the prompt":
            procs.append(start_paused(phase, paused, store_uri))
        return True

    if starts == "before the delete":
        procs.append(start_paused(phase, paused, store_uri))
    try:
        delete_model(st, "m", force=True, confirm=confirm)
        tombstone, _ = load_manifest(st, "m")
        assert tombstone.deleted and 2 in tombstone.abandoned and tombstone.last_version == 2
        assert [o.key for o in st.list("m/")] == ["m/manifest.json"]
        again = publish(savedmodels["v2"], st, "m", label="stable")
        assert again.version == 3, "a number a paused publish holds is never handed out again"
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGCONT)
    (proc,) = procs
    out, err = proc.communicate(timeout=BOUND)

    assert proc.returncode == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "version 2" in lines[0] and "nothing was committed" in lines[0], err
    m, _ = load_manifest(st, "m")
    assert sorted(m.versions) == [3] and m.labels == {"stable": 3} and m.last_version == 3
    # Nothing the paused publish wrote is left for a later publish or prune to trip over.
    assert sorted(o.key for o in st.list("m/")) == sorted(["m/manifest.json", *(f"m/3/{p}" for p in m.get(3).files)])
    plan = ops.prune(st, "m", keep=10, pending_grace_seconds=0)
    assert (plan.versions, plan.leftovers, plan.in_progress, plan.objects) == ([], [], [], 0)
    assert publish(savedmodels["v1"], st, "m").version == 4


class _Hooked(DelegatingStore):
    """Runs ``hook`` once, just before the first conditional write of the manifest of ``m`` (another command's
    write landing between this command's read and its compare-and-swap)."""

    def __init__(self, inner: Store, hook: Callable[[], object]) -> None:
        super().__init__(inner)
        self.hook: Callable[[], object] | None = hook

    def write(self, key: str, data: bytes, *, if_token: str | None = None, if_absent: bool = False) -> str:
        if key == "m/manifest.json" and self.hook is not None:
            hook, self.hook = self.hook, None
            hook()
        return self.inner.write(key, data, if_token=if_token, if_absent=if_absent)


class _KilledBeforeDeleting(DelegatingStore):
    """A `delete --all` killed right after its manifest write: no object is deleted."""

    def delete(self, keys: Sequence[str]) -> None:
        raise StoreError("killed")


@pytest.fixture
def three(savedmodels: dict[str, Path], tmp_path: Path) -> Store:
    """m: v1 (previous stable), v2 stable, v3 unlabelled, in a file store."""
    (tmp_path / "s").mkdir()
    st = open_store(f"file://{tmp_path / 's'}")
    publish(savedmodels["v1"], st, "m", label="stable")
    publish(savedmodels["v2"], st, "m", label="stable")
    publish(savedmodels["v2"], st, "m")
    return st


def test_delete_version_racing_delete_all_does_not_revive_the_model(three: Store) -> None:
    """Found by an attack: `delete --version 3` whose compare-and-swap retried onto the tombstone `delete --all` had
    just written (its files not yet deleted) wrote a `delete` operation over it, and the deleted model was back in
    `models`, with no versions."""

    def delete_all() -> None:
        with pytest.raises(StoreError, match="killed"):
            delete_model(_KilledBeforeDeleting(three), "m", force=True)

    with pytest.raises(UnknownModel, match="no model 'm'"):
        delete_version(_Hooked(three, delete_all), "m", 3)
    assert load_manifest(three, "m")[0].deleted
    assert ops.model_names(three) == ["m"] and ops.list_models(three) == []
    assert delete_model(three, "m", force=True).objects > 0  # the re-run finishes the delete
    assert [o.key for o in three.list("m/")] == ["m/manifest.json"]


def test_a_label_moved_onto_the_version_while_it_is_deleted_is_kept(three: Store) -> None:
    """Held: the label check runs inside the compare-and-swap, so a label set in between is seen."""
    hooked = _Hooked(three, lambda: ops.set_label(three, "m", "canary", 3))
    with pytest.raises(BadInput, match="it is labelled canary"):
        delete_version(hooked, "m", 3)
    m, _ = load_manifest(three, "m")
    assert m.labels == {"stable": 2, "canary": 3} and sorted(m.versions) == [1, 2, 3]
    assert len(list(three.list("m/3/"))) == len(m.get(3).files)


def test_deletes_whose_manifest_reply_is_lost_succeed_once(
    proxied: tuple[Proxy, Store, Store], savedmodels: dict[str, Path]
) -> None:
    """Held: the write landed, the SDK's retry got 412, the operation id says it was ours; the files still go."""
    proxy, st, direct = proxied
    publish(savedmodels["v1"], direct, "m", label="stable")
    publish(savedmodels["v2"], direct, "m")
    publish(savedmodels["v2"], direct, "m")

    proxy.drop_reply(conditional_manifest_put)
    one = delete_version(st, "m", 3)
    assert (one.versions, one.leftover, len(proxy.dropped)) == ([3], False, 1)
    assert list(direct.list("m/3/")) == []
    m, _ = load_manifest(direct, "m")
    assert sorted(m.versions) == [1, 2] and [op.action for op in m.operations].count("delete") == 1

    proxy.drop_reply(conditional_manifest_put)
    proxy.drop_reply(lambda r: r.method == "POST" and r.path.endswith("?delete"))  # DeleteObjects
    whole = delete_model(st, "m", force=True)
    assert (whole.versions, whole.labels, len(proxy.dropped)) == ([1, 2], {"stable": 1}, 3)
    assert [o.key for o in direct.list("m/")] == ["m/manifest.json"]
    m, _ = load_manifest(direct, "m")
    assert m.deleted and [op.action for op in m.operations].count("delete-model") == 1


def test_a_model_published_again_after_delete_all_keeps_its_history_and_never_rolls_back_into_it(
    capsys: pytest.CaptureFixture[str], three: Store, savedmodels: dict[str, Path]
) -> None:
    """Held: the old history stays (with the delete), rollback has no previous stable, prune keeps the new one."""
    store = three.uri
    assert run(capsys, "delete", "--store", store, "--model", "m", "--all", "--yes")[0] == 0
    publish(savedmodels["v1"], three, "m", label="stable")
    code, out, _ = run(capsys, "history", "--store", store, "--model", "m")
    assert code == 0 and "delete-model" in out and out.rstrip().splitlines()[-1].split()[1:4] == ["stable", "-", "v4"]
    assert run(capsys, "rollback", "--store", store, "--model", "m") == (
        2,
        "",
        "modelfleet: error: model 'm' has no previous stable version to roll back to; use --to N\n",
    )
    assert run(capsys, "rollback", "--store", store, "--model", "m", "--to", "2")[2] == (
        "modelfleet: error: model 'm' has no version 2 (versions: 4)\n"
    )
    assert run(capsys, "prune", "--store", store, "--model", "m", "--keep", "0")[0] == 0
    assert sorted(ops.get_manifest(three, "m").versions) == [4]


def test_completion_against_a_stopped_store_answers_nothing_quickly(tmp_path: Path) -> None:
    """Held: the S3 server is SIGSTOPped (it accepts connections and never answers); a Tab press gets no model
    names and no error, well before the usual 30 s request budget would run out."""
    with running("s3") as server:
        client = boto3.client(
            "s3",
            endpoint_url=server.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket="completion-hangs")
        line = "modelfleet versions --store s3://completion-hangs/models --model "
        out = tmp_path / "completions"
        env = {
            **os.environ,
            "AWS_ENDPOINT_URL": server.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "_ARGCOMPLETE": "1",
            "_ARGCOMPLETE_SHELL": "bash",
            "COMP_LINE": line,
            "COMP_POINT": str(len(line)),
            "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
        }
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            # 25 s: under the 30 s a store request gets outside completion, generous for the 3 s completion gives it.
            proc = subprocess.run([sys.executable, "-c", MAIN], env=env, capture_output=True, text=True, timeout=25)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert out.read_text().strip() == ""


def test_delete_all_fences_a_reservation_made_just_before_its_write(three: Store) -> None:
    """A publish that reserves 4 between the fence's listing and its compare-and-swap: one more round fences it."""

    def reserve() -> None:
        three.write("m/_pending/4.json", b'{"publisher": "late"}', if_absent=True)
        three.write("m/4/saved_model.pb", b"partial", if_absent=True)

    delete_model(_Hooked(three, reserve), "m", force=True)
    tombstone, _ = load_manifest(three, "m")
    assert tombstone.deleted and 4 in tombstone.abandoned and tombstone.last_version == 4
    assert [o.key for o in three.list("m/")] == ["m/manifest.json"]


class _PublishAfterTheFence(DelegatingStore):
    """A whole publish of ``sm`` lands right after `delete --all` emptied the manifest, before it lists what to
    delete: its commit goes into the tombstone (its reservation was not there to fence)."""

    def __init__(self, inner: Store, sm: Path) -> None:
        super().__init__(inner)
        self.sm: Path | None = sm

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        if self.sm is not None and prefix == "m/" and load_manifest(self.inner, "m")[0].deleted:
            sm, self.sm = self.sm, None
            assert publish(sm, self.inner, "m").version == 4
        return self.inner.list(prefix)


def test_delete_all_takes_a_version_committed_while_it_listed(three: Store, savedmodels: dict[str, Path]) -> None:
    """Its files are listed for deletion, so the manifest must not keep listing it: emptied again, then deleted."""
    done = delete_model(_PublishAfterTheFence(three, savedmodels["v1"]), "m", force=True)
    assert done.versions == [1, 2, 3, 4]
    tombstone, _ = load_manifest(three, "m")
    assert tombstone.deleted and tombstone.last_version == 4
    assert [o.key for o in three.list("m/")] == ["m/manifest.json"]
