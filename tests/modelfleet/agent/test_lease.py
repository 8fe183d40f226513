"""Drain-slot leases (``modelfleet.agent.lease``) against all three real stores, and the version-switch options the
agent's CLI turns into ``SwitchOptions``."""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import pytest

from model_export import layout
from model_export.errors import BadInput, ObjectNotFound, PreconditionFailed
from model_export.store import Store, open_store
from model_export.store.base import DelegatingStore
from modelfleet.agent.lease import FREE, HELD, DrainLeases, Lease, drain_slots
from modelfleet.agent.switch_options import SwitchOptions
from modelfleet.cli.agent_cmd import switch_options
from tests.support.cli import run_cli

FLEET = "stable"
TTL, SKEW = 30.0, 5.0


class FakeClock:
    """Wall and monotonic time for the leases, starting at the real time (the stores stamp objects with it)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def store(store_uri: str) -> Store:
    return open_store(store_uri)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def leases(store: Store, holder: str, clock: FakeClock | None = None, slots: int = 1) -> DrainLeases:
    wall = clock or time.time
    mono = clock or time.monotonic
    return DrainLeases(store, FLEET, slots, TTL, holder, wall, monotonic=mono, skew_seconds=SKEW)


def held(store: Store, slots: int = 1) -> dict[int, str]:
    """What the store says: ``{slot: holder}`` of the slots held now."""
    out = {}
    for slot in range(slots):
        try:
            record = json.loads(store.read(layout.drain_slot_key(FLEET, slot)).data)
        except ObjectNotFound:
            continue
        if record["state"] == HELD:
            out[slot] = record["holder"]
    return out


# --- the rule and the keys ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "percent", "slots"),
    [(0, 25, 1), (1, 25, 1), (2, 25, 1), (3, 50, 1), (4, 25, 1), (4, 50, 2), (8, 25, 2), (10, 33, 3), (6, 100, 6)],
)
def test_slots_are_the_fleets_percentage_rounded_down_and_at_least_one(size: int, percent: int, slots: int) -> None:
    assert drain_slots(size, percent) == slots
    assert SwitchOptions(fleet_size=max(size, 1), max_draining_percent=percent).drain_slots == max(
        1, max(size, 1) * percent // 100
    )


@pytest.mark.parametrize(("size", "percent"), [(2, 0), (2, 101), (-1, 25), (1001, 25)])
def test_slot_rule_refuses_values_out_of_range(size: int, percent: int) -> None:
    with pytest.raises(BadInput, match=r"is invalid; must be between"):
        drain_slots(size, percent)


def test_lease_keys_have_their_own_prefix_that_no_model_can_take() -> None:
    assert layout.drain_slot_key("canary", 3) == "_fleet/canary/drain/3.json"
    assert layout.drain_prefix("canary") == "_fleet/canary/drain/"
    assert layout.drain_slot_of("canary", "_fleet/canary/drain/3.json") == 3
    assert layout.drain_slot_of("canary", "_fleet/stable/drain/3.json") is None
    assert layout.drain_slot_of("canary", "_fleet/canary/drain/x.json") is None
    assert layout.fleet_prefix("stable").startswith(layout.FLEET_PREFIX + "/") and layout.FLEET_PREFIX[0] == "_"
    with pytest.raises(ValueError):
        layout.drain_slot_key("stable", -1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fleet": "Stable"}, r"^fleet 'Stable' is invalid"),
        ({"fleet": "a/b"}, r"^fleet 'a/b' is invalid"),
        ({"slots": 0}, r"^drain slots = 0 is invalid"),
        ({"ttl_seconds": 10.0}, r"^lease TTL = 10.0 s is invalid; must be more than twice the skew margin"),
        ({"holder": " "}, r"^lease holder ' ' is invalid"),
    ],
)
def test_bad_lease_arguments_are_refused_with_one_line(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"fleet": FLEET, "slots": 1, "ttl_seconds": TTL, "holder": "vm-a"}
    args.update(kwargs)
    with pytest.raises(BadInput, match=message):
        DrainLeases(open_store(f"file://{tmp_path}"), **args)  # type: ignore[arg-type]


# --- mutual exclusion ---------------------------------------------------------------------------------------------


def test_two_holders_never_hold_one_slot_together_and_release_frees_it(store: Store) -> None:
    a, b = leases(store, "vm-a"), leases(store, "vm-b")
    lease = a.acquire()
    assert lease is not None and lease.slot == 0 and a.held(lease)
    assert b.acquire() is None
    assert held(store) == {0: "vm-a"}
    assert a.renew(lease) and b.acquire() is None

    assert a.release(lease)
    assert not a.held(lease) and not a.renew(lease)  # released: nothing left to renew
    assert held(store) == {}
    other = b.acquire()
    assert other is not None and other.slot == 0
    assert a.acquire() is None
    assert held(store) == {0: "vm-b"}


def test_with_two_slots_two_holders_drain_and_a_third_waits(store: Store) -> None:
    first, second, third = (leases(store, f"vm-{n}", slots=2) for n in "abc")
    got = [first.acquire(), second.acquire(), third.acquire()]
    assert [lease.slot if lease else None for lease in got] == [0, 1, None]
    assert held(store, 2) == {0: "vm-a", 1: "vm-b"}


def race(contenders: list[DrainLeases]) -> list[Lease | None]:
    """Every contender calls ``acquire`` at once (a barrier), each in its own thread with its own store client."""
    start = threading.Barrier(len(contenders))
    results: list[Lease | None] = [None] * len(contenders)
    errors: list[BaseException] = []

    def contend(i: int) -> None:
        try:
            start.wait()
            results[i] = contenders[i].acquire()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(contenders))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return results


def test_eight_contenders_racing_for_one_slot_get_exactly_one_lease(store_uri: str) -> None:
    contenders = [leases(open_store(store_uri), f"vm-{i}") for i in range(8)]
    for _ in range(3):  # a race on a free slot's first creation, then on a released (free) record
        results = race(contenders)
        winners = [(i, lease) for i, lease in enumerate(results) if lease is not None]
        assert len(winners) == 1, winners
        i, lease = winners[0]
        assert held(contenders[i].store) == {0: f"vm-{i}"}
        assert contenders[i].release(lease)


# --- expiry and takeover ------------------------------------------------------------------------------------------


def test_a_killed_holders_lease_is_taken_over_after_its_ttl_and_its_renew_then_fails(
    store: Store, clock: FakeClock
) -> None:
    dead, alive = leases(store, "vm-dead", clock), leases(store, "vm-alive", clock)
    lost = dead.acquire()
    assert lost is not None
    clock.advance(TTL / 2)
    assert alive.acquire() is None  # within the TTL
    clock.advance(TTL / 2)
    assert alive.acquire() is None  # at the TTL, still within the skew margin
    assert not dead.held(lost)  # the holder itself stopped trusting it before anyone may take it
    clock.advance(SKEW + 2)
    taken = alive.acquire()
    assert taken is not None and taken.slot == 0
    assert held(store) == {0: "vm-alive"}

    assert not dead.renew(lost)  # the token it holds is gone
    assert not dead.release(lost)  # and a release of a lost lease frees nothing
    assert held(store) == {0: "vm-alive"}
    assert alive.release(taken)
    third = leases(store, "vm-third", clock).acquire()
    assert third is not None


def test_a_renewing_holder_keeps_its_lease_past_many_ttls(store: Store, clock: FakeClock) -> None:
    holder, other = leases(store, "vm-a", clock), leases(store, "vm-b", clock)
    lease = holder.acquire()
    assert lease is not None
    for _ in range(9):  # three TTLs, renewed every third of one
        clock.advance(holder.renew_interval_seconds)
        assert holder.renew(lease) and holder.held(lease)
        assert other.acquire() is None


def test_a_holder_clock_far_behind_cannot_get_its_fresh_lease_taken(store: Store, clock: FakeClock) -> None:
    """Its recorded expiry is long past by the taker's clock, but the store wrote the object just now."""
    slow = FakeClock()
    slow.now -= 3600
    assert leases(store, "vm-slow", slow).acquire() is not None
    taker = leases(store, "vm-b", clock)
    assert taker.acquire() is None
    clock.advance(TTL + SKEW + 2)  # and once the object is old too, it is taken over
    assert taker.acquire() is not None


def test_a_holder_clock_far_ahead_cannot_keep_a_dead_lease_forever_but_the_expiry_still_counts(
    store: Store, clock: FakeClock
) -> None:
    fast = FakeClock()
    fast.now += 3600  # its record says "expires in an hour and a half"
    assert leases(store, "vm-fast", fast).acquire() is not None
    taker = leases(store, "vm-b", clock)
    clock.advance(TTL + SKEW + 2)  # the object is old enough ...
    assert taker.acquire() is None  # ... but both must agree: a skewed holder errs on the safe side
    clock.advance(3600)
    assert taker.acquire() is not None


def test_an_unreadable_record_is_taken_over_by_its_age_alone(store: Store, clock: FakeClock) -> None:
    store.write(layout.drain_slot_key(FLEET, 0), b"{not json")
    taker = leases(store, "vm-b", clock)
    assert taker.acquire() is None
    clock.advance(TTL + SKEW + 2)
    assert taker.acquire() is not None


def test_a_restarted_agent_takes_its_own_slot_back_instead_of_a_second_one(store: Store, clock: FakeClock) -> None:
    before = leases(store, "vm-a", clock, slots=2).acquire()
    assert before is not None and before.slot == 0
    after = leases(store, "vm-a", clock, slots=2).acquire()  # same holder id, new process
    assert after is not None and after.slot == 0 and after.token != before.token
    assert held(store, 2) == {0: "vm-a"}
    assert leases(store, "vm-b", clock, slots=2).acquire() is not None  # slot 1 is still there for others


# --- lost replies -------------------------------------------------------------------------------------------------


class LostReplyOnce(DelegatingStore):
    """The write happens, but its reply is lost and the retry meets its own write: ``PreconditionFailed``."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.armed = False

    def write(self, key: str, data: bytes, *, if_token: str | None = None, if_absent: bool = False) -> str:
        token = self.inner.write(key, data, if_token=if_token, if_absent=if_absent)
        if self.armed:
            self.armed = False
            raise PreconditionFailed(f"{key} changed since it was read")
        return token


def test_a_write_whose_reply_was_lost_is_recognised_as_our_own(store: Store, clock: FakeClock) -> None:
    flaky = LostReplyOnce(store)
    holder = leases(flaky, "vm-a", clock)
    flaky.armed = True
    lease = holder.acquire()
    assert lease is not None  # the create-only write went through; its "already exists" was our own
    flaky.armed = True
    assert holder.renew(lease)
    assert holder.renew(lease)  # and the token it recovered is the current one
    flaky.armed = True
    assert holder.release(lease)
    assert held(store) == {}


def test_release_marks_the_record_free_rather_than_deleting_it(store: Store) -> None:
    holder = leases(store, "vm-a")
    lease = holder.acquire()
    assert lease is not None and holder.release(lease)
    record = json.loads(store.read(lease.key).data)
    assert record["state"] == FREE and record["holder"] == "vm-a" and record["fleet"] == FLEET


# --- the agent's version-switch flags -----------------------------------------------------------------------------


def namespace(**overrides: object) -> argparse.Namespace:
    fields: dict[str, object] = {
        "switch": "auto",
        "memory_budget_bytes": None,
        "drain_wait_seconds": 30.0,
        "fleet_size": 1,
        "max_draining_percent": 25,
    }
    fields.update(overrides)
    return argparse.Namespace(**fields)


def test_switch_flags_become_switch_options() -> None:
    opts = switch_options(namespace(switch="drain", memory_budget_bytes=8 << 30, drain_wait_seconds=10.0, fleet_size=8))
    assert opts == SwitchOptions("drain", 8 << 30, 10.0, 8, 25)
    assert opts.drain_slots == 2
    assert "at most 2 of 8 VMs at once (25 %)" in opts.describe()
    assert SwitchOptions() == SwitchOptions("auto", None, 30.0, 1, 25)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"switch": "swap"}, r"^--switch 'swap' is invalid; use one of overlap, drain, auto$"),
        ({"memory_budget_bytes": 0}, r"^--memory-budget-bytes 0 is invalid"),
        ({"drain_wait_seconds": -1.0}, r"^--drain-wait-seconds -1 is invalid"),
        ({"fleet_size": 0}, r"^--fleet-size 0 is invalid"),
        ({"max_draining_percent": 101}, r"^--max-draining-percent 101 is invalid"),
    ],
)
def test_bad_switch_options_are_refused_with_one_line(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(BadInput, match=message):
        switch_options(namespace(**overrides))


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--switch", "swap", "invalid choice: 'swap'"),
        ("--max-draining-percent", "0", "'0' must be 1 or more"),
        ("--max-draining-percent", "101", "'101' must be from 1 to 100"),
        ("--drain-wait-seconds", "-5", "'-5' must be from 0 to 3600 seconds"),
        ("--fleet-size", "0", "'0' must be 1 or more"),
        ("--memory-budget-bytes", "lots", "'lots' is not an integer"),
    ],
)
def test_bad_switch_flags_exit_2_with_the_flag_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, flag: str, value: str, message: str
) -> None:
    argv = ["agent", "--store", f"file://{tmp_path}", "--models", "digits", "--root", str(tmp_path / "root")]
    code, _, err = run_cli(capsys, *argv, "--role", "stable", flag, value)
    assert code == 2
    assert flag in err and message in err
