"""People quality on the labelled shared footage: are people merged or split?

For each labelled video of ``../shared/media/ground_truth.json`` this prints:

* ``exp`` / ``found``: people expected (the accept range) and found;
* ``F1``: time-matched F1 of the talent frames: a person counts as a hit when its talent frame lies in an on-screen
  span of the ground-truth identity that best covers the person, and no earlier person claimed that identity;
* ``purity``: the share of all persons' ``seen_s`` that lie in on-screen spans of the one identity best covering
  each person (times in wide shots where every face is tiny, listed in ``bench/quality_labels.json``, left out);
* ``joins``: within-video joins by ``framepipe people``: two persons of this video put into one global person
  (needs no ground truth: each is a split the per-video pass missed);
* ``shots`` / ``rep/shot``: shots found on the sampled frames, and the most representative frames taken from one
  shot (must be 1 when the video has at least 10 shots).

The face analysis of each video is cached in ``bench/.cache/quality/`` (keyed by the settings that change it),
so re-running after a clustering change takes seconds. ``--fresh`` re-analyses.

    python bench/quality.py [--models ../shared/models/scrfd_mobilefacenet] [--fresh] [--verbose]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from framepipe import people_index, pipeline, registry, state
from framepipe.analyzer import LocalAnalyzer
from framepipe.config import Settings

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared"
CACHE = HERE / ".cache" / "quality"


def identity_spans(truth: dict, duration: float) -> dict[str, list[tuple[float, float]]]:
    """identity -> on-screen spans, from any of the ground truth's three forms."""
    spans: dict[str, list] = {}
    for name, ss in truth.get("people", {}).items():
        spans[name] = [tuple(s) for s in ss]
    for s, e, names in truth.get("segments", []):
        for name in names.split("+"):
            spans.setdefault(name, []).append((s, e))
    if not spans and truth.get("expected") == 1:
        spans[truth.get("identity", "the_person")] = [(0.0, duration + 1.0)]
    return spans


def wide_shots(key: str) -> list:
    """Spans of wide shots where every face is tiny (``bench/quality_labels.json``): left out of purity."""
    return json.loads((HERE / "quality_labels.json").read_text()).get(key, {}).get("wide", [])


def inside(t: float, spans) -> bool:
    return any(s - 0.05 <= t <= e + 0.05 for s, e in spans)


def score(people: list[tuple[list[float], float]], spans: dict, wide: list) -> dict:
    """Purity and talent F1 of one video's people against identity spans. Persons are matched one to one to the
    identities (most covered ``seen_s`` first, ties to identities whose span holds the talent frame); a match whose
    talent frame lies in its identity's spans is a hit. ``people``: (seen_s, talent frame time) per person."""
    from scipy.optimize import linear_sum_assignment

    names = list(spans)
    on, total = 0, 0
    cover = np.zeros((len(people), len(names)))
    for i, (seen_s, _) in enumerate(people):
        times = [t for t in seen_s if not inside(t, wide)]
        for j, name in enumerate(names):
            cover[i, j] = sum(inside(t, spans[name]) for t in times)
        on += cover[i].max() if names else 0
        total += len(times)
    hits = 0
    if people and names:
        talent = np.array([[inside(t, spans[n]) for n in names] for _, t in people], dtype=float)
        rows, cols = linear_sum_assignment(-(cover * 1000 + talent))
        hits = int(sum(talent[r, c] and cover[r, c] > 0 for r, c in zip(rows, cols)))
    precision = hits / len(people) if people else 1.0
    recall = hits / len(spans) if spans else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"purity": on / total if total else 1.0, "f1": f1}


def analysed(key: str, path: Path, settings: Settings, analyzer: Callable[[], LocalAnalyzer], fresh: bool) -> state.VideoState:
    knobs = settings.model_dump(include={"models", "sample_fps", "min_samples", "det_size", "det_thresh",
                                         "min_face_px", "sampling"})
    digest = hashlib.sha1(json.dumps([key, knobs], sort_keys=True, default=str).encode()).hexdigest()[:16]
    cached = CACHE / f"{digest}.pkl"
    if cached.exists() and not fresh:
        return pickle.loads(cached.read_bytes())
    st = pipeline.analyse_video(str(path), settings, analyzer())
    CACHE.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(pickle.dumps(st))
    return st


def within_video_joins(rows: list[dict], settings: Settings, verbose: bool = False) -> dict[str, int]:
    """video -> how many of its persons ``framepipe people`` put together with another of its persons."""
    if not rows:
        return {}
    joins: dict[str, int] = {}
    for j in people_index.within_video_joins(registry.in_memory_index(pd.DataFrame(rows), settings.people_max_distance)):
        joins[j.video_id] = joins.get(j.video_id, 0) + len(j.person_ids) - 1
        if verbose:
            print(f"  join: {j.video_id} persons {j.person_ids} -> global person {j.global_person_id}")
    return joins


def load(settings: Settings, fresh: bool = False) -> list[tuple[str, dict, state.VideoState]]:
    """(key, ground truth, analysed state) of every labelled shared video."""
    gt = json.loads((SHARED / "media/ground_truth.json").read_text())
    loaded: list[LocalAnalyzer] = []

    def analyzer() -> LocalAnalyzer:  # the models only when something is not cached
        if not loaded:
            loaded.append(LocalAnalyzer.load(settings))
        return loaded[0]

    return [(key, truth, analysed(key, SHARED / "media" / key, settings, analyzer, fresh))
            for key, truth in gt.items() if key.startswith("videos/") and truth.get("accept")]


def evaluate(videos, settings: Settings, verbose: bool = False) -> pd.DataFrame:
    """One row per video: people expected and found, F1, purity, shots, within-video joins."""
    rows, table = [], []
    for key, truth, st in videos:
        reps = st.picks.pick()
        t0 = time.perf_counter()
        red = state.reduce(st.people, reps, st.frames_sampled, settings)
        reduce_ms = (time.perf_counter() - t0) * 1000
        spans = identity_spans(truth, st.picks.picker.start_s + st.picks.picker.duration_s)
        s = score([(p.seen_s, p.best.pts_s) for p in red.people], spans, wide_shots(key)) \
            if spans or truth["accept"] == [0, 0] else {"purity": np.nan, "f1": np.nan}
        shots = reps.shots
        rep_shots = [shots.shot_of(f.pts_s) for f in reps.frames]
        low, high = truth["accept"]
        n = len(red.people)
        for p in red.people:
            rows.append({"video_id": key, "source": key, "person_id": p.person_id, "embedding": p.mean_embedding,
                         "embedding_model": "bench", "face_url": None, "frame_url": None,
                         "timestamp_s": p.best.pts_s, "quality": p.best.face.quality, "seen_s": p.seen_s})
        table.append({"video": key.removeprefix("videos/"), "exp": f"{low}-{high}", "found": n,
                      "in_range": low <= n <= high, "F1": round(s["f1"], 2), "purity": round(s["purity"], 3),
                      "shots": shots.count, "rep/shot": max(map(rep_shots.count, set(rep_shots)), default=0),
                      "reduce_ms": round(reduce_ms, 1)})
        if verbose:
            for p in red.people:
                print(f"  {key} person {p.person_id}: best {p.best.pts_s:.2f} seen {[round(t, 1) for t in p.seen_s]}")
            print(f"  {key} representatives {[round(f.pts_s, 2) for f in reps.frames]} shots {rep_shots} "
                  f"cuts {[round(c, 2) for c in shots.cuts]} relaxed {reps.relaxed}")
    joins = within_video_joins(rows, settings, verbose)
    df = pd.DataFrame(table)
    df["joins"] = [joins.get("videos/" + v, 0) for v in df["video"]]
    return df


def summary(df: pd.DataFrame) -> str:
    many = df[df["shots"] >= 10]
    return (f"in range {int(df['in_range'].sum())}/{len(df)}; purity min {df['purity'].min():.3f} "
            f"mean {df['purity'].mean():.3f}; F1 mean {df['F1'].mean():.3f}; within-video joins "
            f"{int(df['joins'].sum())}; most representative frames of one shot where >= 10 shots: "
            f"{int(many['rep/shot'].max()) if len(many) else '-'}")


def main() -> int:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=str(SHARED / "models/scrfd_mobilefacenet"))
    ap.add_argument("--fresh", action="store_true", help="re-analyse instead of using the cache")
    ap.add_argument("--verbose", action="store_true", help="print each person's seen_s")
    args = ap.parse_args()
    settings = Settings(models=args.models)
    df = evaluate(load(settings, args.fresh), settings, args.verbose)
    pd.set_option("display.width", 200)
    print(df.to_string(index=False))
    print("\n" + summary(df))
    return 0


if __name__ == "__main__":
    sys.exit(main())
