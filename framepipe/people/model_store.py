"""How one embedding model's person registry is read and written (:class:`StoredRegistry`, the base of
:class:`framepipe.people.model_registry.Registry`): a base of four Parquet files sorted by global id plus the
segments written since, read whole or ``light`` (without centroid sums and member embeddings, which are read by row
group when needed), the HNSW index of the base's centroids memory-mapped, what a new version commits (a segment,
or the base anew), and each member's live id (a merged id is an alias of its survivor; a join by an update leaves
its members stored where they are). :mod:`framepipe.people.files` holds the files' layout."""

from __future__ import annotations

import functools
import io
import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from framepipe import commits, schema
from framepipe.errors import DestinationError
from framepipe.people.files import (COMPACT_ROWS, COMPACT_SEGMENTS, INDEX_FILE, LAYOUT, ROW_GROUP, missing, model_dir,
                                    new_index, restore_index, segments_of, table_bytes, units, view_index)
from framepipe.storage import Destination, destination

log = logging.getLogger(__name__)


@dataclass
class StoredRegistry:
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
    def empty(cls, model: str, dim: int) -> "StoredRegistry":
        persons = schema.GLOBAL_PERSON_SCHEMA.empty_table().to_pandas().set_index("global_person_id", drop=False)
        members = schema.MEMBERS_SCHEMA.empty_table().to_pandas()
        return cls(model, dim, persons, members, new_index(dim), _delta=new_index(dim), _rewrite=True)

    @classmethod
    def load(cls, dest: str | Destination, model: str, dim: int, version: commits.Version | None = None,
             light: bool = False) -> "StoredRegistry":
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
    def _whole(cls, model: str, dim: int, part, files: dict) -> "StoredRegistry":
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
        at = self.persons.index.get_indexer(pd.Index(list(gids), dtype="int64"))
        sums = self.persons["embedding_sum"]
        want = sorted({int(self.persons.index[p]) for p in at if p >= 0 and missing(sums.iat[p])})
        if not want:  # all read already: no copy of the column
            return
        column = sums.to_numpy(dtype=object).copy()
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

    def live_ids(self) -> np.ndarray:
        self.flush()
        p = self.persons
        if not len(p):
            return np.zeros(0, dtype=np.int64)
        return p.index[p["merged_into"].isna() & (p["members"] > 0)].to_numpy(dtype=np.int64)

    # ---- sums and live ids (a merged id is an alias of its survivor) ----------------------------------------

    def _sum(self, gid: int) -> np.ndarray:
        if gid not in self._sums:
            self._load_sums([gid])
            self._sums[gid] = np.asarray(self.persons.at[gid, "embedding_sum"], dtype=np.float64)
            self._counts[gid] = int(self.persons.at[gid, "members"])
        return self._sums[gid]

    def _count(self, gid: int) -> int:
        self._sum(gid)  # (re)reads the sum and the count together
        return self._counts[gid]

    def resolve(self, gid: int) -> int:
        """The live id an id stands for (merged ids are aliases of their survivor)."""
        seen = set()
        while gid in self.persons.index and pd.notna(self.persons.at[gid, "merged_into"]) and gid not in seen:
            seen.add(gid)
            gid = int(self.persons.at[gid, "merged_into"])
        return gid

    def _aliases(self) -> dict[int, int]:
        """Merged id -> the live id it stands for, of every merged person (of ``persons``: flushed)."""
        merged = self.persons.index[self.persons["merged_into"].notna()]
        return {int(g): self.resolve(int(g)) for g in merged}

    def live_member_ids(self) -> np.ndarray:
        """Each member row's live global id: the id it is stored under, or the survivor that id is an alias of
        (a join by an update leaves the members where they are stored)."""
        self.flush()
        return self._live_ids()

    def _live_ids(self) -> np.ndarray:
        alias = self._aliases()
        ids = self.members["global_person_id"].to_numpy(dtype=np.int64).copy()
        if alias:
            hit = np.isin(ids, np.fromiter(alias, dtype=np.int64, count=len(alias)))
            ids[hit] = [alias[int(i)] for i in ids[hit]]
        return ids

    def members_of(self, gids: list[int]) -> pd.DataFrame:
        """The members (with their embeddings) of these live global persons, under their live ids."""
        self.flush()
        wanted, alias = {int(g) for g in gids}, self._aliases()
        stored = wanted | {a for a, g in alias.items() if g in wanted}
        rows = self.members.index[self.members["global_person_id"].isin(stored)]
        self._load_embeddings(rows)
        out = self.members.loc[rows].copy()
        out["global_person_id"] = [alias.get(int(g), int(g)) for g in out["global_person_id"]]
        return out

    def index_rows(self) -> pd.DataFrame:
        """Members as people-index rows (:data:`~framepipe.schema.PEOPLE_INDEX_SCHEMA`), with names."""
        self.flush()
        m = self.members
        live = pd.Series(self._live_ids(), index=m.index)
        names = self.persons["name"]
        return pd.DataFrame({
            "global_person_id": live.astype(int),
            "name": live.map(names),
            "video_id": m["video_id"], "person_id": m["person_id"].astype(int), "similarity": m["similarity"],
            "source": m["source"], "face_url": m["face_url"], "frame_url": m["frame_url"],
            "timestamp_s": m["timestamp_s"], "quality": m["quality"], "embedding_model": self.model or None,
            "schema_version": schema.SCHEMA_VERSION,
        })


def persons_at(d: Destination, version: commits.Version) -> pd.DataFrame | None:
    """The global persons of every model as of ``version`` (a ``model`` column added; the centroid left out):
    what :func:`framepipe.people.registry.load_persons` gives analysts."""
    if version.meta.get("layers"):  # base files and segments written since: the registry reads them
        regs = [StoredRegistry.load(d, model, int(dim), version, light=True) for model, dim in sorted(
            version.meta.get("dims", {}).items())]
        if not regs:
            return None
        return pd.concat([r.persons.reset_index(drop=True).drop(columns=["embedding_sum"]).assign(model=r.model)
                          for r in regs], ignore_index=True)
    if version.number:
        found = {name.split("/")[0]: (lambda n=name: commits.read(d, schema.REGISTRY, version, n))
                 for name in version.files if name.endswith("/persons.parquet")}
    else:  # written before versions (schema 1.2)
        found = {m: (lambda m=m: d.read(f"{schema.REGISTRY}/{m}/persons.parquet")) for m in d.dirs(schema.REGISTRY)
                 if "persons.parquet" in d.list(f"{schema.REGISTRY}/{m}")}
    if not found:
        return None
    tables = [pq.read_table(io.BytesIO(found[m]())).to_pandas().assign(model=m) for m in sorted(found)]
    return pd.concat(tables, ignore_index=True).drop(columns=["embedding_sum"])
