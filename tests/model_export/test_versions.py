"""Label moves, promote, rollback and prune, on the file store (the logic is store-independent; the store
contract suite covers the backends)."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_export import versions as ops
from model_export.errors import BadInput, UnknownModel, UnknownVersion
from model_export.manifest import load_manifest
from model_export.publish import publish
from model_export.store import open_store


@pytest.fixture
def store(tmp_path: Path) -> str:
    (tmp_path / "s").mkdir()
    return f"file://{tmp_path / 's'}"


def _publish(store: str, savedmodels: dict[str, Path], n: int, label: str | None = None) -> list[int]:
    return [publish(savedmodels["v1"], store, "m", label=label).version for _ in range(n)]


def test_label_promote_rollback_cycle(store: str, savedmodels: dict[str, Path]) -> None:
    publish(savedmodels["v1"], store, "m", label="stable")
    publish(savedmodels["v2"], store, "m", label="canary")
    m = ops.promote(store, "m")
    assert m.labels == {"stable": 2}
    m = ops.rollback(store, "m")
    assert m.labels == {"stable": 1}
    moves = [(h.label, h.from_version, h.to_version, h.action) for h in m.history]
    assert moves[2:] == [
        ("stable", 1, 2, "promote"),
        ("canary", 2, None, "promote"),
        ("stable", 2, 1, "rollback"),
    ]
    assert all(h.by for h in m.history)


def test_repeated_rollback_walks_back_through_stable_history(store: str, savedmodels: dict[str, Path]) -> None:
    _publish(store, savedmodels, 4)
    for v in (1, 2, 4):
        ops.set_label(store, "m", "stable", v)
    assert ops.rollback(store, "m").labels["stable"] == 2
    assert ops.rollback(store, "m").labels["stable"] == 1
    with pytest.raises(BadInput, match="no previous stable version to roll back to; use --to N"):
        ops.rollback(store, "m")
    assert ops.rollback(store, "m", to=3).labels["stable"] == 3
    assert ops.rollback(store, "m").labels["stable"] == 1


@pytest.mark.parametrize(
    ("moves", "rollbacks"),
    [
        # Stable moved by hand 1→2→1→3: rollbacks walk back 1, 2, 1 (2 was once skipped: "no previous stable").
        ((1, 2, 1, 3), (1, 2, 1)),
        # 1→2→3→2→4: rollbacks walk back 2, 3, 2, 1 (3 was once skipped).
        ((1, 2, 3, 2, 4), (2, 3, 2, 1)),
    ],
)
def test_rollbacks_follow_the_history_of_stable_moves_as_a_stack(
    store: str, savedmodels: dict[str, Path], moves: tuple[int, ...], rollbacks: tuple[int, ...]
) -> None:
    _publish(store, savedmodels, max(moves))
    for v in moves:
        ops.set_label(store, "m", "stable", v)
    assert [ops.rollback(store, "m").labels["stable"] for _ in rollbacks] == list(rollbacks)
    with pytest.raises(BadInput, match="no previous stable version to roll back to; use --to N"):
        ops.rollback(store, "m")


def test_rollback_to_unknown_version_is_refused_and_changes_nothing(store: str, savedmodels: dict[str, Path]) -> None:
    _publish(store, savedmodels, 2, label="stable")
    st = open_store(store)
    before = st.read("m/manifest.json").data
    with pytest.raises(UnknownVersion, match=r"model 'm' has no version 9 \(versions: 1, 2\)"):
        ops.rollback(store, "m", to=9)
    with pytest.raises(BadInput, match="version 2 of 'm' is already stable"):
        ops.rollback(store, "m", to=2)
    assert st.read("m/manifest.json").data == before


def test_label_errors(store: str, savedmodels: dict[str, Path]) -> None:
    _publish(store, savedmodels, 1)
    with pytest.raises(UnknownVersion):
        ops.set_label(store, "m", "canary", 5)
    with pytest.raises(BadInput, match=r"label 'can-ary' is invalid; labels are \[A-Za-z0-9_\]\+"):
        ops.set_label(store, "m", "can-ary", 1)
    with pytest.raises(BadInput, match="has no 'canary' label to promote"):
        ops.promote(store, "m")
    with pytest.raises(BadInput, match="has no label 'canary'"):
        ops.clear_label(store, "m", "canary")
    with pytest.raises(UnknownModel, match="no model 'other'"):
        ops.set_label(store, "other", "stable", 1)
    ops.set_label(store, "m", "shadow_test", 1)
    assert ops.clear_label(store, "m", "shadow_test").labels == {}


def test_prune_keeps_newest_labeled_and_previous_stable(store: str, savedmodels: dict[str, Path]) -> None:
    _publish(store, savedmodels, 8)
    ops.set_label(store, "m", "stable", 2)
    ops.set_label(store, "m", "stable", 3)  # previous stable: 2
    ops.set_label(store, "m", "canary", 5)
    st = open_store(store)
    before = sorted(o.key for o in st.list(""))

    plan = ops.prune(store, "m", keep=2, dry_run=True)
    assert (plan.versions, plan.leftovers, plan.dry_run) == ([1, 4, 6], [], True)
    assert sorted(o.key for o in st.list("")) == before

    plan = ops.prune(store, "m", keep=2)
    assert plan.versions == [1, 4, 6]
    assert plan.objects == 3 * len(load_manifest(st, "m")[0].get(2).files)
    manifest, _ = load_manifest(st, "m")
    assert sorted(manifest.versions) == [2, 3, 5, 7, 8]
    remaining = {int(o.key.split("/")[1]) for o in st.list("m/") if o.key.split("/")[1].isdigit()}
    assert remaining == {2, 3, 5, 7, 8}


def test_version_numbers_are_never_reused_after_prune(store: str, savedmodels: dict[str, Path]) -> None:
    _publish(store, savedmodels, 3)
    ops.set_label(store, "m", "stable", 1)
    ops.prune(store, "m", keep=0)
    assert sorted(ops.get_manifest(store, "m").versions) == [1]
    assert publish(savedmodels["v1"], store, "m").version == 4


def test_prune_refuses_bad_keep(store: str, savedmodels: dict[str, Path]) -> None:
    _publish(store, savedmodels, 1)
    with pytest.raises(BadInput, match="--keep must be 0 or more, got -1"):
        ops.prune(store, "m", keep=-1)


def test_prune_deletes_heartbeats_of_instances_gone_a_week_and_keeps_the_rest(
    store: str, savedmodels: dict[str, Path]
) -> None:
    import os
    import time

    from model_export import layout
    from model_export.constants import CANARY, STABLE

    publish(savedmodels["v1"], store, "m", label=STABLE)
    st = open_store(store)
    old, live = layout.heartbeat_key(STABLE, "vm-old"), layout.heartbeat_key(CANARY, "vm-live")
    for key in (old, live):
        st.write(key, b"{}")
    root = Path(store.removeprefix("file://"))
    week = time.time() - ops.HEARTBEAT_GONE_SECONDS - 60
    os.utime(root / old, (week, week))  # the file store's modified time is the server time of this store
    assert ops.prune(store, "m", keep=5, dry_run=True).heartbeats == 1
    assert {o.key for o in st.list("_fleet/")} == {old, live}
    assert ops.prune(store, "m", keep=5).heartbeats == 1
    assert {o.key for o in st.list("_fleet/")} == {live}
