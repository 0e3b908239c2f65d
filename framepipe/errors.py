"""The exception types of framepipe.

Every failure that a user can cause (bad source, bad file, missing model) is one of these, carries a short
machine-readable ``code`` and a one-line message, and ends up in ``result.json`` as ``error: {type, message}``.
"""

from __future__ import annotations


class FramepipeError(Exception):
    """Base class: a failure with a clear, one-line reason."""

    code = "error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict:
        return {"type": self.code, "message": self.message}

    @classmethod
    def with_code(cls, code: str, message: str) -> "FramepipeError":
        """An error known only by its code: read back from a record, or raised outside the engine."""
        err = cls(message)
        err.code = code
        return err


class SourceNotFound(FramepipeError):
    """The local file or S3 object does not exist."""

    code = "source_not_found"


class SourceUnreachable(FramepipeError):
    """The URL or S3 endpoint could not be reached or refused access."""

    code = "source_unreachable"


class NotAVideo(FramepipeError):
    """The input opened but holds no video stream (or is no media file at all)."""

    code = "not_a_video"


class CorruptVideo(FramepipeError):
    """The video stream is there but cannot be decoded (truncated, damaged)."""

    code = "corrupt_video"


class NoFrames(FramepipeError):
    """The video holds no decodable frame."""

    code = "no_frames"


class InputTooLarge(FramepipeError):
    """The input exceeds a configured cap (bytes, duration or resolution)."""

    code = "input_too_large"


class NoFacesFound(FramepipeError):
    """Raised only when the caller asked for faces to be required (``require_faces``)."""

    code = "no_faces"


class ModelNotFound(FramepipeError):
    """The model pack could not be found or loaded."""

    code = "model_not_found"


class DestinationError(FramepipeError):
    """Outputs could not be written to the destination."""

    code = "destination_error"


class ModelUnavailable(FramepipeError):
    """The service's model deployment could not be reached (the job fails; the caller may submit it again)."""

    code = "model_unavailable"


class WorkerLost(FramepipeError):
    """The service lost the worker running a job more times than it retries (SIGKILL, a lost node)."""

    code = "worker_lost"
