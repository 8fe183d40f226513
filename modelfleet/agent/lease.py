"""Drain-slot leases: at most ``slots`` VMs of a fleet drain at a time, coordinated through the model store alone.

A VM that switches a model by draining (``--switch drain``, or ``auto`` when both versions would not fit) answers
503 on ``/healthz`` until the new version is AVAILABLE, so the load balancer stops sending it requests. Only
``maxDrainingPercent`` of a fleet (at least one VM) may be out at once; each VM that drains first takes a lease on one
of the fleet's drain slots and gives it back afterwards. No new infrastructure: one small JSON object per slot in the
store, written with the conditional writes every backend already has (S3 ``If-None-Match`` / ``If-Match``, GCS
generation preconditions, the file store's link and lock).

Keys (``model_export.layout``): ``_fleet/<fleet>/drain/<slot>.json`` for slots ``0 .. slots - 1``, with
``slots = drain_slots(fleet size, maxDrainingPercent) = max(1, fleet size x percent // 100)``. The fleet size the
bootstrap passes (``--fleet-size``) is the fleet's MINIMUM replica count: the running fleet is never smaller, so the
slots are never more than the percentage of the VMs actually running (a fleet scaled out above its minimum drains
more slowly than it could, never more at once than it should). The fleet is the role (``stable``, ``canary``).

The record: ``{"schema": 1, "fleet", "slot", "holder", "state": "held" | "free", "ttl_seconds", "expires_at",
"written_at", "write"}``; ``expires_at`` and ``written_at`` are the holder's wall clock (Unix seconds), ``write`` a
random id of that one write (how a retried write whose first reply was lost recognises itself).

- ``acquire()``: one LIST of the fleet's drain prefix (the objects' last-modified times), one GET per existing slot.
  A slot this holder already holds (the same holder id: the agent restarted mid-drain) is taken back first; else the
  first slot that is absent (create-only write), ``free`` (released) or expired (below) is taken with a write
  conditional on the token just read. A lost race moves on to the next slot; ``None`` when every slot is held.
- ``renew(lease)``: an overwrite conditional on the lease's token, with a new expiry. ``False`` when the condition is
  lost (someone took the slot over): the lease is gone. Store failures (``StoreError``) propagate: the lease is still
  held until its own validity ends (``held``), and the caller retries.
- ``release(lease)``: an overwrite conditional on the token that marks the slot ``free``. The ``Store`` interface has
  no conditional delete, and an unconditional delete could remove a lease another VM has taken over meanwhile.

**Expiry and clock skew.** A slot held by a VM that died (no renewals) is taken over once BOTH:
(a) the holder's own recorded ``expires_at`` plus ``skew_seconds`` is past by the taker's clock, and
(b) the object's last-modified time (the store's clock) plus the record's TTL plus ``skew_seconds`` is past by the
taker's clock.
So a lease still being renewed is taken over early only if the taker's clock runs ahead of the holder's AND of the
store's by more than ``skew_seconds`` (default 10 s; cloud VMs keep NTP time within milliseconds). A holder whose
clock runs slow cannot keep a lease alive past (b), and a store clock that runs slow is caught by (a). The holder
itself counts its lease valid only until its monotonic clock at the start of the last successful write plus TTL
minus ``skew_seconds`` (``held``), and renews every ``renew_interval_seconds`` (a third of the TTL), so it stops
trusting a lease before anyone else may take it. A record that cannot be parsed is taken over by (b) alone.

Holder ids must be unique in a fleet and stable across agent restarts: the agent uses the VM's host name (the
instance name on GCE; on EC2 ``ip-…``, unique in a VPC).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from model_export import layout
from model_export.constants import DEFAULT_MAX_DRAINING_PERCENT
from model_export.errors import BadInput, ObjectNotFound, PreconditionFailed
from model_export.store import ObjectInfo, Store

SCHEMA = 1
HELD, FREE = "held", "free"
DEFAULT_TTL_SECONDS = 60.0
DEFAULT_SKEW_SECONDS = 10.0
MAX_FLEET_SIZE = 1000  # the stack's replica limit
_FLEET = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
Clock = Callable[[], float]


def drain_slots(fleet_size: int, max_draining_percent: int = DEFAULT_MAX_DRAINING_PERCENT) -> int:
    """How many VMs of a fleet of ``fleet_size`` may drain at once: ``max(1, floor(size x percent / 100))``."""
    if not 1 <= max_draining_percent <= 100:
        raise BadInput(f"max draining percent = {max_draining_percent} is invalid; must be between 1 and 100")
    if not 0 <= fleet_size <= MAX_FLEET_SIZE:
        raise BadInput(f"fleet size = {fleet_size} is invalid; must be between 0 and {MAX_FLEET_SIZE}")
    return max(1, fleet_size * max_draining_percent // 100)


@dataclass
class Lease:
    """One held drain slot. Updated in place by ``DrainLeases.renew`` and ``release``."""

    fleet: str
    slot: int
    holder: str
    key: str
    token: str  # the store's token of our last write: every renew and the release are conditional on it
    expires_at: float  # what the record says (the holder's wall clock)
    valid_until: float  # the holder's monotonic clock: trust the lease until then (see ``DrainLeases.held``)
    write_id: str
    released: bool = False


class DrainLeases:
    """The drain slots of one fleet, as seen by one holder (one VM's agent)."""

    def __init__(
        self,
        store: Store,
        fleet: str,
        slots: int,
        ttl_seconds: float,  # DEFAULT_TTL_SECONDS unless there is a reason
        holder: str,  # unique in the fleet, stable across agent restarts: the host name
        clock: Clock = time.time,
        *,
        monotonic: Clock = time.monotonic,
        skew_seconds: float = DEFAULT_SKEW_SECONDS,
    ) -> None:
        if not _FLEET.match(fleet):
            raise BadInput(
                f"fleet {fleet!r} is invalid; use 1-63 of a-z, 0-9, _ and -, starting with a letter or digit"
            )
        if not 1 <= slots <= MAX_FLEET_SIZE:
            raise BadInput(f"drain slots = {slots} is invalid; must be between 1 and {MAX_FLEET_SIZE}")
        if not skew_seconds >= 0:
            raise BadInput(f"lease skew margin = {skew_seconds} s is invalid; must be 0 or more")
        if not ttl_seconds > 2 * skew_seconds:
            raise BadInput(f"lease TTL = {ttl_seconds} s is invalid; must be more than twice the skew margin")
        if not holder.strip() or len(holder) > 255:
            raise BadInput(f"lease holder {holder!r} is invalid; use a non-empty id of at most 255 characters")
        self.store = store
        self.fleet = fleet
        self.slots = slots
        self.ttl_seconds = float(ttl_seconds)
        self.holder = holder
        self.skew_seconds = float(skew_seconds)
        self._clock = clock
        self._monotonic = monotonic

    @property
    def renew_interval_seconds(self) -> float:
        """How often a holder renews: a third of the TTL, so two renewals may fail before the lease lapses."""
        return self.ttl_seconds / 3

    # -- the three operations ----------------------------------------------------------------------------------------

    def acquire(self) -> Lease | None:
        """A drain slot for this holder, or ``None`` when all ``slots`` are held by others."""
        listed: dict[str, ObjectInfo] = {info.key: info for info in self.store.list(layout.drain_prefix(self.fleet))}
        now = self._clock()
        free: list[tuple[int, str | None]] = []  # (slot, token to replace; None: create)
        for slot in range(self.slots):
            key = layout.drain_slot_key(self.fleet, slot)
            info = listed.get(key)
            if info is None:
                free.append((slot, None))
                continue
            try:
                blob = self.store.read(key)
            except ObjectNotFound:  # removed since the listing (by an operator): create it again
                free.append((slot, None))
                continue
            record = _parse(blob.data)
            if record is not None and record.get("holder") == self.holder and record.get("state") == HELD:
                # Ours, from before an agent restart: take it back rather than hold a second slot.
                lease = self._take(slot, blob.token)
                if lease is not None:
                    return lease
                continue
            if self._takeable(record, info, now):
                free.append((slot, blob.token))
        for slot, token in free:
            lease = self._take(slot, token)
            if lease is not None:
                return lease
        return None

    def renew(self, lease: Lease) -> bool:
        """Extend the lease; ``False`` when it was lost (taken over after it expired, or already released)."""
        if lease.released:
            return False
        record = self._record(lease.slot, HELD)
        written = self._write(lease.key, record, if_token=lease.token)
        if written is None:
            lease.released = True
            return False
        self._update(lease, record, *written)
        return True

    def release(self, lease: Lease) -> bool:
        """Give the slot back (marked ``free``); ``False`` when it had been lost already."""
        if lease.released:
            return False
        lease.released = True
        return self._write(lease.key, self._record(lease.slot, FREE), if_token=lease.token) is not None

    def held(self, lease: Lease) -> bool:
        """Whether this holder may still count on ``lease``: not released, and within its own validity (the start of
        the last successful write + TTL - skew margin, by the monotonic clock)."""
        return not lease.released and self._monotonic() < lease.valid_until

    # -- helpers -----------------------------------------------------------------------------------------------------

    def _takeable(self, record: dict[str, Any] | None, info: ObjectInfo, now: float) -> bool:
        if record is not None and record.get("state") == FREE:
            return True
        ttl = self.ttl_seconds
        holder_expired = True  # an unreadable record: its age alone decides
        if record is not None:
            try:
                ttl = max(ttl, float(record["ttl_seconds"]))
                holder_expired = now >= float(record["expires_at"]) + self.skew_seconds
            except (KeyError, TypeError, ValueError):
                pass
        aged = now >= info.modified.timestamp() + ttl + self.skew_seconds
        return holder_expired and aged

    def _record(self, slot: int, state: str) -> dict[str, Any]:
        now = self._clock()
        return {
            "schema": SCHEMA,
            "fleet": self.fleet,
            "slot": slot,
            "holder": self.holder,
            "state": state,
            "ttl_seconds": self.ttl_seconds,
            "expires_at": now + self.ttl_seconds if state == HELD else now,
            "written_at": now,
            "write": uuid.uuid4().hex,
        }

    def _take(self, slot: int, token: str | None) -> Lease | None:
        key = layout.drain_slot_key(self.fleet, slot)
        record = self._record(slot, HELD)
        written = self._write(key, record, if_token=token, if_absent=token is None)
        if written is None:
            return None
        lease = Lease(self.fleet, slot, self.holder, key, "", 0.0, 0.0, "")
        self._update(lease, record, *written)
        return lease

    def _update(self, lease: Lease, record: dict[str, Any], token: str, started: float) -> None:
        lease.token = token
        lease.expires_at = float(record["expires_at"])
        lease.write_id = str(record["write"])
        lease.valid_until = started + self.ttl_seconds - self.skew_seconds

    def _write(
        self, key: str, record: dict[str, Any], *, if_token: str | None = None, if_absent: bool = False
    ) -> tuple[str, float] | None:
        """``(token, monotonic time the write started)``, or ``None`` when its condition was lost. A lost condition
        whose object now holds this very write (a retry after a lost reply) is a success."""
        started = self._monotonic()
        data = json.dumps(record, sort_keys=True).encode()
        try:
            return self.store.write(key, data, if_token=if_token, if_absent=if_absent), started
        except PreconditionFailed:
            try:
                blob = self.store.read(key)
            except ObjectNotFound:
                return None
            now = _parse(blob.data)
            if now is not None and now.get("write") == record["write"]:
                return blob.token, started
            return None


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) and doc.get("schema") == SCHEMA else None
