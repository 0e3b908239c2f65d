"""Upkeep of a destination's manifest tables (:mod:`framepipe.tables`): what ``framepipe compact`` does besides
Delta's OPTIMIZE (moving a 0.2.x folder's per-video files into the table, deleting the rows of superseded runs) and
what ``framepipe people DEST --check`` reads (the tables' files that cannot be read)."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from framepipe import tables
from framepipe.storage import Destination


def unreadable(d: Destination, relpath: str) -> bool:
    """Is this file damaged: a Parquet file whose footer cannot be read (no row read), any other file empty?"""
    try:
        data = d.read(relpath)
        if relpath.endswith(".parquet"):
            pq.ParquetFile(io.BytesIO(data)).metadata
        return not data
    except Exception:  # noqa: BLE001 - what is wrong with it is said by the file's name
        return True


def damaged_files(d: Destination, kind: str) -> list[str]:
    """The table's log entries and the data files of its current version that cannot be read."""
    bad = tables.damaged_log_entries(d, kind)
    table = tables.open_table(d, kind)
    if table is None:
        return bad
    names = (f"{tables.path(kind)}/{uri.rsplit('/', 1)[-1]}" for uri in table.file_uris())
    return bad + [name for name in names if unreadable(d, name)]


def upgrade(d: Destination, kind: str, batch: int = 5000) -> int:
    """Move a 0.2.x folder's per-video files into the table (in commits of ``batch`` files), then mark the table
    as holding them all and remove them. Idempotent: the file of a video already in the table (moved by a killed
    run, or the video processed again since) is not appended. Returns files moved."""
    files = tables.legacy_files(d, kind)
    if not files:
        if tables.exists(d, kind):
            tables.mark_upgraded(d, kind)
        return 0
    table = tables.open_table(d, kind)
    present = set()
    if table is not None:
        have = table.to_pyarrow_dataset().to_table(columns=["video_id"])
        present = set(have["video_id"].to_pylist())
    moved = 0
    known = pa.array(list(present), pa.string())
    for start in range(0, len(files), batch):
        chunk = files[start : start + batch]
        fresh = [f for f in chunk if _stem(f) not in present]  # each file is named by its video's id
        rows = tables.read_files(d, fresh, tables.KINDS[kind])
        rows = rows.filter(pc.invert(pc.is_in(rows["video_id"], value_set=known)))
        if rows.num_rows:
            tables.append(d, kind, rows)
        moved += len(chunk)
    tables.mark_upgraded(d, kind)
    d.delete_many(files)
    return moved


def _stem(relpath: str) -> str:
    return relpath.rsplit("/", 1)[-1].removesuffix(".parquet")


def drop_superseded(d: Destination, kind: str) -> int:
    """Delete rows of earlier runs of videos processed again (a rewrite of the files holding them only)."""
    table = tables.open_table(d, kind)
    if table is None:
        return 0
    runs = tables.current_runs(d)
    rows = table.to_pyarrow_dataset().to_table(columns=["video_id", "run_id"])
    old = rows.filter(pc.invert(pc.is_in(tables.run_key(rows), value_set=tables.run_key(runs))))
    if old.num_rows == 0:
        return 0
    stale = sorted({r for r in old["run_id"].to_pylist() if r})
    if not stale:
        return 0
    quoted = ", ".join("'" + r.replace("'", "''") + "'" for r in stale)
    result = table.delete(f"run_id IN ({quoted})")
    return int(result.get("num_deleted_rows", old.num_rows))
