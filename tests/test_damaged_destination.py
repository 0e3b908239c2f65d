"""A damaged destination (a truncated manifest data file, registry log entry or registry data file): every command
works on, doing without the damaged file (a table's other files; the registry's version before), says so on
stderr, and ``framepipe people DEST --check`` lists the damaged files (exit 1). They were exit 70 before."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from conftest import MEDIA, run_cli

pytestmark = [pytest.mark.models]

PHOTO = "photos/face_recognition/barack_obama/obama.jpg"


def _index(dest) -> pd.DataFrame:
    return pd.read_parquet(f"{dest}/manifests/people_index.parquet")


def _log(dest) -> list:
    return sorted((dest / "registry" / "_log").glob("*.json"))


def test_a_damaged_destination_works_on_and_is_checked(library, tmp_path):
    dest = tmp_path / "dest"
    shutil.copytree(library["dest"], dest)
    assert run_cli("people", str(dest), "--no-report", timeout=300).returncode == 0
    before = _index(dest)
    proc = run_cli("people", str(dest), "--check")
    assert proc.returncode == 0 and proc.stdout.startswith("0 damaged file(s)"), proc.stdout + proc.stderr

    # a people data file truncated (one video's rows), and a newer registry version whose log entry is truncated
    damaged = sorted((dest / "manifests" / "people").glob("*.parquet"))[0]
    lost = set(pd.read_parquet(damaged)["video_id"])
    damaged.write_bytes(damaged.read_bytes()[:100])
    gid = int(before.global_person_id.min())
    assert run_cli("people", str(dest), "--no-report", "--name", f"{gid}=Pat", timeout=300).returncode == 0
    entry = _log(dest)[-1]
    entry.write_bytes(entry.read_bytes()[:20])

    proc = run_cli("people", str(dest), "--check")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    listed = {line.split(": ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("damaged: ")}
    assert listed == {str(damaged), str(entry)}, proc.stdout

    for args in (["report", str(dest)], ["search", str(MEDIA / PHOTO), str(dest), "--json"]):
        proc = run_cli(*args, timeout=300)
        assert proc.returncode == 0, (args, proc.stderr)
        assert f"{entry} is damaged" in proc.stderr, proc.stderr  # the registry's version before it was read
    assert json.loads(proc.stdout)["results"], proc.stdout

    proc = run_cli("people", str(dest), "--no-report", timeout=300)  # commits after the damaged entry
    assert proc.returncode == 0, proc.stderr
    assert f"{entry} is damaged" in proc.stderr, proc.stderr
    assert int(_log(dest)[-1].stem) == int(entry.stem) + 1
    after = _index(dest)
    # the people of the damaged file's video stay where they were (not detached); the rest is as before
    key = ["video_id", "person_id"]
    assert set(map(tuple, after[key].values)) == set(map(tuple, before[key].values))
    assert lost <= set(after.video_id)

    # the data file of the newest version's people index truncated: readers take the version before
    newest = json.loads(_log(dest)[-1].read_text())
    index_file = dest / "registry" / newest["files"]["people_index.parquet"]
    index_file.write_bytes(b"")
    proc = run_cli("people", str(dest), "--check")
    assert proc.returncode == 1 and str(index_file) in proc.stdout, proc.stdout
    proc = run_cli("report", str(dest), timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_a_first_build_skips_a_damaged_manifest_file(library, tmp_path):
    """The registry's first build reads the whole people table: a damaged data file's rows are skipped (named on
    stderr), every other video's people are registered."""
    dest = tmp_path / "dest"
    shutil.copytree(library["dest"], dest)
    shutil.rmtree(dest / "registry", ignore_errors=True)  # another test may have registered the library's people
    (dest / "manifests" / "people_index.parquet").unlink(missing_ok=True)
    files = sorted((dest / "manifests" / "people").glob("*.parquet"))
    everyone = pd.concat([pd.read_parquet(f, columns=["video_id", "person_id"]) for f in files])
    damaged = files[0]
    lost = set(pd.read_parquet(damaged)["video_id"])
    damaged.write_bytes(b"")
    proc = run_cli("people", str(dest), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"{damaged} is damaged" in proc.stderr, proc.stderr
    index = _index(dest)
    assert set(index.video_id) == set(everyone.video_id) - lost
    assert len(index) == int((~everyone.video_id.isin(lost)).sum())


def test_a_damaged_table_commit_is_read_around(library, tmp_path):
    """A truncated commit of the videos table's log (``_delta_log/<n>.json``): readers read the table's version
    before it, say so, and ``--check`` lists it (it was a destination_error with a page of Rust backtrace)."""
    dest = tmp_path / "dest"
    shutil.copytree(library["dest"], dest)
    entry = sorted((dest / "manifests" / "videos" / "_delta_log").glob("*.json"))[-1]
    entry.write_bytes(entry.read_bytes()[:30])
    proc = run_cli("report", str(dest), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == f"framepipe: warning: {entry} is damaged: done without it (framepipe people DEST --check)\n"
    proc = run_cli("people", str(dest), "--check")
    assert proc.returncode == 1 and f"damaged: {entry}\n" in proc.stdout, proc.stdout
