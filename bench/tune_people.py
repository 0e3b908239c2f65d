"""Pick `people_max_distance` (framepipe people): sweep the threshold over the shared footage and photos and count,
against the ground truth, people split over several global ids and different people joined into one.

    .venv/bin/python bench/tune_people.py [--models ../shared/models/scrfd_mobilefacenet]

Inputs: the 7 talking-head clips, the two composed videos and the 17 photos of photos/face_recognition (group
photos are left out of the count: who is who in them is not in the ground truth). Outputs are cached in
bench/.cache/people/.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from framepipe import manifests, pipeline, registry
from framepipe.config import Settings
from framepipe.faces import load_face_model

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT.parent / "shared" / "media"
GT = json.loads((MEDIA / "ground_truth.json").read_text())
CACHE = ROOT / "bench" / ".cache" / "people"


def label(key: str, seen: list[float]) -> str | None:
    gt = GT.get(key, {})
    if "identity" in gt:
        return gt["identity"]
    if "segments" in gt:
        votes = Counter(n for t in seen for a, b, n in gt["segments"] if a <= t < b and "+" not in n)
        return votes.most_common(1)[0][0] if votes else None
    if key.startswith("photos/face_recognition/") and "/groups/" not in key:
        return key.split("/")[2]
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=str(ROOT.parent / "shared" / "models" / "scrfd_mobilefacenet"))
    args = ap.parse_args()
    keys = sorted(str(p.relative_to(MEDIA)) for p in (MEDIA / "videos/talking_heads").glob("*.mp4"))
    keys += ["videos/composed/talking_heads_montage.mp4", "videos/composed/photo_slideshow_6people.mp4"]
    keys += sorted(str(p.relative_to(MEDIA)) for p in (MEDIA / "photos/face_recognition").rglob("*") if p.is_file())
    settings = Settings(models=args.models)
    if not (CACHE / "manifests" / "people").is_dir() or len(list((CACHE / "manifests" / "people").iterdir())) < len(keys):
        model = load_face_model(settings)
        for k in keys:
            pipeline.extract(str(MEDIA / k), str(CACHE), settings, model=model, raise_errors=True)
    people = manifests.load_people(CACHE)
    people["label"] = [label(str(Path(s).relative_to(MEDIA)), list(seen)) for s, seen in zip(people.source, people.seen_s)]
    known = people[people.label.notna()].reset_index(drop=True)
    emb = np.stack(known.embedding.map(np.asarray))
    sim = emb @ emb.T
    same = np.equal.outer(known.label.values, known.label.values)
    off = ~np.eye(len(known), dtype=bool)
    print(f"{len(people)} people in {people.video_id.nunique()} inputs, {len(known)} labelled, "
          f"{known.label.nunique()} identities")
    print(f"cosine similarity, same person (different rows): min {sim[same & off].min():.3f}; "
          f"different people: max {sim[~same].max():.3f}")
    print(f"{'max_distance':>12} {'global ids':>10} {'split':>6} {'joined':>7}")
    for t in np.round(np.arange(0.2, 1.0, 0.05), 2):
        index = registry.in_memory_index(people, float(t)).merge(people[["video_id", "person_id", "label"]],
                                                           on=["video_id", "person_id"])
        lab = index[index.label.notna()]
        split = int((lab.groupby("label").global_person_id.nunique() > 1).sum())
        joined = int((lab.groupby("global_person_id").label.nunique() > 1).sum())
        mark = "  <- default" if abs(t - Settings().people_max_distance) < 1e-9 else ""
        print(f"{t:>12.2f} {index.global_person_id.nunique():>10} {split:>6} {joined:>7}{mark}")


if __name__ == "__main__":
    main()
