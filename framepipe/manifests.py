"""Reading a destination's manifests back as pandas DataFrames (local directory or ``s3://bucket/prefix``).

Every run appends its rows to two Delta Lake tables, ``DEST/manifests/videos`` and ``DEST/manifests/people``
(:mod:`framepipe.tables`, schemas in :mod:`framepipe.schema`); ``framepipe people`` adds
``DEST/manifests/people_index.parquet`` and the person registry ``DEST/registry/`` (read with
:func:`framepipe.people.registry.load_persons`).
The readers here give each video's current rows (its last run), the same on local folders and S3, cast older
rows to the current schema (new columns are null), and read destinations written by 0.2.x (a Parquet file per
video, until ``framepipe compact`` moves them into the tables) and before the ``manifests/`` folder existed::

    from framepipe import manifests
    videos = manifests.load_videos("s3://bucket/out")
    people = manifests.load_people("s3://bucket/out")
"""

from __future__ import annotations

import io

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from framepipe import commits, schema, table_upkeep, tables
from framepipe.storage import Destination, destination
from framepipe.tables import conform as _conform


def _before_manifests(d: Destination, legacy_name: str, target: pa.Schema) -> pa.Table | None:
    """Destinations written before ``manifests/`` existed: ``<video_id>/<legacy_name>``."""
    if d.dirs(schema.MANIFESTS) or d.list(schema.MANIFESTS):
        return None
    found = [f"{v}/{legacy_name}" for v in sorted(d.dirs("")) if legacy_name in d.list(v)]
    return tables.read_files(d, found, target) if found else None


def load_table(dest: str | Destination, kind: str, filter=None, columns: list[str] | None = None) -> pa.Table:
    """``kind``: "videos" or "people"; the destination's current rows as one Arrow table of the current schema
    (``filter``: a pyarrow expression on the table's columns, for a part of it; ``columns``: those only)."""
    d = destination(dest)
    target, legacy = {"videos": (schema.VIDEO_SCHEMA, "video.parquet"), "people": (schema.PERSON_SCHEMA, "people.parquet")}[kind]
    old = _before_manifests(d, legacy, target)
    if old is not None:
        old = old if filter is None else old.filter(filter)
        return old if columns is None else old.select(columns)
    table = tables.read(d, kind, filter, columns)
    return table if columns is None else table.select(columns)


def load_videos(dest: str | Destination) -> pd.DataFrame:
    """One row per input (succeeded or failed; its last run), sorted by source."""
    df = load_table(dest, "videos").to_pandas()
    return df.sort_values(["source", "video_id"], ignore_index=True)


def load_people(dest: str | Destination, filter=None, columns: list[str] | None = None) -> pd.DataFrame:
    """One row per person per video (of the video's last run), with the mean ``embedding`` (a NumPy array per
    row; ``columns``: those only, e.g. without the embeddings)."""
    df = load_table(dest, "people", filter, columns).to_pandas(self_destruct=True, split_blocks=True)  # Arrow freed
    return df.sort_values([c for c in ("source", "person_id") if c in df], ignore_index=True)


def people_index_file(dest: str | Destination) -> pq.ParquetFile | None:
    """The people index of the registry's latest committed version, as an open Parquet file in memory (read its
    columns or rows with :func:`read_people_index`); None if ``framepipe people`` has not run on this
    destination."""
    d = destination(dest)

    def opened(version: commits.Version) -> pq.ParquetFile | None:
        if schema.PEOPLE_INDEX_PART not in version.files:
            return None
        found = pq.ParquetFile(io.BytesIO(commits.read(d, schema.REGISTRY, version, schema.PEOPLE_INDEX_PART)))
        found.metadata  # a damaged file fails here, within first_readable: the version before is used
        return found

    found = commits.first_readable(d, schema.REGISTRY, opened)
    if found is None and d.exists(schema.PEOPLE_INDEX):
        found = pq.ParquetFile(io.BytesIO(d.read(schema.PEOPLE_INDEX)))
    return found


def read_people_index(file: pq.ParquetFile, columns: list[str] | None = None, filter=None) -> pd.DataFrame:
    """Rows of a :func:`people_index_file` in the current schema (``columns``: those only; ``filter``: a pyarrow
    expression on them)."""
    target = schema.PEOPLE_INDEX_SCHEMA if columns is None else pa.schema(
        [schema.PEOPLE_INDEX_SCHEMA.field(c) for c in columns])
    present = set(file.schema_arrow.names)
    table = file.read(columns=[c for c in target.names if c in present])
    if filter is not None:
        table = table.filter(filter)
    return _conform(table, target).to_pandas()


def load_people_index(dest: str | Destination, columns: list[str] | None = None) -> pd.DataFrame | None:
    """The people index of the registry's latest committed version (``framepipe people``; None if it has not run
    on this destination); ``columns``: those only."""
    found = people_index_file(dest)
    return None if found is None else read_people_index(found, columns)


OUTPUT_FOLDERS = ("talent", "representative")  # DEST/<video_id>/<folder>/<file>; result.json at DEST/<video_id>/


def relative(dest: str | Destination, url: str, video_id: str | None = None) -> str:
    """The path in the destination of an output that a manifest row names by its URL (absolute local path or s3://
    URL). Rows keep the URL the output was written under; a destination copied, moved or mounted elsewhere since
    (another folder, bucket or prefix) still finds its outputs, which keep their place in it: ``<video_id>/...``
    (found by the row's ``video_id``, else by the layout's depth)."""
    d = destination(dest)
    root = d.url("").rstrip("/") + "/"
    if url.startswith(root):
        return url[len(root) :]
    if video_id is not None:
        at = url.rfind(f"/{video_id}/")
        if at < 0:
            raise ValueError(f"{url} is not an output of {video_id} (nor under {root})")
        return url[at + 1 :]
    parts = url.split("/")
    if len(parts) < 3:
        raise ValueError(f"{url} is not an output's URL (nor under {root})")
    return "/".join(parts[-3:] if parts[-2] in OUTPUT_FOLDERS else parts[-2:])


def resolve(dest: str | Destination, url: str | None, video_id: str) -> str | None:
    """:func:`relative`, as a URL of the destination as it is now."""
    return destination(dest).url(relative(dest, url, video_id)) if url else url


def read_output(dest: str | Destination, url: str) -> bytes:
    """The bytes of an output file (a JPEG, say) named by its URL in a manifest."""
    d = destination(dest)
    return d.read(relative(d, url))


def check(dest: str | Destination) -> list[str]:
    """The damaged files of a destination (relative paths): the manifest tables' data files and the registry's
    log entries and the data files of its newest readable version that cannot be read (``framepipe people DEST
    --check``). Readers do without them (a table's other files, the registry's version before); this says which to
    restore or remove."""
    d = destination(dest)
    bad = [name for kind in tables.KINDS for name in table_upkeep.damaged_files(d, kind)]
    version = commits.latest(d, schema.REGISTRY)  # damaged log entries are recorded as it passes them
    bad += sorted(p for p in commits.DAMAGED if p.startswith(f"{schema.REGISTRY}/"))
    bad += [path for path in (f"{schema.REGISTRY}/{rel}" for _, rel in sorted(version.files.items()))
            if table_upkeep.unreadable(d, path)]
    return list(dict.fromkeys(bad))
