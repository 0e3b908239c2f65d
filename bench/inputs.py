"""Benchmark inputs made from the shared footage (never committed; cached under bench/.cache/).

* ``three_minute()``: a 3-minute 1280x720 30 fps H.264 MP4, the shared clips letterboxed and concatenated, then
  re-encoded by x264 with its default keyframe interval (250 frames, plus scene cuts: long GOPs like real uploads).
* ``thirty_minute()``: ten copies of it joined by stream copy (no re-encode).
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FRAMEPIPE_SHARED", ROOT.parent / "shared"))
CACHE = Path(os.environ.get("FRAMEPIPE_BENCH_CACHE", ROOT / "bench" / ".cache"))
W, H, FPS = 1280, 720, 30
CLIPS = [
    "videos/composed/talking_heads_montage.mp4",
    "videos/pbs_oval_office_4people.mp4",
    "videos/short_hamilton_clip.mp4",
    "videos/tears_of_steel_10s.mp4",
    "videos/composed/photo_slideshow_6people.mp4",
    "videos/facenet_pytorch_crowd_walk.mp4",
    "videos/caminandes_10s_no_humans.mp4",
    "videos/sppas_demo_portrait.mp4",
]


def _letterbox(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    s = min(W / w, H / h)
    nw, nh = int(round(w * s)) // 2 * 2, int(round(h * s)) // 2 * 2
    out = np.zeros((H, W, 3), np.uint8)
    x, y = (W - nw) // 2, (H - nh) // 2
    out[y : y + nh, x : x + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    return out


def three_minute(seconds: int = 180) -> Path:
    path = CACHE / f"bench_{seconds}s_720p30.mp4"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.mp4")
    total = seconds * FPS
    n = 0
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=FPS, options={"preset": "veryfast"})  # keyint: x264's default
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        while n < total:
            for clip in CLIPS:
                with av.open(str(SHARED / "media" / clip)) as c:
                    for frame in c.decode(video=0):
                        vf = av.VideoFrame.from_ndarray(_letterbox(frame.to_ndarray(format="bgr24")), format="bgr24")
                        for pkt in stream.encode(vf):
                            out.mux(pkt)
                        n += 1
                        if n >= total:
                            break
                if n >= total:
                    break
        for pkt in stream.encode(None):
            out.mux(pkt)
    tmp.rename(path)
    return path


def thirty_minute(copies: int = 10) -> Path:
    src = three_minute()
    path = CACHE / f"bench_{copies}x_{src.stem}.mp4"
    if path.exists():
        return path
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(src)) as first:
        span = None
        with av.open(str(tmp), "w") as out:
            ost = out.add_stream_from_template(first.streams.video[0])
            for i in range(copies):
                with av.open(str(src)) as c:
                    ist = c.streams.video[0]
                    if span is None:
                        span = int(round(ist.duration or (c.duration / 1e6 / float(ist.time_base))))
                    for pkt in c.demux(ist):
                        if pkt.dts is None:
                            continue
                        pkt.pts += i * span
                        pkt.dts += i * span
                        pkt.stream = ost
                        out.mux(pkt)
    tmp.rename(path)
    return path


if __name__ == "__main__":
    import sys
    import time

    t = time.time()
    print(three_minute(), f"{time.time() - t:.0f} s")
    if "--long" in sys.argv:
        t = time.time()
        print(thirty_minute(), f"{time.time() - t:.0f} s")
