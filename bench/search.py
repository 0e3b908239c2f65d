"""Search by photo on the shared photos: top-1 identification and false matches, by similarity threshold.

Each photo of an identity folder (photos/face_recognition/<name>, photos/dlib_johns/<name>) is a query, its
largest face against a gallery of everything else: the other photos, and the people of the shared videos whose
identity the ground truth names (talking heads, the composed videos; the other videos' people as strangers,
short_hamilton_clip left out as its people are unnamed but include photo identities). The gallery goes into a
person registry (framepipe.registry, as `framepipe people` seeds it) and is ranked as `framepipe search` ranks.

* top-1 (closed set): the best result, whatever its score, is the query's identity;
* at threshold t: a query whose identity is in the gallery is "identified" when the best result is its identity
  and scores >= t; a query whose identity is taken out of the gallery entirely (open set) is a "false match" when
  any result scores >= t.

    python bench/search.py [--models ../shared/models/scrfd_mobilefacenet]
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

from framepipe import pipeline, registry, search
from framepipe.analyzer import LocalAnalyzer
from framepipe.config import Settings

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared"
CACHE = HERE / ".cache" / "search_gallery.pkl"
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
    if CACHE.exists():
        return pickle.loads(CACHE.read_bytes())
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
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    CACHE.write_bytes(pickle.dumps(df))
    return df


def as_people(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"video_id": df["key"], "person_id": 0, "source": df["key"], "embedding": df["embedding"],
                         "embedding_model": "bench", "seen_s": df["seen_s"], "face_url": None, "frame_url": None,
                         "timestamp_s": 0.0, "quality": 0.5})


def best(reg: registry.Registry, q: np.ndarray) -> search.Hit | None:
    hits = search.rank(reg, q, 1, -1.0)
    return hits[0] if hits else None


def main() -> int:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=str(SHARED / "models/scrfd_mobilefacenet"))
    args = ap.parse_args()
    settings = Settings(models=args.models)
    g = gallery(settings)
    photos = g[g["kind"] == "photo"]
    ident = dict(zip(g["key"], g["identity"]))
    closed, opened = [], []
    for row in photos.itertuples():
        rest = g[g["key"] != row.key]
        if (rest["identity"] == row.identity).any():  # closed set: the identity is elsewhere in the gallery
            reg = registry.Registry.empty("bench", len(row.embedding))
            reg.update(as_people(rest), settings.people_max_distance)
            hit = best(reg, row.embedding)
            closed.append((ident[hit.source] == row.identity, hit.similarity))
        strangers = g[g["identity"] != row.identity]  # open set: nobody of this identity left
        reg = registry.Registry.empty("bench", len(row.embedding))
        reg.update(as_people(strangers), settings.people_max_distance)
        hit = best(reg, row.embedding)
        opened.append(hit.similarity if hit else -1.0)
    print(f"gallery: {len(photos)} photos of {photos['identity'].nunique()} identities + {int((g.kind == 'video').sum())} "
          f"video people; {len(closed)} closed-set queries, {len(opened)} open-set queries")
    print(f"top-1 identification (closed set, any score): {np.mean([ok for ok, _ in closed]):.3f}")
    print(f"\n{'threshold':>9} {'identified':>11} {'false-match rate':>17}")
    for t in THRESHOLDS:
        mark = "*" if abs(t - settings.search_min_similarity) < 1e-9 else " "
        ident_rate = np.mean([ok and s >= t for ok, s in closed])
        fmr = np.mean([s >= t for s in opened])
        print(f"{mark}{t:>8} {ident_rate:>11.3f} {fmr:>17.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
