"""Video probing, sampling and decoding, behind one small interface.

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

import bisect
import collections
import logging
import math
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Protocol, Sequence

import av
import cv2
import numpy as np

from framepipe.errors import CorruptVideo, FramepipeError, InputTooLarge, NoFrames, NotAVideo, SourceUnreachable

log = logging.getLogger(__name__)

av.logging.set_level(av.logging.PANIC)  # FFmpeg's own chatter; failures surface as exceptions


@dataclass(frozen=True)
class VideoInfo:
    width: int  # after rotation
    height: int  # after rotation
    fps: float  # average frame rate
    total_frames: int
    duration_s: float  # of the video stream
    start_s: float  # presentation time of the first video frame
    codec: str
    rotation: int  # degrees the frames are turned to display upright (0, 90, 180, 270)
    stream_index: int
    frame_count_source: str = "container"  # "container", or "index" when the container had no count
    media_type: str = "video"  # "image": a still photo (FFmpeg's image demuxers), read as a one-frame video

    def to_dict(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "fps": round(self.fps, 3),
            "total_frames": self.total_frames,
            "duration_s": round(self.duration_s, 3),
            "start_s": round(self.start_s, 3),
            "codec": self.codec,
            "rotation": self.rotation,
            "stream_index": self.stream_index,
        }


@dataclass
class Frame:
    index: int  # frame number in presentation order (-1 where the backend does not know it)
    pts_s: float
    image: np.ndarray = field(repr=False)  # H x W x 3, BGR, uint8, upright
    corrupt: bool = False  # the decoder flagged the picture (a missing reference, a damaged slice)


class VideoStream(Protocol):
    info: VideoInfo
    backend: str
    warnings: list[str]  # problems met while reading (a damaged tail, say)

    def read(self, times: Sequence[float], keyframes: bool = False) -> Iterator[Frame]: ...

    def fork(self) -> "VideoStream":
        """A second, independent reader of the same video (to decode another part of it in parallel)."""
        ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------------------------------
# probing
# --------------------------------------------------------------------------------------------------


# Leading bytes of common video containers: a file that starts like one but will not open is damaged.
_SIGNATURES = ((4, b"ftyp"), (0, b"\x1a\x45\xdf\xa3"), (0, b"RIFF"), (0, b"\x00\x00\x01\xba"), (0, b"FLV"), (0, b"OggS"))


def _looks_like_video(uri: str, timeout_s: float = 10.0) -> bool:
    """Do the first bytes look like a video container? (Read only after FFmpeg has refused the file.)"""
    try:
        if uri.startswith(("http://", "https://")):
            import requests

            head = requests.get(uri, headers={"Range": "bytes=0-15"}, timeout=timeout_s).content[:16]
        else:
            with open(uri, "rb") as f:
                head = f.read(16)
    except Exception:
        return False
    return any(head[off : off + len(sig)] == sig for off, sig in _SIGNATURES)


def _http_options(uri: str, timeout_s: float) -> dict[str, str]:
    """FFmpeg's HTTP reconnects: a dropped connection is opened again at the offset it stopped at (as a
    browser resumes a download) instead of handing the demuxer a truncated stream."""
    if not uri.startswith(("http://", "https://")):
        return {}
    return {"reconnect": "1", "reconnect_streamed": "1", "reconnect_on_network_error": "1",
            "reconnect_delay_max": str(max(1, int(min(timeout_s, 10))))}


def _open_container(uri: str, timeout_s: float) -> av.container.InputContainer:
    try:
        return av.open(uri, mode="r", timeout=(timeout_s, timeout_s), options=_http_options(uri, timeout_s))
    except FileNotFoundError as e:
        raise NotAVideo(f"cannot open {uri!r}: {e.strerror or e}") from None
    except av.error.InvalidDataError:
        if _looks_like_video(uri, timeout_s):
            raise CorruptVideo("the file looks like a video container but is damaged or truncated") from None
        raise NotAVideo("not a video file (FFmpeg found no media in it)") from None
    except av.error.HTTPError as e:
        raise SourceUnreachable(f"HTTP error while opening the video: {e}") from None
    except (av.error.ExitError, av.error.OSError, TimeoutError, OSError) as e:
        if uri.startswith(("http://", "https://")):
            raise SourceUnreachable(f"cannot read the video: {e}") from None
        # a local file that opens but cannot be read: FFmpeg answers EIO for malformed data
        raise CorruptVideo(f"cannot read the video: {str(e).split(';')[0]}") from None
    except av.error.FFmpegError as e:
        raise NotAVideo(f"cannot open as a video: {e}") from None
    except Exception as e:  # PyAV raises UnicodeDecodeError, AttributeError... on damaged headers
        raise CorruptVideo(f"the container's header is damaged ({type(e).__name__})") from None


def _rotation_of(frame: av.VideoFrame) -> int:
    # PyAV's rotation is counter-clockwise degrees from the display matrix; normalise to 0/90/180/270.
    return int(round((frame.rotation or 0) / 90.0)) % 4 * 90


def probe(uri: str, timeout_s: float = 30.0, max_pixels: int | None = None) -> tuple[VideoInfo, list[float]]:
    """Read the metadata of the first video stream, and the keyframe times where the container indexes them."""
    container = _open_container(uri, timeout_s)
    try:
        return _probe(container, max_pixels)
    except FramepipeError:
        raise
    except Exception as e:  # damaged headers surface as anything from PyAV (AttributeError, UnicodeDecodeError...)
        raise CorruptVideo(f"cannot read the video's header ({type(e).__name__}: {str(e)[:120]})") from None
    finally:
        container.close()


def _probe(container, max_pixels: int | None) -> tuple[VideoInfo, list[float]]:
    if not container.streams.video:
        raise NotAVideo("the file has no video stream")
    stream = container.streams.video[0]
    tb = float(stream.time_base)
    codec = stream.codec_context.codec.canonical_name  # "av1", not the decoder "libdav1d"
    width, height = stream.codec_context.width, stream.codec_context.height
    if max_pixels and width * height > max_pixels:
        raise InputTooLarge(f"frame size {width}x{height} exceeds the cap of {max_pixels} pixels")
    first_frame = None
    try:
        for first_frame in container.decode(stream):
            break
    except av.error.FFmpegError as e:
        raise CorruptVideo(f"cannot decode the first frame: {e}") from None
    if first_frame is None:
        raise NoFrames("the video stream holds no decodable frame")
    start_s = float(first_frame.pts * tb) if first_frame.pts is not None else 0.0
    rotation = _rotation_of(first_frame)
    if rotation in (90, 270):
        width, height = height, width
    fps = float(stream.average_rate or stream.guessed_rate or 0.0)
    if stream.duration:
        duration_s = float(stream.duration * tb)
    elif container.duration:
        duration_s = container.duration / 1e6 - max(0.0, start_s - (container.start_time or 0) / 1e6)
    else:
        duration_s = 0.0
    total, count_source = int(stream.frames or 0), "container"
    keyframes: list[float] = []
    entries = stream.index_entries
    if entries:
        keyframes = [e.timestamp * tb for e in entries if e.is_keyframe]
        if not total:
            total, count_source = len(entries), "index"
    if not total and fps and duration_s:
        total, count_source = int(round(duration_s * fps)), "estimate"
    if not fps and total and duration_s:
        fps = total / duration_s
    if not duration_s and total and fps:
        duration_s = total / fps
    is_image = container.format.name == "image2" or container.format.name.endswith("_pipe")
    if is_image:
        fps, total, duration_s, count_source = 0.0, 1, 0.0, "image"
    info = VideoInfo(
        width=width,
        height=height,
        fps=fps,
        total_frames=total,
        duration_s=duration_s,
        start_s=start_s,
        codec=codec,
        rotation=rotation,
        stream_index=stream.index,
        frame_count_source=count_source,
        media_type="image" if is_image else "video",
    )
    return info, keyframes


# --------------------------------------------------------------------------------------------------
# sampling plan
# --------------------------------------------------------------------------------------------------


def sample_times(info: VideoInfo, sample_fps: float, min_samples: int) -> list[float]:
    """Presentation times to analyse: one every 1/sample_fps seconds from the first frame; short videos get
    ``min_samples`` evenly spread times (or every frame, if they have fewer)."""
    end = info.start_s + max(info.duration_s, 0.0)
    n = max(1, int(math.floor(info.duration_s * sample_fps + 1e-6)))
    times = [info.start_s + k / sample_fps for k in range(n)]
    if len(times) < min_samples and info.duration_s > 0:
        n = min(min_samples, max(info.total_frames, 1))
        step = info.duration_s / n
        times = [info.start_s + k * step for k in range(n)]
    return [t for t in times if t < end or t == info.start_s]


def _rotate(image: np.ndarray, rotation: int) -> np.ndarray:
    if rotation == 90:
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    if rotation == 180:
        return cv2.rotate(image, cv2.ROTATE_180)
    if rotation == 270:
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    return image


def _damaged(at_s: float) -> str:
    msg = f"video damaged or truncated at {at_s:.2f} s: frames after it were not analysed"
    log.warning(msg)
    return msg


def _nearest_keyframes(targets: Sequence[float], keyframe_times: Sequence[float]) -> list[float]:
    if not keyframe_times:
        return list(targets)
    k = np.asarray(sorted(keyframe_times))
    out = []
    for t in targets:
        i = int(np.searchsorted(k, t))
        cands = [k[j] for j in (i - 1, i) if 0 <= j < len(k)]
        out.append(float(min(cands, key=lambda c: abs(c - t))))
    return sorted(set(out))


# --------------------------------------------------------------------------------------------------
# decord backend
# --------------------------------------------------------------------------------------------------


class DecordStream:
    backend = "decord"

    def __init__(self, uri: str, info: VideoInfo, keyframe_times: list[float], num_threads: int = 0):
        import decord

        decord.logging.set_level(decord.logging.QUIET)  # its bundled FFmpeg's chatter; failures raise
        self._args = (uri, info, keyframe_times, num_threads)
        self.info = info
        self.warnings: list[str] = []
        try:
            self._vr = decord.VideoReader(uri, ctx=decord.cpu(0), num_threads=num_threads)
        except Exception as e:  # decord raises RuntimeError/DECORDError for anything it cannot open
            raise NotAVideo(f"decord cannot open the video: {str(e).splitlines()[0][:200]}") from None
        n = len(self._vr)
        if n == 0:
            raise NoFrames("the video stream holds no decodable frame")
        # decord's timestamps start at 0 for the stream's first frame; add the real start.
        self._pts = self._vr.get_frame_timestamp(np.arange(n))[:, 0].astype(np.float64) + info.start_s
        self._keyframe_idx = np.asarray(self._vr.get_key_indices(), dtype=np.int64)
        if info.frame_count_source != "container":
            self.info = replace(info, total_frames=n, frame_count_source="index")

    def _indices(self, times: Sequence[float], keyframes: bool) -> list[int]:
        # Never ask for a frame beyond the probed duration: indices past the real end hang decord.
        end = self.info.start_s + self.info.duration_s
        last = int(np.searchsorted(self._pts, end - 1e-6, side="left")) - 1
        last = min(max(last, 0), len(self._pts) - 1)
        idx = np.searchsorted(self._pts, np.asarray(times) - 1e-6, side="left")
        idx = np.clip(idx, 0, last)
        if keyframes and len(self._keyframe_idx):
            kpts = self._pts[self._keyframe_idx]
            ktimes = _nearest_keyframes([float(self._pts[i]) for i in idx], kpts.tolist())
            idx = [int(self._keyframe_idx[np.argmin(np.abs(kpts - t))]) for t in ktimes]
        return sorted(set(int(i) for i in idx))

    def read(self, times: Sequence[float], keyframes: bool = False) -> Iterator[Frame]:
        done = 0
        for i in self._indices(times, keyframes):
            try:
                rgb = self._vr[i].asnumpy()
            except Exception as e:  # decord.DECORDError, and whatever a damaged stream makes it raise
                if done == 0:
                    raise CorruptVideo(f"cannot decode frame {i}: {str(e).splitlines()[0][:160]}") from None
                self.warnings.append(_damaged(float(self._pts[i])))
                return
            done += 1
            bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
            # eva-decord applies the display matrix itself; rotate only frames that are not upright yet
            if self.info.rotation in (90, 270) and bgr.shape[:2] != (self.info.height, self.info.width):
                bgr = _rotate(bgr, self.info.rotation)
            yield Frame(index=i, pts_s=float(self._pts[i]), image=bgr)

    def fork(self) -> "DecordStream":
        return DecordStream(*self._args)

    def close(self) -> None:
        self._vr = None


# --------------------------------------------------------------------------------------------------
# PyAV backend
# --------------------------------------------------------------------------------------------------


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
        self._container = _open_container(uri, timeout_s)
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

    def read(self, times: Sequence[float], keyframes: bool = False) -> Iterator[Frame]:
        stream, container = self._stream, self._container
        tb = float(stream.time_base)
        end = self.info.start_s + self.info.duration_s
        targets = sorted(t for t in times if t < end + 1e-6)
        if keyframes:
            targets = _nearest_keyframes(targets, self._keyframes.tolist())
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
                        image = _rotate(frame.to_ndarray(format="bgr24"), self.info.rotation)
                        yield Frame(index=-1, pts_s=pos, image=image, corrupt=tainted)
                        break
                else:
                    return  # end of stream
        except FramepipeError:
            raise
        except Exception as e:  # av.FFmpegError, and what PyAV raises on damaged streams (UnicodeDecodeError...)
            if done == 0:
                raise CorruptVideo(f"cannot decode the video: {type(e).__name__}: {str(e)[:160]}") from None
            self.warnings.append(_damaged(max(pos, 0.0)))
        finally:
            stream.codec_context.skip_frame = "DEFAULT"

    def fork(self) -> "PyAVStream":
        return PyAVStream(*self._args)

    def close(self) -> None:
        self._container.close()


# --------------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------------


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
