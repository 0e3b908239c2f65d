"""The same person across videos: ``framepipe people DEST``.

Each video's people carry the mean of their face embeddings (``people`` manifest). Those embeddings are
clustered over the whole destination by average-linkage agglomerative clustering on cosine distance: two
groups join while the mean distance between their members is below ``people_max_distance``. Average linkage
does not chain the way single linkage (or DBSCAN) does, so one ambiguous face cannot bridge two people.
Embeddings of different models are never compared (each model is clustered on its own).

The result is ``DEST/manifests/people_index.parquet`` (:data:`~framepipe.schema.PEOPLE_INDEX_SCHEMA`): one row
per (video, local person) with its ``global_person_id`` and its cosine similarity to that global person's mean
embedding. Global ids are numbered in order of first appearance (by source, then local person id), so they
stay the same when the destination is unchanged; adding videos may renumber them.

Scale: the pairwise distances are held in memory, so time and memory grow with the square of the number of
people (bench/people_scale.py: 16,000 people took 23 s and 1.6 GB on 2 cores). Over ``people_max_count`` people
(per embedding model) it refuses with a clear error rather than run out of memory; beyond that, an
approximate-nearest-neighbour index is the way.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy.cluster.hierarchy import fcluster, linkage

from framepipe import manifests, schema
from framepipe.errors import InputTooLarge
from framepipe.storage import Destination


def cluster_embeddings(embeddings: np.ndarray, max_distance: float) -> np.ndarray:
    """Cluster labels (0..k-1, in order of first appearance) of embeddings (n x d), by cosine distance."""
    if len(embeddings) < 2:
        return np.zeros(len(embeddings), dtype=int)
    tree = linkage(embeddings.astype(np.float64), method="average", metric="cosine")
    raw = fcluster(tree, t=max_distance, criterion="distance")
    order: dict[int, int] = {}
    return np.array([order.setdefault(int(lab), len(order)) for lab in raw])


def build(people: pd.DataFrame, max_distance: float, max_count: int | None = None) -> pd.DataFrame:
    """People rows (``manifests.load_people``) -> people-index rows, sorted by global id then source.
    Raises InputTooLarge when one embedding model has more than ``max_count`` people."""
    parts: list[pd.DataFrame] = []
    next_id = 0
    people = people.sort_values(["source", "person_id"], ignore_index=True)
    for model in sorted(people["embedding_model"].fillna("").unique()):
        group = people[people["embedding_model"].fillna("") == model]
        for dim in sorted({len(e) for e in group["embedding"]}):
            part = group[[len(e) == dim for e in group["embedding"]]]
            if max_count and len(part) > max_count:
                raise InputTooLarge(
                    f"{len(part)} people of model {model or '?'}: over the {max_count} that in-memory clustering "
                    "takes (FRAMEPIPE_PEOPLE_MAX_COUNT; memory grows with the square of the count)"
                )
            emb = np.stack([np.asarray(e, dtype=np.float32) for e in part["embedding"]])
            emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            labels = cluster_embeddings(emb, max_distance)
            similarity = np.empty(len(part), dtype=np.float32)
            for lab in range(int(labels.max()) + 1):
                members = labels == lab
                centre = emb[members].mean(axis=0)
                similarity[members] = emb[members] @ (centre / max(float(np.linalg.norm(centre)), 1e-12))
            parts.append(part.assign(global_person_id=labels + next_id, similarity=similarity.round(4),
                                     embedding_model=model or None, schema_version=schema.SCHEMA_VERSION))
            next_id += int(labels.max()) + 1
    rows = pd.concat(parts).sort_values("global_person_id", kind="stable") if parts else pd.DataFrame(
        columns=schema.PEOPLE_INDEX_SCHEMA.names)
    table = pa.Table.from_pandas(rows[schema.PEOPLE_INDEX_SCHEMA.names], schema=schema.PEOPLE_INDEX_SCHEMA,
                                 preserve_index=False)
    return table.to_pandas()


def write(dest: str | Destination, max_distance: float, max_count: int | None = None) -> pd.DataFrame:
    """Build the index of everything in ``dest`` and write it to ``DEST/manifests/people_index.parquet``."""
    d = manifests.destination(dest)
    index = build(manifests.load_people(d), max_distance, max_count)
    table = pa.Table.from_pandas(index, schema=schema.PEOPLE_INDEX_SCHEMA, preserve_index=False)
    d.write(schema.PEOPLE_INDEX, schema.parquet_bytes(table))
    return index


def summary(index: pd.DataFrame) -> pd.DataFrame:
    """One row per global person: how many videos and local people it joins, and which videos."""
    if index.empty:
        return pd.DataFrame(columns=["global_person_id", "videos", "people", "sources"])
    g = index.groupby("global_person_id")
    return pd.DataFrame(
        {
            "videos": g["video_id"].nunique(),
            "people": g.size(),
            "sources": g["source"].agg(lambda s: sorted(set(s))),
        }
    ).reset_index()
