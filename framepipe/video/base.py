"""What every decoder backend shares: the video's metadata, a decoded frame, the ``VideoStream`` interface, and the
small helpers both backends use (rotating a frame upright, reporting a damaged tail)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

import cv2
import numpy as np

log = logging.getLogger("framepipe.video")


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


def rotate(image: np.ndarray, rotation: int) -> np.ndarray:
    if rotation == 90:
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    if rotation == 180:
        return cv2.rotate(image, cv2.ROTATE_180)
    if rotation == 270:
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    return image


def damaged(at_s: float) -> str:
    msg = f"video damaged or truncated at {at_s:.2f} s: frames after it were not analysed"
    log.warning(msg)
    return msg
