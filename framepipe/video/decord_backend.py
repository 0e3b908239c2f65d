"""The decord backend (see the package docstring)."""

from __future__ import annotations

from dataclasses import replace
from typing import Iterator, Sequence

import cv2
import numpy as np

from framepipe.errors import CorruptVideo, NoFrames, NotAVideo
from framepipe.video.base import Frame, VideoInfo, damaged, rotate
from framepipe.video.sampling import nearest_keyframes


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
            ktimes = nearest_keyframes([float(self._pts[i]) for i in idx], kpts.tolist())
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
                self.warnings.append(damaged(float(self._pts[i])))
                return
            done += 1
            bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
            # eva-decord applies the display matrix itself; rotate only frames that are not upright yet
            if self.info.rotation in (90, 270) and bgr.shape[:2] != (self.info.height, self.info.width):
                bgr = rotate(bgr, self.info.rotation)
            yield Frame(index=i, pts_s=float(self._pts[i]), image=bgr)

    def fork(self) -> "DecordStream":
        return DecordStream(*self._args)

    def close(self) -> None:
        self._vr = None
