"""The same person across videos: the clustering that seeds the person registry (:mod:`framepipe.people.registry`).

Each video's people carry the mean of their face embeddings (``people`` manifest). Those embeddings are
clustered over the whole destination by average-linkage agglomerative clustering on cosine similarity under a
:class:`JoinRule`: two groups join while the mean similarity between their members reaches a bar that falls with
the evidence (two single photos need far more than a photo against the twelve others of its person). Average
linkage does not chain the way single linkage (or DBSCAN) does, so one ambiguous face cannot bridge two people.
Two people of one video that the per-video step kept apart are not joined unless they are far more alike than a
match, and never when seen at the same time. Embeddings of different models are never compared (each model has
its own registry).

:func:`seed_groups` seeds an empty person registry (:meth:`framepipe.people.model_registry.Registry.update`);
after that, new people are attached to the registry's persons through its vector index, under the same rule, and
ids never change. :func:`within_video_joins` and :func:`summary` read the people index the registry writes.

Scale: the pairwise similarities are held in memory for one connected part of the graph of people within the
match threshold of each other at a time (:func:`neighbour_parts`, found through the people's sign bits), so memory
grows with the square of the largest part (a few people per recurring identity), not of everyone. A part over
``people_max_count`` people (a chain of look-alikes) is not clustered: its people are attached one by one through
the registry's vector index instead.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from framepipe import clustering
from framepipe.errors import ErrorCode, FramepipeError


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


LOOKALIKE_MARGIN = 0.05  # a person joins its nearest global person only this much (average similarity) over the next


@dataclass(frozen=True)
class JoinRule:
    """When two groups of people (across videos and photos) are one person.

    * They must be linked by a chain of pairs at ``match`` or more (the graph whose connected parts
      :func:`neighbour_parts` finds), and
    * the average similarity of their members, pair by pair, must reach a bar that falls with the evidence: two
      single people need ``single``; groups of ``a`` and ``b`` people ``typical + (single - typical) / sqrt(a *
      b)`` (the mean of a * b pairs of two different people strays from their typical similarity that much less),
      never under ``floor``. In a registry of thousands of people, two single photos are where look-alikes meet
      by chance: one pair at the match threshold is no longer rare there, while a group's average is; a person's
      odd photo (another decade, a profile) joins the many others of that person on their average.
    * Two people of one input were kept apart by the per-video step, which compared their whole tracks: they join
      only from ``same_input``, and never when seen at the same time.
    * ``margin``: the look-alike guard of an attach (:meth:`framepipe.people.model_registry.Registry.update`): a
      person whose nearest global person is not this much closer than the next one is not joined on that alone
      (face identification's ratio test): it then needs ``single``, the bar of the strongest evidence.
    """
    match: float
    floor: float
    single: float
    typical: float
    same_input: float
    margin: float = LOOKALIKE_MARGIN

    @classmethod
    def fixed(cls, max_distance: float) -> "JoinRule":
        """One threshold for every join, whatever the groups' sizes, and no look-alike guard (an explicit
        distance given to :meth:`Registry.update <framepipe.people.model_registry.Registry.update>`, tests)."""
        s = 1.0 - max_distance
        return cls(s, s, s, s, s, 0.0)

    @classmethod
    def calibrated(cls, cal, max_distance: float | None = None) -> "JoinRule":
        """From a pack's :class:`~framepipe.calibration.Calibration`: ``match`` its match similarity (or ``1 -
        max_distance`` when given), ``floor`` its group similarity (1 in 10,000 pairs of different people; the
        match similarity where not measured), ``single`` and ``same_input`` the similarity of 2-4-photo centroids
        of different people (``set_match_similarity``), ``typical`` the median of different people's pairs."""
        match = cal.match_similarity if max_distance is None else 1.0 - max_distance
        strict = max(match, cal.set_match_similarity)
        known = lambda v, default: v if v == v else default  # noqa: E731 - NaN: not measured
        return cls(match, min(known(cal.group_similarity, match), match), strict,
                   min(known(cal.impostor_median, 0.0), match), strict)

    @property
    def max_distance(self) -> float:
        """The graph's threshold as a cosine distance: every join lies within a part of it."""
        return 1.0 - self.match

    def similarity(self, a, b) -> np.ndarray:
        """The average similarity groups of ``a`` and ``b`` people need to be one person."""
        bar = self.typical + (self.single - self.typical) / np.sqrt(np.asarray(a, np.float64) * np.asarray(b))
        return np.maximum(bar, self.floor)

    def limit(self, a, b) -> np.ndarray:
        return 1.0 - self.similarity(a, b)


def seen_together(seen_a, seen_b) -> bool:
    """Whether two people of one input were on screen at the same time (their ``seen_s``; None: not known)."""
    return seen_a is not None and seen_b is not None and bool(set(seen_a) & set(seen_b))


def kept_apart(part: pd.DataFrame, sim: np.ndarray, rule: JoinRule) -> np.ndarray:
    """Pairs (boolean n x n) of people the per-video step kept apart (``sim``: their similarities): two people of
    one input seen at the same time (always), or less alike than ``rule.same_input``."""
    n = len(part)
    _, video = np.unique(part["video_id"].to_numpy(), return_inverse=True)
    if video.max(initial=-1) + 1 == n:
        return np.zeros((n, n), dtype=bool)
    same = video[:, None] == video[None, :]
    cannot = same & (sim < rule.same_input)
    seen = part["seen_s"].to_numpy() if "seen_s" in part else None
    if seen is not None:
        for i, j in zip(*np.nonzero(np.triu(same & ~cannot, 1))):
            if seen_together(seen[i], seen[j]):
                cannot[i, j] = True  # two people, however alike
    cannot |= cannot.T
    np.fill_diagonal(cannot, False)
    return cannot


def group_part(emb: np.ndarray, part: pd.DataFrame, rule: JoinRule) -> np.ndarray:
    """Labels (0.., by first appearance) of one connected part's people: average linkage under ``rule`` (each
    pair of groups against the bar of its sizes), never across a pair the per-video step kept apart."""
    if len(emb) == 1:
        return np.zeros(1, dtype=np.int64)
    sim = emb.astype(np.float64) @ emb.T.astype(np.float64)
    cannot = kept_apart(part, sim, rule)
    group = clustering.linkage_on(np.subtract(1.0, sim, out=sim), cannot, 1.0, None, rule.limit)
    order: dict[int, int] = {}
    return np.array([order.setdefault(int(g), len(order)) for g in group])


CHUNK = 65_536  # rows of a first build's temporaries at once


def seed_groups(new: pd.DataFrame, rule: JoinRule, max_group: int | None) -> tuple[np.ndarray, np.ndarray]:
    """An empty registry's groups of the people rows ``new`` (``embedding``, ``video_id``, ``seen_s``): the graph
    of people within ``rule.max_distance`` of each other (each person's nearest by sign bits), then, inside each
    connected part of it, :func:`group_part`. Returns (a group label per row, -1 for the rows of a part over
    ``max_group`` people, to be attached one by one; the rows' unit embeddings)."""
    column = new["embedding"]
    candidates = None  # each person's nearest by signature, found before the embeddings' matrix is made:
    if len(new) > EXACT_UP_TO:  # the two never in memory together
        candidates = nearest_by_bits(np.concatenate([
            sign_bits(np.stack(column.iloc[i:i + CHUNK].to_numpy()))
            for i in range(0, len(new), CHUNK)]))
    # one matrix of the unit embeddings: memory of one copy
    emb = np.stack([np.asarray(e, np.float32) for e in column])
    norms = np.maximum(np.sqrt(np.einsum("ij,ij->i", emb, emb)), 1e-12).astype(np.float32)  # no n x d temporary
    emb /= norms[:, None]
    parts = neighbour_parts(emb, rule.max_distance, candidates)
    del candidates
    labels = np.full(len(new), -1, dtype=np.int64)
    light = new[[c for c in ("video_id", "seen_s") if c in new]]  # what the cannot-links read: a part's rows
    left = []
    next_label = 0
    for members in parts:
        if max_group is not None and len(members) > max_group:
            left.append(members)
            continue
        sub = group_part(emb[members], light.iloc[members], rule)
        labels[members] = sub + next_label
        next_label += int(sub.max()) + 1
    del parts
    return labels, emb


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
