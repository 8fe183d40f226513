"""Ask the local TF Serving which versions of a model it serves (REST ``GET /v1/models/NAME``), stdlib only."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request

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
        url = f"{self.url}/v1/models/{urllib.parse.quote(model)}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:  # noqa: S310 - URL built from --tfs-url
                body = resp.read()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return {}
            raise TfsUnreachable(f"TF Serving at {self.url} answered HTTP {e.code} for model {model!r}") from e
        except (OSError, ValueError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, (ConnectionError, http.client.RemoteDisconnected)):
                raise TfsNotRunning(f"TF Serving at {self.url} is not serving (stopped or starting): {reason}") from e
            raise TfsUnreachable(f"TF Serving at {self.url} is unreachable: {reason}") from e
        try:
            doc = json.loads(body)
            return {int(s["version"]): str(s["state"]) for s in doc.get("model_version_status", [])}
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise TfsUnreachable(f"TF Serving at {self.url} sent an unreadable status for {model!r}: {e}") from e
