"""Ask the local TF Serving which versions of a model it serves (the numpy-free REST status call)."""

from __future__ import annotations

import threading
from collections import Counter

from model_export.errors import ServingError
from modelfleet.tfs_rest import label_version, model_status

AVAILABLE = "AVAILABLE"
END = "END"
# loader_harness.cc: a version dropped from the config while the start-up pool loads it ends END with this code; the
# version is not at fault.
CANCELLED = "CANCELLED"


class VersionStates(dict[int, str]):
    """``{version: state}`` as :meth:`TfsClient.model_status` returns it, plus ``errors``: ``{version: "CODE:
    message"}`` for the versions whose status is not OK (a load that failed: ``END`` with TF Serving's error)."""

    def __init__(self, states: dict[int, str], errors: dict[int, str] | None = None) -> None:
        super().__init__(states)
        self.errors: dict[int, str] = dict(errors or {})


def load_errors(states: dict[int, str]) -> dict[int, str]:
    """The versions TF Serving reports ``END`` with an error (not a cancelled load): ``{version: "CODE: message"}``.
    Empty for a plain ``dict`` (a client that reports states only)."""
    errors = states.errors if isinstance(states, VersionStates) else {}
    return {v: error for v, error in errors.items() if states.get(v) == END and not error.startswith(f"{CANCELLED}:")}


class TfsUnreachable(Exception):
    """TF Serving did not answer, or answered something that is not a model status."""


class TfsNotRunning(TfsUnreachable):
    """Nothing serves the REST port (connection refused, or accepted and closed as Docker's proxy does for a
    container whose server is not listening yet): TF Serving is stopped, or starting (loading its first config; it
    opens its ports only after that). Either way the next config it reads may be its first, at start-up."""


class TfsClient:
    def __init__(self, url: str, timeout: float = 2.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        # Status requests TF Serving answered with an error, per model, since the agent started: they are in its
        # request_count, and the heartbeat takes them off (modelfleet.agent.heartbeat, tfs_metrics.without_own).
        self._own_errors: Counter[tuple[str, str]] = Counter()  # (model, status code) -> answers
        self._lock = threading.Lock()

    def own_errors(self) -> dict[str, dict[str, int]]:
        """``{model: {status code: n}}``: the requests of this client TF Serving answered with an error."""
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            for (model, code), n in self._own_errors.items():
                out.setdefault(model, {})[code] = n
        return out

    def model_status(self, model: str) -> dict[int, str]:
        """``{version: state}`` (LOADING, AVAILABLE, UNLOADING, END, ...); empty when TF Serving has no such model.
        The dict is a :class:`VersionStates`: its ``errors`` say why a version is ``END`` (see :func:`load_errors`).

        ``GET /v1/models/NAME`` answers 200 as soon as any version is known, whatever its state: the state field is
        what counts.
        """
        try:
            found = model_status(self.url, model, timeout=self.timeout)
        except ServingError as e:
            if e.http_status is not None:
                with self._lock:
                    self._own_errors[(model, e.code)] += 1
            if e.http_status == 404:
                return VersionStates({})
            if e.not_listening:
                raise TfsNotRunning(f"TF Serving at {self.url} is not serving (stopped or starting): {e}") from e
            raise TfsUnreachable(f"TF Serving at {self.url} is unreachable: {e}") from e
        return VersionStates({s.version: s.state for s in found}, {s.version: s.error for s in found if s.error})

    def label_version(self, model: str, label: str) -> int | None:
        """The version TF Serving serves under ``label`` now; ``None`` when it answers an error (it does not know the
        label yet). ``TfsUnreachable`` when it does not answer."""
        try:
            return label_version(self.url, model, label, timeout=self.timeout)
        except ServingError as e:
            if e.http_status is None:
                raise TfsUnreachable(f"TF Serving at {self.url} is unreachable: {e}") from e
            with self._lock:
                self._own_errors[(model, e.code)] += 1
            return None
