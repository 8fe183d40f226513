"""Desired versions per role and the config steps of a transition, checked against TF Serving's rules."""

from __future__ import annotations

import random

import pytest

from model_export.constants import CANARY, STABLE
from modelfleet.agent.main import backoff_delay
from modelfleet.agent.plan import desired_version, next_entry
from modelfleet.agent.tfs_config import ModelEntry


@pytest.mark.parametrize(
    ("labels", "role", "want"),
    [
        ({STABLE: 1}, STABLE, 1),
        ({STABLE: 1, CANARY: 2}, STABLE, 1),
        ({STABLE: 1, CANARY: 2}, CANARY, 2),
        ({STABLE: 1}, CANARY, 1),
        ({CANARY: 2}, STABLE, None),
        ({}, CANARY, None),
    ],
)
def test_desired_version_per_role(labels: dict[str, int], role: str, want: int | None) -> None:
    assert desired_version(labels, role) == want


def entry(versions: tuple[int, ...], labels: dict[str, int]) -> ModelEntry:
    return ModelEntry("m", "/r/m", versions, labels)


@pytest.mark.parametrize(
    ("target", "previous", "available", "want"),
    [
        # TF Serving cannot be asked: only what the labels name is assumed loaded; the labels do not move.
        (2, entry((1,), {STABLE: 1}), None, entry((1, 2), {STABLE: 1})),
        (1, entry((1,), {STABLE: 1}), None, entry((1,), {STABLE: 1})),
        (1, None, None, entry((1,), {})),
        # A model TF Serving does not know yet: load it, no label until it is AVAILABLE.
        (1, None, frozenset(), entry((1,), {})),
        (1, entry((1,), {}), frozenset({1}), entry((1,), {STABLE: 1})),
        # Moving up: load both, the label stays on 1 until 2 is AVAILABLE, then moves and 1 goes.
        (2, entry((1,), {STABLE: 1}), frozenset({1}), entry((1, 2), {STABLE: 1})),
        (2, entry((1, 2), {STABLE: 1}), frozenset({1, 2}), entry((2,), {STABLE: 2})),
        # Rolling back: the lower target is loaded beside the serving 3, which is dropped once 2 is AVAILABLE.
        (2, entry((3,), {STABLE: 3}), frozenset({3}), entry((2, 3), {STABLE: 3})),
        (2, entry((2, 3), {STABLE: 3}), frozenset({2, 3}), entry((2,), {STABLE: 2})),
        # Retargeted mid-transition: the half-loaded 2 is dropped, never left loaded above anything.
        (3, entry((1, 2), {STABLE: 1}), frozenset({1}), entry((1, 3), {STABLE: 1})),
        (1, entry((1, 2), {STABLE: 1}), frozenset({1}), entry((1,), {STABLE: 1})),
    ],
)
def test_next_entry(
    target: int, previous: ModelEntry | None, available: frozenset[int] | None, want: ModelEntry
) -> None:
    assert next_entry("m", "/r/m", STABLE, target, {STABLE: target}, previous, available) == want


def test_first_config_has_no_labels() -> None:
    # TF Serving not running: it will read this file as its first config, where a label on a version it has not
    # loaded yet makes it exit. The target alone, no label; they follow once it reports the version AVAILABLE.
    e = next_entry("m", "/r/m", STABLE, 2, {STABLE: 2}, entry((1, 2), {STABLE: 1}), None, first_config=True)
    assert e == entry((2,), {})


def test_canary_fleet_labels() -> None:
    both = next_entry("m", "/r/m", CANARY, 1, {STABLE: 1}, None, frozenset({1}))
    assert dict(both.labels) == {STABLE: 1, CANARY: 1}  # serving stable: answers both labels
    canary = next_entry("m", "/r/m", CANARY, 2, {STABLE: 1, CANARY: 2}, None, frozenset({2}))
    assert dict(canary.labels) == {CANARY: 2}  # never claims "stable" for a version that is not stable


class FakeServing:
    """TF Serving's rules, one config poll per step: labels are checked FIRST, against the versions AVAILABLE at that
    moment, and a refused label refuses the whole config; then listed versions load (AVAILABLE one poll later) and
    the others unload."""

    def __init__(self) -> None:
        self.available: set[int] = set()
        self.loading: set[int] = set()
        self.labels: dict[str, int] = {}

    def apply(self, e: ModelEntry) -> bool:
        self.available |= self.loading  # what was loading finished in the meantime
        if any(v not in self.available for v in e.labels.values()):
            return False
        wanted = set(e.versions)
        self.available &= wanted
        self.loading = wanted - self.available
        self.labels = dict(e.labels)
        return True

    def unversioned(self) -> int | None:
        return max(self.available, default=None)


def test_random_label_moves_obey_tf_serving_rules() -> None:
    rng = random.Random(7)
    tfs = FakeServing()
    previous: ModelEntry | None = None
    target = 1
    for step in range(600):
        if step % 3 == 0:
            target = rng.randint(1, 6)
        # Now and then the status request fails (timeout): the agent must not assume anything new.
        seen = None if rng.random() < 0.2 else frozenset(tfs.available)
        before = set(tfs.available)
        e = next_entry("m", "/r/m", STABLE, target, {STABLE: target}, previous, seen)
        # Never newly load a version above the target: anything above it was already loaded before.
        assert all(v <= target or v in before for v in e.versions), (step, e, before)
        assert tfs.apply(e), f"step {step}: TF Serving would refuse the labels of {e}"
        previous = e
        top = tfs.unversioned()
        # Unversioned requests go to the target, or to a version that was already being served.
        assert top is None or top == target or top in before, (step, top, target)
    # Settles once TF Serving answers again: load, then move the labels.
    for _ in range(3):
        previous = next_entry("m", "/r/m", STABLE, target, {STABLE: target}, previous, frozenset(tfs.available))
        assert tfs.apply(previous)
    assert previous == entry((target,), {STABLE: target}) and tfs.labels == {STABLE: target}


def test_backoff_grows_exponentially_up_to_the_cap_with_jitter() -> None:
    rng = random.Random(1)
    assert backoff_delay(0, 5, 60, rng) == 5
    for failures, full in ((1, 10), (2, 20), (3, 40), (4, 60), (10, 60)):
        d = backoff_delay(failures, 5, 60, rng)
        assert full / 2 <= d <= full
