"""The same person across videos: the clustering that seeds the person registry (:mod:`framepipe.registry`).

Each video's people carry the mean of their face embeddings (``people`` manifest). Those embeddings are
clustered over the whole destination by average-linkage agglomerative clustering on cosine distance: two
groups join while the mean distance between their members is below ``people_max_distance``. Average linkage
does not chain the way single linkage (or DBSCAN) does, so one ambiguous face cannot bridge two people. Two
people of one video seen at the same time are never one global person (a cluster holding such a pair is clustered
again with that cannot-link, as the per-video pass does).
Embeddings of different models are never compared (each model is clustered on its own).

:func:`build` gives one row per (video, local person) (:data:`~framepipe.schema.PEOPLE_INDEX_SCHEMA`) with its
``global_person_id`` (numbered by first appearance) and its cosine similarity to that global person's mean
embedding. ``framepipe people`` uses it once, to seed an empty registry; after that, new people are attached to
the registry's persons through its vector index and ids never change.

Scale: the pairwise distances are held in memory, so time and memory grow with the square of the number of
people (16,000 people took 23 s and 1.6 GB on 2 cores). Over ``people_max_count`` people
(per embedding model) it refuses with a clear error rather than run out of memory; beyond that, an
approximate-nearest-neighbour index is the way: the registry seeds itself through its index instead.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy.cluster.hierarchy import fcluster, linkage

from framepipe import clustering, manifests, schema
from framepipe.errors import InputTooLarge
from framepipe.storage import Destination


def cluster_embeddings(embeddings: np.ndarray, max_distance: float) -> np.ndarray:
    """Cluster labels (0..k-1, in order of first appearance) of embeddings (n x d), by cosine distance."""
    if len(embeddings) < 2:
        return np.zeros(len(embeddings), dtype=int)
    tree = linkage(embeddings.astype(np.float64), method="average", metric="cosine")
    raw = fcluster(tree, t=max_distance, criterion="distance")
    order: dict[int, int] = {}
    return np.array([order.setdefault(int(lab), len(order)) for lab in raw])


def co_occurring(part: pd.DataFrame) -> np.ndarray:
    """Pairs (boolean n x n) of people of one video seen at the same time: two people, whatever their faces say."""
    n = len(part)
    cannot = np.zeros((n, n), dtype=bool)
    seen = [set(s) if s is not None and len(s) else set() for s in part.get("seen_s", pd.Series([None] * n))]
    videos = part["video_id"].to_numpy()
    for i in range(n):
        for j in range(i + 1, n):
            if videos[i] == videos[j] and seen[i] & seen[j]:
                cannot[i, j] = cannot[j, i] = True
    return cannot


def split_co_occurring(emb: np.ndarray, labels: np.ndarray, part: pd.DataFrame, max_distance: float) -> np.ndarray:
    """Clusters holding two people seen together in one video are clustered again with that cannot-link (average
    linkage, the same threshold): the per-video pass already knew they were two."""
    labels = labels.copy()
    next_label = int(labels.max()) + 1 if len(labels) else 0
    for lab in np.unique(labels):
        members = np.flatnonzero(labels == lab)
        if len(members) < 2 or part["video_id"].iloc[members].nunique() == len(members):
            continue
        cannot = co_occurring(part.iloc[members])
        if not cannot.any():
            continue
        sub = clustering.average_linkage(emb[members], cannot, max_distance)
        for k, g in enumerate(np.unique(sub)):
            if k:
                labels[members[sub == g]] = next_label
                next_label += 1
    order: dict[int, int] = {}
    return np.array([order.setdefault(int(lab), len(order)) for lab in labels])


def build(people: pd.DataFrame, max_distance: float, max_count: int | None = None) -> pd.DataFrame:
    """People rows (``manifests.load_people``) -> people-index rows, sorted by global id then source.
    Raises InputTooLarge when one embedding model has more than ``max_count`` people."""
    parts: list[pd.DataFrame] = []
    next_id = 0
    people = people.sort_values(["source", "person_id"], ignore_index=True)
    for model in sorted(people["embedding_model"].fillna("").unique()):
        group = people[people["embedding_model"].fillna("") == model]
        for dim in sorted({len(e) for e in group["embedding"]}):
            part = group[[len(e) == dim for e in group["embedding"]]]
            if max_count and len(part) > max_count:
                raise InputTooLarge(
                    f"{len(part)} people of model {model or '?'}: over the {max_count} that in-memory clustering "
                    "takes (FRAMEPIPE_PEOPLE_MAX_COUNT; memory grows with the square of the count)"
                )
            emb = np.stack([np.asarray(e, dtype=np.float32) for e in part["embedding"]])
            emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            labels = split_co_occurring(emb, cluster_embeddings(emb, max_distance), part, max_distance)
            similarity = np.empty(len(part), dtype=np.float32)
            for lab in range(int(labels.max()) + 1):
                members = labels == lab
                centre = emb[members].mean(axis=0)
                similarity[members] = emb[members] @ (centre / max(float(np.linalg.norm(centre)), 1e-12))
            parts.append(part.assign(global_person_id=labels + next_id, name=None, similarity=similarity.round(4),
                                     embedding_model=model or None, schema_version=schema.SCHEMA_VERSION))
            next_id += int(labels.max()) + 1
    rows = pd.concat(parts).sort_values("global_person_id", kind="stable") if parts else pd.DataFrame(
        columns=schema.PEOPLE_INDEX_SCHEMA.names)
    table = pa.Table.from_pandas(rows[schema.PEOPLE_INDEX_SCHEMA.names], schema=schema.PEOPLE_INDEX_SCHEMA,
                                 preserve_index=False)
    return table.to_pandas()


class Join(NamedTuple):
    video_id: str
    source: str
    global_person_id: int
    person_ids: list[int]


def within_video_joins(index: pd.DataFrame) -> list[Join]:
    """Global persons holding two or more persons of one video: the per-video pass split someone that the
    cross-video pass put back together (or the cross-video pass merged two people). Needs no ground truth."""
    if index.empty:
        return []
    joins = []
    for (vid, gid), group in index.groupby(["video_id", "global_person_id"], sort=True):
        if len(group) > 1:
            joins.append(Join(str(vid), str(group["source"].iloc[0]), int(gid), sorted(map(int, group["person_id"]))))
    return joins


def summary(index: pd.DataFrame) -> pd.DataFrame:
    """One row per global person: how many videos and local people it joins, and which videos."""
    if index.empty:
        return pd.DataFrame(columns=["global_person_id", "videos", "people", "sources"])
    g = index.groupby("global_person_id")
    return pd.DataFrame(
        {
            "videos": g["video_id"].nunique(),
            "people": g.size(),
            "sources": g["source"].agg(lambda s: sorted(set(s))),
        }
    ).reset_index()
