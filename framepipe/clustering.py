"""Grouping the faces of one video into people: tracks first, then tracks into people.

DBSCAN on single faces (framepipe 0.1) chained people together through near neighbours (three boys in similar
clothes became one person) and split one person whose pose changed between samples. Two facts of video are
used instead:

1. **Tracks (must-link).** A face in one sample and a face in the next sample of the same shot are one track when
   their boxes overlap (IoU >= ``link_min_iou``) and their embeddings agree (cosine distance <= ``link_max_distance``),
   matched one to one, best pairs first. A track follows a person through pose changes that no single pair of
   distant faces would bridge.
2. **Cannot-link.** Two faces in the same frame are two people: tracks that share a frame never join.

Tracks are then clustered by average linkage over their mean embeddings (cosine distance, each track weighted by
its number of faces): the two closest groups join while the mean distance between their tracks is at most
``max_distance`` (0.6, the threshold ``framepipe people`` uses across videos) and no cannot-link separates them
(a cannot-link is an infinite distance, which average linkage carries into every later merge). Average linkage
does not chain: one ambiguous face cannot bridge two people. It is also the rule ``framepipe people``
applies across videos, so the per-video pass does not leave joins for the cross-video pass to find.

Reliable tracks only: a track is clustered when one of its faces was detected with confidence >=
``track_min_det_score`` or has quality >= ``track_min_quality``. Tracks of blurred background faces and partial
faces at the frame's edges meet neither; their embeddings crowd together (low-quality faces of different people
look alike to the recognizer) and would otherwise bridge real people.

Faces seen once: a person made of a single face (one sample, no track, no group) is kept only when the face's
quality is at least ``singleton_min_quality`` (a clear, frontal face seen once, as in a one-second appearance);
any group of two or more faces is a person. People are numbered in order of first appearance.

Cost: a few milliseconds for hundreds of faces; the distances between tracks are held in memory (n x n floats,
tracks rather than faces), and each merge updates one row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Params:
    max_distance: float = 0.6  # average-linkage cosine distance between tracks of one person
    link_max_distance: float = 0.6  # cosine distance between faces of one track in consecutive samples
    link_min_iou: float = 0.1  # box overlap between faces of one track in consecutive samples
    singleton_min_quality: float = 0.45
    track_min_det_score: float = 0.7  # a track is clustered when one of its faces is detected this surely ...
    track_min_quality: float = 0.3  # ... or scores this quality


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box of ``a`` (n x 4) with every box of ``b`` (m x 4)."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def tracks(
    embeddings: np.ndarray, boxes: np.ndarray, sample: np.ndarray, shot: np.ndarray, params: Params
) -> np.ndarray:
    """Track label per face (0.., by first face). ``sample``: the position of each face's frame among all sampled
    frames; ``shot``: the frame's shot. Faces must come sorted by ``sample``."""
    n = len(embeddings)
    track = np.arange(n)
    starts = np.flatnonzero(np.r_[True, sample[1:] != sample[:-1]])
    frames = [np.arange(s, e) for s, e in zip(starts, np.r_[starts[1:], n])]
    for prev, cur in zip(frames, frames[1:]):
        if sample[cur[0]] != sample[prev[0]] + 1 or shot[cur[0]] != shot[prev[0]]:
            continue  # not the next sample, or a cut between them
        overlap = iou(boxes[prev], boxes[cur])
        dist = 1.0 - embeddings[prev] @ embeddings[cur].T
        ok = (overlap >= params.link_min_iou) & (dist <= params.link_max_distance)
        pairs = sorted(zip(*np.nonzero(ok)), key=lambda ij: dist[ij])
        used_p, used_c = set(), set()
        for i, j in pairs:  # one to one, closest embeddings first
            if i not in used_p and j not in used_c:
                used_p.add(i)
                used_c.add(j)
                track[cur[j]] = track[prev[i]]
    _, first = np.unique(track, return_inverse=True)
    return first


def average_linkage(
    means: np.ndarray, cannot: np.ndarray, max_distance: float, weights: np.ndarray | None = None
) -> np.ndarray:
    """Group label per row of ``means`` (L2-normalised): average linkage on cosine distance, stopping at
    ``max_distance``, never joining two groups with a ``cannot`` (boolean n x n) pair between them. ``weights``:
    how much each row counts in the averages (default 1 each)."""
    n = len(means)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    d = 1.0 - means.astype(np.float64) @ means.T.astype(np.float64)
    d[cannot] = np.inf
    np.fill_diagonal(d, np.inf)
    size = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64).copy()
    group = np.arange(n)
    alive = np.ones(n, dtype=bool)
    row_min, row_arg = d.min(axis=1), d.argmin(axis=1)
    while True:
        i = int(np.argmin(np.where(alive, row_min, np.inf)))
        if not alive[i] or row_min[i] > max_distance:
            break
        j = int(row_arg[i])
        merged = (size[i] * d[i] + size[j] * d[j]) / (size[i] + size[j])  # inf stays inf: cannot-links carry over
        d[i], d[:, i] = merged, merged
        d[j], d[:, j] = np.inf, np.inf
        d[i, i] = np.inf
        size[i] += size[j]
        alive[j] = False
        group[group == j] = i
        row_min[j] = np.inf
        stale = alive & ((row_arg == i) | (row_arg == j))
        stale[i] = True
        if stale.any():
            idx = np.flatnonzero(stale)
            row_min[idx], row_arg[idx] = d[idx].min(axis=1), d[idx].argmin(axis=1)
        closer = alive & (d[:, i] < row_min)
        row_min[closer], row_arg[closer] = d[closer, i], i
    return group


def cluster_faces(
    embeddings: np.ndarray,
    qualities: np.ndarray,
    det_scores: np.ndarray,
    boxes: np.ndarray,
    sample: np.ndarray,
    shot: np.ndarray,
    params: Params,
) -> np.ndarray:
    """Person label per face (0..P-1, ordered by first appearance), or -1 for a dropped face. Faces must come
    sorted by ``sample`` (see :func:`tracks`)."""
    n = len(embeddings)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    emb = np.asarray(embeddings, dtype=np.float32)
    track = tracks(emb, np.asarray(boxes, dtype=np.float64), sample, shot, params)
    t = int(track.max()) + 1
    sums = np.zeros((t, emb.shape[1]), dtype=np.float64)
    np.add.at(sums, track, emb)
    means = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    # cannot-link: tracks with faces in the same frame
    cannot = np.zeros((t, t), dtype=bool)
    starts = np.flatnonzero(np.r_[True, sample[1:] != sample[:-1]])
    for s, e in zip(starts, np.r_[starts[1:], n]):
        if e - s > 1:
            ts = track[s:e]
            cannot[np.ix_(ts, ts)] = True
    np.fill_diagonal(cannot, False)
    # reliable tracks: one face detected surely or of fair quality (not only blurred, partial, stray detections)
    best_det, best_q = np.zeros(t), np.zeros(t)
    np.maximum.at(best_det, track, det_scores)
    np.maximum.at(best_q, track, qualities)
    reliable = (best_det >= params.track_min_det_score) | (best_q >= params.track_min_quality)
    keep = np.flatnonzero(reliable)
    group = np.full(t, -1, dtype=np.int64)
    faces = np.bincount(track, minlength=t)
    group[keep] = keep[average_linkage(means[keep], cannot[np.ix_(keep, keep)], params.max_distance, faces[keep])]
    labels = np.full(n, -1, dtype=np.int64)
    order: dict[int, int] = {}
    face_group = group[track]
    counts = np.bincount(face_group[face_group >= 0], minlength=t)
    for i, g in enumerate(face_group):
        if g >= 0 and (counts[g] > 1 or qualities[i] >= params.singleton_min_quality):
            labels[i] = order.setdefault(int(g), len(order))
    return labels
