"""Find a person everywhere: the faces of a query (photo or video) ranked against a destination's people.

``framepipe search QUERY DEST`` and the HTTP service's ``POST /v1/search`` both come here:

1. :func:`query_faces`: the faces of the query, largest first. A photo gives each detected face; a video goes
   through the per-video pipeline and gives each person found (their mean embedding, their best face).
2. :func:`find`: the nearest global persons of the destination's person registry (:mod:`framepipe.people.registry`, its
   HNSW index), then every (video, person) member of those, scored by cosine similarity between the query face and
   that member's own embedding, best first, keeping those at ``min_similarity`` or more.

A destination whose registry is missing or behind its manifests is brought up to date in memory for the answer (as
``framepipe people`` would, without writing: search only reads). Only people embedded by the same model pack as
the query are compared.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd

from framepipe import calibration, commits, manifests, pipeline, schema
from framepipe.people import registry
from framepipe.analyzer import Analyzer
from framepipe.config import Settings
from framepipe.errors import ErrorCode, FramepipeError
from framepipe.framesource import open_source
from framepipe.storage import Destination


class NoQueryFace(FramepipeError):
    code = ErrorCode.QUERY_NO_FACE


class NoPeopleOfModel(FramepipeError):
    code = ErrorCode.NO_PEOPLE_OF_MODEL


@dataclass
class QueryFace:
    embedding: np.ndarray = field(repr=False)
    bbox: list[float]
    quality: float
    timestamp_s: float
    size_px: float


@dataclass
class Hit:
    similarity: float  # cosine between the query face and this person's mean embedding
    source: str
    video_id: str
    person_id: int
    global_person_id: int | None  # None: a person appended since the registry's version, joining no one yet
    name: str | None
    person_similarity: float | None  # cosine between the query face and the global person's centroid
    first_seen_s: float | None
    last_seen_s: float | None
    seen_s: list[float]
    frame_url: str | None
    face_url: str | None

    def as_dict(self) -> dict:
        return asdict(self)


def faces_in_image(image: np.ndarray, analyzer: Analyzer) -> list[QueryFace]:
    """Every face of a photo, largest first, found as a one-frame input's are (a tight face crop, an avatar, a
    close-up filling the picture included: ``FaceModel.detect``'s ``photo``)."""
    found = [QueryFace(f.embedding, [round(float(x), 1) for x in f.bbox], round(f.quality, 4), 0.0, f.size_px)
             for f in analyzer.analyze([image], photo=True)[0]]
    return sorted(found, key=lambda q: -q.size_px)


def query_faces(source: str, settings: Settings, analyzer: Analyzer) -> list[QueryFace]:
    """The faces of a photo, or the people of a video (each person's mean embedding), largest face first."""
    fs = open_source(source, settings)
    if fs.info.media_type == "image":
        with fs.frames() as frames:
            image = next(iter(frames)).image
        return faces_in_image(image, analyzer)
    people = pipeline.analyse_video(fs, settings, analyzer).finish().people
    return sorted((QueryFace(p.mean_embedding, [round(float(x), 1) for x in p.best.face.bbox],
                             round(p.best.face.quality, 4), p.best.pts_s, p.best.face.size_px) for p in people),
                  key=lambda q: -q.size_px)


def answer(faces: list[QueryFace], index: int | None, min_similarity: float, hits: list[Hit]) -> dict:
    """The search answer as ``framepipe search --json`` and ``POST /v1/search`` give it: the query's faces (without
    embeddings), the face used, the similarity floor and the results."""
    return {"faces": [{k: v for k, v in vars(f).items() if k != "embedding"} for f in faces], "face": index or 0,
            "min_similarity": min_similarity, "results": [h.as_dict() for h in hits]}


def pick(faces: list[QueryFace], index: int | None) -> QueryFace:
    if not faces:
        raise NoQueryFace("no face found in the query")
    if index is not None and not 0 <= index < len(faces):
        raise NoQueryFace(f"the query has {len(faces)} face(s): --face takes 0..{len(faces) - 1}")
    return faces[index or 0]


def find(
    dest: str | Destination, embedding: np.ndarray, model: str, settings: Settings, top: int = 10,
    min_similarity: float | None = None,
) -> list[Hit]:
    """The destination's people most like ``embedding`` (of model pack ``model``), best first."""
    d = manifests.destination(dest)
    floor = min_similarity if min_similarity is not None else floor_for(settings, model, len(embedding))

    def at(version: commits.Version) -> list[Hit]:  # a version whose files are damaged: the one before it
        reg, pending = _registry(d, model, len(embedding), settings, version)
        return rank(reg, embedding, top, floor, pending)

    # the outputs' URLs in the destination as it is now (rows keep the URL written, of wherever it was then)
    return [replace(h, frame_url=manifests.resolve(d, h.frame_url, h.video_id),
                    face_url=manifests.resolve(d, h.face_url, h.video_id))
            for h in commits.first_readable(d, schema.REGISTRY, at)]


def floor_for(settings: Settings, model: str, dim: int) -> float:
    """The similarity from which a person is a result: the setting, else the model pack's calibration."""
    return calibration.search_min_similarity(settings.search_min_similarity, model, dim, settings.models)


def rank(reg: registry.Registry, embedding: np.ndarray, top: int, min_similarity: float,
         pending: Pending | None = None) -> list[Hit]:
    """The members of ``reg``'s nearest global persons, scored against ``embedding``, best first; with the
    ``pending`` people (appended since the registry's version), each under the global person it would join."""
    q = registry.unit(np.asarray(embedding, dtype=np.float32))
    persons = dict(reg.nearest(q, max(top, registry.CANDIDATES)))
    members = reg.members_of(list(persons))
    if pending is not None and len(pending.rows):  # a video processed again: its registered people are stale
        members = members[~members["video_id"].isin(set(pending.rows["video_id"]))]
    hits = [_hit(reg, q, row, int(row.global_person_id), persons.get(int(row.global_person_id)))
            for row in members.itertuples()]
    if pending is not None:
        hits += pending.hits(reg, q, min_similarity)
    hits = [h for h in hits if h.similarity >= min_similarity]
    return sorted(hits, key=lambda h: -h.similarity)[:top]


def _hit(reg: registry.Registry, q: np.ndarray, row, gid: int | None, person_similarity: float | None) -> Hit:
    """A people row as a result under global person ``gid`` (None: none yet)."""
    sim = float(q @ registry.unit(np.asarray(row.embedding, dtype=np.float32)))
    seen = [float(t) for t in row.seen_s] if row.seen_s is not None else []
    name = reg.persons.at[gid, "name"] if gid is not None and gid in reg.persons.index else None
    centroid = reg.centroid(gid) if person_similarity is None and gid is not None else None
    if centroid is not None:
        person_similarity = float(q @ centroid)
    return Hit(round(sim, 4), row.source, row.video_id, int(row.person_id), gid,
               str(name) if isinstance(name, str) else None,
               round(person_similarity, 4) if person_similarity is not None else None,
               min(seen) if seen else None, max(seen) if seen else None, seen, row.frame_url, row.face_url)


@dataclass
class Pending:
    """People appended to the destination since the registry's committed version (``framepipe people`` or the
    backfill's end registers them): scored one by one, each under the live global person it would join
    (the nearest, when it reaches ``rule``'s bar for a single person), or none yet (``global_person_id`` null)."""
    rows: pd.DataFrame
    rule: registry.JoinRule

    def hits(self, reg: registry.Registry, q: np.ndarray, min_similarity: float) -> list[Hit]:
        out = []
        for row in self.rows.itertuples():
            e = registry.unit(np.asarray(row.embedding, dtype=np.float32))
            if float(q @ e) < min_similarity:
                continue
            near = reg.nearest(e, 1)
            gid = near[0][0] if near and near[0][1] >= self.rule.match else None
            out.append(_hit(reg, q, row, gid, None))
        return out


def destination_packs(dest: str | Destination) -> list[str]:
    """The model packs a destination's people were embedded with: the registry's models (its version's meta: no
    manifest read), else the videos table's ``models`` column. A search without ``--models`` uses the one it names."""
    d = manifests.destination(dest)
    names = [name for name, _ in registry.registered(commits.latest(d, schema.REGISTRY))]
    if not names:
        column = manifests.load_table(d, "videos", columns=["models"])["models"]
        names = [n for n in column.unique().to_pylist() if n]
    return sorted({re.sub(r"-\d+d$", "", n) for n in names})  # a registry named "<pack>-<dim>d" (models_of)


def _registry(d: Destination, model: str, dim: int, settings: Settings,
              version: commits.Version) -> tuple[registry.Registry, Pending | None]:
    """This model's committed registry, read light (``Registry.load``'s ``light``: the index memory-mapped, no
    embeddings but those of the persons found), and the people appended since its version (the tables' change
    feed): never the whole destination once a registry exists. A destination without one is registered in memory
    for the answer. Search never writes the registry (``framepipe people`` and the backfill do)."""
    people, partial, _ = registry.people_since(d, version)
    groups = registry.model_groups(people, version, partial)
    # registries are named as models_of names them
    mine = [(name, rows) for name, size, rows in groups if size == dim and name in (model, f"{model}-{dim}d")]
    if not mine:
        models = sorted(set(people["embedding_model"].fillna("?"))
                        | ({name for name, _ in registry.registered(version)} if partial else set()))
        raise NoPeopleOfModel(f"no people embedded with {model} ({dim}-d) in {d.url('')}"
                              + (f"; it holds people of {', '.join(models)}: search with --models naming that "
                                 "pack (or leave --models out)" if models else ""))
    [(name, rows)] = mine
    rule = registry.join_rule(settings.people_max_distance, name, dim, settings.models)
    if partial and name in dict(registry.registered(version)):
        return registry.Registry.load(d, name, dim, version, light=True), Pending(rows, rule)
    reg = registry.Registry.load(d, name, dim, version)  # none yet (or an older layout): built in memory
    if len(rows):
        reg.update(rows, rule, settings.people_max_count, partial=partial)
    return reg, None
