"""The PyAV backend (see the package docstring)."""

from __future__ import annotations

import bisect
import collections
import math
from typing import Callable, Iterator, Sequence

import av
import cv2
import numpy as np

from framepipe.errors import CorruptVideo, FramepipeError
from framepipe.video.base import Frame, VideoInfo, damaged, rotate
from framepipe.video.probe import open_container
from framepipe.video.sampling import nearest_keyframes


def nonref_detector(stream) -> "Callable[[av.Packet], bool] | None":
    """A test for packets no other frame refers to (H.264 ``nal_ref_idc == 0``, HEVC sub-layer non-reference
    pictures), read from the NAL headers of length-prefixed streams (MP4, MOV, MKV). None where it does not apply
    (other codecs, Annex-B streams such as MPEG-TS): then every packet is decoded."""
    codec = stream.codec_context.codec.canonical_name
    extradata = stream.codec_context.extradata or b""
    if codec not in ("h264", "hevc") or len(extradata) < 23 or extradata[0] != 1:
        return None
    length_size = (extradata[4 if codec == "h264" else 21] & 3) + 1

    def is_nonref(packet) -> bool:
        data = bytes(packet)
        off = 0
        while off + length_size < len(data):
            n = int.from_bytes(data[off : off + length_size], "big")
            header = data[off + length_size]
            if codec == "h264":
                kind = header & 0x1F
                if kind in (1, 5):  # coded slice
                    return (header >> 5) & 3 == 0
            else:
                kind = (header >> 1) & 0x3F
                if kind < 32:  # VCL NAL unit; types 0, 2, ..., 14 are sub-layer non-reference
                    return kind <= 14 and kind % 2 == 0
            off += length_size + n
        return False

    return is_nonref


class PyAVStream:
    """FFmpeg through PyAV, decoding only what the sample times need.

    It seeks only when a keyframe lies between the current position and the next sample time, and otherwise
    decodes forward. Going forward, packets that no other frame refers to (most B-frames) are not decoded at
    all unless one of them is the frame shown at a sample time: on x264-default uploads that skips about 45% of
    the packets and a third of the decoding time. Only the sampled frames are converted to BGR arrays.
    """

    backend = "pyav"
    LOOKAHEAD = 16  # packets; B-frame reordering in real streams stays well inside this

    def __init__(self, uri: str, info: VideoInfo, keyframe_times: list[float], timeout_s: float = 30.0,
                 threads: int = 0):
        self.info = info
        self.warnings: list[str] = []
        self._args = (uri, info, keyframe_times, timeout_s, threads)
        self._keyframes = np.asarray(sorted(keyframe_times), dtype=np.float64)
        self._container = open_container(uri, timeout_s)
        try:
            self._stream = self._container.streams.video[0]
            self._stream.thread_type = "AUTO"
            if threads:
                self._stream.thread_count = threads
            self.skips_nonref = nonref_detector(self._stream) is not None
        except Exception as e:
            self._container.close()
            raise CorruptVideo(f"cannot open the video stream ({type(e).__name__})") from None

    def _keyframe_between(self, a: float, b: float) -> bool:
        """Is there a keyframe in (a, b]? Without an index, assume one every 2 s (seek only for gaps over it)."""
        if not len(self._keyframes):
            return b - a > 2.0
        i = int(np.searchsorted(self._keyframes, a, side="right"))
        return i < len(self._keyframes) and self._keyframes[i] <= b

    def _packets(self, targets: list[float]) -> Iterator:
        """Demuxed packets worth decoding: all reference packets, and the non-reference ones that are the first
        frame at or after a sample time (a target lies between the frame's display predecessor and itself)."""
        stream = self._stream
        is_nonref = nonref_detector(stream)
        demux = self._container.demux(stream)
        if is_nonref is None:
            yield from demux
            return
        tb = float(stream.time_base)
        ahead: collections.deque = collections.deque()
        recent: collections.deque = collections.deque(maxlen=4 * self.LOOKAHEAD)

        def needed(pkt) -> bool:
            if pkt.pts is None or not is_nonref(pkt):
                return True
            p = pkt.pts * tb
            prev = max((q for q in (*recent, *(a.pts * tb for a in ahead if a.pts is not None)) if q < p),
                       default=-math.inf)
            i = bisect.bisect_right(targets, prev + 1e-6)
            return i < len(targets) and targets[i] <= p + 1e-6

        def release():
            pkt = ahead.popleft()
            keep = needed(pkt)
            if pkt.pts is not None:
                recent.append(pkt.pts * tb)
            return pkt, keep

        for pkt in demux:
            ahead.append(pkt)
            if len(ahead) > self.LOOKAHEAD:
                pkt, keep = release()
                if keep:
                    yield pkt
        while ahead:
            pkt, keep = release()
            if keep:
                yield pkt

    def _decode(self, targets: list[float], keyframes: bool) -> Iterator:
        packets = self._container.demux(self._stream) if keyframes else self._packets(targets)
        for pkt in packets:
            yield from pkt.decode()

    def _still(self) -> np.ndarray | None:
        """A still image's pixels as its own codec library gives them (OpenCV: libjpeg, libpng, libwebp), from
        the one packet FFmpeg's image demuxer holds. FFmpeg's conversion of a JPEG's full-range YUV to BGR is
        about 0.6 levels darker than libjpeg's (swscale's rounding), which costs a photo's embedding measurably
        (LFW View 2 through the pipeline: 99.41% -> 99.48%). None where OpenCV cannot read it (FFmpeg then does)."""
        try:
            packet = next(self._container.demux(self._stream))
            image = cv2.imdecode(np.frombuffer(bytes(packet), np.uint8),
                                 cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        except Exception:
            return None
        if image is None:
            return None
        image = rotate(image, self.info.rotation)
        return image if image.shape[:2] == (self.info.height, self.info.width) else None

    def read(self, times: Sequence[float], keyframes: bool = False) -> Iterator[Frame]:
        if self.info.media_type == "image":
            image = self._still()
            if image is not None:
                yield Frame(index=-1, pts_s=0.0, image=image, corrupt=False)
                return
            again = self.fork()  # the packet is spent: FFmpeg decodes the picture from a fresh open
            try:
                yield from again._read(times, keyframes)
            finally:
                self.warnings += again.warnings
                again.close()
            return
        yield from self._read(times, keyframes)

    def _read(self, times: Sequence[float], keyframes: bool) -> Iterator[Frame]:
        stream, container = self._stream, self._container
        tb = float(stream.time_base)
        end = self.info.start_s + self.info.duration_s
        targets = sorted(t for t in times if t < end + 1e-6)
        if keyframes:
            targets = nearest_keyframes(targets, self._keyframes.tolist())
            stream.codec_context.skip_frame = "NONKEY"
        frames = self._decode(targets, keyframes)
        pos = -math.inf  # pts of the last decoded frame
        done = 0
        tainted = False
        try:
            for t in targets:
                if t <= pos + 1e-6:
                    continue  # the last frame already covers this time (dense samples, keyframes mode)
                if self._keyframe_between(max(pos, self.info.start_s), t):
                    container.seek(int(t / tb), backward=True, any_frame=False, stream=stream)
                    frames = self._decode(targets, keyframes)
                for frame in frames:
                    # a damaged picture spoils those predicted from it, up to the next keyframe
                    tainted = (tainted and not frame.key_frame) or bool(frame.is_corrupt)
                    if frame.pts is None:
                        continue
                    pos = float(frame.pts * tb)
                    if pos + 1e-6 >= t:
                        done += 1
                        image = rotate(frame.to_ndarray(format="bgr24"), self.info.rotation)
                        yield Frame(index=-1, pts_s=pos, image=image, corrupt=tainted)
                        break
                else:
                    return  # end of stream
        except FramepipeError:
            raise
        except Exception as e:  # av.FFmpegError, and what PyAV raises on damaged streams (UnicodeDecodeError...)
            if done == 0:
                raise CorruptVideo(f"cannot decode the video: {type(e).__name__}: {str(e)[:160]}") from None
            self.warnings.append(damaged(max(pos, 0.0)))
        finally:
            stream.codec_context.skip_frame = "DEFAULT"

    def fork(self) -> "PyAVStream":
        return PyAVStream(*self._args)

    def close(self) -> None:
        self._container.close()
