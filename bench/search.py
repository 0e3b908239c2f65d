"""Search by photo on the shared photos: top-1 identification and false matches, by similarity threshold.

Each photo of an identity folder (photos/face_recognition/<name>, photos/dlib_johns/<name>) is a query, its
largest face against a gallery of everything else: the other photos, and the people of the shared videos whose
identity the ground truth names (talking heads, the composed videos; the other videos' people as strangers,
short_hamilton_clip left out as its people are unnamed but include photo identities). The gallery goes into a
person registry (framepipe.people.registry, as `framepipe people` seeds it) and is ranked as `framepipe search` ranks.

* top-1 (closed set): the best result, whatever its score, is the query's identity;
* at threshold t: a query whose identity is in the gallery is "identified" when the best result is its identity
  and scores >= t; a query whose identity is taken out of the gallery entirely (open set) is a "false match" when
  any result scores >= t.

``--montages``: the other way round, as the issue's figure was taken: a registry of the people of both LFW
montages (40 people, 20 each; bench/quality.py's analysis cache) and, as queries, every photo of those people that
the montages do not show (``unused_photos``); a query is found when its best result at the floor or above is a
montage person showing the query's person, and a false match when it is someone else.

    python bench/search.py [--models ../shared/models/buffalo_s_dq] [--montages]
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from framepipe import calibration, pipeline
from framepipe.people import registry, search
from framepipe.analyzer import LocalAnalyzer
from framepipe.config import Settings

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared"
CACHE = HERE / ".cache" / "search_gallery_{}.pkl"  # per model pack
THRESHOLDS = [0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7]


def video_identity(truth: dict, seen_s: list[float]) -> str | None:
    if "identity" in truth:
        return truth["identity"]
    if "segments" in truth:
        votes = Counter(n for t in seen_s for a, b, n in truth["segments"] if a <= t < b and "+" not in n)
        return votes.most_common(1)[0][0] if votes else None
    return None


def gallery(settings: Settings) -> pd.DataFrame:
    """One row per photo face (largest face of each photo) and per video person, with its identity."""
    cache = Path(str(CACHE).format(calibration.pack_name(settings.models)))
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    analyzer = LocalAnalyzer.load(settings)
    gt = json.loads((SHARED / "media/ground_truth.json").read_text())
    rows = []
    for folder in ("photos/face_recognition", "photos/dlib_johns"):
        for path in sorted((SHARED / "media" / folder).glob("*/*")):
            if path.parent.name == "groups":
                continue
            faces = search.query_faces(str(path), settings, analyzer)
            if faces:
                rows.append({"key": str(path.relative_to(SHARED / "media")), "identity": path.parent.name,
                             "embedding": faces[0].embedding, "seen_s": None, "kind": "photo"})
    for key, truth in gt.items():
        if not key.startswith("videos/") or "short_hamilton" in key:
            continue
        for p in pipeline.analyse_video(str(SHARED / "media" / key), settings, analyzer).finish().people:
            rows.append({"key": f"{key}#{p.person_id}", "identity": video_identity(truth, p.seen_s) or f"{key}#?",
                         "embedding": p.mean_embedding, "seen_s": p.seen_s, "kind": "video"})
    df = pd.DataFrame(rows)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(pickle.dumps(df))
    return df


def as_people(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"video_id": df["key"], "person_id": 0, "source": df["key"], "embedding": df["embedding"],
                         "embedding_model": "bench", "seen_s": df["seen_s"], "face_url": None, "frame_url": None,
                         "timestamp_s": 0.0, "quality": 0.5})


def best(reg: registry.Registry, q: np.ndarray) -> search.Hit | None:
    hits = search.rank(reg, q, 1, -1.0)
    return hits[0] if hits else None


def montages(settings: Settings) -> None:
    """Unseen photos of the montages' 40 people against a registry of the montages' people."""
    sys.path.insert(0, str(HERE))
    import quality

    from framepipe import state

    videos = [v for v in quality.load(settings) if "lfw_montage" in v[0]]
    photos = {key: (person, st) for key, person, st in quality.lfw_photos(settings)}

    def central(st):
        people = state.reduce(st.people, st.picks.pick(), st.frames_sampled, settings).people
        return people[calibration.central([p.best.face.bbox for p in people], quality.LFW_SHAPE)] if people else None

    rows, label, queries = [], [], []
    for key, truth, st in videos:
        shown = {p: central(photos[p][1]) for shot in truth["shots"] for p in shot if p in photos}
        for p in state.reduce(st.people, st.picks.pick(), st.frames_sampled, settings).people:
            rows.append(quality.person_row(f"{key}", p) | {"video_id": f"{key}#{p.person_id}"})
            sims = [(float(p.best.face.embedding @ c.best.face.embedding), photos[k][0]) for k, c in shown.items() if c]
            best_sim, who = max(sims, default=(0.0, None))
            label.append(who if best_sim >= 0.7 else None)
        for person, files in truth["unused_photos"].items():
            queries += [(person, f) for f in files]
    people = pd.DataFrame(rows)
    reg = registry.Registry.empty("bench", len(people["embedding"].iloc[0]))
    reg.update(people, registry.join_rule(settings.people_max_distance, None, reg.dim, settings.models))
    who_is = dict(zip(people["video_id"], label))
    floor = calibration.search_min_similarity(settings.search_min_similarity, None, reg.dim, settings.models)
    found = false = missed = 0
    for person, f in queries:
        face = central(photos[f][1]) if f in photos else None
        if face is None:
            missed += 1
            continue
        hit = best(reg, face.best.face.embedding)
        if hit is None or hit.similarity < floor:
            missed += 1
        elif who_is.get(hit.video_id) == person:
            found += 1
        else:
            false += 1
    print(f"montages: {len(people)} people of {len(videos)} montages in the registry ({reg.live_ids().size} global persons); "
          f"{len(queries)} unseen photos of their {len({p for p, _ in queries})} people as queries, floor {floor}")
    print(f"found {found}/{len(queries)}, false matches {false}, nothing at the floor {missed}")


def main() -> int:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=str(SHARED / "models/buffalo_s_dq"))
    ap.add_argument("--montages", action="store_true", help="unseen LFW photos against the montages' people")
    args = ap.parse_args()
    settings = Settings(models=args.models)
    if args.montages:
        montages(settings)
        return 0
    g = gallery(settings)
    dim = len(g["embedding"].iloc[0])
    rule = registry.join_rule(settings.people_max_distance, None, dim, settings.models)  # as framepipe people
    floor = calibration.search_min_similarity(settings.search_min_similarity, None, dim, settings.models)
    photos = g[g["kind"] == "photo"]
    ident = dict(zip(g["key"], g["identity"]))
    closed, opened = [], []
    for row in photos.itertuples():
        rest = g[g["key"] != row.key]
        if (rest["identity"] == row.identity).any():  # closed set: the identity is elsewhere in the gallery
            reg = registry.Registry.empty("bench", len(row.embedding))
            reg.update(as_people(rest), rule)
            hit = best(reg, row.embedding)
            closed.append((ident[hit.source] == row.identity, hit.similarity))
        strangers = g[g["identity"] != row.identity]  # open set: nobody of this identity left
        reg = registry.Registry.empty("bench", len(row.embedding))
        reg.update(as_people(strangers), rule)
        hit = best(reg, row.embedding)
        opened.append(hit.similarity if hit else -1.0)
    print(f"gallery: {len(photos)} photos of {photos['identity'].nunique()} identities + {int((g.kind == 'video').sum())} "
          f"video people; {len(closed)} closed-set queries, {len(opened)} open-set queries")
    print(f"top-1 identification (closed set, any score): {np.mean([ok for ok, _ in closed]):.3f}")
    print(f"\n{'threshold':>9} {'identified':>11} {'false-match rate':>17}")
    for t in sorted(set(THRESHOLDS) | {round(floor, 4)}):
        mark = "*" if abs(t - floor) < 1e-9 else " "
        ident_rate = np.mean([ok and s >= t for ok, s in closed])
        fmr = np.mean([s >= t for s in opened])
        print(f"{mark}{t:>8} {ident_rate:>11.3f} {fmr:>17.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
