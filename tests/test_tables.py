"""The destination's manifest tables (Delta Lake, framepipe/tables.py) with the real writer (outputs.write_outputs,
the one every front door uses), the real `framepipe compact`, real processes: concurrent writers and SIGKILL, local
and on S3 (a moto server), a video processed again, the upgrade of a 0.2.x destination, compaction while a writer
appends, and the registry reading only what is new."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pyarrow.compute as pc
import pytest
from conftest import ROOT, run_cli

pytestmark = []  # the fast layer: neither the models nor ../shared

WRITERS, VIDEOS_EACH = 3, 12


def _failed(dest: str, video_id: str) -> None:
    """One input recorded by the real output writer (a failure: no frames, its two rows)."""
    from framepipe import outputs, schema
    from framepipe.config import Settings
    from framepipe.errors import CorruptVideo
    from framepipe.storage import Destination

    processing = schema.Processing(duration_s=0.1, estimated_cost_usd=0.0, hourly_price_usd=0.0, device="cpu")
    outputs.record_failure(Destination(dest), video_id, schema.VideoMeta(source=f"{video_id}.mp4"),
                           CorruptVideo("synthetic"), processing, None, Settings(models="fake"))


def _writer(dest: str, first: int, count: int) -> None:
    for i in range(first, first + count):
        _failed(dest, f"w{i:04d}")


def _people_rows(video_id: str, run_id: str, n: int, seed: int):
    from framepipe import schema

    rng = np.random.default_rng(seed)
    return schema.people_table([{
        "video_id": video_id, "source": f"{video_id}.mp4", "person_id": p, "frame_url": "f.jpg", "face_url": "c.jpg",
        "timestamp_s": 1.0, "bbox": [0.0, 0.0, 9.0, 9.0], "quality": 0.9, "appearances": 1, "first_seen_s": 1.0,
        "last_seen_s": 1.0, "seen_s": [1.0], "embedding": rng.normal(size=512).astype(np.float32).tolist(),
        "embedding_model": "synthetic", "run_id": run_id, "schema_version": schema.SCHEMA_VERSION}
        for p in range(n)])


def _video_row(video_id: str, run_id: str, people: int):
    from framepipe import schema

    return schema.videos_table([{"video_id": video_id, "source": f"{video_id}.mp4", "status": "succeeded",
                                 "people": people, "processed_at": dt.datetime.now(dt.timezone.utc),
                                 "run_id": run_id, "schema_version": schema.SCHEMA_VERSION}])


def _concurrent_writers(dest: str) -> None:
    from framepipe import manifests

    ctx = multiprocessing.get_context("spawn")  # delta-rs's runtime does not survive a fork
    procs = [ctx.Process(target=_writer, args=(dest, w * VIDEOS_EACH, VIDEOS_EACH)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    videos = manifests.load_videos(dest)
    assert sorted(videos["video_id"]) == [f"w{i:04d}" for i in range(WRITERS * VIDEOS_EACH)]
    assert set(videos["status"]) == {"failed"} and videos["run_id"].notna().all()


def test_concurrent_writers_each_video_once_local(tmp_path):
    dest = str(tmp_path / "dest")
    _concurrent_writers(dest)
    from deltalake import DeltaTable

    table = DeltaTable(os.path.join(dest, "manifests", "videos"))  # what any Delta reader sees
    assert table.to_pyarrow_table().num_rows == WRITERS * VIDEOS_EACH


def test_concurrent_writers_each_video_once_on_s3(s3_server, bucket):
    _concurrent_writers(f"s3://{bucket}/out")


def test_a_writer_killed_at_any_point_leaves_a_readable_table(tmp_path):
    """SIGKILL a process appending in a loop, at several moments: the table reads at its last commit, every row
    committed is whole, and the next writer and `framepipe compact` carry on."""
    from framepipe import manifests

    dest = str(tmp_path / "dest")
    code = ("import sys; sys.path.insert(0, 'tests'); from test_tables import _writer; "
            f"_writer({dest!r}, int(sys.argv[1]), 1000)")
    for trial, wait in enumerate((0.9, 1.3, 1.7, 2.2)):
        proc = subprocess.Popen([sys.executable, "-c", code, str(trial * 1000)], cwd=ROOT)
        time.sleep(wait)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        videos = manifests.load_videos(dest)
        assert videos["video_id"].is_unique and videos["status"].eq("failed").all()
    count = len(videos)
    _failed(dest, "after")
    assert len(manifests.load_videos(dest)) == count + 1
    proc = run_cli("compact", dest)
    assert proc.returncode == 0, proc.stderr
    assert len(manifests.load_videos(dest)) == count + 1


def test_a_video_processed_again_has_its_last_rows_only(tmp_path):
    """Each write appends; readers give a video's last run (its people too), and `framepipe compact` drops the
    earlier run's rows from the table itself, so other engines see one row per video."""
    from deltalake import DeltaTable

    from framepipe import manifests, tables

    dest = str(tmp_path / "dest")
    d = manifests.destination(dest)
    tables.append(d, "people", _people_rows("v1", "first", 3, 0))
    tables.append(d, "videos", _video_row("v1", "first", 3))
    tables.append(d, "people", _people_rows("v2", "other", 1, 1))
    tables.append(d, "videos", _video_row("v2", "other", 1))
    tables.append(d, "people", _people_rows("v1", "second", 2, 2))
    assert sorted(manifests.load_people(d).query("video_id == 'v1'")["run_id"]) == ["first"] * 3  # no video row yet
    tables.append(d, "videos", _video_row("v1", "second", 2))
    people = manifests.load_people(d)
    assert sorted(zip(people["video_id"], people["run_id"])) == [("v1", "second")] * 2 + [("v2", "other")]
    assert manifests.load_videos(d).set_index("video_id")["people"].to_dict() == {"v1": 2, "v2": 1}
    proc = run_cli("compact", dest)
    assert proc.returncode == 0, proc.stderr
    assert "videos: 0 per-video files moved into the table, 1 rows of earlier runs dropped" in proc.stdout
    assert "people: 0 per-video files moved into the table, 3 rows of earlier runs dropped" in proc.stdout
    raw = DeltaTable(f"{dest}/manifests/people").to_pyarrow_table()
    assert raw.num_rows == 3 and set(raw["run_id"].to_pylist()) == {"second", "other"}


def _legacy_destination(dest, count: int) -> None:
    """A destination as framepipe 0.2.x wrote it: one Parquet file per video in each manifests folder."""
    from framepipe import manifests, schema

    d = manifests.destination(dest)
    for i in range(count):
        vid = f"old{i:03d}"
        people = _people_rows(vid, None, 2, i).drop_columns(["run_id"])
        video = _video_row(vid, None, 2).drop_columns(["run_id"])
        d.write(f"manifests/people/{vid}.parquet", schema.parquet_bytes(people))
        d.write(f"manifests/videos/{vid}.parquet", schema.parquet_bytes(video))


def test_compact_upgrades_a_0_2_destination_while_a_writer_appends(tmp_path):
    from framepipe import manifests, tables

    dest = str(tmp_path / "dest")
    _legacy_destination(dest, 30)
    assert len(manifests.load_videos(dest)) == 30 and len(manifests.load_people(dest)) == 60
    _failed(dest, "new000")  # a new framepipe writes into the old destination: both are read
    assert len(manifests.load_videos(dest)) == 31 and len(manifests.load_people(dest)) == 60
    writer = subprocess.Popen([sys.executable, "-c", "import sys; sys.path.insert(0, 'tests'); "
                               f"from test_tables import _writer; _writer({dest!r}, 5000, 40)"], cwd=ROOT)
    proc = run_cli("compact", dest)
    assert proc.returncode == 0, proc.stderr
    assert writer.wait(timeout=240) == 0
    assert "30 per-video files moved into the table" in proc.stdout
    assert not tables.legacy_files(manifests.destination(dest), "videos")
    videos = manifests.load_videos(dest)
    assert len(videos) == 71 and videos["video_id"].is_unique and len(manifests.load_people(dest)) == 60
    again = run_cli("compact", dest)  # idempotent
    assert again.returncode == 0, again.stderr
    assert "0 per-video files moved" in again.stdout and len(manifests.load_videos(dest)) == 71
    from deltalake import DeltaTable

    assert len(DeltaTable(f"{dest}/manifests/videos").file_uris()) == 1  # files replaced stay an hour (readers)


def test_compact_upgrades_a_0_2_destination_on_s3(s3_server, bucket):
    """The upgrade on S3: every per-video file moved into the tables (a video already in them is not appended
    twice) and the old files removed (DeleteObjects, a request per 1,000 keys)."""
    import boto3

    from framepipe import manifests, tables

    dest = f"s3://{bucket}/dest"
    _legacy_destination(dest, 12)
    d = manifests.destination(dest)
    tables.append(d, "videos", _video_row("old003", None, 2))  # moved by a run killed before its deletes
    proc = run_cli("compact", dest)
    assert proc.returncode == 0, proc.stderr
    assert "12 per-video files moved into the table" in proc.stdout
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix="dest/manifests/")["Contents"]]
    assert not [k for k in keys if k.rsplit("/", 1)[-1].startswith("old")], keys
    videos = manifests.load_videos(dest)
    assert sorted(videos["video_id"]) == [f"old{i:03d}" for i in range(12)]
    assert len(manifests.load_people(dest)) == 24


def test_the_registry_reads_only_the_people_appended_since_its_version(tmp_path):
    """`framepipe people` records the people table's version it has read; the next update reads the change feed
    from there (the new video's rows only). People rows of a run whose video row is not committed yet are held
    back, not skipped."""
    from framepipe import commits, manifests, schema, tables
    from framepipe.people import registry

    dest = str(tmp_path / "dest")
    d = manifests.destination(dest)
    for i in range(4):
        tables.append(d, "people", _people_rows(f"v{i}", "r", 2, i))
        tables.append(d, "videos", _video_row(f"v{i}", "r", 2))
    registry.update_destination(d, max_distance=0.5)
    version = commits.latest(d, schema.REGISTRY)
    assert version.meta["people_version"] == tables.version(d, "people")
    tables.append(d, "people", _people_rows("v9", "r", 3, 9))  # its video row comes later
    rows, partial, seen = registry.people_since(d, version)
    assert partial and rows.empty and seen == version.meta["people_version"]  # held back
    tables.append(d, "videos", _video_row("v9", "r", 3))
    rows, partial, seen = registry.people_since(d, version)
    assert partial and sorted(rows["video_id"]) == ["v9"] * 3 and seen == tables.version(d, "people")
    index, updates, _ = registry.update_destination(d, max_distance=0.5)
    assert updates["synthetic"].created == 3 and len(index) == 11
    assert set(index[index.video_id == "v9"]["global_person_id"]).isdisjoint(
        index[index.video_id != "v9"]["global_person_id"])
    rows, partial, _ = registry.people_since(d, commits.latest(d, schema.REGISTRY))
    assert partial and rows.empty
    # a video processed again: its old members detached, the new ones attached, the rest untouched
    tables.append(d, "people", _people_rows("v0", "again", 1, 100))
    tables.append(d, "videos", _video_row("v0", "again", 1))
    index, updates, _ = registry.update_destination(d, max_distance=0.5)
    assert updates["synthetic"].detached == 2 and len(index) == 10
    assert pc.sum(pc.equal(manifests.load_table(d, "people")["video_id"], "v0")).as_py() == 1


@pytest.mark.parametrize("where", ["local", "s3"])
def test_both_destinations_raise_the_same_errors(where, tmp_path, request):
    """Local and S3 destinations are two implementations of one interface, with the same errors: a file that is not
    there is FileNotFoundError, a taken name AlreadyExists, any other failure the project's DestinationError (no
    botocore or OS error leaks)."""
    from framepipe.errors import DestinationError
    from framepipe.storage import AlreadyExists, Destination, LocalDestination, S3Destination

    root = f"s3://{request.getfixturevalue('bucket')}/out" if where == "s3" else str(tmp_path / "out")
    d = Destination(root)
    assert isinstance(d, S3Destination if where == "s3" else LocalDestination) and d.is_s3 == (where == "s3")
    assert d.create("a/commit.json", b"1") == d.url("a/commit.json")
    with pytest.raises(AlreadyExists):
        d.create("a/commit.json", b"2")
    assert d.read("a/commit.json") == b"1" and d.list("a") == ["commit.json"] and d.dirs("") == ["a"]
    with pytest.raises(FileNotFoundError):
        d.read("a/missing.json")
    with pytest.raises(FileNotFoundError):
        d.mtime("a/missing.json")
    assert not d.exists("a/missing.json") and d.exists("a/commit.json")
    d.delete_many(["a/commit.json", "a/missing.json"])
    assert d.list("a") == []
    if where == "s3":
        broken = Destination(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/out")
    else:
        (tmp_path / "file").write_bytes(b"")
        broken = Destination(str(tmp_path / "file" / "out"))  # under a file: no folder can be made
    with pytest.raises(DestinationError):
        broken.write("x.json", b"{}")
    with pytest.raises(DestinationError):
        broken.read("x.json")
