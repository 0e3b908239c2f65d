"""How the clustering defaults were chosen: analyse every ground-truth video once, then re-cluster the faces
over a grid of DBSCAN eps and singleton quality bars, and count videos whose people count falls inside the
ground truth's accept range (plus a split/merge check on the two composed videos).

    python bench/tune_clustering.py [--models ../shared/models/scrfd_mobilefacenet]
"""

from __future__ import annotations

import argparse
import json
import warnings
from itertools import permutations
from pathlib import Path

import numpy as np

from framepipe import clustering, pipeline
from framepipe.analyzer import LocalAnalyzer
from framepipe.config import Settings

SHARED = Path(__file__).resolve().parents[2] / "shared"


def composed_ok(segments, records, labels) -> bool:
    people = sorted({n for _, _, names in segments for n in names.split("+")})
    best = {}
    for r, lab in zip(records, labels):
        if lab >= 0 and (lab not in best or r.face.quality > best[lab].face.quality):
            best[lab] = r
    cands = [{n for s, e, names in segments if s <= r.pts_s < e for n in names.split("+")} for r in best.values()]
    if len(cands) != len(people):
        return False
    return any(all(p in c for p, c in zip(perm, cands)) for perm in permutations(people))


def main() -> None:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=str(SHARED / "models/scrfd_mobilefacenet"))
    args = ap.parse_args()
    gt = json.loads((SHARED / "media/ground_truth.json").read_text())
    settings = Settings(models=args.models)
    analyzer = LocalAnalyzer.load(settings)
    data = {}
    for key, truth in gt.items():
        if not key.startswith("videos/") or not truth.get("accept"):
            continue
        state = pipeline.analyse_video(str(SHARED / "media" / key), settings, analyzer)
        data[key] = (truth, state.people.records)
    print(f"{len(data)} videos; rows: eps, columns: singleton_min_quality; cell: videos in range (+composed ok)")
    qs = [0.3, 0.4, 0.45, 0.5, 0.6, 1.01]
    print("eps   " + "".join(f"{q:>9}" for q in qs))
    for eps in [0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7]:
        cells = []
        for q in qs:
            in_range = composed = 0
            for key, (truth, recs) in data.items():
                if recs:
                    emb = np.stack([r.face.embedding for r in recs])
                    qual = np.array([r.face.quality for r in recs])
                    labels = clustering.cluster_faces(emb, qual, eps, settings.cluster_min_samples, q)
                else:
                    labels = np.zeros(0, dtype=int)
                n = int(labels.max()) + 1 if len(labels) else 0
                low, high = truth["accept"]
                in_range += low <= n <= high
                if "segments" in truth:
                    composed += composed_ok(truth["segments"], recs, labels)
            cells.append(f"{in_range:>3}/{len(data)}+{composed}")
        print(f"{eps:<6}" + "".join(f"{c:>9}" for c in cells))


if __name__ == "__main__":
    main()
