"""Opening a container and reading what the video is (PyAV): metadata, keyframe times, typed failures."""

from __future__ import annotations

import av

from framepipe.errors import CorruptVideo, FramepipeError, InputTooLarge, NoFrames, NotAVideo, SourceUnreachable
from framepipe.video.base import VideoInfo

av.logging.set_level(av.logging.PANIC)  # FFmpeg's own chatter; failures surface as exceptions


_SIGNATURES = ((4, b"ftyp"), (0, b"\x1a\x45\xdf\xa3"), (0, b"RIFF"), (0, b"\x00\x00\x01\xba"), (0, b"FLV"), (0, b"OggS"))


# still images whose size their header states (PIL reads it without decoding): checked against the pixel cap
# before FFmpeg, whose probe decodes the whole picture (a 16000 x 16000 PNG of 0.7 MB is 0.8 GB decoded)
_IMAGE_SIGNATURES = ((0, b"\x89PNG\r\n\x1a\n"), (0, b"\xff\xd8\xff"), (8, b"WEBP"), (0, b"GIF8"), (0, b"BM"),
                     (0, b"II*\x00"), (0, b"MM\x00*"))
_IMAGE_HEAD = 1 << 16  # bytes read for it (a JPEG's size follows its EXIF block, usually well within)


def _head(uri: str, size: int, timeout_s: float) -> bytes:
    """The first ``size`` bytes of a local file or an HTTP(S) URL (a ranged GET); b"" when they cannot be read."""
    try:
        if uri.startswith(("http://", "https://")):
            import requests

            return requests.get(uri, headers={"Range": f"bytes=0-{size - 1}"}, timeout=timeout_s).content[:size]
        with open(uri, "rb") as f:
            return f.read(size)
    except Exception:
        return b""


def _signed(head: bytes, signatures) -> bool:
    """Does ``head`` carry one of the (offset, bytes) signatures?"""
    return any(head[off : off + len(sig)] == sig for off, sig in signatures)


def _looks_like_video(uri: str, timeout_s: float = 10.0) -> bool:
    """Do the first bytes look like a video container? (Read only after FFmpeg has refused the file.)"""
    return _signed(_head(uri, 16, timeout_s), _SIGNATURES)


def check_image_size(uri: str, max_pixels: int | None, timeout_s: float = 30.0) -> None:
    """Raise :class:`InputTooLarge` for a still image whose header states more than ``max_pixels`` pixels, before
    anything decodes it. Other inputs (and headers PIL cannot read) are left to FFmpeg's probe."""
    if not max_pixels:
        return
    head = _head(uri, _IMAGE_HEAD, timeout_s)
    if not _signed(head, _IMAGE_SIGNATURES):
        return
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(head)) as im:  # the header only: no pixel is decoded
            width, height = im.size
    except Image.DecompressionBombError as e:  # PIL's own cap (about 179 million pixels), met first
        import re

        stated = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(stated.group(1)):,} pixels" if stated else "too many pixels"
        raise InputTooLarge(f"image of {size} exceeds the cap of {max_pixels:,} pixels") from None
    except Exception:
        return
    if width * height > max_pixels:
        raise InputTooLarge(f"image of {width}x{height} pixels exceeds the cap of {max_pixels:,} pixels")


def _http_options(uri: str, timeout_s: float) -> dict[str, str]:
    """FFmpeg's HTTP reconnects: a dropped connection is opened again at the offset it stopped at (as a
    browser resumes a download) instead of handing the demuxer a truncated stream."""
    if not uri.startswith(("http://", "https://")):
        return {}
    return {"reconnect": "1", "reconnect_streamed": "1", "reconnect_on_network_error": "1",
            "reconnect_delay_max": str(max(1, int(min(timeout_s, 10))))}


def open_container(uri: str, timeout_s: float) -> av.container.InputContainer:
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
    check_image_size(uri, max_pixels, timeout_s)
    container = open_container(uri, timeout_s)
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
