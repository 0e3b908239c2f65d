"""People quality on everything labelled in ``../shared/media``: are people merged or split, per video and in the
person registry?

For each labelled video of ``ground_truth.json`` and ``ground_truth_multishot.json`` this prints:

* ``half``: ``tune`` for the fixed half of the videos thresholds may be tuned on (``quality_labels.json``),
  ``held`` for the other half, reported on its own so that a threshold fitted to one clip shows;
* ``exp`` / ``found``: people expected (the accept range) and found;
* ``F1``: time-matched F1 of the talent frames: a person counts as a hit when its talent frame lies in an on-screen
  span of the ground-truth identity that best covers the person, and no earlier person claimed that identity
  (persons seen only in don't-care spans, the ground truth's ``optional``, count neither way);
* ``purity`` (merges): the share of all persons' ``seen_s`` that lie in on-screen spans of the one identity best
  covering each person (times in wide shots where every face is tiny, ``quality_labels.json``, and in don't-care
  spans left out);
* ``second``: a montage's persons that are none of its photos' labelled people (the other faces of those
  photos), left out of F1, purity and ``ppi``;
* ``ppi`` (splits): persons per identity. A person all of whose appearances have one identity on screen belongs to
  it (when several identities are on screen all the time, the one it was matched to for F1); ``ppi`` is the mean,
  over the identities with a person, of how many persons belong to each (1.00: no split);
* ``joins``: within-video joins by the person registry (two persons of this video put into one global person);
* ``shots`` / ``rep/shot``: shots found on the sampled frames, and the most representative frames taken from one
  shot (must be 1 when the video has at least 10 shots).

``--registry`` adds the registry level: the people of both LFW montages plus every photo of ``photos/lfw/`` (40
people, one-frame inputs as ``framepipe extract --images`` makes them) attached by the registry
(:func:`framepipe.people.registry.in_memory_index`, the code ``framepipe people`` runs), then: global persons (for 40),
their purity (members whose identity is their global person's majority identity; a photo's labelled person is
its central face, a montage person's identity the one that covers it, others unlabelled) and global persons per
identity.

The face analysis of each video and photo is cached in ``bench/.cache/quality/`` (keyed by the settings that
change it), so re-running after a clustering change takes seconds. ``--fresh`` re-analyses.

    python bench/quality.py [--models ../shared/models/buffalo_s_dq] [--registry] [--fresh] [--verbose]
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

from framepipe import faces, pipeline, state, tracking
from framepipe.people import grouping, registry
from framepipe.analyzer import LocalAnalyzer
from framepipe.config import Settings

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
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


LABELS = json.loads((HERE / "quality_labels.json").read_text())


def wide_shots(key: str) -> list:
    """Spans of wide shots where every face is tiny (``bench/quality_labels.json``): left out of purity."""
    return LABELS.get(key, {}).get("wide", [])


def dont_care(truth: dict) -> list:
    """The ground truth's ``optional`` spans (faces that may or may not be people) and non-human faces."""
    spans = [tuple(s) for ss in truth.get("optional", {}).values() for s in ss]
    return spans + [tuple(s) for s in truth.get("non_human_faces", [])]


MORE = json.loads((SHARED / "media/ground_truth_more.json").read_text())  # montages d and e: never tuned on


def half(key: str) -> str:
    return "new" if key in MORE else "tune" if key in LABELS["tune"] else "held"


def inside(t: float, spans) -> bool:
    return any(s - 0.05 <= t <= e + 0.05 for s, e in spans)


def score(people: list[tuple[list[float], float]], spans: dict, wide: list, optional: list = ()) -> dict:
    """Purity, talent F1 and persons per identity of one video's people against identity spans. Persons are
    matched one to one to the identities (most covered ``seen_s`` first, ties to identities whose span holds the
    talent frame); a match whose talent frame lies in its identity's spans is a hit. ``people``: (seen_s, talent
    frame time) per person; ``optional``: don't-care spans (times in them are left out; a person seen only there
    counts neither way)."""
    from scipy.optimize import linear_sum_assignment

    names = list(spans)
    on, total = 0, 0
    counted = []
    for seen_s, t in people:
        times = [x for x in seen_s if not inside(x, wide)]
        if optional and all(inside(x, optional) and not any(inside(x, spans[n]) for n in names) for x in times):
            continue  # a don't-care face: neither a hit nor a false person
        counted.append(([x for x in times if not (inside(x, optional) and
                                                  not any(inside(x, spans[n]) for n in names))], t))
    cover = np.zeros((len(counted), len(names)))
    for i, (times, _) in enumerate(counted):
        for j, name in enumerate(names):
            cover[i, j] = sum(inside(t, spans[name]) for t in times)
        on += cover[i].max() if names else 0
        total += len(times)
    hits, matched = 0, {}
    if counted and names:
        talent = np.array([[inside(t, spans[n]) for n in names] for _, t in counted], dtype=float)
        rows, cols = linear_sum_assignment(-(cover * 1000 + talent))
        hits = int(sum(talent[r, c] and cover[r, c] > 0 for r, c in zip(rows, cols)))
        matched = {int(r): int(c) for r, c in zip(rows, cols)}
    belongs: dict[int, int] = {}
    for i, (times, _) in enumerate(counted):
        if not times or not names:
            continue
        full = [j for j in range(len(names)) if cover[i, j] == len(times)]
        if len(full) == 1:
            j = full[0]
        elif matched.get(i) in full:
            j = matched[i]
        else:
            continue
        belongs[j] = belongs.get(j, 0) + 1
    precision = hits / len(counted) if counted else 1.0
    recall = hits / len(spans) if spans else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"purity": on / total if total else 1.0, "f1": f1,
            "ppi": float(np.mean(list(belongs.values()))) if belongs else np.nan, "identities": len(belongs)}


def analysed(key: str, path: Path, settings: Settings, analyzer: Callable[[], LocalAnalyzer], fresh: bool) -> state.VideoState:
    knobs = settings.model_dump(include={"models", "sample_fps", "min_samples", "det_size", "det_thresh",
                                         "min_face_px", "sampling"})
    if path.suffix.lower() in PHOTO_SUFFIXES:  # a photo's detection (close-ups: a padded canvas too)
        knobs["photo_pad"] = faces.PHOTO_PAD
        knobs["photo_path"] = 3  # 3: decoded by OpenCV, the canvas's detection preferred, surer score kept
    elif settings.reuse_track_embeddings:  # a video's faces skipped by the recognizer (framepipe.tracking)
        knobs["tracking"] = [2, tracking.LINK_IOU, tracking.NEAR_IOU, tracking.AGREE, tracking.REFRESH,
                             tracking.SEGMENT]
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
    for j in grouping.within_video_joins(registry.in_memory_index(pd.DataFrame(rows), settings.people_max_distance,
                                                                                    settings.models)):
        joins[j.video_id] = joins.get(j.video_id, 0) + len(j.person_ids) - 1
        if verbose:
            print(f"  join: {j.video_id} persons {j.person_ids} -> global person {j.global_person_id}")
    return joins


def load(settings: Settings, fresh: bool = False) -> list[tuple[str, dict, state.VideoState]]:
    """(key, ground truth, analysed state) of every labelled shared video."""
    gt = {**json.loads((SHARED / "media/ground_truth.json").read_text()),
          **json.loads((SHARED / "media/ground_truth_multishot.json").read_text()), **MORE}
    loaded: list[LocalAnalyzer] = []

    def analyzer() -> LocalAnalyzer:  # the models only when something is not cached
        if not loaded:
            loaded.append(LocalAnalyzer.load(settings))
        return loaded[0]

    return [(key, truth, analysed(key, SHARED / "media" / key, settings, analyzer, fresh))
            for key, truth in gt.items() if key.startswith("videos/") and truth.get("accept")]


def evaluate(videos, settings: Settings, verbose: bool = False) -> pd.DataFrame:
    """One row per video: its half, people expected and found, F1, purity, persons per identity, shots,
    within-video joins."""
    rows, table = [], []
    for key, truth, st in videos:
        reps = st.picks.pick()
        t0 = time.perf_counter()
        red = state.reduce(st.people, reps, st.frames_sampled, settings)
        reduce_ms = (time.perf_counter() - t0) * 1000
        spans = identity_spans(truth, st.picks.picker.start_s + st.picks.picker.duration_s)
        second = second_faces(truth, red.people, settings)
        scored = [p for p in red.people if p.person_id not in second]
        s = score([(p.seen_s, p.best.pts_s) for p in scored], spans, wide_shots(key), dont_care(truth)) \
            if spans or truth["accept"] == [0, 0] else {"purity": np.nan, "f1": np.nan, "ppi": np.nan,
                                                          "identities": 0}
        shots = reps.shots
        rep_shots = [shots.shot_of(f.pts_s) for f in reps.frames]
        low, high = truth["accept"]
        n = len(red.people)
        for p in red.people:
            rows.append(person_row(key, p))
        table.append({"half": half(key), "video": key.removeprefix("videos/"), "exp": f"{low}-{high}", "found": n,
                      "in_range": low <= n <= high, "F1": round(s["f1"], 2), "purity": round(s["purity"], 3),
                      "ppi": round(s["ppi"], 2), "ids": s["identities"], "second": len(second), "shots": shots.count,
                      "rep/shot": max(map(rep_shots.count, set(rep_shots)), default=0),
                      "unlisted": red.unlisted_faces, "faces": red.faces_detected, "embedded": red.faces_embedded,
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


def second_faces(truth: dict, people: list, settings: Settings) -> set[int]:
    """A montage's persons that are none of its photos' labelled (central) people: the other faces those photos
    hold (the ground truth allows for them in its range and labels none). Left out of F1, purity and persons per
    identity, counted apart (``second``); a montage person is labelled when its best face is a shot photo's
    central face (cosine >= 0.7: the same picture, resized)."""
    if not truth.get("shots"):
        return set()
    from framepipe import calibration

    files = sorted({photo for shot in truth["shots"] for photo in shot})
    refs = []
    for _, path, _, st in every_input(settings, False, files):
        red = state.reduce(st.people, st.picks.pick(), st.frames_sampled, settings)
        if red.people:
            refs.append(red.people[calibration.central([p.best.face.bbox for p in red.people], LFW_SHAPE)]
                        .best.face.embedding)
    return {p.person_id for p in people if max((float(p.best.face.embedding @ e) for e in refs), default=0) < 0.7}


def person_row(key: str, p) -> dict:
    """A people-manifest row (the columns the registry reads) of one person of the bench."""
    return {"video_id": key, "source": key, "person_id": p.person_id, "embedding": p.mean_embedding,
            "embedding_model": "bench", "face_url": None, "frame_url": None, "timestamp_s": p.best.pts_s,
            "quality": p.best.face.quality, "seen_s": p.seen_s}


def summary(df: pd.DataFrame) -> str:
    """One line per half: videos in range, purity, persons per identity (pooled over identities), F1."""
    lines = []
    for name, part in [("tune", df[df["half"] == "tune"]), ("held", df[df["half"] == "held"]),
                       ("all", df[df["half"] != "new"]), ("new", df[df["half"] == "new"])]:
        ids = part["ids"].sum()
        pooled = (part["ppi"].fillna(0) * part["ids"]).sum() / ids if ids else float("nan")
        many = part[part["shots"] >= 10]
        lines.append(
            f"{name:4}: in range {int(part['in_range'].sum())}/{len(part)}; purity min {part['purity'].min():.3f} "
            f"mean {part['purity'].mean():.3f}; persons per identity {pooled:.3f} (worst video "
            f"{part['ppi'].max():.2f}); F1 mean {part['F1'].mean():.3f}; within-video joins {int(part['joins'].sum())}; "
            f"most representative frames of one shot where >= 10 shots: {int(many['rep/shot'].max()) if len(many) else '-'}"
            f"; recognizer on {int(part['embedded'].sum())} of {int(part['faces'].sum())} faces")
    return "\n".join(lines)


# ---- the registry level (bench/registry_level.py) ------------------------------------------------------------


def every_input(settings: Settings, fresh: bool, where: list[str]) -> list[tuple[str, Path, dict | None, state.VideoState]]:
    """(key, path, ground truth or None, analysed state) of every video and photo of these files and folders of
    ``../shared/media``."""
    truth = {**json.loads((SHARED / "media/ground_truth.json").read_text()),
             **json.loads((SHARED / "media/ground_truth_multishot.json").read_text()), **MORE}
    loaded: list[LocalAnalyzer] = []

    def analyzer() -> LocalAnalyzer:
        if not loaded:
            loaded.append(LocalAnalyzer.load(settings))
        return loaded[0]

    media = SHARED / "media"
    paths = sorted({p for w in where for p in ([media / w] if (media / w).is_file() else (media / w).rglob("*"))
                    if p.is_file() and (p.suffix.lower() in PHOTO_SUFFIXES or p.suffix.lower() == ".mp4")})
    out = []
    for path in paths:
        key = str(path.relative_to(media))
        cache_key = f"lfw_view2/{path.name}" if key.startswith("lfw_view2/") else key  # bench/lfw_view2.py's
        out.append((cache_key, path, truth.get(key), analysed(cache_key, path, settings, analyzer, fresh)))
    return out


LFW_SHAPE = (250, 250)  # every deep-funneled LFW photo


def lfw_photos(settings: Settings, fresh: bool = False) -> list[tuple[str, str, state.VideoState]]:
    """(photo key, person, analysed state) of every photo of ``photos/lfw/`` and ``photos/lfw_more``, each a
    one-frame input."""
    return [(key, path.parent.name, st) for key, path, _, st in every_input(settings, fresh,
                                                                            ["photos/lfw", "photos/lfw_more"])]


MONTAGE = "videos/composed/lfw_montage_{}_20people.mp4"
REGISTRY_SETS = {
    "montages a, b + photos/lfw": [MONTAGE.format("a"), MONTAGE.format("b"), "photos/lfw"],
    "montages a, d, e + photos/lfw, lfw_more": [MONTAGE.format(m) for m in "ade"] + ["photos/lfw", "photos/lfw_more"],
    "the whole shared folder (every video and photo, lfw_view2's too)": ["videos", "photos", "lfw_view2/photos"],
}


def registry_level(settings: Settings, fresh: bool = False) -> dict:
    """The figures of :mod:`registry_level` for each set of inputs of ``REGISTRY_SETS``."""
    import registry_level as level  # bench/

    return {name: level.evaluate(every_input(settings, fresh, where), settings, person_row, pack_model(settings))
            for name, where in REGISTRY_SETS.items()}


def pack_model(settings: Settings) -> str:
    from framepipe import calibration

    return calibration.pack_name(settings.models)


def main() -> int:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=str(SHARED / "models/buffalo_s_dq"))
    ap.add_argument("--fresh", action="store_true", help="re-analyse instead of using the cache")
    ap.add_argument("--registry", action="store_true", help="also the registry level (montages + LFW photos)")
    ap.add_argument("--verbose", action="store_true", help="print each person's seen_s")
    args = ap.parse_args()
    settings = Settings(models=args.models)
    videos = load(settings, args.fresh)
    df = evaluate(videos, settings, args.verbose)
    pd.set_option("display.width", 250)
    print(df.sort_values(["half", "video"]).to_string(index=False))
    print("\n" + summary(df))
    if args.registry:
        for name, figures in registry_level(settings, args.fresh).items():
            print(f"\nregistry over {name}:", json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
