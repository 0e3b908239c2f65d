"""The exception types of framepipe, and the one list of their codes.

Every failure that a user can cause (bad source, bad file, missing model) is one of these, carries a short
machine-readable ``code`` (an :class:`ErrorCode`) and a one-line message, and ends up in ``result.json`` as
``error: {type, message}``. :data:`TRANSIENT` says which codes a later run retries; the others are properties of
the input and final.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    SOURCE_NOT_FOUND = "source_not_found"
    SOURCE_UNREACHABLE = "source_unreachable"
    NOT_A_VIDEO = "not_a_video"
    CORRUPT_VIDEO = "corrupt_video"
    NO_FRAMES = "no_frames"
    INPUT_TOO_LARGE = "input_too_large"
    NO_FACES = "no_faces"
    MODEL_NOT_FOUND = "model_not_found"
    DESTINATION_ERROR = "destination_error"
    INTERNAL_ERROR = "internal_error"  # a bug of ours, counted against one video
    CANCELLED = "cancelled"  # the caller stopped the work
    TIMEOUT = "timeout"  # a Serve job over its time limit
    MODEL_UNAVAILABLE = "model_unavailable"  # the service's model deployment was down
    WORKER_LOST = "worker_lost"  # the service lost a job's worker too many times
    BAD_CORRECTION = "bad_correction"  # framepipe people: a name, merge or split that names nobody
    QUERY_NO_FACE = "no_face"  # search: the query photo holds no face (a video without faces: NO_FACES)
    NO_PEOPLE_OF_MODEL = "no_people_of_model"  # search: the destination has no people of the query's model
    DAMAGED_DESTINATION = "damaged_destination"  # a file of the destination cannot be read and nothing replaces it


# failures worth retrying on a later run; the others are properties of the input and are final (marked done)
TRANSIENT = frozenset({ErrorCode.SOURCE_UNREACHABLE, ErrorCode.DESTINATION_ERROR, ErrorCode.MODEL_NOT_FOUND,
                       ErrorCode.INTERNAL_ERROR, ErrorCode.CANCELLED})


class FramepipeError(Exception):
    """Base class: a failure with a clear, one-line reason."""

    code = "error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict:
        return {"type": str(self.code), "message": self.message}

    @property
    def line(self) -> str:
        """``code: message``, as summaries and logs show a failure."""
        return f"{self.code}: {self.message}"

    @classmethod
    def with_code(cls, code: str, message: str) -> "FramepipeError":
        """An error known only by its code (read back from a record, or raised outside the engine), as its own
        class when one has that code."""
        known = _by_code().get(code)
        err = known(message) if known is not None else cls(message)
        err.code = code
        return err

    @property
    def transient(self) -> bool:
        return self.code in TRANSIENT


class SourceNotFound(FramepipeError):
    """The local file or S3 object does not exist."""

    code = ErrorCode.SOURCE_NOT_FOUND


class SourceUnreachable(FramepipeError):
    """The URL or S3 endpoint could not be reached or refused access."""

    code = ErrorCode.SOURCE_UNREACHABLE


class NotAVideo(FramepipeError):
    """The input opened but holds no video stream (or is no media file at all)."""

    code = ErrorCode.NOT_A_VIDEO


class CorruptVideo(FramepipeError):
    """The video stream is there but cannot be decoded (truncated, damaged)."""

    code = ErrorCode.CORRUPT_VIDEO


class NoFrames(FramepipeError):
    """The video holds no decodable frame."""

    code = ErrorCode.NO_FRAMES


class DamagedDestination(FramepipeError):
    """A destination's file is damaged (truncated, emptied) and no earlier version can stand in for it."""

    code = ErrorCode.DAMAGED_DESTINATION


class InputTooLarge(FramepipeError):
    """The input exceeds a configured cap (bytes, duration or resolution)."""

    code = ErrorCode.INPUT_TOO_LARGE


class NoFacesFound(FramepipeError):
    """Raised only when the caller asked for faces to be required (``require_faces``)."""

    code = ErrorCode.NO_FACES


class ModelNotFound(FramepipeError):
    """The model pack could not be found or loaded."""

    code = ErrorCode.MODEL_NOT_FOUND


class DestinationError(FramepipeError):
    """Outputs could not be written to the destination."""

    code = ErrorCode.DESTINATION_ERROR


class ModelUnavailable(FramepipeError):
    """The service's model deployment could not be reached (the job fails; the caller may submit it again)."""

    code = ErrorCode.MODEL_UNAVAILABLE


class WorkerLost(FramepipeError):
    """The service lost the worker running a job more times than it retries (SIGKILL, a lost node)."""

    code = ErrorCode.WORKER_LOST


def _by_code() -> dict[str, type[FramepipeError]]:
    out: dict[str, type[FramepipeError]] = {}
    todo = [FramepipeError]
    while todo:
        cls = todo.pop()
        out.setdefault(cls.code, cls)
        todo += cls.__subclasses__()
    return out
