"""A destination's manifests as Delta Lake tables: ``DEST/manifests/videos`` and ``DEST/manifests/people``.

Why Delta Lake (``deltalake``, delta-rs): every writer (each backfill actor, ``framepipe extract``, each Serve
job) appends a video's rows as one atomic commit, on a local disk or S3 (S3's conditional writes: no lock, no
DynamoDB), with any number of concurrent writers; a writer killed at any point leaves the table at its last commit
(its half-written data file is named by no commit). Readers read one consistent version through the log's
checkpoints (one every 100 commits), never a listing of data files. Spark, Trino/Athena, DuckDB and Polars read the
same tables with their own engines. ``docs/scale.md`` has the measurements behind the choice.

Rules the readers apply (:func:`read`):

* every write of a video appends its rows with a fresh ``run_id``; a video processed again appends new rows. The
  **current** rows are the video's last ``videos`` row and the ``people`` rows of the same run (the people rows
  are appended first, the video row last: a video is in the datasets once its video row is);
* file count grows with commits until a compaction (Delta's OPTIMIZE): every ``COMPACT_EVERY`` commits the writer
  that made the commit compacts the table (concurrent appends do not conflict with it), and ``framepipe compact``
  does it on demand, dropping rows superseded by a later run of their video and vacuuming files no version still
  needs after ``VACUUM_AFTER_H`` hours;
* a destination written by framepipe 0.2.x (one ``<video_id>.parquet`` per video in the same folders) is read as
  it is (listing every file) until ``framepipe compact`` moves its rows into the table.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from framepipe import s3, schema
from framepipe.errors import DestinationError
from framepipe.storage import Destination

log = logging.getLogger(__name__)

KINDS = {"videos": schema.VIDEO_SCHEMA, "people": schema.PERSON_SCHEMA}
COMPACT_EVERY = 200  # a writer whose commit is a multiple of this compacts the table
TARGET_FILE_BYTES = 128 * 1024 * 1024  # what a compaction aims each data file at
VACUUM_AFTER_H = 1  # files no version newer than this many hours names are removed by framepipe compact
UPGRADED = "_framepipe_no_legacy"  # a file beside the log: no 0.2.x per-video file is left in the table's folder
ATTEMPTS = 20


def path(kind: str) -> str:
    return f"{schema.MANIFESTS}/{kind}"


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def storage_options(d: Destination) -> dict[str, str] | None:
    """delta-rs's S3 settings, from the same AWS settings boto3 uses (endpoint, region, credentials)."""
    if not d.is_s3:
        return None
    aws = s3.aws_settings()
    opts = {"AWS_REGION": aws["region"]}
    if aws["endpoint"]:
        opts["AWS_ENDPOINT_URL"] = aws["endpoint"]
        if aws["endpoint"].startswith("http://"):
            opts["AWS_ALLOW_HTTP"] = "true"
    if "access_key" in aws:
        opts["AWS_ACCESS_KEY_ID"], opts["AWS_SECRET_ACCESS_KEY"] = aws["access_key"], aws["secret_key"]
        if aws["token"]:
            opts["AWS_SESSION_TOKEN"] = aws["token"]
    return opts


def _uri(d: Destination, kind: str) -> str:
    return d.url(path(kind))


def exists(d: Destination, kind: str) -> bool:
    return bool(d.list(f"{path(kind)}/_delta_log"))


def open_table(d: Destination, kind: str, version: int | None = None, attempts: int = 5):
    """The table (None: no table yet). A log caught being created (its first commit not yet in place: "no files
    in log segment") is read again a moment later."""
    from deltalake import DeltaTable

    for attempt in range(attempts):
        try:
            return DeltaTable(_uri(d, kind), version=version, storage_options=storage_options(d))
        except Exception as e:  # TableNotFoundError and storage errors
            if not exists(d, kind):
                return None
            if attempt == attempts - 1:
                damaged = damaged_log_entries(d, kind)
                if damaged and version is None:  # read the version before the first damaged commit
                    for name in damaged:
                        _note_damaged(d, name, "reading the table's version before it")
                    number = int(damaged[0].rsplit("/", 1)[-1].split(".")[0])
                    if number > 0:
                        return open_table(d, kind, number - 1, attempts=1)
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise DestinationError(f"cannot read the table {_uri(d, kind)}: {reason}") from None
            time.sleep(0.1 * (attempt + 1))


def damaged_log_entries(d: Destination, kind: str) -> list[str]:
    """The table's log entries (``_delta_log/<n>.json``, oldest first) that are not whole JSON lines: a truncated
    or emptied commit."""
    folder = f"{path(kind)}/_delta_log"
    bad = []
    for name in sorted(n for n in d.list(folder) if n.endswith(".json") and n[:-5].isdigit()):
        try:
            lines = d.read(f"{folder}/{name}").decode().splitlines()
            if not lines:
                raise ValueError("empty")
            for line in lines:
                json.loads(line)
        except (ValueError, UnicodeDecodeError):
            bad.append(f"{folder}/{name}")
    return bad


def legacy_files(d: Destination, kind: str) -> list[str]:
    """The 0.2.x per-video files (``<video_id>.parquet``) in a table's folder (relative paths)."""
    return [f"{path(kind)}/{n}" for n in sorted(d.list(path(kind)))
            if n.endswith(".parquet") and not n.startswith("part-")]


def _has_legacy(d: Destination, kind: str, table) -> bool:
    if table is not None and d.exists(f"{path(kind)}/{UPGRADED}"):
        return False
    return bool(legacy_files(d, kind))


def conform(table: pa.Table, target: pa.Schema) -> pa.Table:
    """``table`` with exactly ``target``'s columns, in order: missing ones null, extra ones dropped."""
    cols = [table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
            for f in target]
    return pa.Table.from_arrays(cols, schema=pa.schema([f.with_nullable(True) for f in target], target.metadata))


def append(d: Destination, kind: str, rows: pa.Table) -> int:
    """Append ``rows`` to the table as one commit (creating the table on the first write); returns the version
    committed. Every ``COMPACT_EVERY`` versions the committer compacts the table."""
    from deltalake import CommitProperties, write_deltalake

    rows = conform(rows, KINDS[kind])
    last: Exception | None = None
    for attempt in range(ATTEMPTS):
        try:
            table = open_table(d, kind)
            if table is None:
                _create(d, kind)
                continue
            write_deltalake(table, rows, mode="append", schema_mode="merge",
                            commit_properties=CommitProperties(max_commit_retries=100))
            version = table.version()
            break
        except Exception as e:  # a lost race creating the table, a commit that ran out of retries
            last = e
            time.sleep(min(0.05 * (attempt + 1), 1.0))
    else:
        raise DestinationError(f"cannot append to {_uri(d, kind)}: {last}")
    if version and version % COMPACT_EVERY == 0:
        with contextlib.suppress(Exception):  # housekeeping: the rows are committed
            optimize(d, kind, vacuum=False)
    return version


def _create(d: Destination, kind: str) -> None:
    """Create an empty table (a concurrent creator may win: then nothing is done). A folder without 0.2.x files
    is marked as such, so readers never list it."""
    from deltalake import DeltaTable

    if not legacy_files(d, kind):
        mark_upgraded(d, kind)
    try:
        DeltaTable.create(_uri(d, kind), schema=KINDS[kind], mode="ignore", storage_options=storage_options(d))
    except Exception as e:  # most often a concurrent creator won: the caller opens the table again
        log.info("creating %s: %s", _uri(d, kind), e)


def version(d: Destination, kind: str) -> int | None:
    """The table's latest version (None: no table yet)."""
    table = open_table(d, kind)
    return None if table is None else table.version()


BATCH_ROWS = 16_384  # rows a reader holds at once before ``keep`` drops what it does not keep


def _raw(d: Destination, kind: str, table, columns=None, filter=None, keep=None) -> pa.Table:
    """The table's rows (``keep``: a function of a part of them that returns the rows to keep, applied batch by
    batch as they are read, so that rows dropped are never all in memory at once)."""
    target = KINDS[kind] if columns is None else pa.schema([KINDS[kind].field(c) for c in columns])
    parts = []
    if table is not None:
        present = {f.name for f in table.schema().fields}  # a column newer than the table is read as nulls
        asked = None if columns is None else [c for c in columns if c in present]
        dataset = table.to_pyarrow_dataset()
        try:
            parts.append(_scan(dataset, target, asked, filter, keep))
        except (pa.ArrowException, OSError):  # a damaged data file: read file by file, that one reported and skipped
            parts.append(_scan_skipping(d, kind, dataset, target, asked, filter, keep))
    if _has_legacy(d, kind, table):
        legacy = _read_legacy(d, kind, columns, filter)
        parts.append(keep(legacy) if keep else legacy)
    if not parts:
        return conform(target.empty_table(), target)
    return pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]


def read_files(d: Destination, relpaths: list[str], target: pa.Schema, columns=None, filter=None) -> pa.Table:
    """Whole Parquet files of a destination, read in parallel, as one table in ``target``'s schema (``filter``,
    then ``columns``, applied). Each file is read as it is and the batch conformed once: a 0.2.x destination's
    files are small, and a cast per file was half of reading one."""
    def one(rel: str) -> pa.Table:
        return pq.ParquetFile(io.BytesIO(d.read(rel))).read()

    with ThreadPoolExecutor(max_workers=16 if d.is_s3 else 4) as pool:
        parts = list(pool.map(one, relpaths))
    t = conform(pa.concat_tables(parts, promote_options="permissive") if parts else target.empty_table(), target)
    if filter is not None:
        t = t.filter(filter)
    return t.select(columns) if columns is not None else t


def _read_legacy(d: Destination, kind: str, columns=None, filter=None) -> pa.Table:
    return read_files(d, legacy_files(d, kind), KINDS[kind], columns, filter)


def _scan(dataset, target: pa.Schema, asked, filter, keep) -> pa.Table:
    if keep is None:
        return conform(dataset.to_table(columns=asked, filter=filter), target)
    kept = [keep(conform(pa.Table.from_batches([b]), target))
            for b in dataset.to_batches(columns=asked, filter=filter, batch_size=BATCH_ROWS, batch_readahead=2,
                                        fragment_readahead=1) if b.num_rows]
    return pa.concat_tables(kept) if kept else conform(target.empty_table(), target)


def _scan_skipping(d: Destination, kind: str, dataset, target: pa.Schema, asked, filter, keep) -> pa.Table:
    """:func:`_scan`, a data file at a time: a file that cannot be read (truncated, emptied) is logged, recorded
    in :data:`DAMAGED` and skipped; the rows of every other file are read."""
    import pyarrow.dataset as ds

    parts = []
    for fragment in dataset.get_fragments(filter=filter):
        try:
            parts.append(_scan(ds.FileSystemDataset([fragment], dataset.schema, dataset.format, dataset.filesystem),
                               target, asked, filter, keep))
        except (pa.ArrowException, OSError) as e:  # (an emptied file: the storage layer's OSError)
            _note_damaged(d, f"{path(kind)}/{fragment.path.rsplit('/', 1)[-1]}",
                          f"skipped: {str(e).splitlines()[0].split('. ')[0]}")
    return pa.concat_tables(parts) if parts else conform(target.empty_table(), target)


DAMAGED: set[str] = set()  # data files and log entries (relative to the destination) this process did without


def _note_damaged(d: Destination, relpath: str, what: str) -> None:
    """Record a damaged file the reader did without (once a process) and log what was done instead."""
    if relpath not in DAMAGED:
        DAMAGED.add(relpath)
        log.warning("%s is damaged: %s", d.url(relpath), what)


def current_runs(d: Destination, filter=None) -> pa.Table:
    """(video_id, run_id) of each video's current ``videos`` row: its last write."""
    table = open_table(d, "videos")
    cols = ["video_id", "run_id", "processed_at"]
    return _latest(_raw(d, "videos", table, cols, filter))


def _latest(t: pa.Table) -> pa.Table:
    """One row per video: the last processed."""
    if t.num_rows == 0:
        return t
    order = pc.sort_indices(t, [("video_id", "ascending"), ("processed_at", "descending")])
    t = t.take(order)
    ids = t["video_id"]
    keep = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1)) if len(ids) > 1 else pa.array([], pa.bool_())
    mask = pa.concat_arrays([pa.array([True]), keep.combine_chunks() if len(ids) > 1 else keep])
    return t.filter(mask)


def read(d: Destination, kind: str, filter=None, columns: list[str] | None = None) -> pa.Table:
    """The table's current rows (one ``videos`` row per video, the ``people`` rows of that row's run), in the
    current schema. ``filter``: a pyarrow expression, applied before the rows are deduplicated; ``columns``: those
    only (and the ones the deduplication needs), e.g. the people without their embeddings."""
    if columns is not None:
        need = ["video_id", "run_id"] + (["processed_at"] if kind == "videos" else [])
        columns = list(dict.fromkeys([*columns, *need]))
    if kind == "videos":
        return _latest(_raw(d, "videos", open_table(d, "videos"), columns, filter))
    if filter is not None:  # a part: the current runs of its videos only
        return current_of(d, _raw(d, "people", open_table(d, "people"), columns, filter))
    runs = current_runs(d)
    if columns is not None and "embedding" not in columns:  # small rows: cut once
        return current_of(d, _raw(d, "people", open_table(d, "people"), columns), runs)
    # with the embeddings: cut batch by batch, so that rows of earlier runs are never all in memory
    return _raw(d, "people", open_table(d, "people"), columns, keep=lambda rows: current_of(d, rows, runs))


def run_key(t: pa.Table):
    return pc.binary_join_element_wise(t["video_id"], pc.fill_null(t["run_id"], ""), "\x00")


def current_of(d: Destination, people: pa.Table, runs: pa.Table | None = None) -> pa.Table:
    """The people rows that belong to their video's current run (``runs``: :func:`current_runs`, read if None).
    Rows of 0.2.x files (no ``run_id``) count unless a later run of their video is in the table."""
    if people.num_rows == 0:
        return people
    if runs is None:
        runs = current_runs(d, pc.field("video_id").isin(pc.unique(people["video_id"])))
    rerun = runs.filter(pc.is_valid(runs["run_id"]))["video_id"]
    legacy = pc.and_(pc.is_null(people["run_id"]), pc.invert(pc.is_in(people["video_id"], value_set=rerun)))
    return people.filter(pc.or_(pc.is_in(run_key(people), value_set=run_key(runs)), legacy))


def changes(d: Destination, kind: str, since: int) -> tuple[pa.Table, int] | None:
    """Rows appended after version ``since``, with Delta's ``_commit_version`` and ``_commit_timestamp`` (the
    change feed: the data files those commits added, never the whole table), and the version read up to; None when
    the table cannot say (no table, a 0.2.x folder, a version already cleaned from the log): read the whole table
    instead."""
    table = open_table(d, kind)
    if table is None or _has_legacy(d, kind, table):
        return None
    latest = table.version()
    if latest <= since:
        return None if latest < since else (_empty_feed(kind), latest)
    try:
        reader = table.load_cdf(starting_version=since + 1, ending_version=latest)
        feed = pa.table(reader.read_all())
    except Exception as e:
        log.info("no change feed of %s from version %d: %s", _uri(d, kind), since + 1, e)
        return None
    inserted = pc.equal(pc.cast(feed["_change_type"], pa.string()), "insert")
    rows = conform(feed, KINDS[kind])  # delta-rs gives string views: the schema's own types
    for name, kind_ in (("_commit_version", pa.int64()), ("_commit_timestamp", pa.timestamp("ms", tz="UTC"))):
        rows = rows.append_column(name, pc.cast(feed[name], kind_))
    return rows.filter(inserted), latest


def _empty_feed(kind: str) -> pa.Table:
    t = conform(KINDS[kind].empty_table(), KINDS[kind])
    return t.append_column("_commit_version", pa.array([], pa.int64())).append_column(
        "_commit_timestamp", pa.array([], pa.timestamp("ms", tz="UTC")))


PENDING_S = 3600.0  # people rows this recent whose video row is not committed yet are a run in flight


def new_people(d: Destination, since: int | None) -> tuple[pa.Table, int | None] | None:
    """The current people rows appended after people-table version ``since``, and the version a reader has seen
    all of: rows of a run whose video row is not committed yet (a writer between its two appends) hold that
    version back, so they are read again next time (unless over ``PENDING_S`` old: a killed run's). None: read
    the whole table (no version, no change feed)."""
    if since is None:
        return None
    found = changes(d, "people", since)
    if found is None:
        return None
    feed, latest = found
    rows = conform(feed, KINDS["people"])
    current = current_of(d, rows)
    if current.num_rows == rows.num_rows:
        return current, latest
    key = run_key(rows)
    waiting = pc.invert(pc.is_in(key, value_set=run_key(current)))
    recent = pc.greater(feed["_commit_timestamp"],
                        pa.scalar(int((time.time() - PENDING_S) * 1000), pa.timestamp("ms", tz="UTC")))
    held = feed.filter(pc.and_(waiting, recent))["_commit_version"]
    upto = latest if len(held) == 0 else int(pc.min(held).as_py()) - 1
    return current, upto


def optimize(d: Destination, kind: str, vacuum: bool = True) -> dict:
    """Compact the table's small files (Delta's OPTIMIZE), write a checkpoint, drop expired log entries and, with
    ``vacuum``, remove the files no version of the last ``VACUUM_AFTER_H`` hours names."""
    table = open_table(d, kind)
    if table is None:
        return {"files_removed": 0, "files_added": 0, "vacuumed": 0}
    metrics = table.optimize.compact(target_size=TARGET_FILE_BYTES)
    table = open_table(d, kind)
    table.create_checkpoint()
    table.cleanup_metadata()  # log entries older than the table's log retention (30 days) and a checkpoint
    gone = table.vacuum(retention_hours=VACUUM_AFTER_H, enforce_retention_duration=False, dry_run=False) \
        if vacuum else []
    return {"files_removed": int(metrics.get("numFilesRemoved", 0)), "files_added": int(metrics.get("numFilesAdded", 0)),
            "vacuumed": len(gone)}


def mark_upgraded(d: Destination, kind: str) -> None:
    if not d.exists(f"{path(kind)}/{UPGRADED}"):
        d.write(f"{path(kind)}/{UPGRADED}", b"")
