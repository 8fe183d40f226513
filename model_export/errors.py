"""The project's exceptions. The CLI maps ``exit_code`` to the process exit status.

``BadInput`` (exit 2) means the caller asked for something invalid and nothing was written;
every other ``ModelfleetError`` (exit 1) means a valid operation failed.
"""

from __future__ import annotations


class ModelfleetError(Exception):
    """An operation failed (exit 1). The message is one line a user can act on."""

    exit_code = 1


class BadInput(ModelfleetError):
    """The request itself is invalid (exit 2); nothing was changed."""

    exit_code = 2


class InvalidStoreURI(BadInput):
    pass


class StoreNotFound(BadInput):
    """The bucket or root directory of a store URI does not exist."""


class NotASavedModel(BadInput):
    pass


class UnknownVersion(BadInput):
    pass


class UnknownModel(BadInput):
    pass


class InvalidName(BadInput):
    """A model or label name outside the allowed character set."""


class SignatureChanged(BadInput):
    pass


class ObjectNotFound(ModelfleetError):
    """A key is absent from the store (raised by backends; callers usually translate it)."""


class PreconditionFailed(ModelfleetError):
    """A conditional write lost: the object changed (or appeared) since it was read."""


class ReservationLost(ModelfleetError):
    """A publish lost its version number: prune judged it dead (no heartbeat past the grace) and fenced the number."""


class ConflictRetriesExhausted(ModelfleetError):
    pass


class StoreError(ModelfleetError):
    """The store answered with an error that is not the caller's fault (network, permissions, 5xx)."""


class TransferError(ModelfleetError):
    """One or more files of a batch failed to upload, download or verify."""


class ManifestError(ModelfleetError):
    """A model's manifest is malformed or of an unknown schema version."""


class ExportError(ModelfleetError):
    """Exporting a model, or validating the exported SavedModel, failed."""


class ServingError(ModelfleetError):
    """TF Serving answered with an error, or could not be reached (exit 1).

    ``code`` is the canonical gRPC status name (``NOT_FOUND``, ``INVALID_ARGUMENT``, ``UNAVAILABLE``, ...), also for
    REST answers (mapped back from the HTTP status TF Serving derived from it); ``http_status`` is set for REST.
    """

    def __init__(self, message: str, *, code: str, http_status: int | None = None, not_listening: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = http_status
        # Nothing serves the port (refused, or accepted and closed as Docker's proxy does for a container whose server
        # is not listening yet): TF Serving is stopped or still loading its first config.
        self.not_listening = not_listening


def one_line(text: str | BaseException, limit: int = 500) -> str:
    """``text`` (or an exception's message, else its type name) on one line, cut to ``limit`` characters: how a
    message from elsewhere (an SDK, TF Serving, TensorFlow) goes into one of ours."""
    flat = " ".join(str(text).split())
    if not flat and isinstance(text, BaseException):
        flat = type(text).__name__
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
