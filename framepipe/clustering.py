"""Grouping the faces of one video into people: tracks first, then tracks into people.

The one grouping of every front door (the CLI, the Ray backfill's both layouts, Serve: :mod:`framepipe.state`).
What the field does for video face clustering, and what is used of it here:

1. **Tracks (must-link).** A face in one sample and a face in the next sample of the same shot are one track when
   their boxes overlap (IoU >= ``track_min_iou``) and their embeddings agree (cosine distance <=
   ``track_max_distance``), matched one to one, best pairs first. A track follows a person through pose changes
   that no single pair of distant faces would bridge.
2. **Cannot-link.** Two faces in the same frame are two people: tracks that share a frame never join.
3. **Quality-aware aggregation.** A track's embedding is the mean of its faces' embeddings weighted by the square
   of their quality score (:mod:`framepipe.faces`): its sharp frontal faces speak for it, its blurred ones barely.
4. **Thresholds that belong to the model and to the faces.** The distances come from the model pack's calibration
   (:mod:`framepipe.calibration`: ``cluster_max_distance`` is where 1 in 1,000 pairs of different people's photos
   would join, ``track_max_distance`` 1 in 100). Two clear faces are held to ``cluster_max_distance``; two poor
   ones (blur, profile, old low-resolution TV) to ``track_max_distance``, linearly between (:func:`pair_threshold`):
   on the labelled footage (bench/quality.py, tune half) one person's poor faces fall to cosine 0.2-0.4 while two
   people's poor faces stay under 0.2, so one threshold for all either splits every TV cast member or merges
   look-alikes in clear photos.
5. **Average linkage** of the reliable tracks on those distances (each pair's distance in units of its own
   threshold; a cannot-link is an infinite distance, which average linkage carries into every later merge). It
   does not chain: one ambiguous face cannot bridge two people.
6. **Weak faces attach or are counted.** A track too weak to seed a person (no face detected with confidence >=
   ``track_min_det_score`` nor of quality >= ``track_min_quality``: blurred background faces, partial faces at the
   frame's edges) joins the person whose centroid it matches within ``cluster_max_distance`` by a margin over the
   next person, else it is not a person: its faces are counted (``faces_unlisted``), not listed.
7. **Who is listed.** A group is a person when one of its faces is clear enough to identify (quality >=
   ``singleton_min_quality``) or it is seen in at least ``weak_min_samples`` samples; and not when it is a
   background face: seen in one shot only and always smaller than ``background_max_ratio`` of the largest face of
   its frames (a passer-by behind the subject). People are numbered in order of first appearance.
8. **A one-frame input (a photo)** is a user's reference, not a stream of samples: every face detected surely
   (``track_min_det_score``) or clear enough to identify is a person, a smaller face beside a larger one included
   (the rule of 7 judges a face by the many samples a video gives it).

Measured (bench/quality.py, buffalo_s_dq, both halves of the labelled videos): see docs/people.md.

Cost: a few milliseconds for hundreds of faces; the distances between tracks are held in memory (n x n floats,
tracks rather than faces), and each merge updates one row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from framepipe import calibration
from framepipe.config import Settings


# the algorithm's own constants, not settings (tuned by bench/tune_clustering.py on the labelled footage's tune
# half; a done marker does not hash them, so changing one is a new version of the code, not a setting)
WEAK_MIN_SAMPLES = 3  # a person needs one face clear enough to identify, or to be seen in this many samples
CLEAN_QUALITY, POOR_QUALITY = 0.6, 0.5  # pairs of faces this good: cluster_max_distance; this poor: track_max_distance
ATTACH_MARGIN = 0.1  # a weak track joins a person only this much (cosine) closer than the next one
BACKGROUND_MAX_RATIO = 0.8  # one shot, always this much smaller than the frame's largest face: background


@dataclass(frozen=True)
class Params:
    """What the clustering reads: the settings by their :class:`~framepipe.config.Settings` names
    (:meth:`from_settings`, which alone knows their defaults), then the algorithm's constants (above)."""
    cluster_max_distance: float  # average-linkage cosine distance between tracks of one person
    track_max_distance: float  # cosine distance between faces of one track in consecutive samples
    track_min_iou: float  # box overlap between faces of one track in consecutive samples
    singleton_min_quality: float  # a person needs one face this clear ...
    track_min_det_score: float  # a track seeds a person when one of its faces is detected this surely ...
    track_min_quality: float  # ... or scores this quality
    weak_min_samples: int = WEAK_MIN_SAMPLES
    clean_quality: float = CLEAN_QUALITY
    poor_quality: float = POOR_QUALITY
    attach_margin: float = ATTACH_MARGIN
    background_max_ratio: float = BACKGROUND_MAX_RATIO

    @classmethod
    def from_settings(cls, settings: Settings, dim: int | None = None) -> "Params":
        """From the settings; the two distances from the model pack's calibration (``dim``: the embeddings'
        size) unless set explicitly."""
        cal = calibration.lookup(None, dim, settings.models)
        return cls(
            cluster_max_distance=settings.cluster_max_distance or cal.match_distance,
            track_max_distance=settings.track_max_distance or cal.link_distance,
            track_min_iou=settings.track_min_iou,
            singleton_min_quality=settings.singleton_min_quality,
            track_min_det_score=settings.track_min_det_score,
            track_min_quality=settings.track_min_quality,
        )


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
        ok = (overlap >= params.track_min_iou) & (dist <= params.track_max_distance)
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
    d = 1.0 - means.astype(np.float64) @ means.T.astype(np.float64)
    return linkage_on(d, cannot, max_distance, weights)


def linkage_on(
    d: np.ndarray, cannot: np.ndarray, max_distance: float, weights: np.ndarray | None = None, limit=None
) -> np.ndarray:
    """Average linkage on a distance matrix ``d`` (n x n; changed in place), stopping at ``max_distance``, never
    across a ``cannot`` pair. ``limit(a, b)``: the distance two groups of these sizes (arrays) may be apart to join,
    when it depends on their sizes (the pair of groups nearest in units of their own limit joins first, while
    that is at most ``max_distance`` units)."""
    n = len(d)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    d[cannot] = np.inf
    np.fill_diagonal(d, np.inf)
    size = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64).copy()
    group = np.arange(n)
    alive = np.ones(n, dtype=bool)

    def scaled(rows: np.ndarray) -> np.ndarray:  # the rows' distances in units of each pair's limit
        return d[rows] if limit is None else d[rows] / limit(size[rows][:, None], size[None, :])

    row_min, row_arg = np.full(n, np.inf), np.zeros(n, dtype=np.int64)
    for start in range(0, n, 1024):
        rows = np.arange(start, min(start + 1024, n))
        part = scaled(rows)
        row_min[rows], row_arg[rows] = part.min(axis=1), part.argmin(axis=1)
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
            part = scaled(idx)
            row_min[idx], row_arg[idx] = part.min(axis=1), part.argmin(axis=1)
        column = d[:, i] if limit is None else d[:, i] / limit(size, np.full(n, size[i]))
        closer = alive & (column < row_min)
        row_min[closer], row_arg[closer] = column[closer], i
    return group


def pair_threshold(quality: np.ndarray, params: Params) -> np.ndarray:
    """The cosine distance under which two tracks are one person, per pair (n x n), from the weaker track's best
    face quality: ``cluster_max_distance`` (calibrated on clean photos) for pairs of clear faces (quality >=
    ``clean_quality``), up to ``track_max_distance`` (the looser calibrated threshold) for pairs of poor faces
    (quality <= ``poor_quality``), linear between. Measured on the labelled footage (bench/quality.py): the
    similarity of one person's two poor faces (blur, profile, old TV) falls towards zero while that of two
    people's does not rise."""
    weaker = np.minimum(quality[:, None], quality[None, :])
    if params.clean_quality <= params.poor_quality:
        return np.full(weaker.shape, params.cluster_max_distance)
    t = np.clip((weaker - params.poor_quality) / (params.clean_quality - params.poor_quality), 0.0, 1.0)
    return params.track_max_distance + (params.cluster_max_distance - params.track_max_distance) * t


@dataclass
class Grouping:
    labels: np.ndarray  # person per face (0..P-1 by first appearance), -1: not listed
    unlisted: int  # faces of no listed person (too weak to identify, background, a stray detection)


def cluster_faces(*args, **kwargs) -> np.ndarray:
    """Person label per face (0..P-1, ordered by first appearance), or -1 for a face of no listed person: the
    labels of :func:`group_faces` (same arguments)."""
    return group_faces(*args, **kwargs).labels


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def group_faces(
    embeddings: np.ndarray,
    qualities: np.ndarray,
    det_scores: np.ndarray,
    boxes: np.ndarray,
    sample: np.ndarray,
    shot: np.ndarray,
    params: Params,
    one_frame: bool = False,
) -> Grouping:
    """The people of a video's faces (see the module docstring). Faces must come sorted by ``sample``.
    ``one_frame``: the input is one frame (a photo): who is listed follows rule 8."""
    n = len(embeddings)
    if n == 0:
        return Grouping(np.zeros(0, dtype=np.int64), 0)
    emb = np.asarray(embeddings, dtype=np.float32)
    qualities = np.asarray(qualities, dtype=np.float64)
    det_scores = np.asarray(det_scores, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64)
    track = tracks(emb, boxes, sample, shot, params)
    t = int(track.max()) + 1
    # quality-weighted track embeddings: a track's sharp frontal faces speak for it, its blurred ones barely
    w = np.maximum(qualities, 0.05) ** 2
    sums = np.zeros((t, emb.shape[1]), dtype=np.float64)
    np.add.at(sums, track, emb * w[:, None])
    means = _unit_rows(sums)
    # cannot-link: tracks with faces in the same frame
    cannot = np.zeros((t, t), dtype=bool)
    starts = np.flatnonzero(np.r_[True, sample[1:] != sample[:-1]])
    size = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    ratio = np.ones(n)
    for s, e in zip(starts, np.r_[starts[1:], n]):
        ratio[s:e] = size[s:e] / max(size[s:e].max(), 1e-9)
        if e - s > 1:
            ts = track[s:e]
            cannot[np.ix_(ts, ts)] = True
    np.fill_diagonal(cannot, False)
    best_det, best_q = np.zeros(t), np.zeros(t)
    np.maximum.at(best_det, track, det_scores)
    np.maximum.at(best_q, track, qualities)
    reliable = (best_det >= params.track_min_det_score) | (best_q >= params.track_min_quality)
    keep = np.flatnonzero(reliable)
    group = np.full(t, -1, dtype=np.int64)
    faces = np.bincount(track, minlength=t)
    # each pair's distance in units of its own threshold: a pair of weaker faces is held to a looser threshold
    limit = pair_threshold(best_q[keep], params)
    d = (1.0 - means[keep].astype(np.float64) @ means[keep].T.astype(np.float64)) / limit
    group[keep] = keep[linkage_on(d, cannot[np.ix_(keep, keep)], 1.0, faces[keep])]
    group = _attach_weak(group, sums, means, cannot, reliable, params.cluster_max_distance, params.attach_margin)
    labels = np.full(n, -1, dtype=np.int64)
    order: dict[int, int] = {}
    face_group = group[track]
    listed = np.zeros(t, dtype=bool)
    for g in np.unique(face_group[face_group >= 0]):
        members = face_group == g
        if one_frame:
            listed[g] = det_scores[members].max() >= params.track_min_det_score or \
                qualities[members].max() >= params.singleton_min_quality
            continue
        if qualities[members].max() < params.singleton_min_quality and \
                len(set(sample[members])) < params.weak_min_samples:
            continue  # no face clear enough to identify, and seen too briefly to stand on its own
        if len(set(shot[members])) == 1 and ratio[members].max() < params.background_max_ratio:
            continue  # a background face: one shot, always far smaller than the frame's main face
        listed[g] = True
    for i, g in enumerate(face_group):
        if g >= 0 and listed[g]:
            labels[i] = order.setdefault(int(g), len(order))
    return Grouping(labels, int((labels < 0).sum()))


def _attach_weak(group, sums, means, cannot, reliable, max_distance: float, margin: float) -> np.ndarray:
    """Tracks too weak to seed a person join the person whose centroid they match within ``max_distance`` and by
    ``margin`` (cosine) over the next person, never one on screen with them; the others stay out."""
    group = group.copy()
    ids = np.unique(group[group >= 0])
    if not len(ids):
        return group
    cent = _unit_rows(np.stack([sums[group == g].sum(axis=0) for g in ids]))
    for tr in np.flatnonzero(~reliable):
        sims = cent @ means[tr]
        allowed = np.array([not cannot[tr, group == g].any() for g in ids])
        if not allowed.any():
            continue
        order = np.argsort(-np.where(allowed, sims, -np.inf))
        best = order[0]
        runner = sims[order[1]] if len(order) > 1 and allowed[order[1]] else -1.0
        if 1.0 - sims[best] <= max_distance and sims[best] - runner >= margin:
            group[tr] = ids[best]
    return group
