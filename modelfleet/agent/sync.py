"""Follow each model's manifest and decide, per model, which verified local version the fleet should serve.

One conditional GET per model per poll (``Store.read_if_changed``): when nothing changed that is the only request.
A changed manifest is parsed; a malformed one is logged and the last good one kept. The role's desired version is
then fetched into the local cache (or found there); the ``target`` moves to it only once it is complete and verified.
A version whose store copy is bad is refused: the target stays where it was, and the version is not tried again
until ``refuse_retry_seconds`` have passed (versions are immutable, so a retry only helps after a repair).

A version TF Serving failed to load (recorded in ``ModelState.failed`` by the agent's reconcile, from TF Serving's
status) is not the target either: the target stays on the last version that served on this VM, or, on a VM where
none has, falls back to the most recent earlier stable version that has not failed (``plan.fallback_versions``). A
failed version is tried again only when the desired version moves away and back, or after ``failed_retry_seconds``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from model_export.constants import CANARY, STABLE
from model_export.errors import ManifestError, ModelfleetError, ObjectNotFound
from model_export.layout import manifest_key
from model_export.manifest import Manifest
from model_export.store.base import Store
from modelfleet.agent.cache import DiskTooSmall, FetchFailed, LocalCache, LocalDiskError, VersionRefused
from modelfleet.agent.plan import desired_version, fallback_versions

log = logging.getLogger("modelfleet.agent")
DEFAULT_REFUSE_RETRY_SECONDS = 300.0
# A version TF Serving failed to load is tried again after this long (versions are immutable: only a cause outside
# the version, such as memory or a GPU held by something else, can have passed), or when the desired version moves
# away from it and back. Each try is a reload, never a start-up load: a failure costs TF Serving's own retries
# (--max_num_load_retries x --load_retry_interval_micros: 5 minutes by default, blocking its other loads), nothing
# else.
DEFAULT_FAILED_RETRY_SECONDS = 6 * 3600.0


@dataclass
class Refusal:
    reason: str
    at: float


def degraded_reason(model: str, failed: int, error: str, serving: int) -> str:
    """Why another version than the desired one serves: ``digits v5 failed to load (CODE: message); serving v4``."""
    return f"{model} v{failed} failed to load ({error}); serving v{serving}"


@dataclass
class LoadFailure:
    """A version TF Serving could not load on this VM: its error (``CODE: message``), and when (Unix time)."""

    error: str
    at: float


@dataclass
class ModelState:
    """What the agent knows about one model. The agent changes it only while holding its state lock (the store poll
    releases it around store requests: ``Follower.unlocked``)."""

    name: str
    token: str | None = None  # of the last manifest read, good or bad: an unchanged bad one is not fetched again
    manifest: Manifest | None = None  # the last good one
    desired: int | None = None  # what the manifest's labels ask this fleet to serve
    target: int | None = None  # the complete local version the config drives TF Serving to
    refused: dict[int, Refusal] = field(default_factory=dict)
    bad_manifest: str | None = None  # why the newest manifest read was not used
    problem: str | None = None  # why target is not desired (or why there is none), for health and logs
    # What TF Serving did with the versions on this VM (kept across restarts in the agent's state file):
    proven: set[int] = field(default_factory=set)  # reported AVAILABLE: safe in a config read at start-up
    last_good: int | None = None  # the last version that served (AVAILABLE, answering unversioned requests)
    failed: dict[int, LoadFailure] = field(default_factory=dict)  # reported END with an error: not listed again
    crashes: dict[int, int] = field(default_factory=dict)  # times TF Serving stopped while the version was loading
    retrying: dict[int, float] = field(default_factory=dict)  # failed versions tried again (monotonic start)
    degraded: str | None = None  # the desired version failed to load and another one serves: why, for health


@dataclass
class ModelReport:
    model: str
    error: str | None = None  # the sync failed (store, manifest or local disk)
    transient: bool = False  # the failure may pass by itself: back off and retry
    refused: str | None = None  # a version was refused in this sync
    local_disk: bool = False  # the error is the local disk's (full, no inodes, read-only, I/O), not the store's
    disk_too_small: bool = False  # the disk cannot hold the desired version even after evicting unused ones


class Follower:
    def __init__(
        self,
        store: Store,
        cache: LocalCache,
        role: str,
        *,
        refuse_retry_seconds: float = DEFAULT_REFUSE_RETRY_SECONDS,
        failed_retry_seconds: float = DEFAULT_FAILED_RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        desired_version({}, role)  # validates the role
        self.store = store
        self.cache = cache
        self.role = role
        self.refuse_retry_seconds = refuse_retry_seconds
        self.failed_retry_seconds = failed_retry_seconds
        self.clock = clock
        self.wall = wall
        # Entered around every store request (a manifest read, a download): the agent releases its state lock there,
        # so a slow or black-holed store never holds up reconciling with TF Serving. Read ``st`` again after it.
        self.unlocked: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext

    def _read_manifest(self, st: ModelState, report: ModelReport) -> bool:
        """Refresh ``st.manifest``; ``False`` when the store could not be read at all."""
        key = manifest_key(st.name)
        try:
            with self.unlocked():
                blob = self.store.read_if_changed(key, st.token)
        except ObjectNotFound:
            report.error = f"{st.name}: no manifest at {self.store.uri}/{key} (nothing published under that name)"
            return True
        except ModelfleetError as e:
            report.error, report.transient = f"{st.name}: cannot read the manifest: {e}", True
            return False
        if blob is None:
            return True
        st.token = blob.token
        try:
            manifest = Manifest.loads(blob.data, f"{self.store.uri}/{key}")
            if manifest.model != st.name:
                raise ManifestError(f"{self.store.uri}/{key} is malformed: it names model {manifest.model!r}")
        except ManifestError as e:
            kept = "keeping the last good one" if st.manifest else "no good one seen yet"
            st.bad_manifest = report.error = f"{st.name}: {e}; {kept}"
            return True
        st.manifest, st.bad_manifest = manifest, None
        return True

    def sync(self, st: ModelState) -> ModelReport:
        report = ModelReport(st.name)
        self._sync(st, report)
        if st.bad_manifest and not st.problem:
            st.problem = st.bad_manifest
        return report

    def _sync(self, st: ModelState, report: ModelReport) -> None:
        if not self._read_manifest(st, report) or st.manifest is None:
            if report.error:
                st.problem = self._keeping(st, report.error)
            return
        manifest = st.manifest
        desired = desired_version(manifest.labels, self.role)
        previous, st.desired = st.desired, desired
        if desired is None:
            st.degraded = None
            labels = STABLE if self.role == STABLE else f"{CANARY} or {STABLE}"
            st.problem = f"{st.name}: the manifest has no {labels} label"
            if st.target is not None:
                st.problem += f"; still serving version {st.target}"
            return
        self._maybe_retry(st, desired, moved=previous is not None and previous != desired)
        if desired in st.failed:
            self.fall_back(st, report)
            return
        st.degraded = None
        if desired == st.target and self.cache.version_dir(st.name, desired).is_dir():
            st.problem = None
            return
        refusal = st.refused.get(desired)
        if refusal is not None and self.clock() - refusal.at < self.refuse_retry_seconds:
            st.problem = self._keeping(st, refusal.reason)
            return
        try:
            with self.unlocked():
                fetched = self.cache.fetch(self.store, st.name, manifest.get(desired))
        except VersionRefused as e:
            st.refused[desired] = Refusal(str(e), self.clock())
            report.refused = str(e)
            st.problem = self._keeping(st, str(e))
            log.error("%s", st.problem)
            return
        except FetchFailed as e:
            report.error, report.transient = str(e), True
            report.local_disk, report.disk_too_small = isinstance(e, LocalDiskError), isinstance(e, DiskTooSmall)
            st.problem = self._keeping(st, str(e))
            return
        st.refused.pop(desired, None)
        previous_target, st.target, st.problem = st.target, desired, None
        self.cache.touch(st.name, desired)
        how = f"downloaded {fetched} B" if fetched else "from the local cache"
        log.info("%s: version %d ready (%s); was %s", st.name, desired, how, previous_target)

    def _maybe_retry(self, st: ModelState, desired: int, *, moved: bool) -> None:
        """Forget that ``desired`` failed when the desired version moved away and back (``moved``: it was another
        one at the last sync), or when the failure is older than ``failed_retry_seconds``."""
        failure = st.failed.get(desired)
        if failure is None or not (moved or self.wall() - failure.at >= self.failed_retry_seconds):
            return
        del st.failed[desired]
        st.crashes.pop(desired, None)
        st.retrying[desired] = self.clock()
        why = "the desired version moved back to it" if moved else f"{self.failed_retry_seconds:g} s have passed"
        log.warning("%s: trying version %d again (%s); it failed to load: %s", st.name, desired, why, failure.error)

    def fall_back(self, st: ModelState, report: ModelReport | None = None) -> None:
        """The desired version (or else the target) failed to load: serve the last version that served on this VM;
        on a VM where none has, the most recent earlier stable version that has not failed, fetched if needed (only
        with ``report``: from a store sync; without, as from a reconcile, nothing is downloaded and the target may
        become None until the next sync). ``st.degraded`` says why another version serves; ``st.problem`` why none
        does."""
        bad = st.desired if st.desired is not None and st.desired in st.failed else st.target
        assert bad is not None and bad in st.failed
        reason = f"v{bad} failed to load ({st.failed[bad].error})"

        def usable(v: int | None) -> bool:
            return v is not None and v not in st.failed and self.cache.version_dir(st.name, v).is_dir()

        chosen: int | None = None
        why_none = "no earlier version to fall back to"
        if usable(st.last_good):
            chosen = st.last_good
        elif usable(st.target):
            chosen = st.target  # a fallback chosen earlier, still loading
        elif report is not None:
            chosen, why_none = self._fetch_fallback(st, bad, report)
        else:
            why_none = "looking for an earlier version to fall back to"
        if chosen is None:
            st.target, st.degraded = None, None
            st.problem = f"{st.name}: {reason}; {why_none}"
            return
        if chosen != st.target:
            log.warning("%s: %s; serving version %d instead (was %s)", st.name, reason, chosen, st.target)
            self.cache.touch(st.name, chosen)
        st.target, st.problem = chosen, None
        st.degraded = degraded_reason(st.name, bad, st.failed[bad].error, chosen)

    def _fetch_fallback(self, st: ModelState, desired: int, report: ModelReport) -> tuple[int | None, str]:
        """The first fallback candidate that is on disk or can be fetched; else ``None`` and why."""
        manifest = st.manifest
        assert manifest is not None
        candidates = fallback_versions(
            self.role, desired, manifest.labels, manifest.stable_lineage(), manifest.versions.keys()
        )
        for version in candidates:
            if version in st.failed:
                continue
            refusal = st.refused.get(version)
            if refusal is not None and self.clock() - refusal.at < self.refuse_retry_seconds:
                continue
            try:
                with self.unlocked():
                    fetched = self.cache.fetch(self.store, st.name, manifest.get(version))
            except VersionRefused as e:
                st.refused[version] = Refusal(str(e), self.clock())
                report.refused = str(e)
                log.error("%s", e)
                continue
            except FetchFailed as e:
                report.error, report.transient = str(e), True
                report.local_disk, report.disk_too_small = isinstance(e, LocalDiskError), isinstance(e, DiskTooSmall)
                return None, f"cannot fetch the earlier version {version}: {e}"
            how = f"downloaded {fetched} B" if fetched else "from the local cache"
            log.info("%s: earlier stable version %d ready (%s)", st.name, version, how)
            return version, ""
        return None, "no earlier version to fall back to"

    @staticmethod
    def _keeping(st: ModelState, why: str) -> str:
        return f"{why}; keeping version {st.target}" if st.target is not None else why
