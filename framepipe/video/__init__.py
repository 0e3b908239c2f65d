"""Video probing, sampling and decoding, behind one small interface (PySceneDetect's layout: one module per
decoder backend behind one ``VideoStream`` interface: ``base``, ``probe``, ``sampling``, ``pyav_backend``,
``decord_backend``).

``open_video(uri)`` returns a :class:`VideoStream` whose ``info`` holds the metadata and whose
``read(times)`` yields :class:`Frame` objects (BGR ``uint8``, rotated upright) for the requested
presentation times. Two backends implement it (``open_video`` says which one ``auto`` picks):

* ``DecordStream``: decord's frame index gives every frame's timestamp without decoding; frames
  are read one index at a time, in increasing order, so decord decodes forward and seeks only across
  keyframes. ``get_batch`` is never called: it can spin forever, holding the GIL, when a header over-reports
  the frame count (dmlc/decord#373, #375). Sample times are bounded by the probed duration for the same reason.
* ``PyAVStream``: FFmpeg through PyAV. It seeks only when a keyframe lies between the current position and the
  next sample, otherwise decodes forward, and skips the non-reference frames that no sample needs.

Timestamps (``Frame.pts_s``) are the frame's presentation time in seconds as ``ffprobe`` reports it
(``pts * time_base`` of the video stream): correct for streams that start late, variable frame rate and
files whose video is not stream 0.
"""

from __future__ import annotations

from framepipe.errors import FramepipeError, InputTooLarge
from framepipe.video.base import Frame, VideoInfo, VideoStream, log
from framepipe.video.decord_backend import DecordStream
from framepipe.video.probe import probe
from framepipe.video.pyav_backend import PyAVStream, nonref_detector
from framepipe.video.sampling import nearest_keyframes, sample_times

__all__ = ["DecordStream", "Frame", "PyAVStream", "VideoInfo", "VideoStream", "nearest_keyframes", "nonref_detector",
           "open_video", "probe", "sample_times"]


def open_video(
    uri: str,
    backend: str = "auto",
    timeout_s: float = 30.0,
    max_pixels: int | None = None,
    max_duration_s: float | None = None,
    decode_threads: int = 0,
) -> VideoStream:
    """Probe ``uri`` and open it with the chosen backend.

    ``auto``: PyAV where it can skip non-reference frames (H.264/HEVC in MP4, MOV, MKV: the fastest reader
    measured, bench/single_video.py), else decord, else PyAV (decord's FFmpeg cannot read AV1, for example)."""
    info, keyframes = probe(uri, timeout_s=timeout_s, max_pixels=max_pixels)
    if max_duration_s and info.duration_s > max_duration_s:
        raise InputTooLarge(f"video lasts {info.duration_s:.0f} s, over the cap of {max_duration_s:.0f} s")
    if info.media_type == "image":
        return PyAVStream(uri, info, keyframes, timeout_s=timeout_s, threads=decode_threads)
    if backend == "auto":
        stream = PyAVStream(uri, info, keyframes, timeout_s=timeout_s, threads=decode_threads)
        if stream.skips_nonref:
            return stream
        stream.close()
    if backend in ("auto", "decord"):
        try:
            return DecordStream(uri, info, keyframes, num_threads=decode_threads)
        except FramepipeError as e:
            if backend == "decord":
                raise
            log.info("decord cannot read this video (%s); using PyAV", e.message)
    return PyAVStream(uri, info, keyframes, timeout_s=timeout_s, threads=decode_threads)
