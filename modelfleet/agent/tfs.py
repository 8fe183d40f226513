"""Ask the local TF Serving which versions of a model it serves (the numpy-free REST status call)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping

from model_export.errors import ServingError
from modelfleet.tfs_rest import model_status

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
        # Status requests TF Serving answered with an error, per model: they are in its request_count, and the
        # heartbeat takes them off (modelfleet.agent.tfs_metrics.without_own). Reset when TF Serving restarts.
        self._own_errors: Counter[str] = Counter()
        self._lock = threading.Lock()

    def own_errors(self) -> dict[str, int]:
        with self._lock:
            return dict(self._own_errors)

    def reset_own_errors(self, before: Mapping[str, int]) -> None:
        """A new TF Serving answered (its counters start from zero): keep only the errors counted since ``before``
        (``own_errors()`` taken before the requests that found it), which the new TF Serving answered."""
        with self._lock:
            self._own_errors = Counter({m: n - before.get(m, 0) for m, n in self._own_errors.items()})

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
                    self._own_errors[model] += 1
            if e.http_status == 404:
                return VersionStates({})
            if e.not_listening:
                raise TfsNotRunning(f"TF Serving at {self.url} is not serving (stopped or starting): {e}") from e
            raise TfsUnreachable(f"TF Serving at {self.url} is unreachable: {e}") from e
        return VersionStates({s.version: s.state for s in found}, {s.version: s.error for s in found if s.error})
