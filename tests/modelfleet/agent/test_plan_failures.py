"""The config rules around versions TF Serving failed to load and configs it may read at start-up (plan.py, pure
functions; tests/modelfleet/agent/test_no_empty_vm.py drives them through the agent and the faithful stand-in)."""

from __future__ import annotations

from model_export.constants import CANARY, STABLE
from modelfleet.agent.plan import fallback_versions, next_entry, startup_version
from modelfleet.agent.tfs_config import ModelEntry


def entry(versions: tuple[int, ...], labels: dict[str, int]) -> ModelEntry:
    return ModelEntry("m", "/r/m", versions, labels)


def test_the_serving_version_is_kept_when_no_label_names_it() -> None:
    # TF Serving started from {1} (no labels) and serves 1; the label moved to 2 before the agent labeled 1.
    e = next_entry("m", "/r/m", STABLE, 2, {STABLE: 2}, entry((1,), {}), frozenset({1}), keep=1)
    assert e == entry((1, 2), {STABLE: 1})  # 1 kept, and labeled: it is AVAILABLE
    # TF Serving cannot be asked: kept (it was listed), but not labeled (not known to be AVAILABLE).
    assert next_entry("m", "/r/m", STABLE, 2, {STABLE: 2}, entry((1,), {}), None, keep=1) == entry((1, 2), {})
    # Once the target is AVAILABLE, the steady config: the kept version goes.
    assert next_entry("m", "/r/m", STABLE, 2, {STABLE: 2}, e, frozenset({1, 2}), keep=1) == entry((2,), {STABLE: 2})
    # A labeled transition is as before: the labels already keep the serving version.
    assert next_entry("m", "/r/m", STABLE, 3, {STABLE: 3}, entry((1,), {STABLE: 1}), frozenset({1}), keep=1) == entry(
        (1, 3), {STABLE: 1}
    )


def test_a_kept_version_is_never_loaded_anew() -> None:
    # Neither loaded nor listed: keeping it would load it (above the target, here), so it is not kept.
    assert next_entry("m", "/r/m", STABLE, 2, {STABLE: 2}, entry((2,), {}), frozenset(), keep=5) == entry((2,), {})


def test_a_config_read_at_start_up_names_only_a_version_loaded_here_before() -> None:
    assert startup_version(2, 2, {1, 2}) == 2
    assert startup_version(2, 1, {1}) == 1  # the target was never loaded here: the last good one
    assert startup_version(2, 1, {1, 2}) == 1  # the one loaded most recently; 2 follows by a reload
    assert startup_version(2, None, {2}) == 2
    assert startup_version(2, None, set()) is None  # a new VM: nothing of this model (TF Serving starts without it)
    assert startup_version(None, 1, {1}) == 1
    assert startup_version(2, 3, {1}) is None


def test_fallback_is_the_most_recent_earlier_stable_that_still_exists() -> None:
    assert fallback_versions(STABLE, 5, {STABLE: 5}, [1, 2, 4, 5], {1, 2, 4, 5}) == [4, 2, 1]
    assert fallback_versions(STABLE, 5, {STABLE: 5}, [1, 2, 4, 5], {2, 5}) == [2]  # pruned versions are skipped
    assert fallback_versions(STABLE, 1, {STABLE: 1}, [1], {1}) == []
    # A canary fleet whose canary fails serves stable first.
    assert fallback_versions(CANARY, 6, {STABLE: 4, CANARY: 6}, [2, 4], {2, 4, 6}) == [4, 2]
