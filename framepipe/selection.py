"""Choosing frames: the representative frames of a video, and each person's best frame.

Representative frames
---------------------
Exactly ``count`` (10) frames whenever the video has at least that many decodable frames:

1. The video's time span is cut into ``count`` equal bins; every analysed frame falls in one.
2. Each frame is measured as it streams past: mean luma (black if below ``black_luma``), sharpness (variance
   of the Laplacian at 320 px wide; blurred if below ``blur_min``), a 64-bit difference hash (dHash) of its
   9x8 grey thumbnail, a colour signature (hue x saturation and luma histograms) and a damage flag (the
   decoder's corrupt flag, or edges concentrated on the 8-pixel block grid: the flat or smeared blocks a
   decoder returns when a reference frame is missing). Only the ``KEEP_PER_BIN`` best frames of each bin
   are kept (as JPEG), so memory does not grow with the video's length.
3. Shots: a cut lies between two consecutive samples whose colour signatures differ by more than
   ``shot_cut_distance`` (:func:`find_shots`).
4. Bins are filled in time order with their sharpest frame that is not damaged, black or blurred, not a
   near-duplicate (dHash distance <= ``duplicate_max_distance``) of a frame already chosen, and from a shot
   that does not have its share yet: one frame per shot when the video has at least ``count`` shots, else
   ``ceil(count / shots)``. A bin with no such frame takes the acceptable frame closest in time to its
   centre from the other bins.
5. Only if that still leaves fewer than ``count`` (a still image held for the whole video, say), the rules
   are relaxed one at a time, in the order shot, duplicate, blur, black, damaged, and the result says which
   rules were relaxed (``relaxed``).

A video with fewer decodable frames than ``count`` yields all of them, and says so (``short_video``).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import NamedTuple

import cv2
import numpy as np

from framepipe.config import Settings

HUE_BINS, SAT_BINS, LUMA_BINS = 12, 3, 8  # the colour signature: a hue x saturation and a luma histogram


class FrameMeasure(NamedTuple):
    """What the picker knows of a frame: mean luma (0-255), sharpness (Laplacian variance at 320 px wide), a 64-bit
    difference hash, a colour signature (two histograms, uint8, for shot cuts) and whether the picture is damaged
    (the decoder flagged it corrupt, or it is made of flat 8x8 blocks: a reference was missing)."""

    luma: float
    sharpness: float
    dhash: int
    colour: bytes = b""
    damaged: bool = False


@dataclass
class FrameStats:
    pts_s: float
    luma: float
    sharpness: float
    dhash: int
    colour: bytes = field(default=b"", repr=False)
    damaged: bool = False
    jpeg: bytes = field(default=b"", repr=False)

    def flags(self, black_luma: float, blur_min: float) -> tuple[bool, bool]:
        return self.luma < black_luma, self.sharpness < blur_min


def colour_signature(small_bgr: np.ndarray) -> bytes:
    """Hue x saturation and luma histograms of a (small) BGR frame, each scaled to sum 255, as bytes."""
    hsv = cv2.cvtColor(small_bgr, cv2.COLOR_BGR2HSV)
    hs = cv2.calcHist([hsv], [0, 1], None, [HUE_BINS, SAT_BINS], [0, 180, 0, 256]).ravel()
    v = cv2.calcHist([hsv], [2], None, [LUMA_BINS], [0, 256]).ravel()
    return b"".join(np.round(h / max(h.sum(), 1) * 255).astype(np.uint8).tobytes() for h in (hs, v))


def colour_distance(a: bytes, b: bytes) -> float:
    """Total-variation distance (0 same colours .. 1 disjoint) between two colour signatures, both histograms
    averaged."""
    if not a or not b:
        return 0.0
    x, y = np.frombuffer(a, np.uint8).astype(np.int32), np.frombuffer(b, np.uint8).astype(np.int32)
    k = HUE_BINS * SAT_BINS
    return float(np.abs(x[:k] - y[:k]).sum() + np.abs(x[k:] - y[k:]).sum()) / (4 * 255)


def blockiness(grey: np.ndarray) -> float:
    """How much of the picture's edge energy sits on an 8-pixel grid (about 1/8 for natural pictures, near 1 for
    pictures made of flat blocks, as a decoder returns when a reference frame is missing)."""
    g = grey.astype(np.int16)
    dx = np.abs(np.diff(g, axis=1)).mean(axis=0)
    dy = np.abs(np.diff(g, axis=0)).mean(axis=1)
    on = dx[7::8].sum() + dy[7::8].sum()
    total = dx.sum() + dy.sum()
    return float(on / total) if total > 1e-6 else 0.0


BLOCKY = 0.4  # blockiness above which a frame counts as damaged


def measure(image: np.ndarray, corrupt: bool = False) -> FrameMeasure:
    """The :class:`FrameMeasure` of a BGR frame (``corrupt``: the decoder's own flag)."""
    h, w = image.shape[:2]
    small = cv2.resize(image, (320, max(1, round(h * 320 / w))), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    luma = float(grey.mean())
    sharp = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    thumb = cv2.resize(grey, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (thumb[:, 1:] > thumb[:, :-1]).flatten()
    dhash = int(np.packbits(bits).view(">u8")[0])
    # blocks are judged at full size (the 8x8 grid is lost once scaled), on a centre crop to keep it cheap
    y0, x0 = max(0, h // 2 - 128) // 8 * 8, max(0, w // 2 - 128) // 8 * 8  # on the codec's 8-pixel grid
    crop = image[y0 : y0 + 256, x0 : x0 + 256]
    damaged = corrupt or blockiness(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)) > BLOCKY
    return FrameMeasure(luma, sharp, dhash, colour_signature(small), damaged)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


@dataclass
class Shots:
    """The shots of a video as seen on its sampled frames: a cut lies between two consecutive samples whose colour
    signatures differ by more than a threshold (a hard cut at one frame per second changes the colours; camera
    motion within a shot barely does)."""

    times: list[float] = field(default_factory=list)  # every sampled frame's pts, in time order
    ids: list[int] = field(default_factory=list)  # the shot (0..count-1) of each
    start_s: float | None = None  # the video's first and last instants (None: the first and last samples)
    end_s: float | None = None

    @property
    def count(self) -> int:
        return self.ids[-1] + 1 if self.ids else 0

    @property
    def cuts(self) -> list[float]:
        """pts of the first sample of every shot after the first."""
        return [t for t, a, b in zip(self.times[1:], self.ids, self.ids[1:]) if a != b]

    def index_of(self, pts_s: float) -> int:
        """Position of the sample at (or nearest after) ``pts_s``."""
        return min(bisect.bisect_left(self.times, pts_s - 1e-6), len(self.times) - 1)

    def shot_of(self, pts_s: float) -> int:
        return self.ids[self.index_of(pts_s)] if self.ids else 0

    def cell(self, i: int) -> tuple[float, float]:
        """The stretch of time sample ``i`` stands for: halfway to its neighbours (the video's ends at the ends)."""
        t = self.times
        lo = (t[i - 1] + t[i]) / 2 if i else min(t[0], self.start_s if self.start_s is not None else t[0])
        hi = (t[i] + t[i + 1]) / 2 if i + 1 < len(t) else max(t[-1], self.end_s if self.end_s is not None else t[-1])
        return lo, hi

    def spans(self) -> list[tuple[float, float]]:
        """(start, end) of every shot; a cut is placed halfway between the last sample of one shot and the first
        of the next (so within half a sampling interval of the real cut)."""
        out: list[tuple[float, float]] = []
        for i, shot in enumerate(self.ids):
            lo, hi = self.cell(i)
            if shot == len(out):
                out.append((lo, hi))
            else:
                out[-1] = (out[-1][0], hi)
        return out

    def ranges(self, seen_s: list[float]) -> list[tuple[float, float]]:
        """Time ranges of an appearance seen at the samples ``seen_s``: runs of consecutive samples of one shot,
        each from halfway to the sample before to halfway to the sample after (as Video Indexer and Rekognition
        give a face's instances)."""
        if not self.times:
            return [(t, t) for t in seen_s]
        out: list[tuple[float, float]] = []
        last = None
        for i in sorted({self.index_of(t) for t in seen_s}):
            lo, hi = self.cell(i)
            if last is not None and i == last + 1 and self.ids[i] == self.ids[last]:
                out[-1] = (out[-1][0], hi)
            else:
                out.append((lo, hi))
            last = i
        return out


def find_shots(
    signatures: dict[float, bytes], cut_distance: float, start_s: float | None = None, end_s: float | None = None
) -> Shots:
    """:class:`Shots` from every sampled frame's colour signature (by pts); ``start_s``/``end_s``: the video's."""
    times = sorted(signatures)
    ids, shot = [], 0
    for i, t in enumerate(times):
        if i and colour_distance(signatures[times[i - 1]], signatures[t]) > cut_distance:
            shot += 1
        ids.append(shot)
    return Shots(times, ids, start_s, end_s)


@dataclass
class Representatives:
    frames: list[FrameStats]
    short_video: bool  # the video has fewer decodable frames than asked for
    relaxed: list[str]  # rules relaxed to reach the count: "shot", "duplicate", "blur", "black", "damaged"
    shots: Shots = field(default_factory=Shots)


KEEP_PER_BIN = 6  # frames kept of each of the video's stretches (the algorithm's constant, not a setting)


class RepresentativePicker:
    RELAX_ORDER = ("shot", "duplicate", "blur", "black", "damaged")

    def __init__(self, start_s: float, duration_s: float, *, representative_count: int, black_luma: float,
                 blur_min: float, duplicate_max_distance: int, shot_cut_distance: float):
        """The settings by their :class:`~framepipe.config.Settings` names (:meth:`from_settings`)."""
        self.start_s, self.duration_s, self.count = start_s, max(duration_s, 1e-6), representative_count
        self.black_luma, self.blur_min, self.dup = black_luma, blur_min, duplicate_max_distance
        self.shot_cut_distance = shot_cut_distance
        self.keep_per_bin = KEEP_PER_BIN
        self.bins: list[list[FrameStats]] = [[] for _ in range(representative_count)]
        self.signatures: dict[float, bytes] = {}  # every sampled frame's colour signature, for the shots
        self.seen = 0

    @classmethod
    def from_settings(cls, start_s: float, duration_s: float, settings: Settings) -> "RepresentativePicker":
        return cls(start_s, duration_s, representative_count=settings.representative_count,
                   black_luma=settings.black_luma, blur_min=settings.blur_min,
                   duplicate_max_distance=settings.duplicate_max_distance,
                   shot_cut_distance=settings.shot_cut_distance)

    def _bin_of(self, pts_s: float) -> int:
        return min(self.count - 1, max(0, int((pts_s - self.start_s) / self.duration_s * self.count)))

    def _rank(self, f: FrameStats) -> tuple:
        black, blurred = f.flags(self.black_luma, self.blur_min)
        return (not f.damaged, not black, not blurred, f.sharpness)

    def note(self, pts_s: float, stats: FrameMeasure) -> None:
        """Every sampled frame, kept or not (its colours place the shot cuts)."""
        self.signatures[pts_s] = stats.colour

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

    def shots(self) -> Shots:
        end = self.start_s + self.duration_s if self.duration_s else None
        return find_shots(self.signatures, self.shot_cut_distance, self.start_s, end)

    def pick(self) -> Representatives:
        pool = [f for b in self.bins for f in b]
        shots = self.shots()
        if self.seen < self.count:
            return Representatives(sorted(pool, key=lambda f: f.pts_s), short_video=True, relaxed=[], shots=shots)
        # at most one frame per shot when there are enough shots, else the frames shared out over the shots
        per_shot = -(-self.count // max(shots.count, 1))
        relaxed: list[str] = []
        rules = dict.fromkeys(self.RELAX_ORDER, True)
        chosen = self._fill(rules, shots, per_shot)
        for rule in self.RELAX_ORDER:
            if len(chosen) >= self.count:
                break
            if rule == "shot":  # a bigger share per shot, one frame at a time
                if per_shot < self.count:
                    relaxed.append(rule)
                while len(chosen) < self.count and per_shot < self.count:
                    per_shot += 1
                    chosen = self._fill(rules, shots, per_shot, chosen)
                continue
            relaxed.append(rule)
            rules[rule] = False
            chosen = self._fill(rules, shots, per_shot, chosen)
        frames = sorted(chosen, key=lambda f: f.pts_s)[: self.count]
        return Representatives(frames, short_video=False, relaxed=relaxed, shots=shots)

    def _ok(self, f: FrameStats, chosen: list[FrameStats], rules: dict, shots: Shots, per_shot: int) -> bool:
        black, blurred = f.flags(self.black_luma, self.blur_min)
        if (rules["damaged"] and f.damaged) or (rules["black"] and black) or (rules["blur"] and blurred):
            return False
        if any(c is f for c in chosen):
            return False
        if rules["shot"]:
            shot = shots.shot_of(f.pts_s)
            if sum(shots.shot_of(c.pts_s) == shot for c in chosen) >= per_shot:
                return False
        return not (rules["duplicate"] and any(hamming(f.dhash, c.dhash) <= self.dup for c in chosen))

    def _fill(self, rules: dict, shots: Shots, per_shot: int, chosen: list[FrameStats] | None = None):
        chosen = list(chosen or [])
        filled = {self._bin_of(f.pts_s) for f in chosen}
        width = self.duration_s / self.count
        pool = [f for b in self.bins for f in b]
        for i, b in enumerate(self.bins):  # 1. each bin's own best acceptable frame
            if i in filled:
                continue
            for f in b:  # sorted best first
                if self._ok(f, chosen, rules, shots, per_shot):
                    chosen.append(f)
                    filled.add(i)
                    break
        for i in range(self.count):  # 2. empty bins borrow the nearest acceptable frame
            if i in filled or len(chosen) >= self.count:
                continue
            centre = self.start_s + (i + 0.5) * width
            for f in sorted(pool, key=lambda f: abs(f.pts_s - centre)):
                if self._ok(f, chosen, rules, shots, per_shot):
                    chosen.append(f)
                    filled.add(i)
                    break
        return chosen
