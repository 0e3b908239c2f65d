"""A video's outputs under SIGKILL and a full disk: the destination's manifests show a video only once its
``result.json`` is written, a killed run's ``*.part`` files are cleaned by the next run, and a full disk still gets
the video's failure record."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import MEDIA, PACK, run_cli
from framepipe import manifests

pytestmark = [pytest.mark.models]

VIDEO = MEDIA / "videos/tears_of_steel_10s.mp4"


def _extract(out, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "framepipe", "extract", str(VIDEO), "--out", str(out), *extra],
                            env={**os.environ, "FRAMEPIPE_MODELS": str(PACK)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _video_id() -> str:
    from framepipe import ids

    return ids.video_id(str(VIDEO))


@pytest.mark.timeout(600)
def test_killed_as_its_manifest_appears_the_video_is_done(tmp_path):
    """SIGKILL the moment the first manifest row of the video appears: its result.json is there already (the
    manifests come after it), and a re-run leaves everything whole."""
    vid = _video_id()
    for trial in range(3):
        out = tmp_path / f"out{trial}"
        proc = _extract(out)
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline and not _table_rows(out):
            time.sleep(0.0005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert _table_rows(out), "the run ended before writing its manifests"
        assert (out / vid / "result.json").exists(), "a manifest row for a video without result.json"
        assert json.loads((out / vid / "result.json").read_text())["status"] == "succeeded"
    again = run_cli("extract", str(VIDEO), "--out", str(out), timeout=300)
    assert again.returncode == 0, again.stderr
    videos, people = manifests.load_videos(out), manifests.load_people(out)
    assert videos["video_id"].tolist() == [vid] and videos["status"].tolist() == ["succeeded"]
    assert len(people) == videos["people"].iloc[0] > 0 and set(people["run_id"]) == set(videos["run_id"])


def _table_rows(out) -> bool:
    """Has a data file of the video's rows appeared in the destination's tables?"""
    return any(any((out / "manifests" / kind).glob("part-*.parquet")) for kind in ("videos", "people"))


@pytest.mark.timeout(600)
def test_killed_before_its_result_the_video_is_in_no_manifest(tmp_path):
    """SIGKILL as soon as the video's own Parquet is written (before result.json): the destination's manifests do
    not list it, so `framepipe people` registers nobody of it."""
    vid = _video_id()
    out = tmp_path / "out"
    proc = _extract(out)
    while proc.poll() is None and not (out / vid / "people.parquet").exists():
        time.sleep(0.0005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    if (out / vid / "result.json").exists():
        pytest.skip("the run got to result.json before the kill landed")
    from framepipe import tables

    d = manifests.destination(out)
    assert tables.read(d, "people").num_rows == 0 and tables.read(d, "videos").num_rows == 0


def test_a_killed_runs_part_files_are_cleaned_by_the_next_run(tmp_path):
    vid = _video_id()
    out = tmp_path / "out"
    (out / vid / "talent").mkdir(parents=True)
    leftovers = [out / vid / "talent" / "person_000.jpg.part", out / vid / "result.json.part"]
    for p in leftovers:
        p.write_bytes(b"\0" * 4096)
    other = out / "another-video" / "result.json.part"  # another video's writer, in flight
    other.parent.mkdir()
    other.write_bytes(b"\0")
    proc = run_cli("extract", str(VIDEO), "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not any(p.exists() for p in leftovers)
    assert other.exists()
    assert not list(out.rglob(f"{vid}/**/*.part"))


@pytest.fixture()
def small_disk(tmp_path):
    """A 3 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_still_gets_the_failure_record(small_disk):
    """The disk fills while the JPEGs are written: the half-written file is removed and the video's failed
    result.json (destination_error, retried by the next run) is written; after room is made, a re-run succeeds."""
    out = small_disk / "out"
    filler = small_disk / "filler"
    free = shutil.disk_usage(small_disk).free
    filler.write_bytes(b"\0" * (free - 600 * 1024))  # room for the reservation, not for every frame
    proc = run_cli("extract", str(VIDEO), "--out", str(out), timeout=300)
    assert proc.returncode == 1
    result = json.loads((out / _video_id() / "result.json").read_text())
    assert result["status"] == "failed" and result["error"]["type"] == "destination_error", result
    assert "No space left" in result["error"]["message"] and ".jpg" in result["error"]["message"]
    assert not list(out.rglob("*.part"))
    filler.unlink()
    proc = run_cli("extract", str(VIDEO), "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / _video_id() / "result.json").read_text())["status"] == "succeeded"
