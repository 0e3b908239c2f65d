"""The report's page parts (:mod:`framepipe.report` decides which pages to redo): the Jinja2 environment, one
video's page (metadata, person cards with a timeline of when each is on screen, representative frames) and the
formatting its lists share."""

from __future__ import annotations

import math
import os
import posixpath

from jinja2 import Environment, PackageLoader, select_autoescape

from framepipe import __version__, schema

INDEX = f"{schema.REPORT}/index.html"
VIDEO_DIR = f"{schema.REPORT}/videos"


def env() -> Environment:
    return Environment(loader=PackageLoader("framepipe", "templates"), autoescape=select_autoescape(), trim_blocks=True)


def fmt_time(s: float | None) -> str:
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "-"
    m, sec = divmod(max(float(s), 0.0), 60.0)
    return f"{int(m)}:{sec:04.1f}"


def present(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def display_name(source: str) -> str:
    return os.path.basename(source.rstrip("/")) or source


def timeline(seen: list[float], start: float, duration: float, spacing: float) -> list[dict]:
    """Bars (left %, width %) for when a person is on screen: consecutive samples (gap under 1.5 sample
    spacings) join into one bar; each bar is at least one sample wide."""
    if not seen or duration <= 0:
        return []
    bars: list[list[float]] = []
    for t in sorted(seen):
        if bars and t - bars[-1][1] <= 1.5 * spacing + 1e-6:
            bars[-1][1] = t
        else:
            bars.append([t, t])
    out = []
    for a, b in bars:
        left = min(max((a - start) / duration, 0.0), 1.0)
        width = max((b - a + spacing) / duration, 0.004)
        out.append({"left": round(100 * left, 2), "width": round(100 * min(width, 1.0 - left), 2)})
    return out


def meta_rows(v) -> list[tuple[str, str]]:
    """The metadata table of a video's row (a row of ``itertuples``)."""
    rows = [("video id", v.video_id), ("source", v.source), ("status", v.status)]
    if present(getattr(v, "error_type", None)):
        rows.append(("error", f"{v.error_type}: {v.error_message}"))
    is_image = getattr(v, "media_type", None) == "image"
    if present(v.width):
        rows.append(("resolution", f"{int(v.width)} x {int(v.height)}"))
    if not is_image:
        if present(v.fps):
            rows.append(("frame rate", f"{v.fps:g} fps"))
        if present(v.total_frames):
            rows.append(("frames", f"{int(v.total_frames)}"))
        if present(v.duration_s):
            rows.append(("duration", f"{fmt_time(v.duration_s)} ({v.duration_s:g} s)"))
    rows.append(("type", "photo" if is_image else "video"))
    if present(v.codec):
        rows.append(("codec", v.codec))
    if present(v.size_bytes):
        rows.append(("size", f"{v.size_bytes / 1e6:.1f} MB"))
    rows += [
        ("frames analysed", f"{int(v.frames_sampled or 0)}"),
        ("faces detected", f"{int(v.faces_detected or 0)}"),
        ("processing", f"{v.processing_s:.1f} s on {v.device}" if present(v.processing_s) else "-"),
        ("estimated cost", f"${v.estimated_cost_usd:.5f}" if present(v.estimated_cost_usd) else "-"),
        ("models", v.models if present(v.models) else "-"),
        ("processed", str(v.processed_at)[:19] if present(v.processed_at) else "-"),
    ]
    return [(k, str(val)) for k, val in rows]


def relative(path: str, start: str) -> str:
    """``posixpath.relpath`` for two clean relative paths (no ``.`` or ``..`` parts), without its ``abspath``
    calls: the report links millions of images."""
    a, b = path.split("/"), start.split("/")
    common = 0
    while common < min(len(a) - 1, len(b)) and a[common] == b[common]:
        common += 1
    return "/".join([".."] * (len(b) - common) + a[common:])


def video_page(env, v, cols: dict, rows: range, targets: list, reps: list, is_video: bool, link) -> str:
    start = float(v.start_s) if present(v.start_s) else 0.0
    duration = float(v.duration_s) if present(v.duration_s) else 0.0
    spacing = duration / max(int(v.frames_sampled or 0), 1)
    person_docs = []
    for i, (gid, name, count, where) in zip(rows, targets):
        seen = list(cols["seen_s"][i]) if cols["seen_s"][i] is not None else [cols["first_seen_s"][i],
                                                                               cols["last_seen_s"][i]]
        person_docs.append({
            "person_id": int(cols["person_id"][i]),
            "face": link(VIDEO_DIR, cols["face_url"][i], v.video_id),
            "frame": link(VIDEO_DIR, cols["frame_url"][i], v.video_id),
            "quality": float(cols["quality"][i]),
            "appearances": int(cols["appearances"][i]),
            "best": fmt_time(cols["timestamp_s"][i]),
            "first": fmt_time(cols["first_seen_s"][i]),
            "last": fmt_time(cols["last_seen_s"][i]),
            "ticks": timeline(seen, start, duration, spacing) if is_video else [],
            "global_id": gid,
            "global_name": name,
            "global_videos": count,
            "global_page": posixpath.relpath(where, VIDEO_DIR) if where else None,
        })
    doc = {
        "video_id": v.video_id,
        "name": display_name(v.source),
        "source": v.source,
        "status": v.status,
        "is_video": is_video,
        "meta": meta_rows(v),
        "persons": person_docs,
        "frames": [{"src": link(VIDEO_DIR, u, v.video_id), "time": fmt_time(t)} for u, t in reps],
        "start": fmt_time(start),
        "end": fmt_time(start + duration),
    }
    return env.get_template("video.html").render(v=doc, index="../index.html", version=__version__)
