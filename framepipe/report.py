"""A static HTML contact sheet of a destination: ``framepipe report DEST``.

Writes ``DEST/report/index.html`` (every input, plus the people-across-videos section when
``framepipe people`` has been run) and ``DEST/report/videos/<video_id>.html`` (metadata, one card per person with
face crop, best frame, quality, appearances, first/last seen and a timeline of when the person is on screen, and
the strip of representative frames). Images are linked relatively to the frames already in the destination, so
the folder opens from disk, and works the same when an S3 destination is synced down or served as a static site.
No server, no script, no network access: plain HTML and CSS (Jinja2 templates in ``framepipe/templates``).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import posixpath

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from framepipe import __version__, manifests, schema
from framepipe.storage import Destination

INDEX = f"{schema.REPORT}/index.html"
VIDEO_DIR = f"{schema.REPORT}/videos"


def _env() -> Environment:
    return Environment(loader=PackageLoader("framepipe", "templates"), autoescape=select_autoescape(), trim_blocks=True)


def fmt_time(s: float | None) -> str:
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "-"
    m, sec = divmod(max(float(s), 0.0), 60.0)
    return f"{int(m)}:{sec:04.1f}"


def _present(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def _name(source: str) -> str:
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


def _meta_rows(v: pd.Series) -> list[tuple[str, str]]:
    rows = [("video id", v.video_id), ("source", v.source), ("status", v.status)]
    if _present(v.get("error_type")):
        rows.append(("error", f"{v.error_type}: {v.error_message}"))
    is_image = v.get("media_type") == "image"
    if _present(v.width):
        rows.append(("resolution", f"{int(v.width)} x {int(v.height)}"))
    if not is_image:
        if _present(v.fps):
            rows.append(("frame rate", f"{v.fps:g} fps"))
        if _present(v.total_frames):
            rows.append(("frames", f"{int(v.total_frames)}"))
        if _present(v.duration_s):
            rows.append(("duration", f"{fmt_time(v.duration_s)} ({v.duration_s:g} s)"))
    rows.append(("type", "photo" if is_image else "video"))
    if _present(v.codec):
        rows.append(("codec", v.codec))
    if _present(v.size_bytes):
        rows.append(("size", f"{v.size_bytes / 1e6:.1f} MB"))
    rows += [
        ("frames analysed", f"{int(v.frames_sampled or 0)}"),
        ("faces detected", f"{int(v.faces_detected or 0)}"),
        ("processing", f"{v.processing_s:.1f} s on {v.device}" if _present(v.processing_s) else "-"),
        ("estimated cost", f"${v.estimated_cost_usd:.5f}" if _present(v.estimated_cost_usd) else "-"),
        ("models", v.models if _present(v.models) else "-"),
        ("processed", str(v.processed_at)[:19] if _present(v.processed_at) else "-"),
    ]
    return [(k, str(val)) for k, val in rows]


def build_pages(d: Destination) -> dict[str, str]:
    """Every page of the report, by path relative to the destination's root."""
    videos = manifests.load_videos(d)
    people = manifests.load_people(d)
    index = manifests.load_people_index(d)
    env = _env()
    def link(page_dir: str, url: str) -> str:  # from a page in page_dir to an output named by its URL
        return posixpath.relpath(manifests.relative(d, url), page_dir)

    global_of: dict[tuple[str, int], int] = {}
    global_videos: dict[int, int] = {}
    given: dict[int, str] = {}  # names given with framepipe people --name
    if index is not None:
        global_of = {(r.video_id, int(r.person_id)): int(r.global_person_id) for r in index.itertuples()}
        global_videos = index.groupby("global_person_id")["video_id"].nunique().to_dict()
        given = {int(g): str(n) for g, n in zip(index["global_person_id"], index["name"]) if _present(n)}

    pages: dict[str, str] = {}
    cards = []
    by_video = {vid: g for vid, g in people.groupby("video_id")}
    for _, v in videos.iterrows():
        page = f"{VIDEO_DIR}/{v.video_id}.html"
        persons = by_video.get(v.video_id, people.iloc[0:0]).sort_values("person_id")
        is_video = v.get("media_type") != "image"
        start = float(v.start_s) if _present(v.start_s) else 0.0
        duration = float(v.duration_s) if _present(v.duration_s) else 0.0
        spacing = duration / max(int(v.frames_sampled or 0), 1)
        reps = list(zip(v.representative_urls if v.representative_urls is not None else [],
                        v.representative_timestamps_s if v.representative_timestamps_s is not None else []))
        person_docs = []
        for p in persons.itertuples(index=False):
            seen = list(p.seen_s) if p.seen_s is not None else [p.first_seen_s, p.last_seen_s]
            gid = global_of.get((v.video_id, int(p.person_id)))
            person_docs.append(
                {
                    "person_id": int(p.person_id),
                    "face": link(VIDEO_DIR, p.face_url),
                    "frame": link(VIDEO_DIR, p.frame_url),
                    "quality": float(p.quality),
                    "appearances": int(p.appearances),
                    "best": fmt_time(p.timestamp_s),
                    "first": fmt_time(p.first_seen_s),
                    "last": fmt_time(p.last_seen_s),
                    "ticks": timeline(seen, start, duration, spacing) if is_video else [],
                    "global_id": gid,
                    "global_name": given.get(gid) if gid is not None else None,
                    "global_videos": global_videos.get(gid, 0) if gid is not None else 0,
                }
            )
        doc = {
            "video_id": v.video_id,
            "name": _name(v.source),
            "source": v.source,
            "status": v.status,
            "is_video": is_video,
            "meta": _meta_rows(v),
            "persons": person_docs,
            "frames": [{"src": link(VIDEO_DIR, u), "time": fmt_time(t)} for u, t in reps],
            "start": fmt_time(start),
            "end": fmt_time(start + duration),
        }
        pages[page] = env.get_template("video.html").render(v=doc, index="../index.html", version=__version__)
        cards.append(
            {
                "video_id": v.video_id,
                "name": doc["name"],
                "page": posixpath.relpath(page, schema.REPORT),
                "status": v.status,
                "error": f"{v.error_type}: {v.error_message}" if _present(v.get("error_type")) else "",
                "kind": ("photo" if not is_video else fmt_time(duration)),
                "people": len(person_docs),
                "thumb": link(schema.REPORT, reps[len(reps) // 2][0]) if reps else None,
                "faces": [link(schema.REPORT, p.face_url) for p in persons.itertuples(index=False)],
            }
        )

    global_docs, not_indexed = None, 0
    if index is not None:
        not_indexed = len(set(zip(people.video_id, people.person_id)) - set(global_of))
        global_docs = []
        pages_of = {c["video_id"]: c["page"] for c in cards}
        names = {c["video_id"]: c["name"] for c in cards}
        for gid, g in index.groupby("global_person_id", sort=True):
            g = g.sort_values(["source", "person_id"])
            best = g.loc[g["quality"].idxmax()] if g["quality"].notna().any() else g.iloc[0]
            global_docs.append(
                {
                    "id": int(gid),
                    "name": given.get(int(gid)),
                    "videos": int(g["video_id"].nunique()),
                    "face": link(schema.REPORT, best.face_url),
                    "appearances": [
                        {
                            "video_id": a.video_id,
                            "person_id": int(a.person_id),
                            "name": names.get(a.video_id, _name(a.source)),
                            "page": pages_of.get(a.video_id, ""),
                            "face": link(schema.REPORT, a.face_url),
                            "similarity": float(a.similarity),
                        }
                        for a in g.itertuples(index=False)
                    ],
                }
            )
        global_docs.sort(key=lambda g: (-g["videos"], g["id"]))

    total_s = float(videos.loc[videos["status"] == "succeeded", "duration_s"].fillna(0).sum()) if len(videos) else 0.0
    pages[INDEX] = env.get_template("index.html").render(
        dest=d.url(""),
        dest_name=_name(d.url("")),
        generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        videos=cards,
        succeeded=int((videos["status"] == "succeeded").sum()) if len(videos) else 0,
        failed=int((videos["status"] != "succeeded").sum()) if len(videos) else 0,
        people_total=len(people),
        global_people=global_docs,
        index_rows=0 if index is None else len(index),
        not_indexed=not_indexed,
        hours=f"{total_s / 3600:.2f} h" if total_s >= 3600 else fmt_time(total_s),
        version=__version__,
    )
    return pages


def write(dest: str | Destination) -> str:
    """Render and write the report; returns the URL (path or s3://) of its index.html."""
    d = manifests.destination(dest)
    for rel, html in build_pages(d).items():
        d.write(rel, html.encode("utf-8"))
    return d.url(INDEX)
