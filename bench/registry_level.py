"""The person registry on the shared media, against the labels the media carry: wrong merges, splits, order.

Inputs are the people of videos and photos as the pipeline lists them (analyses cached as bench/quality.py's).
Labels: a labelled photo's central person is its folder's person (``photos/lfw``, ``photos/lfw_more``,
``photos/dlib_johns``, ``photos/face_recognition``; ``lfw_view2``'s photos by their file name); a montage person is
the person of a shot's photo when its best face is that photo's central face (cosine >= 0.7: the same picture,
resized). Every other person (other videos' people, the second faces of photos) is an input with no label.

Figures of one registry (built as ``framepipe people`` builds it: :func:`framepipe.people.registry.in_memory_index`):

* ``wrong_merges``: global persons whose labelled members hold two identities or more (the pairs named);
* ``global_per_identity``: global persons per labelled identity (1.0: no split); ``purity``: members whose identity
  is their global person's majority identity;
* ``order``: the same people attached input by input in a shuffled order (the registry's incremental updates)
  against the batch build: the share of labelled member pairs that one puts together and the other apart, and the
  incremental build's own figures.
"""

from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from framepipe import calibration, state
from framepipe.config import Settings
from framepipe.people import registry

LABELLED_FOLDERS = ("lfw", "lfw_more", "dlib_johns", "face_recognition")
REF_MATCH = 0.7  # a montage person's best face this close to a shot photo's central face: that photo's person


ALIASES = {"joe_biden": "joseph_biden",  # photos/face_recognition's folder and LFW's name of one man
           "hasan_wirayuda": "hassan_wirajuda"}  # LFW holds this man under two spellings


def identity(name: str) -> str:
    name = name.lower().replace("-", "_")
    return ALIASES.get(name, name)


def photo_label(key: str) -> str | None:
    """The person a photo's central face is, from where it lies (None: a group photo, an unlabelled folder)."""
    parts = key.split("/")
    if parts[0] == "lfw_view2":
        return identity(Path(parts[-1]).stem.rsplit("_", 1)[0])
    if parts[0] == "photos" and len(parts) == 4 and parts[1] in LABELLED_FOLDERS and parts[2] != "groups":
        return identity(parts[2])
    return None


def people_rows(inputs, settings: Settings, person_row) -> tuple[pd.DataFrame, list]:
    """(people rows of every input, their labels). ``inputs``: (key, path, truth or None, analysed state)."""
    rows, labels, central_of, montages = [], [], {}, []
    for key, path, truth, st in inputs:
        red = state.reduce(st.people, st.picks.pick(), st.frames_sampled, settings)
        if not red.people:
            continue
        if truth is not None and truth.get("shots"):
            montages.append((key, truth, red))
            continue
        label = photo_label(key) if st.frames_sampled == 1 else None
        central = None
        if label is not None:
            shape = cv2.imread(str(path)).shape
            central = red.people[calibration.central([p.best.face.bbox for p in red.people], shape)]
            central_of[key.removeprefix("photos/")] = (label, central.best.face.embedding)
        for p in red.people:
            rows.append(person_row(key, p))
            labels.append(label if p is central else None)
    for key, truth, red in montages:
        shown = {photo.removeprefix("photos/") for shot in truth["shots"] for photo in shot}
        refs = [central_of[p] for p in sorted(shown) if p in central_of]
        for p in red.people:
            rows.append(person_row(key, p))
            best = max(((float(p.best.face.embedding @ e), who) for who, e in refs), default=(0.0, None))
            labels.append(best[1] if best[0] >= REF_MATCH else None)
    return pd.DataFrame(rows), labels


def figures(index: pd.DataFrame, people: pd.DataFrame, labels: list) -> dict:
    index = index.merge(pd.DataFrame({"video_id": people["video_id"], "person_id": people["person_id"],
                                      "identity": labels}), on=["video_id", "person_id"])
    labelled = index.dropna(subset=["identity"])
    held = labelled.groupby("global_person_id")["identity"].agg(lambda s: sorted(set(s)))
    wrong = {int(g): ids for g, ids in held.items() if len(ids) > 1}
    majority = labelled.groupby("global_person_id")["identity"].agg(lambda s: s.value_counts().index[0])
    per_identity = labelled.groupby("identity")["global_person_id"].nunique()
    return {"inputs": int(people["video_id"].nunique()), "people": len(people), "labelled": len(labelled),
            "identities": int(per_identity.size), "global_persons": int(index["global_person_id"].nunique()),
            "wrong_merges": len(wrong), "merged": [" + ".join(ids) for ids in wrong.values()],
            "purity": round(float((labelled["identity"] == labelled["global_person_id"].map(majority)).mean()), 4),
            "global_per_identity": round(float(per_identity.mean()), 3),
            "split_identities": int((per_identity > 1).sum())}


def incremental_index(people: pd.DataFrame, rule: registry.JoinRule, seed: int = 0) -> pd.DataFrame:
    """The registry built input by input (one update per input, inputs shuffled): what a destination's registry
    is after ``framepipe people`` ran after every new video."""
    [(name, dim, part)] = registry.models_of(people)
    reg = registry.Registry.empty(name, dim)
    videos = sorted(part["video_id"].unique())
    random.Random(seed).shuffle(videos)
    for v in videos:
        reg.update(part[part["video_id"] == v], rule, partial=True)
    return registry.index_table([reg]).to_pandas()


def disagreement(a: pd.DataFrame, b: pd.DataFrame, people: pd.DataFrame, labels: list) -> float:
    """Share of labelled member pairs that one index puts in one global person and the other does not."""
    keys = [(v, int(p)) for v, p, lab in zip(people["video_id"], people["person_id"], labels) if lab is not None]
    ga = dict(zip(zip(a["video_id"], a["person_id"].astype(int)), a["global_person_id"]))
    gb = dict(zip(zip(b["video_id"], b["person_id"].astype(int)), b["global_person_id"]))
    xa, xb = np.array([ga[k] for k in keys]), np.array([gb[k] for k in keys])
    same_a, same_b = xa[:, None] == xa[None, :], xb[:, None] == xb[None, :]
    upper = np.triu(np.ones_like(same_a), 1)
    return float(((same_a != same_b) & upper).sum() / max(upper.sum(), 1))


def evaluate(inputs, settings: Settings, person_row, model: str, order: bool = True) -> dict:
    people, labels = people_rows(inputs, settings, person_row)
    people["embedding_model"] = model
    rule = registry.join_rule(settings.people_max_distance, model, len(people["embedding"].iloc[0]), settings.models)
    batch = registry.in_memory_index(people, settings.people_max_distance, settings.models)
    out = figures(batch, people, labels)
    if order:
        step = incremental_index(people, rule)
        out["order"] = {"pairs_differing": round(disagreement(batch, step, people, labels), 5),
                        **{k: v for k, v in figures(step, people, labels).items()
                           if k in ("global_persons", "wrong_merges", "merged", "purity", "global_per_identity")}}
    return out

