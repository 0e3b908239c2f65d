"""One embedding model's person registry and the changes made to it: attaching new people (an empty registry
seeded at once by :func:`framepipe.people.grouping.seed_groups`) and joining the persons they link, names, merges,
splits. How it is read and written is :mod:`framepipe.people.model_store`; :mod:`framepipe.people.registry` keeps a
destination's registries up to date and commits them (its docstring describes the whole)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from framepipe import schema
from framepipe.errors import ErrorCode, FramepipeError
from framepipe.people import grouping
from framepipe.people.grouping import JoinRule
from framepipe.people.files import missing, unit
from framepipe.people.model_store import StoredRegistry

CANDIDATES = 10  # nearest global persons looked at when attaching
CHUNK = grouping.CHUNK


class CorrectionError(FramepipeError):
    code = ErrorCode.BAD_CORRECTION


@dataclass
class Update:
    attached: int = 0  # new members put with an existing global person
    created: int = 0  # new global persons
    detached: int = 0  # members whose video was processed again (or removed)
    merged: int = 0  # global persons joined into another, on the strongest evidence (the merged id: an alias)
    seeded: bool = False


def kept_apart(seen_a, embedding_a, seen_b, embedding_b, rule: JoinRule) -> bool:
    """Whether two people of one input were kept apart by the per-video step: seen at the same time, or less alike
    than ``rule.same_input`` (:func:`framepipe.people.grouping.kept_apart` for one pair, as an update sees them)."""
    if grouping.seen_together(seen_a, seen_b):
        return True
    return not missing(embedding_a) and not missing(embedding_b) and float(
        unit(np.asarray(embedding_a, np.float32)) @ unit(np.asarray(embedding_b, np.float32))) < rule.same_input


class Registry(StoredRegistry):
    """One model's registry in memory (the fields and their layers: :class:`StoredRegistry`)."""

    # ---- reading -----------------------------------------------------------------------------------

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
        """A member in (+1) or out (-1): the sum is of unit embeddings, so that ``e @ sum / members`` is the
        average similarity of ``e`` to the members (average linkage's)."""
        self._sums[gid] = self._sum(gid) + sign * unit(np.asarray(embedding, dtype=np.float32)).astype(np.float64)
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

    def update(self, people: pd.DataFrame, rule: JoinRule | float, seed_max_count: int | None = None,
               partial: bool = False) -> Update:
        """Attach the people rows (``manifests.load_people``, this model's only) that are not attached yet, by
        ``rule`` (a float: one cosine distance for every join, :meth:`JoinRule.fixed`). ``partial``: the rows are
        the whole current people of their videos only (what changed since the last update), not of the
        destination: members of other videos are left as they are."""
        rule = rule if isinstance(rule, JoinRule) else JoinRule.fixed(float(rule))
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
        gone = [self.resolve(int(g)) for g in self.members.loc[stale, "global_person_id"]]
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
        # who is already attached for the videos being added (the per-video step kept them apart)
        kept = self.members.index[self.members["video_id"].isin(set(new["video_id"]))]
        self._load_embeddings(kept)
        kept = self.members.loc[kept]
        self._together = {v: list(zip(map(self.resolve, g["global_person_id"].astype(int)), g["seen_s"],
                                      g["embedding"])) for v, g in kept.groupby("video_id")}
        rest = new.iloc[0:0]
        if len(new) and not len(self.live_ids()) and len(self.persons) == 0:
            report.seeded = True
            report.created, rest = self._seed(new, rule, seed_max_count)
            new = rest.reset_index(drop=True)
            for m in self._new_members:  # the seeded people of a video, for the rows attached one by one
                for v, g, seen, e in zip(m["video_id"], m["global_person_id"], m["seen_s"], m["embedding"]):
                    self._together.setdefault(v, []).append((int(g), seen, e))
        created: set[int] = set()
        if not report.seeded or len(rest):
            embeddings = [unit(np.asarray(e, np.float32)) for e in new["embedding"]]
            self._load_sums({gid for e in embeddings for gid, _ in self.nearest(e, CANDIDATES)})  # one read
            for i in range(len(new)):
                gid, sim = self._attach_one(new.iloc[i], embeddings[i], rule)
                if gid is None:  # a new person: in the index at once, for the next rows of this update
                    gid = self._create(embeddings[i], 1)
                    self._touch(gid)
                    created.add(gid)
                    report.created += 1
                    sim = 1.0
                else:  # a known person: its sum grows now, its centroid is re-indexed once at the end
                    self._add_to(gid, new.at[i, "embedding"], +1)
                    touched.add(gid)
                    report.attached += 1
                self._member_rows(new.iloc[[i]], [gid], [sim])
                self._together.setdefault(new.at[i, "video_id"], []).append(
                    (gid, new.at[i, "seen_s"] if "seen_s" in new else None, embeddings[i]))
        for gid in touched:
            self._touch(gid)
        report.merged = self._join_pass(touched | created, rule)
        self.flush()
        return report

    def _seed(self, new: pd.DataFrame, rule: JoinRule, max_group: int | None) -> tuple[int, pd.DataFrame]:
        """An empty registry built from ``new`` at once, in the groups of
        :func:`~framepipe.people.grouping.seed_groups` (the same groups as average linkage over everyone, without
        its n x n matrix). Parts over ``max_group``
        people are returned, to be attached one by one through the index. Returns (persons created, rows left)."""
        labels, emb = grouping.seed_groups(new, rule, max_group)
        rest = new.iloc[np.flatnonzero(labels < 0)]
        keep = labels >= 0
        if not keep.all():
            new, emb, labels = new[keep].reset_index(drop=True), emb[keep], labels[keep]
        _, first, labels = np.unique(labels, return_index=True, return_inverse=True)
        rank = np.empty(len(first), dtype=np.int64)  # numbered in order of first appearance
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        labels = rank[labels]
        count = len(first)
        sums = np.zeros((count, emb.shape[1]), dtype=np.float32)
        chunks = [slice(i, i + CHUNK) for i in range(0, len(emb), CHUNK)]  # temporaries of a chunk only
        for c in chunks:
            np.add.at(sums, labels[c], emb[c])  # unit embeddings (_add_to)
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

    def _attach_one(self, row: pd.Series, e: np.ndarray, rule: JoinRule) -> tuple[int | None, float]:
        """The global person a new person (``e``: its unit embedding) joins, and their average similarity; None
        for a person of its own. Its nearest global persons by centroid are compared as average linkage compares
        groups (the new person against each member, through the person's embedding sum): the nearest joins when
        it reaches ``rule``'s bar for its size (``rule.single`` when the next is within ``rule.margin``: the
        look-alike guard) and holds no person of this input that the per-video step kept apart from this one."""
        seen = row["seen_s"] if "seen_s" in row else None
        same_input = self._together.get(row["video_id"], [])
        options = []
        for gid, _ in self.nearest(e, CANDIDATES):
            if any(g == gid and kept_apart(seen, row["embedding"], s, m, rule) for g, s, m in same_input):
                continue  # kept apart from someone of this person already in this input
            options.append((float(e @ self._sum(gid)) / max(self._counts[gid], 1), gid))
        if not options:
            return None, 0.0
        options.sort(reverse=True)
        (best, gid), runner = options[0], (options[1][0] if len(options) > 1 else -1.0)
        # the batch build's bar of a person against a group of n: two single photos need the strongest evidence
        # here too (two persons this leaves apart are joined by _join_pass once the evidence for it comes)
        bar = float(rule.similarity(1, self._counts[gid]))
        if best - runner < rule.margin:  # a look-alike nearly as close: that alone is not enough
            bar = max(bar, rule.single)
        return (gid, best) if best >= bar else (None, 0.0)

    def _join_pass(self, changed: set[int], rule: JoinRule) -> int:
        """Joins of persons already made, for the persons this update changed: a changed person and one of its
        nearest live persons whose average similarity (member by member, through the embedding sums) reaches
        ``rule.single`` are one person, and are joined (two photos of one person too unlike each other to join
        alone, once a third joins one of them). The batch build's average linkage would join them too (its bar
        for groups is lower), but in its order, closest first, while an update sees the people in the order they
        came, and a later arrival cannot undo a join: so only the strongest evidence, whatever the sizes (with the
        groups' bar, a look-alike sister's photo joined a pair of her sister's that had not yet met the rest). Never
        two persons holding people one input kept apart, a person a correction placed (a split-off member) or two
        persons named differently. The younger id becomes an alias of the older (``merged_into``) and its members
        stay stored where they are, so the update still writes a segment. Returns how many joins it made."""
        self.flush()
        queue = sorted({self.resolve(g) for g in changed}, reverse=True)
        joins = 0
        live = None  # each member's live id, read once a pair reaches the bar
        while queue:
            gid = queue.pop()
            size = self._count(gid)
            if self.resolve(gid) != gid or size <= 0:
                continue
            total = self._sum(gid)
            near = [other for other, _ in self.nearest(unit(total), CANDIDATES) if other != gid]
            self._load_sums(near)  # one read
            options = sorted(((float(total @ self._sum(o)) / (size * self._count(o)), o) for o in near), reverse=True)
            for sim, other in options:
                if sim < rule.single:
                    break
                live = self._live_ids() if live is None else live
                if self._joinable(gid, other, rule, live):
                    keep, gone = min(gid, other), max(gid, other)
                    self._alias_join(keep, gone)
                    live[live == gone] = keep
                    joins += 1
                    queue.append(keep)
                    break
        return joins

    def _joinable(self, a: int, b: int, rule: JoinRule, live: np.ndarray) -> bool:
        """Whether two live persons may be joined without a correction's say: neither holds a member a correction
        placed, they are not named differently, and no input holds a person of each that the per-video step kept
        apart (seen at the same time, or less alike than ``rule.same_input``). ``live``: each member's live id."""
        names = [self.persons.at[g, "name"] for g in (a, b)]
        if all(isinstance(n, str) and n for n in names) and names[0] != names[1]:
            return False
        rows = self.members.index[(live == a) | (live == b)]
        mine = self.members.loc[rows]
        if mine["pinned"].any():
            return False
        side = live[rows] == a
        shared = set(mine["video_id"][side]) & set(mine["video_id"][~side])
        if not shared:
            return True
        pick = rows[mine["video_id"].isin(shared).to_numpy()]
        self._load_embeddings(pick)
        both = self.members.loc[pick]
        for _, group in both.groupby("video_id"):
            ids = live[group.index]
            for seen_a, e_a in zip(group["seen_s"][ids == a], group["embedding"][ids == a]):
                if any(kept_apart(seen_a, e_a, seen_b, e_b, rule)
                       for seen_b, e_b in zip(group["seen_s"][ids == b], group["embedding"][ids == b])):
                    return False
        return True

    def _alias_join(self, keep: int, other: int) -> None:
        """``other`` joined into ``keep`` as an alias: sums, counts and the name move, the members stay stored
        under their id (read through :meth:`live_member_ids`)."""
        self._sums[keep] = self._sum(keep) + self._sum(other)
        self._counts[keep] += self._counts[other]
        self._sums[other], self._counts[other] = np.zeros_like(self._sums[other]), 0
        if pd.isna(self.persons.at[keep, "name"]):
            self.persons.at[keep, "name"] = self.persons.at[other, "name"]
        self.persons.at[other, "merged_into"] = keep
        self._touch(other)
        self._touch(keep)

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
        self._alias_join(keep, other)
        self._rewrite = True  # members change their global id: the base files are written anew
        moved = self.members["global_person_id"] == other
        self._load_embeddings(self.members.index[moved])  # found by their old id only
        self.members.loc[moved, "global_person_id"] = keep
        self.flush()
        return keep

    def split(self, video_id: str, person_id: int) -> int:
        """Give one (video, person) a global person of its own, pinned there; returns the new id."""
        self.flush()
        rows = self.members.index[(self.members["video_id"] == video_id) & (self.members["person_id"] == person_id)]
        if not len(rows):
            raise CorrectionError(f"no person {person_id} of video {video_id} in the registry")
        i = rows[0]
        live = self.live_member_ids()
        old = int(live[i])
        if bool(self.members.at[i, "pinned"]) and (live == old).sum() == 1:
            return old  # split off already (the same correction applied again after a concurrent commit)
        self._load_embeddings([i])
        emb = np.asarray(self.members.at[i, "embedding"], np.float32)
        self._add_to(old, emb, -1)
        self._rewrite = True  # a member changes its global id: the base files are written anew
        gid = self._create(unit(emb), 1)
        self.members.at[i, "global_person_id"] = gid
        self.members.at[i, "pinned"] = True
        self.members.at[i, "similarity"] = 1.0
        self._touch(old)
        self._touch(gid)
        self.flush()
        return gid
