"""One embedding model's person registry: its global persons, its members, its HNSW index of centroids, and the
changes made to it (attaching new people, names, merges, splits). :mod:`framepipe.registry` keeps a destination's
registries up to date and commits them; its docstring describes the whole.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import io
import logging
import os
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from framepipe import commits, manifests, people_index, schema
from framepipe.errors import ErrorCode, FramepipeError
from framepipe.storage import Destination

log = logging.getLogger(__name__)

INDEX_FILE = "index.usearch"
# HNSW: M, ef at build, ef at search (bench/people_scale.py)
CONNECTIVITY, EXPANSION_ADD, EXPANSION_SEARCH = 16, 64, 448
CANDIDATES = 10  # nearest global persons looked at when attaching
MEMBERS_ROW_GROUP = 2048  # members.parquet's rows per row group (sorted by global id)
# the index's vectors in bfloat16 (bench/people_scale.py --people 50000 --dim 512 --dtype bf16/f32): 84 against
# 152 MB, built 1.6x faster, recall@10 against exact search 0.980 against f32's 0.987 at ef 448
INDEX_DTYPE = "bf16"


class CorrectionError(FramepipeError):
    code = ErrorCode.BAD_CORRECTION


def model_dir(model: str) -> str:
    """``registry/<model>``, the model name made safe as one path component."""
    return f"{schema.REGISTRY}/{re.sub(r'[^A-Za-z0-9_.-]+', '_', model or 'unknown')}"


def unit(v: np.ndarray) -> np.ndarray:
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


def _view_index(d: Destination, relpath: str):
    """A stored index memory-mapped (usearch ``view``): a search touches the pages it visits only. None when it
    cannot be read."""
    import tempfile

    from usearch.index import Index

    try:
        if d.is_s3:
            tmp = tempfile.NamedTemporaryFile(prefix="framepipe-index-", suffix=".usearch", delete=False)
            with tmp:
                tmp.write(d.read(relpath))
            path = tmp.name
            _TEMPORARY.append(path)
        else:
            path = d.url(relpath)
        index = Index.restore(path, view=True)
        if index is not None:
            index.expansion_search = EXPANSION_SEARCH
        return index
    except Exception as e:
        log.warning("cannot map the index %s: %s", d.url(relpath), e)
        return None


_TEMPORARY: list[str] = []  # S3 indexes copied to map them, removed when the process ends


@atexit.register
def _remove_temporary() -> None:
    for path in _TEMPORARY:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _new_index(dim: int):
    from usearch.index import Index

    return Index(ndim=dim, metric="cos", dtype=INDEX_DTYPE, connectivity=CONNECTIVITY, expansion_add=EXPANSION_ADD,
                 expansion_search=EXPANSION_SEARCH)


@dataclass
class Update:
    attached: int = 0  # new members put with an existing global person
    created: int = 0  # new global persons
    detached: int = 0  # members whose video was processed again (or removed)
    seeded: bool = False


@dataclass
class Registry:
    model: str
    dim: int
    persons: pd.DataFrame  # PERSONS_SCHEMA columns, indexed by global_person_id
    members: pd.DataFrame  # MEMBERS_SCHEMA columns
    index: object = field(default=None, repr=False)  # usearch Index of live centroids, keyed by global id
    next_id: list[int] = field(default_factory=lambda: [0])  # shared by a destination's registries: ids unique
    # changes not yet folded into the DataFrames (one concat per update, not one per person)
    _sums: dict = field(default_factory=dict, repr=False)  # gid -> embedding sum (float64)
    _counts: dict = field(default_factory=dict, repr=False)  # gid -> members
    _new_persons: list = field(default_factory=list, repr=False)
    _new_members: list = field(default_factory=list, repr=False)
    _together: dict = field(default_factory=dict, repr=False)  # video -> [(gid, seen_s)] during an update
    _members_file: tuple | None = field(default=None, repr=False)  # (path, filesystem) of a registry read light

    # ---- loading and saving ------------------------------------------------------------------------

    @classmethod
    def empty(cls, model: str, dim: int) -> "Registry":
        persons = schema.PERSONS_SCHEMA.empty_table().to_pandas().set_index("global_person_id", drop=False)
        members = schema.MEMBERS_SCHEMA.empty_table().to_pandas()
        return cls(model, dim, persons, members, _new_index(dim))

    @classmethod
    def load(cls, dest: str | Destination, model: str, dim: int, version: commits.Version | None = None) -> "Registry":
        """This model's registry as of ``version`` (default: the latest committed one; a destination written
        before versions read from its plain files)."""
        d = manifests.destination(dest)
        version = commits.latest(d, schema.REGISTRY) if version is None else version
        name = model_dir(model).split("/", 1)[1]
        if f"{name}/persons.parquet" in version.files:
            part = lambda p: commits.read(d, schema.REGISTRY, version, f"{name}/{p}")  # noqa: E731
        elif version.number == 0 and d.exists(f"{model_dir(model)}/persons.parquet"):
            part = lambda p: d.read(f"{model_dir(model)}/{p}")  # noqa: E731  (schema 1.2, before versions)
        else:
            return cls.empty(model, dim)
        persons = pq.read_table(io.BytesIO(part("persons.parquet"))).to_pandas()
        members = pq.read_table(io.BytesIO(part("members.parquet"))).to_pandas()
        reg = cls(model, dim, persons.set_index("global_person_id", drop=False), members)
        try:
            stored = part(INDEX_FILE)
        except (FileNotFoundError, KeyError, OSError):
            stored = None
        reg.index = reg._read_index(stored)
        return reg

    @classmethod
    def load_light(cls, dest: str | Destination, model: str, dim: int, version: commits.Version) -> "Registry":
        """This model's registry as of ``version`` for reading only (search): the persons without their centroids
        and the members without their embeddings (Parquet column projection: only those column chunks are read,
        ranged GETs on S3), the index memory-mapped (``view``; an S3 index is first copied to a temporary file);
        :meth:`members_of` reads the embeddings of the members asked for only (row groups by global id).
        Falls back to :meth:`load` for a registry written before its files were sorted that way."""
        d = manifests.destination(dest)
        name = model_dir(model).split("/", 1)[1]
        if f"{name}/persons.parquet" not in version.files or not version.meta.get("sorted_members"):
            return cls.load(d, model, dim, version)
        rel = lambda p: f"{schema.REGISTRY}/{version.files[f'{name}/{p}']}"  # noqa: E731
        persons_at, fs = d.arrow_source(rel("persons.parquet"))
        persons = pq.read_table(persons_at, filesystem=fs, columns=[
            c for c in schema.PERSONS_SCHEMA.names if c != "embedding_sum"]).to_pandas()
        members_at, _ = d.arrow_source(rel("members.parquet"))
        members = pq.read_table(members_at, filesystem=fs, columns=[
            c for c in schema.MEMBERS_SCHEMA.names if c != "embedding"]).to_pandas()
        reg = cls(model, dim, persons.set_index("global_person_id", drop=False), members)
        reg._members_file = (members_at, fs)
        reg.index = _view_index(d, rel(INDEX_FILE))
        if reg.index is None or len(reg.index) != len(reg.live_ids()):
            return cls.load(d, model, dim, version)
        return reg

    def members_of(self, gids: list[int]) -> pd.DataFrame:
        """The members (with their embeddings) of these global persons."""
        if self._members_file is None:
            self.flush()
            return self.members[self.members["global_person_id"].isin(gids)]
        path, fs = self._members_file
        table = pq.read_table(path, filesystem=fs, filters=[("global_person_id", "in", [int(g) for g in gids])])
        return table.to_pandas()

    def _read_index(self, stored: bytes | None):
        from usearch.index import Index

        live = self.live_ids()
        if stored:
            try:
                index = Index.restore(bytearray(stored))
                if index is not None and len(index) == len(live) and all(int(g) in index for g in live[:100]):
                    index.expansion_search = EXPANSION_SEARCH  # a search setting: not kept in the file
                    return index
            except Exception as e:  # a damaged or foreign file: rebuilt below from the Parquet truth
                log.warning("rebuilding the index of %s: %s", self.model, e)
        index = _new_index(self.dim)
        if len(live):
            sums = np.stack(self.persons.loc[live, "embedding_sum"].to_numpy()).astype(np.float32)
            sums /= np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
            index.add(live.astype(np.uint64), sums)
        return index

    def flush(self) -> None:
        """Fold the pending changes into ``persons`` and ``members``."""
        if self._new_persons:
            new = pd.DataFrame(self._new_persons).set_index("global_person_id", drop=False)
            self.persons = pd.concat([self.persons, new]) if len(self.persons) else new
            self._new_persons = []
        for gid, total in self._sums.items():
            self.persons.at[gid, "embedding_sum"] = np.asarray(total, dtype=np.float32)
            self.persons.at[gid, "members"] = self._counts[gid]
        self._sums, self._counts = {}, {}
        self.persons["merged_into"] = self.persons["merged_into"].astype("Int64")
        if self._new_members:
            new = pd.DataFrame(self._new_members)
            self.members = pd.concat([self.members, new], ignore_index=True) if len(self.members) else new
            self._new_members = []

    def parts(self) -> dict[str, bytes]:
        """The registry's files, named ``<model>/persons.parquet``, ``<model>/members.parquet`` and
        ``<model>/index.usearch``, for one commit (:mod:`framepipe.commits`)."""
        self.flush()
        name = model_dir(self.model).split("/", 1)[1]
        persons = self.persons.assign(schema_version=schema.SCHEMA_VERSION).sort_index().reset_index(drop=True)
        # members by global id, in small row groups: a search reads the row groups of the persons it found only
        members = self.members.assign(schema_version=schema.SCHEMA_VERSION).sort_values(
            ["global_person_id", "video_id", "person_id"], kind="stable").reset_index(drop=True)
        return {
            f"{name}/persons.parquet": schema.parquet_bytes(pa.Table.from_pandas(
                persons[schema.PERSONS_SCHEMA.names], schema=schema.PERSONS_SCHEMA, preserve_index=False)),
            f"{name}/members.parquet": schema.parquet_bytes(pa.Table.from_pandas(
                members[schema.MEMBERS_SCHEMA.names], schema=schema.MEMBERS_SCHEMA, preserve_index=False),
                row_group_size=MEMBERS_ROW_GROUP),
            f"{name}/{INDEX_FILE}": bytes(self.index.save()),
        }

    # ---- reading -----------------------------------------------------------------------------------

    def live_ids(self) -> np.ndarray:
        self.flush()
        p = self.persons
        if not len(p):
            return np.zeros(0, dtype=np.int64)
        return p.index[p["merged_into"].isna() & (p["members"] > 0)].to_numpy(dtype=np.int64)

    def _sum(self, gid: int) -> np.ndarray:
        if gid not in self._sums:
            self._sums[gid] = np.asarray(self.persons.at[gid, "embedding_sum"], dtype=np.float64)
            self._counts[gid] = int(self.persons.at[gid, "members"])
        return self._sums[gid]

    def resolve(self, gid: int) -> int:
        """The live id an id stands for (merged ids are aliases of their survivor)."""
        seen = set()
        while gid in self.persons.index and pd.notna(self.persons.at[gid, "merged_into"]) and gid not in seen:
            seen.add(gid)
            gid = int(self.persons.at[gid, "merged_into"])
        return gid

    def nearest(self, embedding: np.ndarray, count: int) -> list[tuple[int, float]]:
        """(global id, cosine similarity) of the ``count`` nearest live persons."""
        if len(self.index) == 0:
            return []
        found = self.index.search(unit(np.asarray(embedding, dtype=np.float32)), min(count, len(self.index)))
        return [(int(k), float(1.0 - d)) for k, d in zip(found.keys, found.distances)]

    # ---- changing ----------------------------------------------------------------------------------

    def _touch(self, gid: int) -> None:
        """Put a person's current centroid in the index (or take it out when it has no member)."""
        if gid in self.index:
            self.index.remove(gid)
        self._sum(gid)
        merged = gid in self.persons.index and pd.notna(self.persons.at[gid, "merged_into"])
        if self._counts[gid] > 0 and not merged:
            self.index.add(gid, unit(self._sums[gid]))

    def _create(self, embedding_sum: np.ndarray, members: int) -> int:
        gid = max(self.next_id[0], int(self.persons.index.max()) + 1 if len(self.persons) else 0)
        self.next_id[0] = gid + 1
        self._new_persons.append({
            "global_person_id": gid, "name": None, "merged_into": None, "members": members,
            "embedding_sum": np.asarray(embedding_sum, dtype=np.float32),
            "created_at": pd.Timestamp(dt.datetime.now(dt.timezone.utc)).floor("ms"),
            "schema_version": schema.SCHEMA_VERSION})
        self._sums[gid] = np.asarray(embedding_sum, dtype=np.float64)
        self._counts[gid] = members
        return gid

    def _add_to(self, gid: int, embedding: np.ndarray, sign: int) -> None:
        self._sums[gid] = self._sum(gid) + sign * np.asarray(embedding, dtype=np.float64)
        self._counts[gid] += sign

    def _member_rows(self, rows: pd.DataFrame, gids: list[int], similarity: list[float], pinned=False):
        n = len(rows)
        col = lambda name: rows[name].to_list() if name in rows else [None] * n  # noqa: E731
        self._new_members += [
            {"video_id": v, "person_id": int(p), "global_person_id": int(g), "similarity": float(s),
             "pinned": pinned, "source": src, "embedding": np.asarray(e, np.float32), "seen_s": seen,
             "face_url": face, "frame_url": frame, "timestamp_s": ts, "quality": q,
             "schema_version": schema.SCHEMA_VERSION}
            for v, p, g, s, src, e, seen, face, frame, ts, q in zip(
                col("video_id"), col("person_id"), gids, similarity, col("source"), col("embedding"), col("seen_s"),
                col("face_url"), col("frame_url"), col("timestamp_s"), col("quality"))]

    def update(self, people: pd.DataFrame, max_distance: float, seed_max_count: int | None = None,
               partial: bool = False) -> Update:
        """Attach the people rows (``manifests.load_people``, this model's only) that are not attached yet.
        ``partial``: the rows are the whole current people of their videos only (what changed since the last
        update), not of the destination: members of other videos are left as they are."""
        self.flush()
        report = Update()
        people = people.sort_values(["source", "person_id"], ignore_index=True)
        key = lambda df: list(zip(df["video_id"], df["person_id"].astype(int)))  # noqa: E731
        current = {k: np.asarray(e, np.float32) for k, e in zip(key(people), people["embedding"])}
        # members whose video was processed again with other people (or is gone): detached
        changed = set(people["video_id"]) if partial else None
        stale = [i for i, (k, e) in enumerate(zip(key(self.members), self.members["embedding"]))
                 if (changed is None or k[0] in changed)
                 and (k not in current or not np.allclose(current[k], e, atol=1e-6))]
        for i in stale:
            self._add_to(int(self.members.at[i, "global_person_id"]), self.members.at[i, "embedding"], -1)
        touched = set(self.members.loc[stale, "global_person_id"].astype(int))
        self.members = self.members.drop(index=stale).reset_index(drop=True)
        report.detached = len(stale)
        attached = set(key(self.members))
        new = people[np.array([k not in attached for k in key(people)], dtype=bool)].reset_index(drop=True)
        # who is already attached for the videos being added (same-time people are never one person)
        kept = self.members[self.members["video_id"].isin(set(new["video_id"]))]
        self._together = {v: list(zip(g["global_person_id"].astype(int), g["seen_s"])) for v, g in
                          kept.groupby("video_id")}
        rest = new.iloc[0:0]
        if len(new) and not len(self.live_ids()) and len(self.persons) == 0:
            report.seeded = True
            report.created, rest = self._seed(new, max_distance, seed_max_count)
            new = rest.reset_index(drop=True)
            for m in self._new_members:  # the seeded people of a video, for the rows attached one by one
                self._together.setdefault(m["video_id"], []).append((m["global_person_id"], m["seen_s"]))
        if not report.seeded or len(rest):
            for i in range(len(new)):
                gid, sim = self._attach_one(new.iloc[i], max_distance)
                if gid is None:  # a new person: in the index at once, for the next rows of this update
                    gid = self._create(np.asarray(new.at[i, "embedding"], np.float32), 1)
                    self._touch(gid)
                    report.created += 1
                    sim = 1.0
                else:  # a known person: its centroid moves, re-indexed once at the end
                    self._add_to(gid, new.at[i, "embedding"], +1)
                    touched.add(gid)
                    report.attached += 1
                self._member_rows(new.iloc[[i]], [gid], [sim])
                self._together.setdefault(new.at[i, "video_id"], []).append((gid, new.at[i, "seen_s"]
                                                                            if "seen_s" in new else None))
        for gid in touched:
            self._touch(gid)
        self.flush()
        return report

    def _seed(self, new: pd.DataFrame, max_distance: float, max_group: int | None) -> tuple[int, pd.DataFrame]:
        """An empty registry built from ``new`` at once: the graph of people within ``max_distance`` of each
        other (the vector index's k nearest neighbours), then, inside each connected part of it, average linkage
        with the cannot-links of people seen together (:mod:`framepipe.people_index`): the same groups as average
        linkage over everyone, without its n x n matrix. Parts over ``max_group`` people are returned, to be
        attached one by one through the index. Returns (persons created, rows left)."""
        raw = np.stack([np.asarray(e, np.float32) for e in new["embedding"]])
        emb = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
        parts = people_index.neighbour_parts(emb, max_distance)
        labels = np.full(len(new), -1, dtype=np.int64)
        left = []
        next_label = 0
        for members in parts:
            if max_group is not None and len(members) > max_group:
                left.append(members)
                continue
            if len(members) == 1:
                sub = np.zeros(1, dtype=np.int64)
            else:
                part = new.iloc[members]
                sub = people_index.split_co_occurring(
                    emb[members], people_index.cluster_embeddings(emb[members], max_distance), part, max_distance)
            labels[members] = sub + next_label
            next_label += int(sub.max()) + 1
        rest = new.iloc[np.sort(np.concatenate(left))] if left else new.iloc[0:0]
        keep = labels >= 0
        new, emb, raw, labels = new[keep].reset_index(drop=True), emb[keep], raw[keep], labels[keep]
        _, first, labels = np.unique(labels, return_index=True, return_inverse=True)
        rank = np.empty(len(first), dtype=np.int64)  # numbered in order of first appearance
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        labels = rank[labels]
        count = len(first)
        sums = np.zeros((count, raw.shape[1]), dtype=np.float64)
        np.add.at(sums, labels, raw)
        sizes = np.bincount(labels, minlength=count)
        gids = self._create_many(sums, sizes)
        centroids = (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(np.float32)
        sims = np.einsum("ij,ij->i", emb, centroids[labels])
        self._member_rows(new, gids[labels].tolist(), sims.tolist())
        if count:
            self.index.add(gids.astype(np.uint64), centroids)
        return count, rest

    def _create_many(self, sums: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """New persons in bulk (an empty registry's seed): their ids, in order."""
        self.flush()
        start = max(self.next_id[0], int(self.persons.index.max()) + 1 if len(self.persons) else 0)
        gids = np.arange(start, start + len(sizes), dtype=np.int64)
        self.next_id[0] = start + len(sizes)
        now = pd.Timestamp(dt.datetime.now(dt.timezone.utc)).floor("ms")
        block = pd.DataFrame({
            "global_person_id": gids, "name": pd.Series([None] * len(gids), dtype=object),
            "merged_into": pd.array([pd.NA] * len(gids), dtype="Int64"), "members": sizes.astype(np.int64),
            "embedding_sum": list(sums.astype(np.float32)), "created_at": now,
            "schema_version": schema.SCHEMA_VERSION}).set_index("global_person_id", drop=False)
        self.persons = pd.concat([self.persons, block]) if len(self.persons) else block
        return gids

    def _attach_one(self, row: pd.Series, max_distance: float) -> tuple[int | None, float]:
        seen = set(row["seen_s"]) if "seen_s" in row and row["seen_s"] is not None else set()
        same_video = self._together.get(row["video_id"], [])
        for gid, sim in self.nearest(row["embedding"], CANDIDATES):
            if sim < 1.0 - max_distance:
                break
            if seen and any(g == gid and s is not None and seen & set(s) for g, s in same_video):
                continue  # that person is on screen at the same time in this video: someone else
            return gid, sim
        return None, 0.0

    # ---- corrections ---------------------------------------------------------------------------------

    def _live(self, gid: int) -> int:
        self.flush()
        if gid not in self.persons.index:
            raise CorrectionError(f"no global person {gid}")
        return self.resolve(gid)

    def name(self, gid: int, name: str) -> None:
        self.persons.at[self._live(gid), "name"] = name.strip() or None

    def merge(self, keep: int, other: int) -> int:
        """Merge ``other`` into ``keep`` (the id ``other`` stays an alias of ``keep``); returns the survivor."""
        keep, other = self._live(keep), self._live(other)
        if keep == other:
            return keep
        self._sums[keep] = self._sum(keep) + self._sum(other)
        self._counts[keep] += self._counts[other]
        self._sums[other], self._counts[other] = np.zeros_like(self._sums[other]), 0
        if pd.isna(self.persons.at[keep, "name"]):
            self.persons.at[keep, "name"] = self.persons.at[other, "name"]
        self.persons.at[other, "merged_into"] = keep
        self.members.loc[self.members["global_person_id"] == other, "global_person_id"] = keep
        self._touch(other)
        self._touch(keep)
        self.flush()
        return keep

    def split(self, video_id: str, person_id: int) -> int:
        """Give one (video, person) a global person of its own, pinned there; returns the new id."""
        self.flush()
        rows = self.members.index[(self.members["video_id"] == video_id) & (self.members["person_id"] == person_id)]
        if not len(rows):
            raise CorrectionError(f"no person {person_id} of video {video_id} in the registry")
        i = rows[0]
        old = int(self.members.at[i, "global_person_id"])
        if bool(self.members.at[i, "pinned"]) and (self.members["global_person_id"] == old).sum() == 1:
            return old  # split off already (the same correction applied again after a concurrent commit)
        emb = np.asarray(self.members.at[i, "embedding"], np.float32)
        self._add_to(old, emb, -1)
        gid = self._create(emb, 1)
        self.members.at[i, "global_person_id"] = gid
        self.members.at[i, "pinned"] = True
        self.members.at[i, "similarity"] = 1.0
        self._touch(old)
        self._touch(gid)
        self.flush()
        return gid

    # ---- the people index view -----------------------------------------------------------------------

    def index_rows(self) -> pd.DataFrame:
        """Members as people-index rows (:data:`~framepipe.schema.PEOPLE_INDEX_SCHEMA`), with names."""
        self.flush()
        m = self.members
        names = self.persons["name"]
        return pd.DataFrame({
            "global_person_id": m["global_person_id"].astype(int),
            "name": [names.get(g) for g in m["global_person_id"]],
            "video_id": m["video_id"], "person_id": m["person_id"].astype(int), "similarity": m["similarity"],
            "source": m["source"], "face_url": m["face_url"], "frame_url": m["frame_url"],
            "timestamp_s": m["timestamp_s"], "quality": m["quality"], "embedding_model": self.model or None,
            "schema_version": schema.SCHEMA_VERSION,
        })
