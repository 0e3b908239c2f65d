"""The same person across videos: the clustering that seeds the person registry (:mod:`framepipe.registry`).

Each video's people carry the mean of their face embeddings (``people`` manifest). Those embeddings are
clustered over the whole destination by average-linkage agglomerative clustering on cosine distance: two
groups join while the mean distance between their members is below ``people_max_distance``. Average linkage
does not chain the way single linkage (or DBSCAN) does, so one ambiguous face cannot bridge two people. Two
people of one video seen at the same time are never one global person (a cluster holding such a pair is clustered
again with that cannot-link, as the per-video pass does).
Embeddings of different models are never compared (each model has its own registry).

:func:`cluster_embeddings` and :func:`split_co_occurring` seed an empty person registry
(:meth:`framepipe.registry.Registry.update`); after that, new people are attached to the registry's persons through
its vector index and ids never change. :func:`within_video_joins` and :func:`summary` read the people index the
registry writes.

Scale: the pairwise distances are held in memory for one connected part of the graph of people within the
threshold of each other at a time (:func:`neighbour_parts`, found through an HNSW index), so memory grows with the
square of the largest part (a few people per recurring identity), not of everyone. A part over
``people_max_count`` people (a chain of look-alikes) is not clustered: its people are attached one by one through
the registry's vector index instead.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from framepipe import clustering


def cluster_embeddings(embeddings: np.ndarray, max_distance: float) -> np.ndarray:
    """Cluster labels (0..k-1, in order of first appearance) of embeddings (n x d), by cosine distance."""
    if len(embeddings) < 2:
        return np.zeros(len(embeddings), dtype=int)
    from scipy.cluster.hierarchy import fcluster, linkage  # here: scipy's import is 0.4 s of a small update

    tree = linkage(embeddings.astype(np.float64), method="average", metric="cosine")
    raw = fcluster(tree, t=max_distance, criterion="distance")
    order: dict[int, int] = {}
    return np.array([order.setdefault(int(lab), len(order)) for lab in raw])


NEIGHBOURS = 16  # nearest neighbours asked of each person when the registry is first built
INT8_MARGIN = 0.05  # cosine distance added to the threshold when reading the int8 index's neighbours


def neighbour_parts(embeddings: np.ndarray, max_distance: float, k: int = NEIGHBOURS) -> list[np.ndarray]:
    """The connected parts (row indices, each sorted) of the graph joining people within ``max_distance`` (cosine)
    of each other, found through an HNSW index of them (usearch: each person's ``k`` nearest neighbours, in
    batches on every core). Average linkage never joins two people with no chain of such pairs between them, so
    clustering each part alone gives the same groups as clustering everyone, in memory of the largest part instead
    of everyone squared, as far as the index finds every such pair (exact up to 2,000 people; above, an HNSW
    search: see the recall below). ``k`` bounds how many look-alikes one person may have for that to hold."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(embeddings)
    if n <= 1:
        return [np.arange(n)]
    if n <= 2000:  # small: the exact graph
        sim = embeddings @ embeddings.T
        rows, cols = np.nonzero(sim >= 1.0 - max_distance)
    else:
        from usearch.index import Index

        # int8 vectors: only which pairs are near is asked of it (the parts are clustered on the exact embeddings),
        # at a quarter of f32's time. Approximate: on bench/destination_scale.py's people (isotropic 512-d, the
        # hardest case for a graph index) it finds every pair within the threshold at 20,000 people, 77% of them at
        # 100,000 (exact search: 87,167 parts, this graph 87,643: 0.5% more persons, recurring people split in two);
        # M 32 / ef_add 128 / ef 64 finds 99% at 2.5x the time (docs/scale.md)
        index = Index(ndim=embeddings.shape[1], metric="cos", dtype="i8", connectivity=16, expansion_add=64,
                      expansion_search=128)
        index.add(np.arange(n, dtype=np.uint64), embeddings)
        found = index.search(embeddings, min(k, n))
        near = found.distances <= max_distance + INT8_MARGIN  # int8 distances are rough: a pair too many only
        # makes a part larger (clustered on exact distances), a pair missed could split one
        rows = np.repeat(np.arange(n), near.shape[1])[near.ravel()]
        cols = found.keys.astype(np.int64).ravel()[near.ravel()]
        del index
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    order = np.argsort(label, kind="stable")
    bounds = np.flatnonzero(np.diff(label[order])) + 1
    return np.split(order, bounds)


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
    many = index.duplicated(["video_id", "global_person_id"], keep=False)  # vectorised: few rows are looked at
    joins = []
    for (vid, gid), group in index[many].groupby(["video_id", "global_person_id"], sort=True):
        joins.append(Join(str(vid), str(group["source"].iloc[0]), int(gid), sorted(map(int, group["person_id"]))))
    return joins


def summary(index: pd.DataFrame) -> pd.DataFrame:
    """One row per global person: how many videos and local people it joins (:func:`sources_of` says which)."""
    if index.empty:
        return pd.DataFrame(columns=["global_person_id", "videos", "people"])
    g = index.groupby("global_person_id")
    return pd.DataFrame({"videos": g["video_id"].nunique(), "people": g.size()}).reset_index(names="global_person_id")


def sources_of(index: pd.DataFrame, gids) -> dict[int, list[str]]:
    """The inputs (sorted) of these global persons."""
    rows = index[index["global_person_id"].isin(list(gids))]
    return {int(g): sorted(set(part["source"])) for g, part in rows.groupby("global_person_id")}