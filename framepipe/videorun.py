"""One video's run: what every front door knows of a video while it is processed, and the one way its end is
written, success or failure, and marked done.

A :class:`VideoRun` is to a video what Immich's ``InferenceModel`` is to a model: ``framepipe extract``, the
backfill's actors and finish tasks, and the Serve consumer each make one and end it with :meth:`VideoRun.succeed`
or :meth:`VideoRun.fail` (or :meth:`VideoRun.attempt`, which does one or the other). It holds the start time (the
wall clock, ``time.time``, so that a run begun by a decode task on one node and finished by a task on another
measures one span), the device and model pack that analysed the video, the decoder, the video's metadata, the
destination, and the done marker with the id of the run that writes it.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from framepipe import errors, ids, outputs, schema, sources
from framepipe.config import Settings
from framepipe.errors import CorruptVideo, ErrorCode, FramepipeError, NoFrames, NotAVideo, SourceUnreachable
from framepipe.storage import Destination

if TYPE_CHECKING:
    from framepipe.framesource import FrameSource
    from framepipe.state import VideoReduction

log = logging.getLogger(__name__)

# what a dropped connection looks like to a decoder
_DAMAGED = frozenset({CorruptVideo.code, NoFrames.code, NotAVideo.code})


def internal_error(e: BaseException) -> FramepipeError:
    """A bug of ours (or an unexpected library error) as a failure of one video, never of a whole run."""
    return FramepipeError.with_code(ErrorCode.INTERNAL_ERROR, f"{type(e).__name__}: {str(e)[:300]}")


def typed_error(e: Exception, what: str, source: str | None = None, timeout_s: float = 30.0) -> FramepipeError:
    """``e`` as the failure of one video: itself if typed, else an ``internal_error`` (logged with its traceback).
    A network ``source`` whose video looked damaged is checked again: if it does not serve its bytes whole now,
    the failure is ``source_unreachable`` (retried) rather than a damaged video (final)."""
    if isinstance(e, FramepipeError):
        if source and e.code in _DAMAGED and sources.is_network(source) and not sources.serves_whole(source,
                                                                                                     timeout_s):
            return SourceUnreachable(f"the connection to {source} failed while reading it ({e.line})")
        return e
    log.exception("%s failed", what)
    return internal_error(e)


def is_final(result: schema.Result) -> bool:
    """Is this video done for good (succeeded, or failed for a reason a re-run cannot change)?"""
    return result.status == "succeeded" or (result.error is not None and result.error.type not in errors.TRANSIENT)


def result_row(result: schema.Result) -> dict:
    """A result as the one small row every run over many inputs reports (the backfill's driver, RunSummary)."""
    return {"video_id": result.video_id, "source": result.video.source, "status": result.status,
            "people": len(result.talent_frames), "error": str(result.error) if result.error else ""}


@dataclass
class VideoRun:
    """One video being processed (see the module's docstring). ``identity``: the object's identity for the done
    marker (ETag, or size and mtime; empty: no marker, as in Serve); ``run_id``: written into the marker."""

    source: str
    destination: Destination
    settings: Settings
    identity: str = ""
    run_id: str = ""
    started: float = field(default_factory=time.time)
    device: str = "cpu"
    pack: str | None = None
    backend: str | None = None
    meta: schema.VideoMeta | None = None

    @property
    def video_id(self) -> str:
        return ids.video_id(self.source)

    @functools.cached_property
    def marker(self) -> str:
        """The done marker's name (the settings' hash and the pack's calibration: computed once per run)."""
        return ids.done_marker(self.video_id, self.identity, self.settings)

    # --- what is learnt on the way ------------------------------------------------------------------

    def analysed_by(self, device: str, pack: str | None) -> None:
        self.device, self.pack = device, pack

    def opened(self, fs: "FrameSource") -> None:
        self.backend, self.meta = fs.backend, outputs.video_meta(self.source, fs)

    def processing(self, frames: int = 0, faces: int = 0) -> schema.Processing:
        """The processing figures now: the time since the start, at the device's hourly price."""
        return outputs.processing_doc(self.settings, time.time() - self.started, self.device, self.backend,
                                      self.pack, frames, faces)

    # --- the end: written once --------------------------------------------------------------------

    def _replacing(self) -> None:
        """Before any output is written: the folder no longer holds what a marker names (a run killed from here on
        leaves a video no marker calls done), whatever the run (a single-file extract, Serve)."""
        self.destination.delete(f"{self.video_id}/{ids.MADE_WITH}")

    def succeed(self, reduction: "VideoReduction", warnings: list[str]) -> schema.Result:
        """Write every output of the video (its people and frames chosen); raises what writing raises."""
        self._replacing()
        return outputs.write_success(
            self.destination, self.video_id, self.meta or schema.VideoMeta(source=self.source), reduction, warnings,
            self.settings, lambda: self.processing(reduction.frames_sampled, reduction.faces_detected), self.pack)

    def fail(self, e: Exception) -> schema.Result:
        """The video's failed record, written (result.json, its manifest row): ``e`` typed by :func:`typed_error`."""
        error = typed_error(e, f"processing {self.video_id}", self.source, self.settings.http_timeout_s)
        self._replacing()
        return outputs.record_failure(self.destination, self.video_id,
                                      self.meta or schema.VideoMeta(source=self.source), error, self.processing(),
                                      self.pack, self.settings)

    def attempt(self, build: Callable[[], schema.Result], raise_errors: bool = False) -> schema.Result:
        """``build()`` (which ends with :meth:`succeed`), or, when it raises, :meth:`fail`. Never raises unless
        ``raise_errors``."""
        try:
            return build()
        except Exception as e:
            if raise_errors:
                raise
            return self.fail(e)

    # --- done markers (many inputs: framepipe extract SRC_DIR, the backfill) ------------------------------

    def done_by(self) -> str | None:
        """The id of the run that marked this video done (``""`` when it wrote none), None when not done."""
        path = f"{ids.DONE}/{self.marker}"
        if not self.destination.exists(path):
            return None
        return self.destination.read(path).decode("utf-8", "replace")

    def is_done(self, by: str | None = None) -> bool:
        """Done by an earlier run (same object, settings and versions) whose outputs are still the ones in the
        video's folder (settings A, then B, then A again: A's marker is there, B's outputs are, so A is redone).
        A video this very run marked done (a task re-run after its output was lost with a node) is not: its work
        is repeated, or its result read back. ``by``: :meth:`done_by`, when the caller read it already."""
        by = self.done_by() if by is None else by
        if by is None or (self.run_id and by == self.run_id):
            return False
        made_with = f"{self.video_id}/{ids.MADE_WITH}"
        return self.destination.exists(made_with) and self.destination.read(made_with).decode() == self.marker

    def mark_done(self, result: schema.Result) -> None:
        """The done marker, written last and only when the result is final (a transient failure is retried): which
        marker the folder's outputs are of, then the marker."""
        if self.identity and is_final(result):
            self.destination.write(f"{self.video_id}/{ids.MADE_WITH}", self.marker.encode())
            self.destination.write(f"{ids.DONE}/{self.marker}", self.run_id.encode())

    def written_result(self) -> schema.Result:
        return schema.Result.model_validate_json(self.destination.read(f"{self.video_id}/result.json"))
