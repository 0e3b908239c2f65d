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
import io
import json
import posixpath

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from framepipe import __version__, manifests, schema
from framepipe import report_pages
from framepipe.storage import Destination

VIDEOS_PER_PAGE = 500  # video cards per index page
PEOPLE_PER_PAGE = 200  # global persons per people page
STATE = f"{schema.REPORT}/_state.json"  # each list page's fingerprint at the last report: unchanged ones not redone
VIDEO_STATE = f"{schema.REPORT}/_videos.parquet"  # the videos in list order, each with its page's hash
WRITING = f"{schema.REPORT}/_writing"  # there while a report is written: the next run sweeps a killed one's parts
PEOPLE_COLUMNS = ["video_id", "source", "person_id", "face_url", "frame_url", "quality", "appearances",
                  "timestamp_s", "first_seen_s", "last_seen_s", "seen_s"]


def _page(prefix: str, number: int) -> str:
    """Page ``number`` (1 = the first) of a paginated list: ``report/index.html``, then ``report/pages/...``."""
    return report_pages.INDEX if number == 1 else f"{schema.REPORT}/pages/{prefix}-{number}.html"


def _fingerprint(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, default=str, sort_keys=True).encode()).hexdigest()[:20]


def _offsets(keys: np.ndarray, wanted) -> dict:
    """Start and end rows of each key in a sorted key array."""
    starts = np.searchsorted(keys, wanted, side="left")
    ends = np.searchsorted(keys, wanted, side="right")
    return {k: (int(a), int(b)) for k, a, b in zip(wanted, starts, ends)}


def _row_hashes(df: pd.DataFrame) -> np.ndarray:
    """A 64-bit hash of each row (vectorised: no Python per row)."""
    if not len(df):
        return np.zeros(0, dtype=np.uint64)
    return pd.util.hash_pandas_object(df, index=False).to_numpy(dtype=np.uint64)


def _summed(keys: pd.Series, hashes: np.ndarray, wanted) -> np.ndarray:
    """The hashes of rows summed per key (order-free, wrapping), one for each of the ``wanted`` keys (0: none)."""
    if not len(keys):
        return np.zeros(len(wanted), dtype=np.uint64)
    codes, uniques = pd.factorize(keys)
    per_key = np.zeros(len(uniques), dtype=np.uint64)
    np.add.at(per_key, codes, hashes)
    at = pd.Index(uniques).get_indexer(wanted)
    return np.where(at >= 0, per_key[at], np.uint64(0))


def _isin(strings: pd.Series, values) -> np.ndarray:
    """``strings.isin(values)`` in Arrow: pandas' own, on Arrow-backed strings, makes a Python object of each value
    (1.4 s of a report at 100,000 videos)."""
    if not len(strings):
        return np.zeros(0, dtype=bool)
    value_set = pa.array(np.asarray(values, dtype=object), type=pa.string())
    return pc.is_in(pa.array(strings, type=pa.string()), value_set=value_set).to_numpy(zero_copy_only=False)


def _list_fingerprints(hashes: np.ndarray, per_page: int) -> list[str]:
    """The fingerprint of each list page (``per_page`` items of these hashes, in order; and whether a page
    follows, which its links show)."""
    starts = range(0, len(hashes), per_page)
    return [_fingerprint(hashlib.sha1(hashes[i : i + per_page].tobytes()).hexdigest(), n, n < len(starts))
            for n, i in enumerate(starts, 1)]


VIDEO_COLUMNS = ["video_id", "source", "run_id", "processed_at", "status", "duration_s", "people"]
# the people index's columns read for every person (what the pages' hashes are made of); the people pages redone
# read their persons' source and face too
INDEX_COLUMNS = ["global_person_id", "video_id", "person_id", "similarity", "quality", "name"]


def build_pages(d: Destination, previous: dict | None = None) -> tuple[dict[str, str], dict]:
    """The pages of the report whose content changed since ``previous`` (the state the last report saved), by
    path relative to the destination's root, and the new state. What each page shows is hashed from a few columns
    (a video's run and status; the people index's rows: who is whom, names, counts), without rendering anything;
    only the pages whose hash changed are rendered, from the rows of their videos and persons only. Videos keep
    their place in the list (new ones go to the end; the first report sorts them by source), so a few new videos
    change the last list page, their own pages and the pages of the persons they joined."""
    previous = previous or {}
    old_pages: dict = previous.get("pages", {})
    old_videos: pd.DataFrame | None = previous.get("videos")  # video_id (in list order), hash of its page
    videos = manifests.load_table(d, "videos", columns=VIDEO_COLUMNS).to_pandas()
    by_source = videos.sort_values(["source", "video_id"])["video_id"]
    if old_videos is not None and len(old_videos):  # every step vectorised: no Python per video
        kept = old_videos["video_id"][_isin(old_videos["video_id"], videos["video_id"])]
        order = pd.concat([kept, by_source[~_isin(by_source, kept)]]).to_numpy(dtype=object)
    else:
        order = by_source.to_numpy(dtype=object)
    videos = videos.set_index("video_id", drop=False).loc[order].reset_index(drop=True)
    index_file = manifests.people_index_file(d)  # read once: its light columns for all, the rest for pages redone
    index = None if index_file is None else manifests.read_people_index(index_file, INDEX_COLUMNS)
    env = report_pages.env()

    def link(page_dir: str, url: str, vid: str) -> str:  # from a page in page_dir to an output of video vid
        return report_pages.relative(manifests.relative(d, url, vid), page_dir)

    # the people index: who is whom (live persons by id, PEOPLE_PER_PAGE a page)
    live = np.zeros(0, dtype=np.int64)
    targets = pd.DataFrame({c: pd.Series(dtype=object) for c in ("video_id", "person_id", "gid", "name", "count",
                                                                 "page")})
    if index is not None:
        index = index.assign(global_person_id=index["global_person_id"].astype(np.int64),
                             person_id=index["person_id"].astype(np.int64))
        counts = index.groupby("global_person_id")["video_id"].nunique()
        names = index.dropna(subset=["name"]).drop_duplicates("global_person_id").set_index("global_person_id")["name"]
        live = counts.index.to_numpy(dtype=np.int64)  # sorted
        page_of = pd.Series(np.arange(len(live)) // PEOPLE_PER_PAGE + 1, index=live)
        g = index["global_person_id"]
        targets = pd.DataFrame({"video_id": index["video_id"], "person_id": index["person_id"], "gid": g,
                                "name": g.map(names), "count": g.map(counts), "page": g.map(page_of)})

    # what each page shows, hashed: a card (the video's run), a video page (the card and its people's targets)
    card = _row_hashes(videos[VIDEO_COLUMNS])
    page_hash = (card + _summed(targets["video_id"], _row_hashes(targets), order)).view(np.int64)
    old_hash = (pd.Series(old_videos["hash"].to_numpy(dtype=np.int64), index=old_videos["video_id"].to_numpy())
                .reindex(order, fill_value=0).to_numpy() if old_videos is not None and len(old_videos)
                else np.zeros(len(order), dtype=np.int64))
    redo = order[page_hash != old_hash].tolist()
    state: dict[str, str] = {}
    video_lists = [order[i : i + VIDEOS_PER_PAGE].tolist() for i in range(0, len(order), VIDEOS_PER_PAGE)] or [[]]
    for n, fingerprint in enumerate(_list_fingerprints(card, VIDEOS_PER_PAGE), 1):
        state[_page("videos", n) if n > 1 else "index/videos"] = fingerprint
    people_lists = [live[i : i + PEOPLE_PER_PAGE].tolist() for i in range(0, len(live), PEOPLE_PER_PAGE)] or [[]]
    if index is not None and len(live):
        # (not source and face_url: a video id names its source, and a person's face is at a fixed path in its
        # video's folder; hashing those long strings was a third of the report's time at 100,000 videos)
        person = _summed(index["global_person_id"], _row_hashes(index[INDEX_COLUMNS]), live)
        for n, fingerprint in enumerate(_list_fingerprints(person, PEOPLE_PER_PAGE), 1):
            if n > 1:
                state[_page("people", n)] = fingerprint
    lists = []  # (page, number, video ids, global ids): the list pages whose content changed (index.html always)
    for n in range(1, max(len(video_lists), len(people_lists)) + 1):
        vpage, ppage = _page("videos", n), _page("people", n)
        vs = video_lists[n - 1] if n <= len(video_lists) and (n == 1 or old_pages.get(vpage) != state[vpage]) \
            else None
        ps = people_lists[n - 1] if index is not None and n <= len(people_lists) and (
            n == 1 or old_pages.get(ppage) != state[ppage]) else None
        if n == 1:
            lists.append((report_pages.INDEX, 1, vs, ps))
        else:
            lists += [(vpage, n, vs, None)] if vs is not None else []
            lists += [(ppage, n, None, ps)] if ps is not None else []

    # the rows of what is redone only
    need = set(redo) | {v for _, _, shown, _ in lists if shown for v in shown}
    full = manifests.load_table(d, "videos", filter=pc.field("video_id").isin(list(need))).to_pandas() \
        if need else videos.iloc[0:0]
    full = full.set_index("video_id", drop=False).loc[sorted(need)] if need else full
    mine = targets[_isin(targets["video_id"], list(need))]
    target = dict(zip(zip(mine["video_id"], mine["person_id"].astype(int)), zip(
        mine["gid"].astype(int), mine["name"], mine["count"].astype(int),
        [_page("people", int(n)) for n in mine["page"]])))
    redone = set(redo)
    people = manifests.load_people(d, filter=pc.field("video_id").isin(list(need)), columns=PEOPLE_COLUMNS) \
        if need else pd.DataFrame(columns=PEOPLE_COLUMNS)
    people = people.sort_values(["video_id", "person_id"], ignore_index=True)
    rows_of = _offsets(people["video_id"].to_numpy(dtype=object).astype(str), np.array(sorted(need), dtype=object))
    cols = {c: people[c].to_list() for c in people.columns}
    pages: dict[str, str] = {}
    cards: dict[str, dict] = {}
    for v in full.itertuples(index=False):
        vid = v.video_id
        a, b = rows_of[vid]
        rows = range(a, b)
        is_video = getattr(v, "media_type", None) != "image"
        reps = list(zip(v.representative_urls if v.representative_urls is not None else [],
                        v.representative_timestamps_s if v.representative_timestamps_s is not None else []))
        page = f"{report_pages.VIDEO_DIR}/{vid}.html"
        if vid in redone:
            found = [target.get((vid, int(cols["person_id"][i])), (None, None, 0, None)) for i in rows]
            pages[page] = report_pages.video_page(env, v, cols, rows, [(g, n if report_pages.present(n) else None, c, p)
                                                           for g, n, c, p in found], reps, is_video, link)
        cards[vid] = {
            "video_id": v.video_id,
            "name": report_pages.display_name(v.source),
            "page": posixpath.relpath(page, schema.REPORT),
            "status": v.status,
            "error": f"{v.error_type}: {v.error_message}" if report_pages.present(v.error_type) else "",
            "kind": ("photo" if not is_video else report_pages.fmt_time(
                float(v.duration_s) if report_pages.present(v.duration_s) else 0.0)),
            "people": len(rows),
            "thumb": link(schema.REPORT, reps[len(reps) // 2][0], vid) if reps else None,
            "faces": [link(schema.REPORT, cols["face_url"][i], vid) for i in rows],
        }

    shown_gids = {g for _, _, _, persons in lists if persons for g in persons}  # the people pages redone
    by_gid = manifests.read_people_index(index_file, INDEX_COLUMNS + ["source", "face_url"], pc.field(
        "global_person_id").isin(sorted(shown_gids))).sort_values(
        ["global_person_id", "source", "person_id"], kind="stable", ignore_index=True) if index is not None else None

    g_cols: dict = {}

    def docs(gids: list[int]) -> list[dict]:
        if not gids:
            return []
        if not g_cols:  # once, for every page redone: the rows of their persons only
            g_cols.update({c: by_gid[c].to_list() for c in ("video_id", "person_id", "source", "face_url",
                                                              "similarity", "quality", "name")})
            g_cols["keys"] = by_gid["global_person_id"].to_numpy(dtype=np.int64)
        spans = _offsets(g_cols["keys"], np.array(gids, dtype=np.int64))
        out = []
        for gid in gids:
            a, b = spans[gid]
            quality = [q if report_pages.present(q) else -1.0 for q in g_cols["quality"][a:b]]
            best = a + int(np.argmax(quality))
            given = next((str(n) for n in g_cols["name"][a:b] if report_pages.present(n)), None)
            out.append({
                "id": gid, "name": given, "videos": len(set(g_cols["video_id"][a:b])),
                "face": link(schema.REPORT, g_cols["face_url"][best], g_cols["video_id"][best]),
                "appearances": [{
                    "video_id": g_cols["video_id"][i], "person_id": int(g_cols["person_id"][i]),
                    "name": report_pages.display_name(g_cols["source"][i]),
                    "page": f"videos/{g_cols['video_id'][i]}.html",
                    "face": link(schema.REPORT, g_cols["face_url"][i], g_cols["video_id"][i]),
                    "similarity": float(g_cols["similarity"][i])} for i in range(a, b)]})
        return out

    # people per input from the videos' own count (no read of the people table); those not in the people index:
    # the current inputs' people less their rows in it (people added since the last framepipe people)
    people_total = int(videos["people"].fillna(0).sum())
    indexed = int(_isin(index["video_id"], videos["video_id"]).sum()) if index is not None else 0
    total_s = float(videos.loc[videos["status"] == "succeeded", "duration_s"].fillna(0).sum()) if len(videos) else 0.0
    stats = {
        "dest": d.url(""), "dest_name": report_pages.display_name(d.url("")),
        "inputs": len(videos),
        "succeeded": int((videos["status"] == "succeeded").sum()) if len(videos) else 0,
        "failed": int((videos["status"] != "succeeded").sum()) if len(videos) else 0,
        "people_total": people_total, "global_total": len(live) if index is not None else None,
        "index_rows": 0 if index is None else len(index),
        "not_indexed": max(people_total - indexed, 0) if index is not None else 0,
        "hours": f"{total_s / 3600:.2f} h" if total_s >= 3600 else report_pages.fmt_time(total_s),
    }
    # index.html: the stats, every page of both lists and the first of each; then the other list pages that changed
    for page, n, shown, persons in lists:
        here = posixpath.dirname(page)
        root = posixpath.relpath(schema.REPORT, here)
        pages[page] = env.get_template("index.html").render(
            **stats, videos=[cards[v] for v in shown] if shown is not None else None,
            global_people=docs(persons) if persons is not None else None, number=n, version=__version__,
            generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            root="" if root == "." else root + "/",
            video_pages=[posixpath.relpath(_page("videos", k), here) for k in range(1, len(video_lists) + 1)]
            if page == report_pages.INDEX else _neighbours("videos", n, len(video_lists), here),
            people_pages=([posixpath.relpath(_page("people", k), here) for k in range(1, len(people_lists) + 1)]
                          if page == report_pages.INDEX else _neighbours("people", n, len(people_lists), here))
            if index is not None else [])
    return pages, {"pages": state, "videos": pd.DataFrame({"video_id": order, "hash": page_hash})}


def _neighbours(prefix: str, n: int, count: int, here: str) -> list[tuple[str, str]]:
    """A list page's links: the first page, the previous and the next (a page's links do not change when pages
    are added after it, so it is not redone)."""
    out = [("first", posixpath.relpath(_page(prefix, 1), here))]
    if n > 2:
        out.append(("previous", posixpath.relpath(_page(prefix, n - 1), here)))
    if n < count:
        out.append(("next", posixpath.relpath(_page(prefix, n + 1), here)))
    return out


def write(dest: str | Destination) -> str:
    """Render and write the report's pages that changed since the last report (a page is written whole, the
    state last: a killed run redoes its pages next time); returns the URL (path or s3://) of its index.html."""
    d = manifests.destination(dest)
    if d.exists(WRITING) or not d.exists(STATE):  # a run killed while writing (or none finished yet): its
        d.remove_partials(schema.REPORT)  # half-written pages swept; not a walk of every page at each report
    d.write(WRITING, b"")
    try:
        previous = json.loads(d.read(STATE)) if d.exists(STATE) else None
        if previous is not None and previous.get("version") == REPORT_VERSION and d.exists(VIDEO_STATE):
            previous["videos"] = pq.read_table(io.BytesIO(d.read(VIDEO_STATE))).to_pandas()
        else:
            previous = None
    except (ValueError, OSError, pa.ArrowException):
        previous = None
    pages, state = build_pages(d, previous)
    for rel in sorted(pages, key=lambda r: r == report_pages.INDEX):  # index.html last
        d.write(rel, pages[rel].encode("utf-8"))
    # the state last (the videos' hashes, then the pages'): a run killed before redoes what it had not recorded
    d.write(VIDEO_STATE, schema.parquet_bytes(pa.Table.from_pandas(state["videos"], preserve_index=False)))
    d.write(STATE, json.dumps({"pages": state["pages"], "version": REPORT_VERSION}).encode())
    d.delete(WRITING)
    return d.url(report_pages.INDEX)


REPORT_VERSION = f"{__version__}-4"  # a report of another framepipe (templates) is redone whole
