"""The sampled frames of one video: the one place that decides which frames are analysed.

:func:`open_source` resolves the input, probes the video and chooses the sample times; :class:`FrameSource`
then yields each sampled frame once, as a :class:`SampledFrame` (upright BGR pixels plus its
:class:`~framepipe.selection.FrameMeasure`), in time order per reader:

* sampling: one frame per ``1/sample_fps`` seconds (denser for short videos, :func:`video.sample_times`), or the
  nearest keyframes (``sampling="keyframes"``);
* parallel parts: a long video is cut into contiguous parts, each decoded by its own reader in its own thread;
* dedupe: a frame is yielded once even when two readers (or two sample times) land on it;
* cancellation: a :class:`Cancel` flag the readers check between frames (a Serve job that times out);
* closing: each reader is closed in the thread that reads it, never under a thread still inside FFmpeg;
* warnings: what the readers met on the way (a damaged tail, say).

Every front door (``framepipe extract``, the Ray backfill's decode tasks, the Serve consumer) reads frames through
this class, so a change of sampling is made here and nowhere else.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from framepipe import ids, sources
from framepipe.config import Settings
from framepipe.errors import ErrorCode, FramepipeError
from framepipe.prefetch import prefetch
from framepipe.selection import FrameMeasure, measure
from framepipe.video import VideoInfo, VideoStream, open_video, sample_times

MIN_PER_PART = 30  # sample times per parallel part: shorter videos are read by one reader


class Cancelled(FramepipeError):
    """The caller stopped the work (a job timeout, a shutdown)."""

    code = ErrorCode.CANCELLED


class Cancel(threading.Event):
    """A cancel flag the readers check between frames, with the reason the work is stopped for."""

    def __init__(self):
        super().__init__()
        self.error: FramepipeError = Cancelled("stopped by the caller")

    def stop(self, code: str, message: str) -> None:
        self.error = FramepipeError.with_code(code, message)
        self.set()


@dataclass
class SampledFrame:
    pts_s: float
    image: np.ndarray = field(repr=False)  # H x W x 3, BGR, uint8, upright
    measure: FrameMeasure
    lane: int = 0  # the reader (part of the video) that read it: a lane's frames come in time order ...
    index: int = 0  # ... and this is its position among them (what framepipe.tracking follows faces by)


def split_times(times: list[float], parts: int, min_per_part: int) -> list[list[float]]:
    """Cut sorted sample times into at most ``parts`` contiguous parts of at least ``min_per_part``."""
    parts = max(1, min(parts, len(times) // max(min_per_part, 1)))
    size = -(-len(times) // parts) if times else 1
    return [times[i : i + size] for i in range(0, len(times), size)] or [times]


@dataclass
class FrameSource:
    """One video, opened and planned; iterate :meth:`frames` once."""

    source: sources.Source
    video_id: str
    stream: VideoStream
    times: list[float]
    settings: Settings
    cancel: Cancel = field(default_factory=Cancel)
    warnings: list[str] = field(default_factory=list)
    _started: bool = False

    @property
    def info(self) -> VideoInfo:
        return self.stream.info

    @property
    def backend(self) -> str:
        return self.stream.backend

    def _read(self, stream: VideoStream, times: list[float], lane: int = 0) -> Iterator[SampledFrame]:
        """One reader's frames (run in the reader's own thread, which also closes it)."""
        keyframes = self.settings.sampling == "keyframes"
        try:
            for index, frame in enumerate(stream.read(times, keyframes=keyframes)):
                if self.cancel.is_set():
                    raise self.cancel.error
                yield SampledFrame(frame.pts_s, frame.image, measure(frame.image, frame.corrupt), lane, index)
        finally:
            self.warnings += stream.warnings
            stream.close()

    @contextlib.contextmanager
    def frames(self) -> Iterator[Iterator[SampledFrame]]:
        """``with source.frames() as frames: for f in frames: ...``. Frames of different parts arrive interleaved
        (not in global time order); each presentation time at most once."""
        if self._started:
            raise RuntimeError("a FrameSource is read once")
        self._started = True
        parts = split_times(self.times, self.settings.decode_workers, MIN_PER_PART)
        streams = [self.stream]
        try:
            streams += [self.stream.fork() for _ in parts[1:]]
        except BaseException:
            for s in streams:
                s.close()
            raise
        readers = [self._read(s, p, lane) for lane, (s, p) in enumerate(zip(streams, parts))]
        with prefetch(*readers, depth=self.settings.prefetch_frames) as items:
            yield self._once(items)

    @staticmethod
    def _once(items: Iterator[SampledFrame]) -> Iterator[SampledFrame]:
        seen: set[float] = set()
        for f in items:
            key = round(f.pts_s, 6)
            if key not in seen:  # two readers (keyframe mode) or two sample times reached the same frame
                seen.add(key)
                yield f

    def close(self) -> None:
        """Close the reader if :meth:`frames` never ran (its readers close themselves)."""
        if not self._started:
            self._started = True
            self.stream.close()


def open_source(source: str, settings: Settings, cancel: Cancel | None = None) -> FrameSource:
    """Resolve, probe and plan one input (raises a :class:`FramepipeError` for bad input)."""
    src = sources.resolve(source, timeout_s=settings.http_timeout_s, max_bytes=settings.max_bytes,
                          follow_redirects=settings.follow_redirects)
    stream = open_video(
        src.uri,
        backend=settings.backend,
        timeout_s=settings.http_timeout_s,
        max_pixels=settings.max_pixels,
        max_duration_s=settings.max_duration_s,
        decode_threads=settings.decode_threads,
    )
    times = sample_times(stream.info, settings.sample_fps, settings.min_samples)
    return FrameSource(src, ids.video_id(source), stream, times, settings, cancel or Cancel())
