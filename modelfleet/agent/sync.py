"""Follow each model's manifest and decide, per model, which verified local version the fleet should serve.

One conditional GET per model per poll (``Store.read_if_changed``): when nothing changed that is the only request.
A changed manifest is parsed; a malformed one is logged and the last good one kept. The role's desired version is
then fetched into the local cache (or found there); the ``target`` moves to it only once it is complete and verified.
A version whose store copy is bad is refused: the target stays where it was, and the version is not tried again
until ``refuse_retry_seconds`` have passed (versions are immutable, so a retry only helps after a repair).
"""

from __future__ import annotations

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
from modelfleet.agent.plan import desired_version

log = logging.getLogger("modelfleet.agent")
DEFAULT_REFUSE_RETRY_SECONDS = 300.0


@dataclass
class Refusal:
    reason: str
    at: float


@dataclass
class ModelState:
    """What the agent knows about one model. Only the sync loop changes it."""

    name: str
    token: str | None = None  # of the last manifest read, good or bad: an unchanged bad one is not fetched again
    manifest: Manifest | None = None  # the last good one
    desired: int | None = None  # what the manifest's labels ask this fleet to serve
    target: int | None = None  # the complete local version the config drives TF Serving to
    refused: dict[int, Refusal] = field(default_factory=dict)
    bad_manifest: str | None = None  # why the newest manifest read was not used
    problem: str | None = None  # why target is not desired (or why there is none), for health and logs


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        desired_version({}, role)  # validates the role
        self.store = store
        self.cache = cache
        self.role = role
        self.refuse_retry_seconds = refuse_retry_seconds
        self.clock = clock

    def _read_manifest(self, st: ModelState, report: ModelReport) -> bool:
        """Refresh ``st.manifest``; ``False`` when the store could not be read at all."""
        key = manifest_key(st.name)
        try:
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
        st.desired = desired
        if desired is None:
            labels = STABLE if self.role == STABLE else f"{CANARY} or {STABLE}"
            st.problem = f"{st.name}: the manifest has no {labels} label"
            if st.target is not None:
                st.problem += f"; still serving version {st.target}"
            return
        if desired == st.target and self.cache.version_dir(st.name, desired).is_dir():
            st.problem = None
            return
        refusal = st.refused.get(desired)
        if refusal is not None and self.clock() - refusal.at < self.refuse_retry_seconds:
            st.problem = self._keeping(st, refusal.reason)
            return
        try:
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
        previous, st.target, st.problem = st.target, desired, None
        self.cache.touch(st.name, desired)
        how = f"downloaded {fetched} B" if fetched else "from the local cache"
        log.info("%s: version %d ready (%s); was %s", st.name, desired, how, previous)

    @staticmethod
    def _keeping(st: ModelState, why: str) -> str:
        return f"{why}; keeping version {st.target}" if st.target is not None else why
