"""Choosing frames: the representative frames of a video, and each person's best frame.

Representative frames
---------------------
Exactly ``count`` (10) frames whenever the video has at least that many decodable frames:

1. The video's time span is cut into ``count`` equal bins; every analysed frame falls in one.
2. Each frame is measured as it streams past: mean luma (black if below ``black_luma``), sharpness (variance
   of the Laplacian at 320 px wide; blurred if below ``blur_min``) and a 64-bit difference hash (dHash) of
   its 9x8 grey thumbnail. Only the ``keep_per_bin`` best frames of each bin are kept (as JPEG), so memory
   does not grow with the video's length.
3. Bins are filled in time order with their sharpest frame that is neither black, nor blurred, nor a
   near-duplicate (dHash distance <= ``duplicate_max_distance``) of a frame already chosen. A bin with no such
   frame takes the acceptable frame closest in time to its centre from the other bins.
4. Only if that still leaves fewer than ``count`` (a still image held for the whole video, say), the rules
   are relaxed one at a time, duplicates first, then blur, then black, and the result says which rule was
   relaxed (``relaxed``).

A video with fewer decodable frames than ``count`` yields all of them, and says so (``short_video``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import cv2
import numpy as np


class FrameMeasure(NamedTuple):
    """What the picker knows of a frame: mean luma (0-255), sharpness (Laplacian variance at 320 px wide) and a
    64-bit difference hash."""

    luma: float
    sharpness: float
    dhash: int


@dataclass
class FrameStats:
    pts_s: float
    luma: float
    sharpness: float
    dhash: int
    jpeg: bytes = field(default=b"", repr=False)

    def flags(self, black_luma: float, blur_min: float) -> tuple[bool, bool]:
        return self.luma < black_luma, self.sharpness < blur_min


def measure(image: np.ndarray) -> FrameMeasure:
    """The :class:`FrameMeasure` of a BGR frame."""
    h, w = image.shape[:2]
    small = cv2.resize(image, (320, max(1, round(h * 320 / w))), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    luma = float(grey.mean())
    sharp = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    thumb = cv2.resize(grey, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (thumb[:, 1:] > thumb[:, :-1]).flatten()
    dhash = int(np.packbits(bits).view(">u8")[0])
    return FrameMeasure(luma, sharp, dhash)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


@dataclass
class Representatives:
    frames: list[FrameStats]
    short_video: bool  # the video has fewer decodable frames than asked for
    relaxed: list[str]  # rules relaxed to reach the count: "duplicate", "blur", "black"


class RepresentativePicker:
    def __init__(
        self,
        start_s: float,
        duration_s: float,
        count: int = 10,
        black_luma: float = 20.0,
        blur_min: float = 20.0,
        duplicate_max_distance: int = 6,
        keep_per_bin: int = 4,
    ):
        self.start_s, self.duration_s, self.count = start_s, max(duration_s, 1e-6), count
        self.black_luma, self.blur_min, self.dup = black_luma, blur_min, duplicate_max_distance
        self.keep_per_bin = keep_per_bin
        self.bins: list[list[FrameStats]] = [[] for _ in range(count)]
        self.seen = 0

    def _bin_of(self, pts_s: float) -> int:
        return min(self.count - 1, max(0, int((pts_s - self.start_s) / self.duration_s * self.count)))

    def _rank(self, f: FrameStats) -> tuple:
        black, blurred = f.flags(self.black_luma, self.blur_min)
        return (not black, not blurred, f.sharpness)

    def wants(self, pts_s: float, stats: FrameMeasure) -> bool:
        """Would a frame with these measurements be kept? (Saves encoding frames that will not be.)"""
        b = self.bins[self._bin_of(pts_s)]
        if len(b) < self.keep_per_bin:
            return True
        probe = FrameStats(pts_s, *stats)
        return self._rank(probe) > min(self._rank(f) for f in b)

    def offer(self, stats: FrameStats) -> None:
        self.seen += 1
        b = self.bins[self._bin_of(stats.pts_s)]
        b.append(stats)
        b.sort(key=self._rank, reverse=True)
        del b[self.keep_per_bin :]

    def pick(self) -> Representatives:
        pool = [f for b in self.bins for f in b]
        if self.seen < self.count:
            return Representatives(sorted(pool, key=lambda f: f.pts_s), short_video=True, relaxed=[])
        relaxed: list[str] = []
        rules = {"black": True, "blur": True, "duplicate": True}
        chosen = self._fill(rules)
        for rule in ("duplicate", "blur", "black"):
            if len(chosen) >= self.count:
                break
            rules[rule] = False
            relaxed.append(rule)
            chosen = self._fill(rules, chosen)
        return Representatives(sorted(chosen, key=lambda f: f.pts_s)[: self.count], short_video=False, relaxed=relaxed)

    def _ok(self, f: FrameStats, chosen: list[FrameStats], rules: dict) -> bool:
        black, blurred = f.flags(self.black_luma, self.blur_min)
        if (rules["black"] and black) or (rules["blur"] and blurred):
            return False
        if any(c is f for c in chosen):
            return False
        return not (rules["duplicate"] and any(hamming(f.dhash, c.dhash) <= self.dup for c in chosen))

    def _fill(self, rules: dict, chosen: list[FrameStats] | None = None) -> list[FrameStats]:
        chosen = list(chosen or [])
        filled = {self._bin_of(f.pts_s) for f in chosen}
        width = self.duration_s / self.count
        pool = [f for b in self.bins for f in b]
        for i, b in enumerate(self.bins):  # 1. each bin's own best acceptable frame
            if i in filled:
                continue
            for f in b:  # sorted best first
                if self._ok(f, chosen, rules):
                    chosen.append(f)
                    filled.add(i)
                    break
        for i in range(self.count):  # 2. empty bins borrow the nearest acceptable frame
            if i in filled or len(chosen) >= self.count:
                continue
            centre = self.start_s + (i + 0.5) * width
            for f in sorted(pool, key=lambda f: abs(f.pts_s - centre)):
                if self._ok(f, chosen, rules):
                    chosen.append(f)
                    filled.add(i)
                    break
        return chosen
