"""The person registry under concurrent writers and SIGKILL, on a local disk and on S3 (a moto server): every
correction kept, no orphan, no id reused. The people manifests are synthetic (fixed embeddings of 10 identities,
two people seen together in each video); the registry is changed by the real ``framepipe people`` processes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.slow]

DIM = 512
IDENTITIES = 10
MODEL = "synthetic"


def _embedding(identity: int, rng: np.random.Generator) -> list[float]:
    base = np.zeros(DIM)
    base[identity] = 1.0
    v = base + rng.normal(scale=0.02, size=DIM)
    return (v / np.linalg.norm(v)).astype(np.float32).tolist()


def add_videos(dest: str, videos: range, seed: int = 0) -> None:
    """People manifests of ``videos``: video v shows identities v % 10 and (v + 5) % 10 at the same times."""
    import datetime as dt

    from framepipe import manifests, schema, tables

    rng = np.random.default_rng(seed + videos.start)
    d = manifests.destination(dest)
    people, done = [], []
    for v in videos:
        rows = []
        for pid, identity in enumerate((v % IDENTITIES, (v + 5) % IDENTITIES)):
            rows.append({
                "video_id": f"v{v:03d}", "source": f"v{v:03d}.mp4", "person_id": pid,
                "frame_url": d.url(f"v{v:03d}/talent/person_{pid:03d}.jpg"), "face_url": d.url("x.jpg"),
                "timestamp_s": 1.0, "bbox": [0.0, 0.0, 10.0, 10.0], "quality": 0.9, "det_score": 0.9,
                "appearances": 2, "first_seen_s": 1.0, "last_seen_s": 2.0, "seen_s": [1.0, 2.0],
                "time_ranges": [{"start_s": 0.5, "end_s": 2.5}], "embedding": _embedding(identity, rng),
                "embedding_model": MODEL, "run_id": f"r{v}", "schema_version": schema.SCHEMA_VERSION})
        people += rows
        done.append({"video_id": f"v{v:03d}", "source": f"v{v:03d}.mp4", "status": "succeeded", "people": 2,
                     "processed_at": dt.datetime.now(dt.timezone.utc), "run_id": f"r{v}",
                     "schema_version": schema.SCHEMA_VERSION})
    # as a batch of runs appends them: the people rows, then the video rows
    tables.append(d, "people", schema.people_table(people))
    tables.append(d, "videos", schema.videos_table(done))


def people_cli(dest: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "framepipe", "people", dest, "--no-report", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def finish(procs: list[subprocess.Popen], timeout: float = 240) -> None:
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err


def state(dest: str):
    """(registry, people index) of the latest committed version, checked whole: every part readable, every member
    of a live person, ids unique, every (video, person) of the manifests a member once."""
    from framepipe import commits, manifests, schema
    from framepipe.people import registry

    d = manifests.destination(dest)
    version = commits.latest(d, schema.REGISTRY)
    for name in version.files:
        assert commits.read(d, schema.REGISTRY, version, name)
    reg = registry.Registry.load(d, MODEL, DIM, version)
    persons, members = reg.persons, reg.members
    assert persons.index.is_unique
    assert set(members.global_person_id) <= set(persons.index)
    assert persons.loc[list(set(members.global_person_id)), "merged_into"].isna().all()
    counts = members.groupby("global_person_id").size()
    assert (persons.loc[counts.index, "members"] == counts).all()
    people = manifests.load_people(d)
    assert sorted(zip(members.video_id, members.person_id)) == sorted(zip(people.video_id, people.person_id))
    return reg, version


def gid_of(reg, identity: int) -> int:
    """The live global person holding video ``identity``'s person 0 (identity ``identity``)."""
    m = reg.members
    return reg.resolve(int(m[(m.video_id == f"v{identity:03d}") & (m.person_id == 0)].global_person_id.iloc[0]))


def _destinations(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "dest"), {}
    s3 = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("bucket")
    return f"s3://{bucket}/dest", s3["env"]


@pytest.fixture(params=["local", "s3"])
def dest(request, tmp_path):
    return _destinations(request, tmp_path)


@pytest.mark.timeout(900)
def test_concurrent_writers_keep_every_correction_and_never_reuse_an_id(dest):
    url, env = dest
    add_videos(url, range(0, 20))
    finish([people_cli(url, env=env)])
    reg, version = state(url)
    assert reg.live_ids().size == IDENTITIES  # 10 identities, each in 4 videos
    g = {i: gid_of(reg, i) for i in range(IDENTITIES)}
    seen_ids = set(reg.persons.index)
    for rnd in range(3):
        add_videos(url, range(20 + 4 * rnd, 24 + 4 * rnd))  # new videos for a plain run to attach
        jobs = [(["--name", f"{g[0]}=A{rnd}"], ("name", g[0], f"A{rnd}")),
                (["--name", f"{g[1]}=B{rnd}"], ("name", g[1], f"B{rnd}")),
                ([], None)]
        if rnd == 0:
            jobs.append((["--merge", str(g[8]), str(g[9])], ("merge", g[8], g[9])))
        elif rnd == 1:
            jobs.append((["--split", "v003:0"], ("split", "v003", 0)))
        else:
            jobs.append((["--name", f"{g[2]}=C{rnd}"], ("name", g[2], f"C{rnd}")))
        finish([people_cli(url, *args, env=env) for args, _ in jobs])
        reg, newer = state(url)
        assert newer.number >= version.number + len(jobs), "each writer committed a version of its own"
        version = newer
        assert seen_ids <= set(reg.persons.index), "a global id vanished (and could be reused)"
        seen_ids = set(reg.persons.index)
        assert reg.persons.at[reg.resolve(g[0]), "name"] == f"A{rnd}"
        assert reg.persons.at[reg.resolve(g[1]), "name"] == f"B{rnd}"
        assert reg.resolve(g[9]) == reg.resolve(g[8]), "the merge was lost"
        if rnd >= 1:
            m = reg.members
            split = m[(m.video_id == "v003") & (m.person_id == 0)].iloc[0]
            assert split.pinned and (m.global_person_id == split.global_person_id).sum() == 1, "the split was lost"
    assert reg.persons.at[reg.resolve(g[2]), "name"] == "C2"


@pytest.mark.timeout(900)
def test_sigkill_at_any_point_leaves_the_registry_whole_and_the_next_run_right(dest):
    url, env = dest
    add_videos(url, range(0, 12))
    t0 = time.perf_counter()
    finish([people_cli(url, env=env)])
    run_s = time.perf_counter() - t0
    reg, _ = state(url)
    g0 = gid_of(reg, 0)
    rng = random.Random(7)
    named = None
    for trial in range(6):
        add_videos(url, range(12 + 2 * trial, 14 + 2 * trial))
        proc = people_cli(url, "--name", f"{g0}=K{trial}", env=env)
        time.sleep(rng.uniform(0.3 * run_s, 1.1 * run_s))  # before, during or after its commit
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        from framepipe import commits, manifests, schema
        from framepipe.people import registry

        d = manifests.destination(url)
        version = commits.latest(d, schema.REGISTRY)
        reg = registry.Registry.load(d, MODEL, DIM, version)  # whole: every part of the version readable
        assert set(reg.members.global_person_id) <= set(reg.persons.index)
        now = reg.persons.at[reg.resolve(g0), "name"]
        now = now if isinstance(now, str) else None
        assert now in (named, f"K{trial}")  # the last committed name, or this run's if it committed
        named = now
    finish([people_cli(url, env=env)])
    reg, _ = state(url)  # the next run: every video attached, nothing orphaned
    if not url.startswith("s3://"):  # and nothing half-written left behind (S3 writes are whole)
        assert not [p for p in Path(url).rglob("*.part") if "manifests/people/" not in str(p)]
    assert reg.live_ids().size == IDENTITIES
    name = reg.persons.at[reg.resolve(g0), "name"]
    assert (name if isinstance(name, str) else None) == named  # the last committed name stays


def _groups(index) -> set[frozenset]:
    """The people index as a partition of (video, person) keys: what a registry decided, whatever its ids."""
    return {frozenset(zip(g.video_id, g.person_id)) for _, g in index.groupby("global_person_id")}


@pytest.mark.timeout(300)
def test_an_update_after_new_videos_writes_a_segment_not_the_registry_again(tmp_path, monkeypatch):
    """After a few new videos, a version keeps the base files (centroid sums, member embeddings, the index) by
    reference and adds a segment of the persons changed and the members added; read light or whole, and searched,
    it is the registry one update of everything would have made. A merge, or too many segments, writes the base
    files anew."""
    import numpy as np

    from framepipe import commits, manifests, schema
    from framepipe.people import files as registry_files, model_store, registry, search

    whole, layered = str(tmp_path / "whole"), str(tmp_path / "layered")
    add_videos(whole, range(0, 44))
    expected, _, _ = registry.update_destination(whole, max_distance=0.3)
    add_videos(layered, range(0, 40))
    registry.update_destination(layered, max_distance=0.3)
    d = manifests.destination(layered)
    first = commits.latest(d, schema.REGISTRY)
    base = {k: v for k, v in first.files.items() if not k.startswith(schema.PEOPLE_INDEX_PART)}
    add_videos(layered, range(40, 44))
    index, updates, _ = registry.update_destination(layered, max_distance=0.3)
    assert updates[MODEL].attached == 8 and updates[MODEL].created == 0
    second = commits.latest(d, schema.REGISTRY)
    assert all(second.files[k] == v for k, v in base.items()), "a base file was written again for 4 videos"
    added = sorted(k for k in second.files if k not in base and k != schema.PEOPLE_INDEX_PART)
    assert added == [f"{MODEL}/members+000001.parquet", f"{MODEL}/persons+000001.parquet"]
    assert _groups(index) == _groups(expected)
    reg, _ = state(layered)  # read whole: checked member by member
    light = registry.Registry.load(d, MODEL, DIM, second, light=True)
    listed = registry.load_persons(layered)  # a notebook's view: the base and the segment
    assert listed.set_index("global_person_id")["members"].to_dict() == reg.persons["members"].to_dict()
    assert "embedding_sum" not in listed
    assert light.persons["members"].to_dict() == reg.persons["members"].to_dict()
    for identity in range(IDENTITIES):  # a search finds the people of the new videos, and by their centroid
        q = np.asarray(_embedding(identity, np.random.default_rng(99)), np.float32)
        hits = search.rank(light, q, top=50, min_similarity=0.5)
        assert {h.video_id for h in hits} >= {f"v{v:03d}" for v in range(40, 44) if identity in (v % 10, (v + 5) % 10)}
        assert all(h.person_similarity is not None and h.person_similarity > h.similarity for h in hits)

    def merge_and_add(dest: str):
        reg, _ = state(dest)
        registry.update_destination(dest, corrections=registry.Corrections(merges=[(gid_of(reg, 0), gid_of(reg, 1))]))
        if dest == layered:
            merged = commits.latest(d, schema.REGISTRY)
            assert not any(registry_files.SEGMENT.match(k.rsplit("/", 1)[-1]) for k in merged.files)
            assert merged.files[f"{MODEL}/persons.parquet"] != base[f"{MODEL}/persons.parquet"]
            monkeypatch.setattr(model_store, "COMPACT_SEGMENTS", 2)  # the third segment: the base anew
        for n in range(3):
            add_videos(dest, range(44 + n, 45 + n))
            index, _, _ = registry.update_destination(dest, max_distance=0.3)
            if dest == layered:
                files = commits.latest(d, schema.REGISTRY).files
                segments = [k for k in files if registry_files.SEGMENT.match(k.rsplit("/", 1)[-1])]
                assert len(segments) == (2 * (n + 1) if n < 2 else 0)
        state(dest)  # checked whole after a compaction too
        return index

    assert _groups(merge_and_add(whole)) == _groups(merge_and_add(layered))


@pytest.mark.timeout(600)
def test_a_writer_that_sleeps_past_the_pruned_log_loses_nothing(dest):
    """A writer stalled between reading a version and committing its change while more than KEEP_VERSIONS
    versions are committed (real ``framepipe people --name`` processes) and the log is pruned behind them: the
    number it commits is free again, but its commit is withdrawn and its change applied again on the newest
    version, so its correction is in the latest version and nothing of the others is lost."""
    from framepipe import commits, manifests, schema
    from framepipe.people import registry

    url, env = dest
    add_videos(url, range(0, 4))
    finish([people_cli(url, env=env)])
    reg, _ = state(url)
    g0, g1 = gid_of(reg, 0), gid_of(reg, 1)
    d = manifests.destination(url)
    calls = []

    def change(version):
        calls.append(version.number)
        if len(calls) == 1:  # the stall: others commit meanwhile
            for n in range(commits.KEEP_VERSIONS + 2):
                finish([people_cli(url, "--name", f"{g1}=Other{n}", env=env)])
            assert commits.versions(d, schema.REGISTRY)[0] > version.number + 1  # its next number was pruned
        mine = registry.Registry.load(d, MODEL, DIM, version)
        mine.name(g0, "Kept")
        parts, dropped = mine.parts()
        keep = {k: v for k, v in version.files.items() if k not in parts and k not in dropped}
        return parts, dict(version.meta), keep

    old = os.environ.copy()
    os.environ.update(env or {})
    try:
        commits.transact(d, schema.REGISTRY, change)
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert len(calls) == 2 and calls[1] == calls[0] + commits.KEEP_VERSIONS + 2
    reg = registry.Registry.load(d, MODEL, DIM)
    assert reg.persons.at[g0, "name"] == "Kept"
    assert reg.persons.at[g1, "name"] == f"Other{commits.KEEP_VERSIONS + 1}"
