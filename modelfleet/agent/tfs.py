"""Ask the local TF Serving which versions of a model it serves (the numpy-free REST status call)."""

from __future__ import annotations

from model_export.errors import ServingError
from modelfleet.tfs_rest import model_status

AVAILABLE = "AVAILABLE"


class TfsUnreachable(Exception):
    """TF Serving did not answer, or answered something that is not a model status."""


class TfsNotRunning(TfsUnreachable):
    """Nothing serves the REST port (connection refused, or accepted and closed as Docker's proxy does for a
    container whose server is not listening yet): TF Serving is stopped or still loading its first config."""


class TfsClient:
    def __init__(self, url: str, timeout: float = 2.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def model_status(self, model: str) -> dict[int, str]:
        """``{version: state}`` (LOADING, AVAILABLE, UNLOADING, END, ...); empty when TF Serving has no such model.

        ``GET /v1/models/NAME`` answers 200 as soon as any version is known, whatever its state: the state field is
        what counts.
        """
        try:
            return {s.version: s.state for s in model_status(self.url, model, timeout=self.timeout)}
        except ServingError as e:
            if e.http_status == 404:
                return {}
            if e.not_listening:
                raise TfsNotRunning(f"TF Serving at {self.url} is not serving (stopped or starting): {e}") from e
            raise TfsUnreachable(f"TF Serving at {self.url} is unreachable: {e}") from e
