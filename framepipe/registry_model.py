"""One embedding model's person registry: its global persons, its members, its HNSW index of centroids, and the
changes made to it (attaching new people, names, merges, splits). :mod:`framepipe.registry` keeps a destination's
registries up to date and commits them; its docstring describes the whole.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from framepipe import commits, people_index, schema
from framepipe.errors import DestinationError, ErrorCode, FramepipeError
from framepipe.registry_files import (COMPACT_ROWS, COMPACT_SEGMENTS, INDEX_FILE, LAYOUT, ROW_GROUP, missing, model_dir,
                                      new_index, restore_index, segments_of, table_bytes, unit, units, view_index)
from framepipe.storage import Destination, destination

log = logging.getLogger(__name__)

CANDIDATES = 10  # nearest global persons looked at when attaching
CHUNK = 65_536  # rows of the first build's temporaries at once


class CorrectionError(FramepipeError):
    code = ErrorCode.BAD_CORRECTION


@dataclass
class Update:
    attached: int = 0  # new members put with an existing global person
    created: int = 0  # new global persons
    detached: int = 0  # members whose video was processed again (or removed)
    seeded: bool = False


@dataclass
class Registry:
    """One model's registry in memory. Read ``light`` (an update after new videos, a search), the persons come
    without their centroid sums and the members without their embeddings (``None`` in those columns): those are
    read from the base files when needed, by row group (the files are sorted by global id). The index of the base
    files' centroids is memory-mapped; persons changed since the base (in the segments, or by this process) shadow
    their base entries and are searched in a small in-memory index of their own."""
    model: str
    dim: int
    persons: pd.DataFrame  # GLOBAL_PERSON_SCHEMA columns, indexed by global_person_id
    members: pd.DataFrame  # MEMBERS_SCHEMA columns
    index: object = field(default=None, repr=False)  # usearch Index of the base files' live centroids
    next_id: list[int] = field(default_factory=lambda: [0])  # shared by a destination's registries: ids unique
    # changes not yet folded into the DataFrames (one concat per update, not one per person)
    _sums: dict = field(default_factory=dict, repr=False)  # gid -> embedding sum (float64)
    _counts: dict = field(default_factory=dict, repr=False)  # gid -> members
    _new_persons: list = field(default_factory=list, repr=False)
    _new_members: list = field(default_factory=list, repr=False)
    _together: dict = field(default_factory=dict, repr=False)  # video -> [(gid, seen_s)] during an update
    # the layers: where the base files are (for what a light read left out), this model's files as committed,
    # the persons changed since the base (their base index entries are stale) and their own index
    _base: dict = field(default_factory=dict, repr=False)  # base file kind -> (path, filesystem); "index" -> path
    _files: dict = field(default_factory=dict, repr=False)  # part name -> data file, as committed
    _shadow: set = field(default_factory=set, repr=False)
    _delta: object = field(default=None, repr=False)  # usearch Index of the live shadowing persons' centroids
    _dirty: set = field(default_factory=set, repr=False)  # persons changed since loading
    _members_loaded: int = 0  # members rows read; the rows after them are this process's additions
    _rewrite: bool = False  # the next save writes the base files anew (a change that is not an addition)

    # ---- loading and saving ------------------------------------------------------------------------

    @classmethod
    def empty(cls, model: str, dim: int) -> "Registry":
        persons = schema.GLOBAL_PERSON_SCHEMA.empty_table().to_pandas().set_index("global_person_id", drop=False)
        members = schema.MEMBERS_SCHEMA.empty_table().to_pandas()
        return cls(model, dim, persons, members, new_index(dim), _delta=new_index(dim), _rewrite=True)

    @classmethod
    def load(cls, dest: str | Destination, model: str, dim: int, version: commits.Version | None = None,
             light: bool = False) -> "Registry":
        """This model's registry as of ``version`` (default: the latest committed one; a destination written
        before versions read from its plain files): its base files and the segments written since. ``light``:
        without the base files' centroid sums and member embeddings (Parquet column projection: only the other
        column chunks are read, ranged GETs on S3) and with the base index memory-mapped (usearch ``view``; an S3
        index is first copied to a temporary file), for a search or an update after a few new videos. A registry
        written before this layout is read whole (and saved in it next)."""
        d = destination(dest)
        version = commits.latest(d, schema.REGISTRY) if version is None else version
        name = model_dir(model).split("/", 1)[1]
        mine = {k: v for k, v in version.files.items() if k.startswith(f"{name}/")}
        if f"{name}/persons.parquet" not in mine:
            if version.number == 0 and d.exists(f"{model_dir(model)}/persons.parquet"):  # schema 1.2, before versions
                return cls._whole(model, dim, lambda p: d.read(f"{model_dir(model)}/{p}"), {})
            return cls.empty(model, dim)
        rel = lambda p: f"{schema.REGISTRY}/{mine[f'{name}/{p}']}"  # noqa: E731
        if version.meta.get("layers") != LAYOUT:
            return cls._whole(model, dim, lambda p: d.read(rel(p)), mine)
        base = {p: d.arrow_source(rel(f"{p}.parquet")) for p in ("persons", "sums", "members", "embeddings")}
        tables = {p: pq.read_table(base[p][0], filesystem=base[p][1]).to_pandas() for p in ("persons", "members")}
        tables["persons"]["embedding_sum"] = None  # read by row group when needed (_load_sums)
        tables["members"]["embedding"] = None  # (_load_embeddings)
        base_live = int((tables["persons"]["merged_into"].isna() & (tables["persons"]["members"] > 0)).sum())
        shadow: set[int] = set()
        for _, kind, part in segments_of(mine):
            rows = pq.read_table(io.BytesIO(commits.read(d, schema.REGISTRY, version, part))).to_pandas()
            tables[kind] = pd.concat([tables[kind], rows], ignore_index=True)
            if kind == "persons":
                shadow |= set(rows["global_person_id"].astype(int))
        persons = tables["persons"].drop_duplicates("global_person_id", keep="last").set_index(
            "global_person_id", drop=False)
        reg = cls(model, dim, persons, tables["members"], _base=base, _files=mine, _shadow=shadow,
                  _delta=new_index(dim), _members_loaded=len(tables["members"]))
        if not light:
            reg._load_sums(reg.persons.index)
            reg._load_embeddings(reg.members.index)
        reg.index, reg._base["index"] = (view_index(d, rel(INDEX_FILE)) if light else
                                         (restore_index(d.read(rel(INDEX_FILE))), None))
        if reg.index is None or len(reg.index) != base_live:
            log.warning("the index of %s does not match its persons: rebuilt", model)
            if light:
                return cls.load(d, model, dim, version, light=False)
            reg._rebuild_index()
            return reg
        live = [g for g in sorted(shadow) if pd.isna(persons.at[g, "merged_into"]) and persons.at[g, "members"] > 0]
        if live:
            reg._delta.add(np.asarray(live, dtype=np.uint64), reg._centroids(live))
        return reg

    @classmethod
    def _whole(cls, model: str, dim: int, part, files: dict) -> "Registry":
        """A registry of an older layout read whole from its files (``part(name)`` -> bytes) as one base, without
        segments; its next save writes the base files anew."""
        persons = pq.read_table(io.BytesIO(part("persons.parquet"))).to_pandas()
        members = pq.read_table(io.BytesIO(part("members.parquet"))).to_pandas()
        reg = cls(model, dim, persons.set_index("global_person_id", drop=False), members, _files=files,
                  _delta=new_index(dim), _rewrite=True)
        try:
            stored = part(INDEX_FILE)
        except (FileNotFoundError, KeyError, OSError, DestinationError):  # none, or unreadable: rebuilt
            stored = None
        reg.index = restore_index(stored) if stored else None
        live = reg.live_ids()
        if reg.index is None or len(reg.index) != len(live) or not all(int(g) in reg.index for g in live[:100]):
            reg._rebuild_index()
        reg._members_loaded = len(members)
        return reg

    def _rebuild_index(self) -> None:
        """The base index built anew from every live centroid (every sum read); saved with the next version."""
        live = self.live_ids()
        self.index, self._shadow, self._delta, self._rewrite = new_index(self.dim), set(), new_index(self.dim), True
        self._base.pop("index", None)
        if len(live):
            self.index.add(live.astype(np.uint64), self._centroids(live))

    def _centroids(self, gids) -> np.ndarray:
        """The unit centroids of these persons (their sums read)."""
        return units(np.stack(self.persons.loc[gids, "embedding_sum"].to_numpy()))

    def _load_sums(self, gids) -> None:
        """Read the centroid sums a light read left out, of these persons (by row group), into ``persons``."""
        column = self.persons["embedding_sum"].to_numpy(dtype=object).copy()
        at = self.persons.index.get_indexer(pd.Index(list(gids), dtype="int64"))
        want = sorted({int(self.persons.index[p]) for p in at if p >= 0 and missing(column[p])})
        if not want:
            return
        path, fs = self._base["sums"]
        got = pq.read_table(path, filesystem=fs, columns=["global_person_id", "embedding_sum"],
                            filters=[("global_person_id", "in", want)] if len(want) < 4 * ROW_GROUP else None)
        for p, e in zip(self.persons.index.get_indexer(got.column(0).to_numpy()),
                        got.column(1).to_numpy(zero_copy_only=False)):
            if p >= 0 and missing(column[p]):
                column[p] = np.asarray(e, np.float32)
        self.persons["embedding_sum"] = column

    def _load_embeddings(self, rows) -> None:
        """Read the embeddings a light read left out, of these members rows (positions; found through their
        global ids' row groups, which is why a change of a member's global id saves the base files anew)."""
        column = self.members["embedding"].to_numpy(dtype=object).copy()
        rows = [i for i in rows if missing(column[i])]
        if not rows:
            return
        path, fs = self._base["embeddings"]
        gids = sorted({int(g) for g in self.members["global_person_id"].to_numpy()[rows]})
        got = pq.read_table(path, filesystem=fs, columns=["video_id", "person_id", "embedding"],
                            filters=[("global_person_id", "in", gids)] if len(gids) < 4 * ROW_GROUP else None)
        found = {(v, int(p)): e for v, p, e in zip(
            got.column(0).to_pylist(), got.column(1).to_pylist(), got.column(2).to_numpy(zero_copy_only=False))}
        videos, persons = self.members["video_id"].to_numpy(), self.members["person_id"].to_numpy()
        for i in rows:
            e = found.get((videos[i], int(persons[i])))
            column[i] = None if e is None else np.asarray(e, np.float32)
        self.members["embedding"] = column

    def members_of(self, gids: list[int]) -> pd.DataFrame:
        """The members (with their embeddings) of these global persons."""
        self.flush()
        rows = self.members.index[self.members["global_person_id"].isin(gids)]
        self._load_embeddings(rows)
        return self.members.loc[rows]

    def flush(self) -> None:
        """Fold the pending changes into ``persons`` and ``members``."""
        if self._new_persons:
            new = pd.DataFrame(self._new_persons).set_index("global_person_id", drop=False)
            if len(self.persons):  # the same types: a concat that converts 300,000 timestamps costs seconds
                new = new.astype({c: t for c, t in self.persons.dtypes.items() if c in new and c != "merged_into"})
                self.persons = pd.concat([self.persons, new])
            else:
                self.persons = new
            self._new_persons = []
        for gid, total in self._sums.items():
            self.persons.at[gid, "embedding_sum"] = np.asarray(total, dtype=np.float32)
            self.persons.at[gid, "members"] = self._counts[gid]
        self._sums, self._counts = {}, {}
        self.persons["merged_into"] = self.persons["merged_into"].astype("Int64")
        if self._new_members:
            new = pd.concat(self._new_members, ignore_index=True) if len(self._new_members) > 1 \
                else self._new_members[0]
            self.members = pd.concat([self.members, new], ignore_index=True) if len(self.members) else new
            self._new_members = []

    def parts(self) -> tuple[dict[str, bytes | Callable[[], bytes]], set[str]]:
        """(the files to commit, named ``<model>/...``; the names of this model's committed files the new version
        drops). An update that only added people writes a segment: the persons it changed and the members it
        added; otherwise (a merge, a split, people detached, or past ``COMPACT_SEGMENTS`` / ``COMPACT_ROWS``) the
        base files are written anew, sorted by global id in small row groups (a light read reads the row groups
        of the persons it asks for), with the index of every live centroid, and the segments dropped."""
        self.flush()
        name = model_dir(self.model).split("/", 1)[1]
        segments = sorted({n for n, _, _ in segments_of(self._files)})
        dirty = sorted(g for g in self._dirty if g in self.persons.index)
        shadow_rows = len(self._shadow | set(dirty))
        if not (self._rewrite or len(segments) >= COMPACT_SEGMENTS
                or shadow_rows > max(COMPACT_ROWS, len(self.persons) // 4)):
            if not dirty and len(self.members) == self._members_loaded:
                return {}, set()
            self._load_sums(dirty)
            seg = (segments[-1] + 1) if segments else 1
            out = {f"{name}/persons+{seg:06d}.parquet": table_bytes(self.persons.loc[dirty], "persons+")}
            if len(self.members) > self._members_loaded:
                out[f"{name}/members+{seg:06d}.parquet"] = table_bytes(
                    self.members.iloc[self._members_loaded:], "members+")
            return out, set()
        self._load_sums(self.persons.index)
        self._load_embeddings(self.members.index)
        index = self._full_index()
        persons = self.persons.sort_index()
        members = self.members.sort_values(["global_person_id", "video_id", "person_id"], kind="stable")
        # each file made as it is written (commits.commit calls these): one file's bytes in memory at a time
        out = {f"{name}/{kind}.parquet": functools.partial(table_bytes, rows, kind) for kind, rows in (
            ("persons", persons), ("sums", persons), ("members", members), ("embeddings", members))}
        out[f"{name}/{INDEX_FILE}"] = lambda: bytes(index.save())
        return out, set(self._files) - set(out)

    def _full_index(self):
        """The base index with the shadowing persons' entries put right: every live centroid."""
        index = self.index
        if self._base.get("index"):  # memory-mapped: read for writing
            index = restore_index(open(self._base["index"], "rb").read())
        for gid in self._shadow:
            if gid in index:
                index.remove(gid)
        keys = np.asarray(self._delta.keys, dtype=np.uint64) if len(self._delta) else np.zeros(0, np.uint64)
        if len(keys):
            index.add(keys, np.asarray(self._delta.get(keys), dtype=np.float32))
        return index

    # ---- reading -----------------------------------------------------------------------------------

    def live_ids(self) -> np.ndarray:
        self.flush()
        p = self.persons
        if not len(p):
            return np.zeros(0, dtype=np.int64)
        return p.index[p["merged_into"].isna() & (p["members"] > 0)].to_numpy(dtype=np.int64)

    def _sum(self, gid: int) -> np.ndarray:
        if gid not in self._sums:
            self._load_sums([gid])
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
        """(global id, cosine similarity) of the ``count`` nearest live persons: the base index's, less those
        changed since, and the changed ones'."""
        q = unit(np.asarray(embedding, dtype=np.float32))
        out = []
        if self._delta is not None and len(self._delta):
            found = self._delta.search(q, min(count, len(self._delta)))
            out += [(int(k), float(1.0 - d)) for k, d in zip(found.keys, found.distances)]
        if self.index is not None and len(self.index):
            k = count
            while True:  # more than count when changed persons shadow some of the nearest
                found = self.index.search(q, min(k, len(self.index)))
                base = [(int(k_), float(1.0 - d)) for k_, d in zip(found.keys, found.distances)
                        if int(k_) not in self._shadow]
                if len(base) >= count or k >= len(self.index):
                    break
                k *= 4
            out += base
        return sorted(out, key=lambda x: -x[1])[:count]

    def centroid(self, gid: int) -> np.ndarray | None:
        """A live person's unit centroid as indexed (None when not live)."""
        for index, here in ((self._delta, gid in self._shadow), (self.index, gid not in self._shadow)):
            if here and index is not None and gid in index:
                return unit(np.asarray(index.get(gid), dtype=np.float32))
        return None

    # ---- changing ----------------------------------------------------------------------------------

    def _touch(self, gid: int) -> None:
        """Put a person's current centroid in the index of changed persons (or take it out when it has none)."""
        self._shadow.add(gid)
        self._dirty.add(gid)
        if gid in self._delta:
            self._delta.remove(gid)
        self._sum(gid)
        merged = gid in self.persons.index and pd.notna(self.persons.at[gid, "merged_into"])
        if self._counts[gid] > 0 and not merged:
            self._delta.add(gid, unit(self._sums[gid]))

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
        col = lambda name: rows[name].to_numpy(dtype=object) if name in rows else [None] * n  # noqa: E731
        self._new_members.append(pd.DataFrame({
            "video_id": col("video_id"), "person_id": np.asarray(rows["person_id"], dtype=np.int64),
            "global_person_id": np.asarray(gids, dtype=np.int64), "similarity": np.asarray(similarity, np.float64),
            "pinned": np.full(n, pinned), "source": col("source"), "embedding": col("embedding"),
            "seen_s": col("seen_s"), "face_url": col("face_url"), "frame_url": col("frame_url"),
            "timestamp_s": col("timestamp_s"), "quality": col("quality"), "schema_version": schema.SCHEMA_VERSION}))

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
        rows = self.members.index if changed is None else self.members.index[self.members["video_id"].isin(changed)]
        self._load_embeddings(rows)
        mine = self.members.loc[rows]
        stale = [i for i, k, e in zip(rows, key(mine), mine["embedding"])
                 if k not in current or missing(e) or not np.allclose(current[k], e, atol=1e-6)]
        gone = self.members.loc[stale, "global_person_id"].astype(int)
        self._load_sums(set(gone))
        for i, gid in zip(stale, gone):
            self._add_to(gid, self.members.at[i, "embedding"], -1)
        touched = set(gone)
        if stale:
            self.members = self.members.drop(index=stale).reset_index(drop=True)
            self._rewrite = True  # the base files hold them
        report.detached = len(stale)
        attached = set(key(self.members if changed is None else
                           self.members[self.members["video_id"].isin(set(people["video_id"]))]))
        new = people[np.array([k not in attached for k in key(people)], dtype=bool)].reset_index(drop=True)
        # who is already attached for the videos being added (same-time people are never one person)
        kept = self.members[self.members["video_id"].isin(set(new["video_id"]))]
        self._together = {v: list(zip(g["global_person_id"].astype(int), g["seen_s"])) for v, g in
                          kept.groupby("video_id")}
        rest, joined = new.iloc[0:0], []
        if len(new) and not len(self.live_ids()) and len(self.persons) == 0:
            report.seeded = True
            report.created, rest = self._seed(new, max_distance, seed_max_count)
            new = rest.reset_index(drop=True)
            for m in self._new_members:  # the seeded people of a video, for the rows attached one by one
                for v, g, seen in zip(m["video_id"], m["global_person_id"], m["seen_s"]):
                    self._together.setdefault(v, []).append((int(g), seen))
        if not report.seeded or len(rest):
            for i in range(len(new)):
                gid, sim = self._attach_one(new.iloc[i], max_distance)
                if gid is None:  # a new person: in the index at once, for the next rows of this update
                    gid = self._create(np.asarray(new.at[i, "embedding"], np.float32), 1)
                    self._touch(gid)
                    report.created += 1
                    sim = 1.0
                else:  # a known person: its centroid moves, re-indexed once at the end
                    joined.append((gid, new.at[i, "embedding"]))
                    report.attached += 1
                self._member_rows(new.iloc[[i]], [gid], [sim])
                self._together.setdefault(new.at[i, "video_id"], []).append((gid, new.at[i, "seen_s"]
                                                                            if "seen_s" in new else None))
        self._load_sums({gid for gid, _ in joined})  # one read of the base's row groups, not one per person
        for gid, embedding in joined:
            self._add_to(gid, embedding, +1)
            touched.add(gid)
        for gid in touched:
            self._touch(gid)
        self.flush()
        return report

    def _seed(self, new: pd.DataFrame, max_distance: float, max_group: int | None) -> tuple[int, pd.DataFrame]:
        """An empty registry built from ``new`` at once: the graph of people within ``max_distance`` of each
        other (each person's nearest by sign bits), then, inside each connected part of it, average linkage
        with the cannot-links of people seen together (:mod:`framepipe.people_index`): the same groups as average
        linkage over everyone, without its n x n matrix. Parts over ``max_group`` people are returned, to be
        attached one by one through the index. Returns (persons created, rows left)."""
        column = new["embedding"]
        candidates = None  # each person's nearest by signature, found before the embeddings' matrix is made:
        if len(new) > people_index.EXACT_UP_TO:  # the two never in memory together
            candidates = people_index.nearest_by_bits(np.concatenate([
                people_index.sign_bits(np.stack(column.iloc[i:i + CHUNK].to_numpy()))
                for i in range(0, len(new), CHUNK)]))
        # one matrix of the unit embeddings and their norms (the sums are of the raw ones): memory of one copy
        emb = np.stack([np.asarray(e, np.float32) for e in column])
        norms = np.maximum(np.sqrt(np.einsum("ij,ij->i", emb, emb)), 1e-12).astype(np.float32)  # no n x d temporary
        emb /= norms[:, None]
        parts = people_index.neighbour_parts(emb, max_distance, candidates)
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
                sub = people_index.split_co_occurring(
                    emb[members], people_index.cluster_embeddings(emb[members], max_distance), part, max_distance)
            labels[members] = sub + next_label
            next_label += int(sub.max()) + 1
        del parts
        rest = new.iloc[np.sort(np.concatenate(left))] if left else new.iloc[0:0]
        keep = labels >= 0
        if not keep.all():
            new, emb, norms, labels = new[keep].reset_index(drop=True), emb[keep], norms[keep], labels[keep]
        _, first, labels = np.unique(labels, return_index=True, return_inverse=True)
        rank = np.empty(len(first), dtype=np.int64)  # numbered in order of first appearance
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        labels = rank[labels]
        count = len(first)
        sums = np.zeros((count, emb.shape[1]), dtype=np.float32)
        chunks = [slice(i, i + CHUNK) for i in range(0, len(emb), CHUNK)]  # temporaries of a chunk only
        for c in chunks:
            np.add.at(sums, labels[c], emb[c] * norms[c, None])
        sizes = np.bincount(labels, minlength=count)
        gids = self._create_many(sums, sizes)
        lengths = np.maximum(np.linalg.norm(sums, axis=1), 1e-12).astype(np.float32)
        sims = np.concatenate([np.einsum("ij,ij->i", emb[c], sums[labels[c]] / lengths[labels[c], None])
                               for c in chunks]) if chunks else np.zeros(0, np.float32)
        del emb
        self._member_rows(new, gids[labels], sims)
        for c in (slice(i, i + CHUNK) for i in range(0, count, CHUNK)):  # unit centroids a chunk at a time
            self.index.add(gids[c].astype(np.uint64), sums[c] / lengths[c, None])
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
            "embedding_sum": list(np.asarray(sums, dtype=np.float32)), "created_at": now,  # row views
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
        gid = self._live(gid)
        self.persons.at[gid, "name"] = name.strip() or None
        self._dirty.add(gid)

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
        self._rewrite = True  # members change their global id: the base files are written anew
        moved = self.members["global_person_id"] == other
        self._load_embeddings(self.members.index[moved])  # found by their old id only
        self.members.loc[moved, "global_person_id"] = keep
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
        self._load_embeddings([i])
        emb = np.asarray(self.members.at[i, "embedding"], np.float32)
        self._add_to(old, emb, -1)
        self._rewrite = True  # a member changes its global id: the base files are written anew
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
            "name": m["global_person_id"].map(names),
            "video_id": m["video_id"], "person_id": m["person_id"].astype(int), "similarity": m["similarity"],
            "source": m["source"], "face_url": m["face_url"], "frame_url": m["frame_url"],
            "timestamp_s": m["timestamp_s"], "quality": m["quality"], "embedding_model": self.model or None,
            "schema_version": schema.SCHEMA_VERSION,
        })
