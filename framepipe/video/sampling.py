"""Which presentation times are analysed, and where keyframe sampling lands: the one place each is decided."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from framepipe.video.base import VideoInfo


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


def nearest_keyframes(targets: Sequence[float], keyframe_times: Sequence[float]) -> list[float]:
    """The keyframe nearest each target time (sorted, each once): keyframe sampling in both backends."""
    if not keyframe_times:
        return list(targets)
    k = np.asarray(sorted(keyframe_times))
    out = []
    for t in targets:
        i = int(np.searchsorted(k, t))
        cands = [k[j] for j in (i - 1, i) if 0 <= j < len(k)]
        out.append(float(min(cands, key=lambda c: abs(c - t))))
    return sorted(set(out))
