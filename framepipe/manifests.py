"""Reading a destination's manifests back as pandas DataFrames (local directory or ``s3://bucket/prefix``).

Every run writes ``DEST/manifests/videos/<video_id>.parquet`` and ``DEST/manifests/people/<video_id>.parquet``
(:mod:`framepipe.schema`); ``framepipe people`` adds ``DEST/manifests/people_index.parquet`` and the person
registry ``DEST/registry/<model>/`` (:mod:`framepipe.registry`). The readers here
work the same on local folders and on S3 (boto3 through :class:`~framepipe.storage.Destination`, files read in
parallel), cast older files to the current schema (new columns are null), and fall back to the per-video
``<video_id>/video.parquet`` files for destinations written before the ``manifests/`` folder existed::

    from framepipe import manifests
    videos = manifests.load_videos("s3://bucket/out")
    people = manifests.load_people("s3://bucket/out")
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from framepipe import commits, schema
from framepipe.storage import Destination


def destination(dest: str | os.PathLike | Destination) -> Destination:
    return dest if isinstance(dest, Destination) else Destination(os.fspath(dest))


def _conform(table: pa.Table, target: pa.Schema) -> pa.Table:
    """``table`` with exactly ``target``'s columns, in order: missing ones null, extra ones dropped."""
    cols = []
    for f in target:
        if f.name in table.column_names:
            cols.append(table[f.name].cast(f.type))
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=pa.schema([f.with_nullable(True) for f in target], target.metadata))


def _read_tables(d: Destination, relpaths: list[str], target: pa.Schema) -> pa.Table:
    def read(rel: str) -> pa.Table:
        return _conform(pq.read_table(io.BytesIO(d.read(rel))), target)

    if not relpaths:
        return _conform(target.empty_table(), target)
    with ThreadPoolExecutor(max_workers=16 if d.is_s3 else 4) as pool:
        tables = list(pool.map(read, relpaths))
    return pa.concat_tables(tables)


def _manifest_files(d: Destination, kind: str, legacy_name: str) -> list[str]:
    names = sorted(n for n in d.list(f"{schema.MANIFESTS}/{kind}") if n.endswith(".parquet"))
    if names:
        return [f"{schema.MANIFESTS}/{kind}/{n}" for n in names]
    # destinations written before manifests/ existed: <video_id>/<legacy_name>
    return [f"{v}/{legacy_name}" for v in sorted(d.dirs("")) if legacy_name in d.list(v)]


def load_table(dest: str | Destination, kind: str) -> pa.Table:
    """``kind``: "videos" or "people"; the whole destination as one Arrow table of the current schema."""
    d = destination(dest)
    target, legacy = {"videos": (schema.VIDEO_SCHEMA, "video.parquet"), "people": (schema.PERSON_SCHEMA, "people.parquet")}[kind]
    return _read_tables(d, _manifest_files(d, kind, legacy), target)


def load_videos(dest: str | Destination) -> pd.DataFrame:
    """One row per input (succeeded or failed), sorted by source."""
    df = load_table(dest, "videos").to_pandas()
    return df.sort_values(["source", "video_id"], ignore_index=True)


def load_people(dest: str | Destination) -> pd.DataFrame:
    """One row per person per video, with the mean ``embedding`` (a NumPy array per row)."""
    df = load_table(dest, "people").to_pandas()
    return df.sort_values(["source", "person_id"], ignore_index=True)


def load_people_index(dest: str | Destination) -> pd.DataFrame | None:
    """The people index of the registry's latest committed version (``framepipe people``; None if it has not run
    on this destination)."""
    d = destination(dest)
    version = commits.latest(d, schema.REGISTRY)
    if schema.PEOPLE_INDEX_PART in version.files:
        table = pq.read_table(io.BytesIO(commits.read(d, schema.REGISTRY, version, schema.PEOPLE_INDEX_PART)))
        return _conform(table, schema.PEOPLE_INDEX_SCHEMA).to_pandas()
    if not d.exists(schema.PEOPLE_INDEX):
        return None
    return _read_tables(d, [schema.PEOPLE_INDEX], schema.PEOPLE_INDEX_SCHEMA).to_pandas()


def load_registry(dest: str | Destination) -> pd.DataFrame | None:
    """The person registry's global persons as of its latest committed version (every embedding model, a ``model``
    column added; the centroid left out), or None before ``framepipe people`` has run."""
    d = destination(dest)
    version = commits.latest(d, schema.REGISTRY)
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


def relative(dest: str | Destination, url: str) -> str:
    """The path of an output URL (absolute local path or s3:// URL) relative to the destination's root."""
    d = destination(dest)
    root = d.url("").rstrip("/") + "/"
    if not url.startswith(root):
        raise ValueError(f"{url} is not under {root}")
    return url[len(root) :]


def read_output(dest: str | Destination, url: str) -> bytes:
    """The bytes of an output file (a JPEG, say) named by its URL in a manifest."""
    d = destination(dest)
    return d.read(relative(d, url))
