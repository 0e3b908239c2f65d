"""The files of one embedding model's person registry (:mod:`framepipe.people.model_registry`): their layout (a base of
four Parquet files sorted by global id plus segments, and the HNSW index of the live centroids), how each is
written, and how a stored index is read or memory-mapped."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re

import numpy as np
import pandas as pd
import pyarrow as pa

from framepipe import schema
from framepipe.storage import Destination

log = logging.getLogger(__name__)

INDEX_FILE = "index.usearch"
# HNSW: M, ef at build, ef at search (bench/people_scale.py)
CONNECTIVITY, EXPANSION_ADD, EXPANSION_SEARCH = 16, 64, 448
ROW_GROUP = 2048  # rows per row group of the persons and members files (sorted by global id)
# an update writes the persons it changed and the members it added as a segment of its own; the registry's base
# files (and the index) are rewritten whole only past these, or for a change that is not an addition (a merge, a
# split, a video's people detached)
COMPACT_SEGMENTS, COMPACT_ROWS = 32, 20_000
SEGMENT = re.compile(r"^(persons|members)\+(\d+)\.parquet$")
# the index's vectors in bfloat16 (bench/people_scale.py --people 50000 --dim 512 --dtype bf16/f32): 84 against
# 152 MB, built 1.6x faster, recall@10 against exact search 0.980 against f32's 0.987 at ef 448
INDEX_DTYPE = "bf16"


def model_dir(model: str) -> str:
    """``registry/<model>``, the model name made safe as one path component."""
    return f"{schema.REGISTRY}/{re.sub(r'[^A-Za-z0-9_.-]+', '_', model or 'unknown')}"


def unit(v: np.ndarray) -> np.ndarray:
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


def view_index(d: Destination, relpath: str):
    """(a stored index memory-mapped (usearch ``view``: a search touches the pages it visits only), the local
    file mapped); (None, None) when it cannot be read."""
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
        return index, path
    except Exception as e:
        log.warning("cannot map the index %s: %s", d.url(relpath), e)
        return None, None


def restore_index(stored: bytes | None):
    """A stored index read into memory (None when it cannot be read)."""
    from usearch.index import Index

    try:
        index = Index.restore(bytearray(stored)) if stored else None
    except Exception as e:  # a damaged or foreign file: rebuilt from the Parquet truth
        log.warning("cannot read a registry index: %s", e)
        return None
    if index is not None:
        index.expansion_search = EXPANSION_SEARCH  # a search setting: not kept in the file
    return index


def units(sums) -> np.ndarray:
    v = np.asarray(sums, dtype=np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def segments_of(files: dict) -> list[tuple[int, str, str]]:
    """(number, "persons" or "members", part name) of the segments among a model's committed files, in order."""
    return sorted((int(m[2]), m[1], k) for k in files if (m := SEGMENT.match(k.split("/", 1)[1])))


def missing(value) -> bool:
    """A centroid sum or embedding a light read left out."""
    return value is None or (isinstance(value, float) and np.isnan(value))


def project(source: pa.Schema, names: list[str]) -> pa.Schema:
    return pa.schema([source.field(n) for n in names], source.metadata)


_LIGHT_PERSONS = [n for n in schema.GLOBAL_PERSON_SCHEMA.names if n != "embedding_sum"]
_LIGHT_MEMBERS = [n for n in schema.MEMBERS_SCHEMA.names if n != "embedding"]
# the files of a base: the small columns apart from the heavy ones, so that a light read (a search, an update) reads
# two small files whole, in a few requests whatever the registry's size, and the heavy ones by row group
FILES = {
    "persons": (project(schema.GLOBAL_PERSON_SCHEMA, _LIGHT_PERSONS), None),
    "sums": (project(schema.GLOBAL_PERSON_SCHEMA, ["global_person_id", "embedding_sum"]), ROW_GROUP),
    "members": (project(schema.MEMBERS_SCHEMA, _LIGHT_MEMBERS), None),
    "embeddings": (project(schema.MEMBERS_SCHEMA, ["global_person_id", "video_id", "person_id", "embedding"]),
                   ROW_GROUP),
    "persons+": (schema.GLOBAL_PERSON_SCHEMA, None),  # segments: whole rows
    "members+": (schema.MEMBERS_SCHEMA, None),
}
LAYOUT = 2  # a version's meta "layers": the files above (1: whole persons and members files, sorted)


def table_bytes(df: pd.DataFrame, kind: str) -> bytes:
    """Rows as one of a registry's Parquet files (``FILES``: its columns; the heavy files in small row groups,
    sorted by the global id readers filter on)."""
    target, row_group = FILES[kind]
    df = df.reset_index(drop=True)
    if "schema_version" in target.names:
        df = df.assign(schema_version=schema.SCHEMA_VERSION)
    if "merged_into" in target.names:
        df["merged_into"] = df["merged_into"].astype("Int64")
    df = df[target.names]
    step = ROW_GROUP * 16  # converted to Arrow a slice at a time: a first build's embeddings are not copied whole
    slices = (pa.Table.from_pandas(df.iloc[i : i + step], schema=target, preserve_index=False)
              for i in range(0, max(len(df), 1), step))
    return schema.parquet_bytes(slices, row_group_size=row_group, arrow_schema=target)


_TEMPORARY: list[str] = []  # S3 indexes copied to map them, removed when the process ends


@atexit.register
def _remove_temporary() -> None:
    for path in _TEMPORARY:
        with contextlib.suppress(OSError):
            os.unlink(path)


def new_index(dim: int):
    from usearch.index import Index

    return Index(ndim=dim, metric="cos", dtype=INDEX_DTYPE, connectivity=CONNECTIVITY, expansion_add=EXPANSION_ADD,
                 expansion_search=EXPANSION_SEARCH)
