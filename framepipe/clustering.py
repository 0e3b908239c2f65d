"""Grouping the faces of one video into people.

DBSCAN with the cosine metric on L2-normalised embeddings: each cluster is one person. The algorithm is
scikit-learn's ``DBSCAN(eps, min_samples, metric="cosine")`` label for label (tests/test_units.py checks it against
scikit-learn), written on numpy and ``scipy.sparse.csgraph`` because importing scikit-learn alone took 1.1-1.8 s of
every ``framepipe extract`` for this one call:

* neighbours: pairs whose cosine distance is at most ``eps`` (each face is its own neighbour);
* core faces: those with at least ``min_samples`` neighbours; clusters: connected components of the core faces;
* a non-core face next to a core face joins the cluster created first among its neighbours' (scikit-learn's
  expansion order), any other face is noise.

Faces seen once: DBSCAN marks a face with no neighbour within ``eps`` as noise. Such a face still becomes a
person of its own when its quality is at least ``singleton_min_quality`` (a clear, large, frontal face seen in a
single sample, as in a one-second appearance or a short clip), and is dropped otherwise (a stray false detection,
a blurred background face). A cluster of two or more faces is a person whatever its quality.
"""

from __future__ import annotations

import numpy as np

ROWS_PER_CHUNK = 1024  # distance rows computed at once: memory stays ~n x 1024 floats whatever the face count


def dbscan_cosine(embeddings: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    """DBSCAN labels (0.. in order of each cluster's first core face, -1 noise) of L2-normalised embeddings."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(embeddings)
    emb = np.asarray(embeddings, dtype=np.float64)
    rows, cols = [], []
    for start in range(0, n, ROWS_PER_CHUNK):
        dist = 1.0 - emb[start : start + ROWS_PER_CHUNK] @ emb.T
        r, c = np.nonzero(dist <= eps)
        rows.append(r + start)
        cols.append(c)
    r, c = np.concatenate(rows), np.concatenate(cols)
    r, c = np.concatenate([r, np.arange(n)]), np.concatenate([c, np.arange(n)])  # each point is its own neighbour
    adj = csr_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(n, n))
    adj.data[:] = 1  # duplicate (i, i) entries summed: back to 0/1
    core = np.asarray(adj.sum(axis=1)).ravel() >= min_samples
    labels = np.full(n, -1, dtype=np.int64)
    if not core.any():
        return labels
    core_idx = np.flatnonzero(core)
    _, comp = connected_components(adj[core_idx][:, core_idx], directed=False)
    # number the components in order of their first core face (scikit-learn's order)
    first = {}
    for i, k in zip(core_idx, comp):
        first.setdefault(int(k), len(first))
    labels[core_idx] = [first[int(k)] for k in comp]
    for i in np.flatnonzero(~core):  # border faces: the earliest-created cluster among their core neighbours
        neighbours = adj.indices[adj.indptr[i] : adj.indptr[i + 1]]
        near = labels[neighbours[core[neighbours]]]
        if len(near):
            labels[i] = int(near.min())
    return labels


def cluster_faces(
    embeddings: np.ndarray,
    qualities: np.ndarray,
    eps: float,
    min_samples: int,
    singleton_min_quality: float,
) -> np.ndarray:
    """Person label per face (0..P-1, ordered by first appearance), or -1 for a dropped face."""
    n = len(embeddings)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    raw = dbscan_cosine(embeddings, eps, min(min_samples, n))
    labels = raw.copy()
    next_label = int(raw.max()) + 1
    for i in np.flatnonzero(raw == -1):
        if qualities[i] >= singleton_min_quality:
            labels[i] = next_label
            next_label += 1
    # relabel 0..P-1 in order of first appearance (inputs come in time order)
    order = {}
    for lab in labels:
        if lab >= 0 and lab not in order:
            order[lab] = len(order)
    return np.array([order.get(lab, -1) for lab in labels], dtype=np.int64)
