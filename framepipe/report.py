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
import hashlib
import json
import math
import os
import posixpath

import numpy as np
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


def _meta_rows(v) -> list[tuple[str, str]]:
    """The metadata table of a video's row (a row of ``itertuples``)."""
    rows = [("video id", v.video_id), ("source", v.source), ("status", v.status)]
    if _present(getattr(v, "error_type", None)):
        rows.append(("error", f"{v.error_type}: {v.error_message}"))
    is_image = getattr(v, "media_type", None) == "image"
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


VIDEOS_PER_PAGE = 500  # video cards per index page
PEOPLE_PER_PAGE = 200  # global persons per people page
STATE = f"{schema.REPORT}/_state.json"  # each page's fingerprint at the last report: unchanged pages are not redone
PEOPLE_COLUMNS = ["video_id", "source", "person_id", "face_url", "frame_url", "quality", "appearances",
                  "timestamp_s", "first_seen_s", "last_seen_s", "seen_s"]


def _page(prefix: str, number: int) -> str:
    """Page ``number`` (1 = the first) of a paginated list: ``report/index.html``, then ``report/pages/...``."""
    return INDEX if number == 1 else f"{schema.REPORT}/pages/{prefix}-{number}.html"


def _fingerprint(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, default=str, sort_keys=True).encode()).hexdigest()[:20]


def _offsets(keys: np.ndarray, wanted) -> dict:
    """Start and end rows of each key in a sorted key array."""
    starts = np.searchsorted(keys, wanted, side="left")
    ends = np.searchsorted(keys, wanted, side="right")
    return {k: (int(a), int(b)) for k, a, b in zip(wanted, starts, ends)}


def build_pages(d: Destination, previous: dict | None = None) -> tuple[dict[str, str], dict]:
    """The pages of the report whose content changed since ``previous`` (the state the last report saved), by
    path relative to the destination's root, and the new state. Reads the people without their embeddings;
    renders only the video pages, index pages and people pages whose fingerprint changed."""
    previous = previous or {}
    old_pages: dict = previous.get("pages", {})
    videos = manifests.load_videos(d)
    people = manifests.load_people(d, columns=PEOPLE_COLUMNS).sort_values(["video_id", "person_id"],
                                                                           ignore_index=True)
    index = manifests.load_people_index(d)
    env = _env()

    def link(page_dir: str, url: str) -> str:  # from a page in page_dir to an output named by its URL
        return posixpath.relpath(manifests.relative(d, url), page_dir)

    global_of: dict[tuple[str, int], int] = {}
    global_videos: dict[int, int] = {}
    given: dict[int, str] = {}  # names given with framepipe people --name
    people_page_of: dict[int, str] = {}
    live: list[int] = []
    if index is not None:
        global_of = dict(zip(zip(index["video_id"], index["person_id"].astype(int)),
                             index["global_person_id"].astype(int)))
        global_videos = index.groupby("global_person_id")["video_id"].nunique().to_dict()
        given = {int(g): str(n) for g, n in zip(index["global_person_id"], index["name"]) if _present(n)}
        live = sorted(int(g) for g in global_videos)
        people_page_of = {g: _page("people", i // PEOPLE_PER_PAGE + 1) for i, g in enumerate(live)}

    pages: dict[str, str] = {}
    state: dict[str, str] = {}
    cards = []
    keys = people["video_id"].to_numpy(dtype=object).astype(str)
    where = _offsets(keys, videos["video_id"].astype(str).to_numpy())
    cols = {c: people[c].to_list() for c in people.columns}
    for v in videos.itertuples(index=False):
        page = f"{VIDEO_DIR}/{v.video_id}.html"
        a, b = where[str(v.video_id)]
        rows = range(a, b)
        is_video = getattr(v, "media_type", None) != "image"
        reps = list(zip(v.representative_urls if v.representative_urls is not None else [],
                        v.representative_timestamps_s if v.representative_timestamps_s is not None else []))
        gids = [global_of.get((v.video_id, int(cols["person_id"][i]))) for i in rows]
        targets = [(g, given.get(g), global_videos.get(g, 0), people_page_of.get(g)) for g in gids]
        state[page] = _fingerprint(v.run_id, str(v.processed_at), v.status, targets)
        if old_pages.get(page) != state[page]:
            pages[page] = _video_page(env, v, cols, rows, targets, reps, is_video, link)
        cards.append(
            {
                "video_id": v.video_id,
                "name": _name(v.source),
                "page": posixpath.relpath(page, schema.REPORT),
                "status": v.status,
                "error": f"{v.error_type}: {v.error_message}" if _present(v.error_type) else "",
                "kind": ("photo" if not is_video else fmt_time(float(v.duration_s) if _present(v.duration_s)
                                                               else 0.0)),
                "people": len(rows),
                "thumb": link(schema.REPORT, reps[len(reps) // 2][0]) if reps else None,
                "faces": [link(schema.REPORT, cols["face_url"][i]) for i in rows],
            }
        )

    people_pages = []
    not_indexed = 0
    if index is not None:
        not_indexed = len(set(zip(people["video_id"], people["person_id"].astype(int))) - set(global_of))
        by_gid = index.sort_values(["global_person_id", "source", "person_id"], kind="stable", ignore_index=True)
        gkeys = by_gid["global_person_id"].to_numpy(dtype=np.int64)
        spans = _offsets(gkeys, np.array(live, dtype=np.int64))
        names = {c["video_id"]: c["name"] for c in cards}
        g_cols = {c: by_gid[c].to_list() for c in ("video_id", "person_id", "source", "face_url", "similarity",
                                                     "quality")}
        docs = []
        for gid in live:
            a, b = spans[gid]
            quality = [q if _present(q) else -1.0 for q in g_cols["quality"][a:b]]
            best = a + int(np.argmax(quality))
            docs.append({
                "id": gid, "name": given.get(gid), "videos": global_videos.get(gid, 0),
                "face": link(schema.REPORT, g_cols["face_url"][best]),
                "appearances": [{
                    "video_id": g_cols["video_id"][i], "person_id": int(g_cols["person_id"][i]),
                    "name": names.get(g_cols["video_id"][i], _name(g_cols["source"][i])),
                    "page": f"videos/{g_cols['video_id'][i]}.html",
                    "face": link(schema.REPORT, g_cols["face_url"][i]),
                    "similarity": float(g_cols["similarity"][i])} for i in range(a, b)]})
        people_pages = [docs[i : i + PEOPLE_PER_PAGE] for i in range(0, len(docs), PEOPLE_PER_PAGE)] or [[]]

    video_pages = [cards[i : i + VIDEOS_PER_PAGE] for i in range(0, len(cards), VIDEOS_PER_PAGE)] or [[]]
    total_s = float(videos.loc[videos["status"] == "succeeded", "duration_s"].fillna(0).sum()) if len(videos) else 0.0
    stats = {
        "dest": d.url(""), "dest_name": _name(d.url("")),
        "inputs": len(videos),
        "succeeded": int((videos["status"] == "succeeded").sum()) if len(videos) else 0,
        "failed": int((videos["status"] != "succeeded").sum()) if len(videos) else 0,
        "people_total": len(people), "global_total": len(live) if index is not None else None,
        "index_rows": 0 if index is None else len(index), "not_indexed": not_indexed,
        "hours": f"{total_s / 3600:.2f} h" if total_s >= 3600 else fmt_time(total_s),
    }
    # index.html: the stats and the first page of both lists (always redone); then each list's further pages
    lists = [(INDEX, 1, video_pages[0], people_pages[0] if index is not None else None)]
    lists += [(_page("videos", n), n, shown, None) for n, shown in enumerate(video_pages[1:], 2)]
    if index is not None:
        lists += [(_page("people", n), n, None, persons) for n, persons in enumerate(people_pages[1:], 2)]
    for page, n, shown, persons in lists:
        content = (shown, persons, len(video_pages), len(people_pages))
        state[page] = _fingerprint(content)
        if page != INDEX and old_pages.get(page) == state[page]:
            continue
        here = posixpath.dirname(page)
        root = posixpath.relpath(schema.REPORT, here)
        pages[page] = env.get_template("index.html").render(
            **stats, videos=shown, global_people=persons, number=n, version=__version__,
            generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            root="" if root == "." else root + "/",
            video_pages=[posixpath.relpath(_page("videos", k), here) for k in range(1, len(video_pages) + 1)],
            people_pages=[posixpath.relpath(_page("people", k), here) for k in range(1, len(people_pages) + 1)]
            if index is not None else [])
    return pages, {"pages": state}


def _video_page(env, v, cols: dict, rows: range, targets: list, reps: list, is_video: bool, link) -> str:
    start = float(v.start_s) if _present(v.start_s) else 0.0
    duration = float(v.duration_s) if _present(v.duration_s) else 0.0
    spacing = duration / max(int(v.frames_sampled or 0), 1)
    person_docs = []
    for i, (gid, name, count, where) in zip(rows, targets):
        seen = list(cols["seen_s"][i]) if cols["seen_s"][i] is not None else [cols["first_seen_s"][i],
                                                                               cols["last_seen_s"][i]]
        person_docs.append({
            "person_id": int(cols["person_id"][i]),
            "face": link(VIDEO_DIR, cols["face_url"][i]),
            "frame": link(VIDEO_DIR, cols["frame_url"][i]),
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
    return env.get_template("video.html").render(v=doc, index="../index.html", version=__version__)


def write(dest: str | Destination) -> str:
    """Render and write the report's pages that changed since the last report (a page is written whole, the
    state last: a killed run redoes its pages next time); returns the URL (path or s3://) of its index.html."""
    d = manifests.destination(dest)
    d.remove_partials(schema.REPORT)
    try:
        previous = json.loads(d.read(STATE)) if d.exists(STATE) else None
    except (ValueError, OSError):
        previous = None
    if previous is not None and previous.get("version") != REPORT_VERSION:
        previous = None
    pages, state = build_pages(d, previous)
    for rel in sorted(pages, key=lambda r: r == INDEX):  # index.html last
        d.write(rel, pages[rel].encode("utf-8"))
    d.write(STATE, json.dumps({**state, "version": REPORT_VERSION}).encode())
    return d.url(INDEX)


REPORT_VERSION = f"{__version__}-2"  # a report of another framepipe (templates) is redone whole
