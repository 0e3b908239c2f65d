"""Thresholds that belong to the model: every distance the people step uses, calibrated per model pack.

A recognizer's cosine similarities mean nothing by themselves: the WebFace600K ArcFace family (``buffalo_l``,
``buffalo_s``) puts two photos of one person at about 0.3-0.8 and two people at about -0.1-0.25, while the 128-d
MS1M MobileFaceNet of the earlier pack spreads them otherwise. So every threshold of the people step (tracks,
clustering, the registry, search) comes from a :class:`Calibration` of the pack in use:

1. ``calibration.json`` in the pack's folder: written by ``framepipe calibrate PHOTOS_DIR --models PACK``, which
   embeds the central face of every ``PHOTOS_DIR/<person>/*.jpg`` and measures same-person against
   different-person similarities (:func:`measure`). The pack folder is what every front door (the CLI, the Ray
   backfill's actors, the Serve model deployment) loads the models from, so they all read the same thresholds.
2. a calibration shipped with framepipe for that pack name (``framepipe/calibrations/<pack>.json``, measured on
   ``photos/lfw/``: ``buffalo_s_dq`` and ``scrfd_mobilefacenet``);
3. else the shipped calibration of the same embedding size: a 512-d pack (``buffalo_l``, until a user calibrates
   it) gets ``buffalo_s_dq``'s, the same family (ArcFace loss, WebFace600K, same alignment), a 128-d pack
   ``scrfd_mobilefacenet``'s.

A setting given explicitly (``FRAMEPIPE_CLUSTER_MAX_DISTANCE``, ``--max-distance``, ...) overrides the calibration.

How the thresholds follow from the measured distributions (``impostor``: the similarities of different people):

* ``match_similarity``: the similarity that only one pair of different people in ``FAR_STRICT`` (1 in 1,000)
  reaches: two faces (or people) this alike are one person. It is also the floor of search results.
* ``link_similarity``: a looser floor (1 in 100 impostor pairs reach it): two faces in consecutive samples of one
  shot, whose boxes overlap, are one track from here (the overlap already rules out most other people).
* ``group_similarity``: 1 in 10,000 impostor pairs reach it (measured where there are 30,000 such pairs or more):
  the person registry's lowest bar, for a person's odd photo against the many others of that person
  (:class:`framepipe.people.grouping.JoinRule`).
* distances are ``1 - similarity``: ``cluster_max_distance`` and ``people_max_distance`` are
  ``1 - match_similarity``, ``track_max_distance`` is ``1 - link_similarity``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

log = logging.getLogger(__name__)

FILE = "calibration.json"
SHIPPED = Path(__file__).resolve().parent / "calibrations"
FAR_STRICT = 1e-3
FAR_LOOSE = 1e-2
FAR_GROUP = 1e-4  # group_similarity: where a person's odd photo may still join the many others of that person
# a threshold that 1 in 1/FAR_STRICT different-person pairs reach is placed by the pairs above it: with fewer than
# 3/FAR_STRICT pairs it is set by one or two pairs (4 photos of 2 people: 4 pairs, and "1 in 1,000" is the highest
# of them). Below these counts, calibrate refuses (unless forced)
MIN_IMPOSTOR_PAIRS = round(3 / FAR_STRICT)
MIN_GENUINE_PAIRS = 30


class TooFewPairs(ValueError):
    """A sample too small to place the thresholds it would claim."""
BY_DIMENSION = {512: "buffalo_s_dq", 128: "scrfd_mobilefacenet"}  # families a pack of that size most likely is
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass(frozen=True)
class Calibration:
    pack: str
    embedding_dim: int
    match_similarity: float  # different people reach it once in 1/FAR_STRICT pairs
    link_similarity: float  # different people reach it once in 1/FAR_LOOSE pairs
    set_match_similarity: float  # centroids of 2-4 photos of different people reach it once in 1/FAR_STRICT pairs
    group_similarity: float = float("nan")  # different people reach it once in 1/FAR_GROUP pairs (NaN: too few)
    # what it was measured on
    photos: int = 0
    identities: int = 0
    genuine_pairs: int = 0
    impostor_pairs: int = 0
    genuine_median: float = float("nan")
    impostor_median: float = float("nan")
    true_accept_at_match: float = float("nan")  # share of same-person pairs at or above match_similarity
    source: str = ""  # where this calibration was read from

    @property
    def match_distance(self) -> float:
        return round(1.0 - self.match_similarity, 4)

    @property
    def link_distance(self) -> float:
        return round(1.0 - self.link_similarity, 4)

    def to_json(self) -> str:
        doc = {k: None if isinstance(v, float) and v != v else v for k, v in asdict(self).items() if k != "source"}
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Calibration":
        doc = json.loads(Path(path).read_text())
        fields = set(cls.__dataclass_fields__)
        return cls(**{k: float("nan") if v is None else v for k, v in doc.items() if k in fields and k != "source"},
                   source=str(path))


def pack_name(models: str) -> str:
    return os.path.basename(os.path.expanduser(str(models)).rstrip("/"))


@functools.lru_cache(maxsize=32)
def _read(path: str, mtime: float) -> Calibration:
    return Calibration.from_file(path)


def _cached(path: Path) -> Calibration | None:
    try:
        return _read(str(path), path.stat().st_mtime)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as e:  # a damaged file: say so, fall back to the shipped one
        log.warning("ignoring %s: %s", path, e)
        return None


def lookup(pack: str | None, dim: int | None, models: str | None = None) -> Calibration:
    """The calibration for embeddings of ``dim`` made by ``pack`` (a registry's model name, a result's
    ``embedding_model``); ``models``: the pack setting in force (a folder may hold a ``calibration.json``)."""
    name = pack or (pack_name(models) if models else "")
    if models:
        folder = Path(os.path.expanduser(models))
        if folder.is_dir() and (not pack or pack_name(models) == pack):
            found = _cached(folder / FILE)
            if found is not None and (dim is None or found.embedding_dim == dim):
                return found
    for candidate in ([name] if name else []) + ([BY_DIMENSION[dim]] if dim in BY_DIMENSION else []):
        found = _cached(SHIPPED / f"{candidate}.json")
        if found is not None and (dim is None or found.embedding_dim == dim):
            return found
    fallback = _cached(SHIPPED / f"{BY_DIMENSION[512]}.json")
    if fallback is None:  # pragma: no cover - the package ships it
        raise FileNotFoundError(SHIPPED / f"{BY_DIMENSION[512]}.json")
    if dim is not None:
        log.warning("no calibration for pack %r (%s-d): using %s's; run framepipe calibrate", name, dim,
                    fallback.pack)
    return fallback


# ---- measuring ---------------------------------------------------------------------------------------


def photos_by_person(folder: str | os.PathLike) -> dict[str, list[Path]]:
    """``folder/<person>/<photo>``: each person's photos (people with one photo give no same-person pair but
    still count as impostors)."""
    root = Path(folder)
    out = {}
    for person in sorted(p for p in root.iterdir() if p.is_dir()):
        photos = sorted(f for f in person.iterdir() if f.suffix.lower() in PHOTO_SUFFIXES)
        if photos:
            out[person.name] = photos
    return out


def central(bboxes: list, shape: tuple[int, ...]) -> int | None:
    """Which box (x1, y1, x2, y2) is the labelled face of a portrait photo: the largest of those near the centre
    (LFW's convention); None for no box."""
    if not len(bboxes):
        return None
    h, w = shape[:2]

    def key(i: int) -> float:
        x1, y1, x2, y2 = (float(v) for v in bboxes[i][:4])
        off = np.hypot(((x1 + x2) / 2 - w / 2) / w, ((y1 + y2) / 2 - h / 2) / h)
        return min(x2 - x1, y2 - y1) * (1.0 - off)

    return max(range(len(bboxes)), key=key)


def threshold_at(impostor: np.ndarray, far: float) -> float:
    """The similarity that a share ``far`` of impostor pairs reaches (the (1 - far) quantile)."""
    if not len(impostor):
        raise ValueError("no different-person pair to calibrate on")
    return float(np.quantile(impostor, 1.0 - far, method="higher"))


def set_threshold(emb: np.ndarray, lab: np.ndarray, draws: int = 10, seed: int = 0) -> float:
    """The similarity that 1 in 1/FAR_STRICT pairs of centroids of different people reach, the centroids being of
    2, 3 and 4 photos drawn at random (``draws`` per person and size, a fixed seed): the threshold between two
    groups of faces each seen in several shots. Averaging removes pose and lighting, so one person's centroids are
    far closer than its photos are pair by pair, and different people's a little closer too."""
    rng = np.random.default_rng(seed)
    worst = -1.0
    for k in (2, 3, 4):
        cents, who = [], []
        for person in sorted(set(lab)):
            idx = np.flatnonzero(lab == person)
            if len(idx) < k:
                continue
            for _ in range(draws):
                c = emb[rng.choice(idx, k, replace=False)].sum(axis=0)
                cents.append(c / max(float(np.linalg.norm(c)), 1e-12))
                who.append(person)
        if len(set(who)) < 2:
            continue
        c, w = np.array(cents), np.array(who)
        iu = np.triu_indices(len(c), 1)
        s = (c @ c.T)[iu]
        worst = max(worst, threshold_at(s[(w[:, None] != w[None, :])[iu]], FAR_STRICT))
    return worst


def from_embeddings(embeddings: np.ndarray, labels: Iterable[str], pack: str, force: bool = False) -> Calibration:
    """A calibration from L2-normalised embeddings (n x d) and their person labels; :class:`TooFewPairs` for a
    sample under ``MIN_IMPOSTOR_PAIRS`` different-person or ``MIN_GENUINE_PAIRS`` same-person pairs, unless
    ``force``."""
    emb = np.asarray(embeddings, dtype=np.float64)
    lab = np.asarray(list(labels))
    sim = emb @ emb.T
    iu = np.triu_indices(len(emb), 1)
    same = (lab[:, None] == lab[None, :])[iu]
    s = sim[iu]
    genuine, impostor = s[same], s[~same]
    if not len(genuine):
        raise ValueError("no same-person pair: give each person at least two photos")
    if not force and (len(impostor) < MIN_IMPOSTOR_PAIRS or len(genuine) < MIN_GENUINE_PAIRS):
        raise TooFewPairs(
            f"{len(impostor)} different-person and {len(genuine)} same-person pairs; a threshold that 1 in "
            f"{round(1 / FAR_STRICT)} different-person pairs reach needs at least {MIN_IMPOSTOR_PAIRS} of them (its "
            f"highest {len(impostor) * FAR_STRICT:.2g} pairs would set it) and {MIN_GENUINE_PAIRS} same-person pairs: "
            "photos of more people (about 80 photos of 8 people), or --force to write it anyway")
    match = threshold_at(impostor, FAR_STRICT)
    link = min(threshold_at(impostor, FAR_LOOSE), match)
    group = threshold_at(impostor, FAR_GROUP) if len(impostor) >= 3 / FAR_GROUP else float("nan")
    sets = max(match, set_threshold(emb, lab))
    return Calibration(
        pack=pack, embedding_dim=int(emb.shape[1]), match_similarity=round(match, 4), link_similarity=round(link, 4),
        set_match_similarity=round(sets, 4), group_similarity=round(group, 4),
        photos=len(emb), identities=len(set(lab)), genuine_pairs=int(len(genuine)),
        impostor_pairs=int(len(impostor)), genuine_median=round(float(np.median(genuine)), 4),
        impostor_median=round(float(np.median(impostor)), 4),
        true_accept_at_match=round(float(np.mean(genuine >= match)), 4))


def embed_photos(photos: dict[str, list[Path]], analyzer) -> tuple[np.ndarray, list[str], list[str]]:
    """(embeddings, labels, photos without a face) of each photo's central face."""
    import cv2

    embs, labels, missed = [], [], []
    for person, files in photos.items():
        for f in files:
            image = cv2.imread(str(f), cv2.IMREAD_COLOR)
            faces = analyzer.analyze([image], photo=True)[0] if image is not None else []  # as a photo input is
            i = central([f.bbox for f in faces], image.shape) if faces else None
            face = faces[i] if i is not None else None
            if face is None or face.embedding is None:
                missed.append(str(f))
                continue
            embs.append(face.embedding)
            labels.append(person)
    if not embs:
        raise ValueError("no face found in any photo")
    return np.stack(embs), labels, missed


def measure(folder: str | os.PathLike, analyzer, pack: str, force: bool = False) -> tuple[Calibration, list[str]]:
    """Calibrate the analyzer's recognizer on ``folder/<person>/*.jpg``; also returns the photos without a face."""
    emb, labels, missed = embed_photos(photos_by_person(folder), analyzer)
    return from_embeddings(emb, labels, pack, force), missed


def people_max_distance(explicit: float | None, model: str | None, dim: int | None, models: str | None) -> float:
    """The registry's threshold for people of ``model`` (``dim``-d): ``explicit`` if given, else calibrated."""
    return explicit if explicit is not None else lookup(model, dim, models).match_distance


def search_min_similarity(explicit: float | None, model: str | None, dim: int | None, models: str | None) -> float:
    """The floor of search results for ``model``'s embeddings: ``explicit`` if given, else calibrated."""
    return explicit if explicit is not None else lookup(model, dim, models).match_similarity
