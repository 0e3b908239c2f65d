"""Grouping the faces of one video into people.

DBSCAN with the cosine metric on L2-normalised embeddings: each cluster is one person.

Faces seen once: DBSCAN marks a face with no neighbour within ``eps`` as noise. Such a face still becomes a
person of its own when its quality is at least ``singleton_min_quality`` (a clear, large, frontal face seen in a
single sample, as in a one-second appearance or a short clip), and is dropped otherwise (a stray false detection,
a blurred background face). A cluster of two or more faces is a person whatever its quality.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import DBSCAN


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
    raw = DBSCAN(eps=eps, min_samples=min(min_samples, n), metric="cosine").fit_predict(embeddings)
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
