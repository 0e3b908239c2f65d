"""The same person across videos: the clustering that seeds the person registry (:mod:`framepipe.people.registry`).

Each video's people carry the mean of their face embeddings (``people`` manifest). Those embeddings are
clustered over the whole destination by average-linkage agglomerative clustering on cosine distance: two
groups join while the mean distance between their members is below ``people_max_distance``. Average linkage
does not chain the way single linkage (or DBSCAN) does, so one ambiguous face cannot bridge two people. Two
people of one video seen at the same time are never one global person (a cluster holding such a pair is clustered
again with that cannot-link, as the per-video pass does).
Embeddings of different models are never compared (each model has its own registry).

:func:`cluster_embeddings` and :func:`split_co_occurring` seed an empty person registry
(:meth:`framepipe.people.model_registry.Registry.update`); after that, new people are attached to the registry's persons through
its vector index and ids never change. :func:`within_video_joins` and :func:`summary` read the people index the
registry writes.

Scale: the pairwise distances are held in memory for one connected part of the graph of people within the
threshold of each other at a time (:func:`neighbour_parts`, found through the people's sign bits), so memory grows
with the square of the largest part (a few people per recurring identity), not of everyone. A part over
``people_max_count`` people (a chain of look-alikes) is not clustered: its people are attached one by one through
the registry's vector index instead.
"""

from __future__ import annotations

import os
import sys
from typing import NamedTuple

import numpy as np
import pandas as pd

from framepipe import clustering
from framepipe.errors import ErrorCode, FramepipeError


def cluster_embeddings(embeddings: np.ndarray, max_distance: float) -> np.ndarray:
    """Cluster labels (0..k-1, in order of first appearance) of embeddings (n x d), by cosine distance."""
    if len(embeddings) < 2:
        return np.zeros(len(embeddings), dtype=int)
    from scipy.cluster.hierarchy import fcluster, linkage  # here: scipy's import is 0.4 s of a small update

    tree = linkage(embeddings.astype(np.float64), method="average", metric="cosine")
    raw = fcluster(tree, t=max_distance, criterion="distance")
    order: dict[int, int] = {}
    return np.array([order.setdefault(int(lab), len(order)) for lab in raw])


EXACT_UP_TO = 2000  # people: up to this, the graph is computed exactly (one matrix product)
# above: each person's nearest by sign bits (512-bit signatures, Hamming distance) from an HNSW index (usearch),
# and from NNDESCENT_FROM people on, from NN-descent (pynndescent), whose ~25 s of JIT compilation pays off there
# (docs/scale.md: recall, time and memory of both measured against exact search)
GRAPH_CONNECTIVITY, GRAPH_EXPANSION_ADD, GRAPH_EXPANSION_SEARCH, GRAPH_NEIGHBOURS = 32, 128, 128, 32
NNDESCENT_FROM = 100_000
NNDESCENT_NEIGHBOURS, NNDESCENT_TREES, NNDESCENT_ITERATIONS, NNDESCENT_DELTA = 64, 24, 40, 1e-5


def sign_bits(embeddings: np.ndarray) -> np.ndarray:
    """The people's signatures: one bit a dimension, set where the embedding is positive (64 bytes for 512-d). Two
    signatures' Hamming distance follows the angle between the embeddings (random-hyperplane hashing, here with
    the embedding's own axes)."""
    return np.packbits(np.asarray(embeddings) > 0, axis=1)


def nearest_by_bits(bits: np.ndarray) -> np.ndarray:
    """(n, k) row indices of each person's nearest by signature (-1 where fewer were found): HNSW below
    ``NNDESCENT_FROM`` people, NN-descent from there on."""
    return (hnsw_neighbours if len(bits) < NNDESCENT_FROM else nndescent_neighbours)(bits)


def hnsw_neighbours(bits: np.ndarray, k: int = GRAPH_NEIGHBOURS) -> np.ndarray:
    """Each person's ``k`` nearest signatures from an HNSW index of them (usearch, Hamming on 1-bit dimensions: the
    index of 400,000 people, 64 bytes each, stays in the processor's cache where an int8 one does not)."""
    from usearch.index import Index

    n = len(bits)
    index = Index(ndim=bits.shape[1] * 8, metric="hamming", dtype="b1", connectivity=GRAPH_CONNECTIVITY,
                  expansion_add=GRAPH_EXPANSION_ADD, expansion_search=GRAPH_EXPANSION_SEARCH)
    index.add(np.arange(n, dtype=np.uint64), bits)
    found = index.search(bits, min(k, n))
    keys = found.keys.astype(np.int64)
    keys[np.arange(keys.shape[1])[None, :] >= np.asarray(found.counts)[:, None]] = -1
    return keys


def nndescent_neighbours(bits: np.ndarray, k: int = NNDESCENT_NEIGHBOURS) -> np.ndarray:
    """Each person's ``k`` nearest signatures from NN-descent (pynndescent, the library behind UMAP's graphs):
    random-projection trees, then rounds of "a neighbour's neighbour is likely a neighbour" until fewer than
    ``NNDESCENT_DELTA`` of the entries change. At 400,000 people 3x faster than the HNSW index for the same recall
    (whose cost per person doubles from 40,000 to 400,000 people, as it outgrows the caches). It runs in a process
    of its own, which compiles it (numba, ~25 s) and gives back at its end the memory that compiling and NN-descent's
    buffers hold (~0.6 GB stayed in the caller's process, on top of its later peak)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="framepipe-graph-") as tmp:
        np.save(f"{tmp}/bits.npy", bits)
        done = subprocess.run([sys.executable, "-m", "framepipe.people.grouping", tmp, str(k)])
        if done.returncode:  # killed (memory?) or failed: its own output says why
            raise FramepipeError.with_code(ErrorCode.INTERNAL_ERROR,
                                           f"the neighbour graph's process failed (exit {done.returncode})")
        return np.load(f"{tmp}/keys.npy")


def _nndescent(bits: np.ndarray, k: int) -> np.ndarray:
    from pynndescent import NNDescent

    graph = NNDescent(bits, metric="bit_hamming", n_neighbors=min(k, len(bits) - 1), max_candidates=k,
                      n_trees=NNDESCENT_TREES, n_iters=NNDESCENT_ITERATIONS, delta=NNDESCENT_DELTA,
                      low_memory=True, n_jobs=len(os.sched_getaffinity(0)))
    return graph.neighbor_graph[0]


def neighbour_parts(embeddings: np.ndarray, max_distance: float, candidates: np.ndarray | None = None
                    ) -> list[np.ndarray]:
    """The connected parts (row indices, each sorted) of the graph joining people within ``max_distance`` (cosine)
    of each other. Average linkage never joins two people with no chain of such pairs between them, so clustering
    each part alone gives the same groups as clustering everyone, in memory of the largest part instead of
    everyone squared, as far as every such pair is found.

    Up to ``EXACT_UP_TO`` people the graph is exact. Above, each person's nearest by signature (``candidates``: rows
    of :func:`nearest_by_bits`, found here when not given) are kept only where their exact cosine distance is
    within ``max_distance``, so the graph holds no pair too many, and misses a pair only where the approximate
    search missed it (recall in docs/scale.md). The number of candidates a person has bounds how many look-alikes
    one person may have for that to hold."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(embeddings)
    if n <= 1:
        return [np.arange(n)]
    if n <= EXACT_UP_TO:
        sim = embeddings @ embeddings.T
        rows, cols = np.nonzero(sim >= 1.0 - max_distance)
    else:
        rows, cols = _within(embeddings, max_distance,
                             nearest_by_bits(sign_bits(embeddings)) if candidates is None else candidates)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    order = np.argsort(label, kind="stable")
    bounds = np.flatnonzero(np.diff(label[order])) + 1
    return np.split(order, bounds)


def _within(embeddings: np.ndarray, max_distance: float, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the candidate pairs (``keys``: n x k rows, -1 for none) within ``max_distance``."""
    n, k = keys.shape
    valid = keys >= 0
    keys = np.where(valid, keys, 0)
    near = np.zeros(keys.shape, dtype=bool)
    for start in range(0, n, 2048):  # exact cosines of the candidates, a block of people at a time
        block = slice(start, start + 2048)
        sims = np.einsum("bd,bkd->bk", embeddings[block], embeddings[keys[block]])
        near[block] = valid[block] & (sims >= 1.0 - max_distance)
    return np.repeat(np.arange(n), k)[near.ravel()], keys.ravel()[near.ravel()]


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


CHUNK = 65_536  # rows of a first build's temporaries at once


def seed_groups(new: pd.DataFrame, max_distance: float, max_group: int | None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An empty registry's groups of the people rows ``new`` (``embedding``, ``video_id``, ``seen_s``): the graph
    of people within ``max_distance`` of each other (each person's nearest by sign bits), then, inside each
    connected part of it, average linkage with the cannot-links of people seen together. Returns (a group label
    per row, -1 for the rows of a part over ``max_group`` people, to be attached one by one; the rows' unit
    embeddings; their norms)."""
    column = new["embedding"]
    candidates = None  # each person's nearest by signature, found before the embeddings' matrix is made:
    if len(new) > EXACT_UP_TO:  # the two never in memory together
        candidates = nearest_by_bits(np.concatenate([
            sign_bits(np.stack(column.iloc[i:i + CHUNK].to_numpy()))
            for i in range(0, len(new), CHUNK)]))
    # one matrix of the unit embeddings and their norms (the sums are of the raw ones): memory of one copy
    emb = np.stack([np.asarray(e, np.float32) for e in column])
    norms = np.maximum(np.sqrt(np.einsum("ij,ij->i", emb, emb)), 1e-12).astype(np.float32)  # no n x d temporary
    emb /= norms[:, None]
    parts = neighbour_parts(emb, max_distance, candidates)
    del candidates
    labels = np.full(len(new), -1, dtype=np.int64)
    light = new[[c for c in ("video_id", "seen_s") if c in new]]  # what the cannot-links read: a part's rows
    left = []
    next_label = 0
    for members in parts:
        if max_group is not None and len(members) > max_group:
            left.append(members)
            continue
        if len(members) == 1:
            sub = np.zeros(1, dtype=np.int64)
        else:
            part = light.iloc[members]
            sub = split_co_occurring(
                emb[members], cluster_embeddings(emb[members], max_distance), part, max_distance)
        labels[members] = sub + next_label
        next_label += int(sub.max()) + 1
    del parts
    return labels, emb, norms


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


if __name__ == "__main__":  # nndescent_neighbours' process: python -m framepipe.people.grouping FOLDER K
    np.save(f"{sys.argv[1]}/keys.npy", _nndescent(np.load(f"{sys.argv[1]}/bits.npy"), int(sys.argv[2])))
