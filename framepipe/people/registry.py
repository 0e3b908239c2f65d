"""The person registry: stable global identities per destination and embedding model.

``DEST/registry/`` is a log of committed versions (:mod:`framepipe.commits`: ``_log/<n>.json`` names the data
files of version n; a writer commits version n+1 only if nobody did first, else applies its change again on the
newer version). Each version holds, per model (``<model>/...``), and the people index of all models:

* ``persons.parquet`` (:data:`~framepipe.schema.GLOBAL_PERSON_SCHEMA` but the centroid): one row per global person,
  with its name, its count of members and ``merged_into`` for ids merged away (kept as aliases); ``sums.parquet``:
  the running sum of each person's members' embeddings (the centroid);
* ``members.parquet`` (:data:`~framepipe.schema.MEMBERS_SCHEMA` but the embedding): one row per (video, local
  person) attached, with its similarity to the global person when attached, and ``pinned`` when a correction placed
  it; ``embeddings.parquet``: each member's embedding;
* ``index.usearch``: an HNSW index (usearch) of the live persons' centroids, rebuilt from the sums whenever it is
  missing or does not match them;
* ``persons+<n>.parquet`` and ``members+<n>.parquet``: **segments**. The five base files (the heavy ones sorted
  by global id in row groups of 2,048, so that the rows of a few persons are a few ranged reads) are written by the
  first build and whenever the base is rewritten; an update that only adds people (new videos) writes one segment,
  the whole rows of the persons it changed and of the members it added, and keeps the base by reference. A reader
  reads the two small base files whole, the heavy ones only for the persons it needs, and takes the last row of
  each person. Persons changed since the base are searched in a small index of their own that shadows their base
  entries. A change that is not an addition (a merge, a split, the people of a video processed again) or the 32nd
  segment rewrites the base and drops the segments, so an update after a few videos writes kilobytes, not the
  registry.

:meth:`Registry.update` attaches what is new in the manifests (a video processed since the last update, or
processed again with other people) and never touches what is already attached:

* an empty registry is seeded by ``framepipe people``'s average-linkage clustering under the pack's
  :class:`~framepipe.people.grouping.JoinRule` (no chaining; two single photos join only on strong evidence, an
  odd photo joins the many others of its person on their average; two people one video kept apart are not
  joined), up to ``people_max_count`` people;
* after that (and beyond that count) each new person is compared with its nearest live global persons as
  average linkage compares groups and joins the nearest that reaches the rule's bar for its size, by a margin over
  the next (else only on the strongest evidence: the look-alike guard), unless that person holds someone the
  per-video step kept apart from it; otherwise it becomes a new global person with the next id;
* then the persons the update changed are compared with their nearest live persons: two whose average similarity
  (member by member) reaches the bar of two single photos are joined (two photos of one person too unlike each
  other to join alone, once a third joins one of them), under the same guards, and never a person a correction
  placed or two persons named differently. The batch build joins such groups on a lower bar, closest first; an
  update sees people in the order they come and cannot undo a join, so it joins persons already made only on the
  strongest evidence. The younger id becomes an alias of the older (``merged_into``, as a correction's merge), its
  members stay stored under it (read under the live id), so the update still writes a segment. Input by input
  still splits a little more than a batch build (``bench/registry_level.py`` measures how often the two differ);
  ids already given are never taken back.

Global ids are never renumbered or reused: they come from the committed version only, and all of one version's
files change together. Corrections (:meth:`name`, :meth:`merge`, :meth:`split`) are stored in the same files, so
later updates keep them: a name stays on its person, a merge is never undone (the merged id becomes an alias of the
survivor), a split-off member stays pinned to its own person. Two ``framepipe people`` runs at once each commit a
version of their own, the second on top of the first; one killed at any point leaves the previous version whole.
Search only reads a committed version.

Why usearch: an embedded HNSW index (one pip wheel, no server) that adds and removes single vectors and saves to
one file (bench/people_scale.py, 1,000,000 128-d people on 2 cores: recall@10 0.956 against exact search, p50
4 ms, 31,600 queries/min on an index already in memory; a search first reads the manifests). faiss-cpu is a far
bigger dependency whose HNSW index cannot remove vectors; hnswlib is much the same algorithm, less actively kept;
LanceDB's IVF-PQ indexes must be retrained as data grows.
The registry's tables stay plain Parquet, so a notebook reads them with pandas.
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa

from framepipe import calibration, commits, manifests, schema, tables
from framepipe.people.files import LAYOUT, unit
from framepipe.people.grouping import JoinRule
from framepipe.people.model_registry import CANDIDATES, CorrectionError, Registry, Update
from framepipe.people.model_store import persons_at
from framepipe.storage import Destination, destination

__all__ = ["CANDIDATES", "CorrectionError", "Corrections", "JoinRule", "Registry", "Update", "in_memory_index",
           "index_table", "join_rule", "model_groups", "models_of", "people_since", "publish_index", "registered",
           "unit", "update_destination"]

log = logging.getLogger(__name__)


def models_of(people: pd.DataFrame) -> list[tuple[str, int, pd.DataFrame]]:
    """(registry name, dimension, rows) for each embedding model in the people rows (a name with two dimensions,
    two packs under one name, gets one registry per dimension)."""
    out = []
    for model in sorted(people["embedding_model"].fillna("").unique()) if len(people) else []:
        group = people[people["embedding_model"].fillna("") == model]
        dims = sorted({len(e) for e in group["embedding"]})
        for dim in dims:
            part = group[[len(e) == dim for e in group["embedding"]]]
            out.append((model if len(dims) == 1 else f"{model}-{dim}d", dim, part))
    return out


def index_table(registries: list[Registry]) -> pa.Table:
    """The people index (:data:`~framepipe.schema.PEOPLE_INDEX_SCHEMA`) of these registries, by global id."""
    rows = [r.index_rows() for r in registries]
    index = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=schema.PEOPLE_INDEX_SCHEMA.names)
    index = index.sort_values(["global_person_id", "source", "person_id"], kind="stable", ignore_index=True)
    return pa.Table.from_pandas(index[schema.PEOPLE_INDEX_SCHEMA.names], schema=schema.PEOPLE_INDEX_SCHEMA,
                                preserve_index=False)


def join_rule(max_distance: float | None, model: str | None, dim: int | None, models: str | None) -> JoinRule:
    """When people of ``model`` (``dim``-d) are one person: the pack's calibration, its loosest join at
    ``max_distance`` when given (``people_max_distance``)."""
    return JoinRule.calibrated(calibration.lookup(model, dim, models), max_distance)


def in_memory_index(people: pd.DataFrame, max_distance: float | None = None, models: str | None = None) -> pd.DataFrame:
    """People-index rows of registries built from scratch in memory (nothing read or written): a notebook's view
    of a destination on which ``framepipe people`` has not run, and the benchmarks' and tests' view of a set of
    people rows."""
    registries, next_id = [], [0]
    for name, dim, part in models_of(people):
        reg = Registry.empty(name, dim)
        reg.next_id = next_id
        reg.update(part, join_rule(max_distance, name, dim, models))
        registries.append(reg)
    return index_table(registries).to_pandas()


@dataclass
class Corrections:
    names: dict[int, str] = field(default_factory=dict)
    merges: list[tuple[int, int]] = field(default_factory=list)
    splits: list[tuple[str, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.names or self.merges or self.splits)


def update_destination(
    dest: str | Destination, max_distance: float | None = None, seed_max_count: int | None = None,
    corrections: Corrections | None = None, model: str | None = None, people: pd.DataFrame | None = None,
    models: str | None = None,
) -> tuple[pd.DataFrame, dict[str, Update], dict[str, Registry]]:
    """Bring every model's registry up to date with the destination's manifests (``people``: those already read;
    ``max_distance``: None = each model's calibration, ``models`` the pack setting in force), apply
    ``corrections`` (to the registry of ``model``, or of the only model) and commit it all as one new version
    (:mod:`framepipe.commits`): a writer that finds a newer version committed meanwhile applies its update and
    corrections again on that one, so two writers never lose each other's work, and global ids come from the
    committed version only (never reused). Then ``manifests/people_index.parquet`` is refreshed. Returns the index
    rows, each model's :class:`Update` and the registries."""
    d = manifests.destination(dest)
    d.remove_partials(schema.REGISTRY)  # what a killed run left half-written (never a live writer's)
    d.remove_partials(posixpath.dirname(schema.PEOPLE_INDEX), prefix=posixpath.basename(schema.PEOPLE_INDEX))
    given = people
    done: dict = {}

    def change(version: commits.Version):
        rows, partial, seen = (given, False, None) if given is not None else people_since(d, version)
        if tables.DAMAGED and not partial:  # rows of a damaged file were skipped: their videos' members stay,
            partial, seen = True, version.meta.get("people_version")  # and the next update reads them again
        groups = model_groups(rows, version, partial)
        registries = [Registry.load(d, name, dim, version, light=partial) for name, dim, _ in groups]
        next_id = [max([int(version.meta.get("next_id", 0))]
                       + [int(r.persons.index.max()) + 1 for r in registries if len(r.persons)])]
        updates = {}
        for reg, (_, _, rows) in zip(registries, groups):
            reg.next_id = next_id
            rule = join_rule(max_distance, reg.model, reg.dim, models)
            updates[reg.model] = reg.update(rows, rule, seed_max_count, partial=partial)
        if corrections:
            _correct(registries, corrections, model)
        parts, dropped = {}, set()
        for reg in registries:
            written, gone = reg.parts()
            parts.update(written)
            dropped |= gone
        table = index_table(registries)
        parts[schema.PEOPLE_INDEX_PART] = schema.parquet_bytes(table)
        done.update(registries=registries, updates=updates, table=table)
        keep = {k: v for k, v in version.files.items() if k not in parts and k not in dropped}
        meta = {"next_id": next_id[0], "models": sorted({r.model for r in registries}),
                "dims": {r.model: r.dim for r in registries}, "layers": LAYOUT}
        if seen is not None:
            meta["people_version"] = seen
        return parts, meta, keep

    version = commits.transact(d, schema.REGISTRY, change)
    publish_index(d, version)
    return done["table"].to_pandas(), done["updates"], {r.model: r for r in done["registries"]}


# the people columns a registry reads (a whole destination's rows: not the boxes, time ranges and the like)
PEOPLE_COLUMNS = ["video_id", "source", "person_id", "embedding", "embedding_model", "seen_s", "face_url",
                  "frame_url", "timestamp_s", "quality"]


def people_since(d: Destination, version: commits.Version) -> tuple[pd.DataFrame, bool, int | None]:
    """The people rows a registry at ``version`` has not seen: (rows, whether they are only what changed, the
    people table's version they bring it to). Only the rows appended since the version it records
    (:func:`framepipe.tables.new_people`, the table's change feed); the whole table when it records none (a
    registry of an older framepipe, a destination not yet a table) or the feed cannot say."""
    since = version.meta.get("people_version")
    found = tables.new_people(d, int(since)) if since is not None and version.meta.get("dims") else None
    if found is not None:
        rows, upto = found
        return rows.to_pandas(), True, upto
    seen = tables.version(d, "people")  # before reading: rows appended meanwhile are read again next time
    return manifests.load_people(d, columns=PEOPLE_COLUMNS), False, seen


def registered(version: commits.Version) -> list[tuple[str, int]]:
    return [(name, int(dim)) for name, dim in version.meta.get("dims", {}).items()]


def model_groups(rows: pd.DataFrame, version: commits.Version, partial: bool) -> list[tuple[str, int, pd.DataFrame]]:
    """:func:`models_of` the rows; with ``partial`` rows (what changed since ``version``), every model the
    registry at ``version`` holds too, with or without new people."""
    groups = models_of(rows)
    if partial:
        names = {name for name, _, _ in groups}
        groups += [(name, dim, rows.iloc[0:0]) for name, dim in registered(version) if name not in names]
    return groups


def _correct(registries: list[Registry], corrections: Corrections, model: str | None) -> None:
    chosen = [r for r in registries if model in (None, r.model)]
    if len(chosen) != 1:
        raise CorrectionError(f"corrections need one model; this destination has {[r.model for r in registries]}"
                              " (--model)")
    reg = chosen[0]
    for keep, other in corrections.merges:
        reg.merge(keep, other)
    for video_id, person_id in corrections.splits:
        reg.split(video_id, person_id)
    for gid, given in corrections.names.items():
        reg.name(gid, given)


def publish_index(d: Destination, version: commits.Version) -> None:
    """Copy a committed version's people index to ``manifests/people_index.parquet``; a writer that sees a newer
    version committed meanwhile copies that one instead, so the copy ends at the newest version."""
    while schema.PEOPLE_INDEX_PART in version.files:
        d.write(schema.PEOPLE_INDEX, commits.read(d, schema.REGISTRY, version, schema.PEOPLE_INDEX_PART))
        newest = commits.latest(d, schema.REGISTRY)
        if newest.number == version.number:
            return
        version = newest


def load_persons(dest: str | Destination) -> pd.DataFrame | None:
    """The person registry's global persons as of its latest committed version (every embedding model, a ``model``
    column added; the centroid left out), or None before ``framepipe people`` has run: for a notebook,
    ``registry.load_persons("s3://bucket/out")`` beside :mod:`framepipe.manifests`' readers."""
    d = destination(dest)
    return commits.first_readable(d, schema.REGISTRY, lambda version: persons_at(d, version))
