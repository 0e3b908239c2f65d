"""The person registry (stable ids, names and merges that survive new material) and `framepipe search`, on the
shared footage: real models, real CLI processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from conftest import MEDIA, PACK, copy_videos, run_cli

pytestmark = [pytest.mark.models]

AOC_CLIP = "videos/talking_heads/retalking_3.mp4"
AOC_OTHER = "videos/talking_heads/sadtalker_WDA_AlexandriaOcasioCortez_000.mp4"
MONTAGE = "videos/composed/talking_heads_montage.mp4"
OBAMA_PHOTO = "photos/face_recognition/barack_obama/obama.jpg"
PAIR = "photos/face_recognition/groups/two_people_obama_biden.jpg"


def _partial(library, tmp_path, keys) -> str:
    """A destination holding the people manifests of ``keys`` only (as if only they had been processed yet)."""
    dest = tmp_path / "dest"
    _add(library, dest, keys)
    return str(dest)


def _add(library, dest, keys) -> None:
    copy_videos(library["dest"], dest, [library["results"][key].video_id for key in keys])


def _index(dest) -> pd.DataFrame:
    return pd.read_parquet(f"{dest}/manifests/people_index.parquet")


def _gid(index, library, key, person_id=0) -> int:
    vid = library["results"][key].video_id
    return int(index[(index.video_id == vid) & (index.person_id == person_id)].global_person_id.iloc[0])


def test_names_merges_and_ids_survive_new_material(library, tmp_path):
    results = library["results"]
    first = [k for k in results if k.startswith("videos/talking_heads/") and k != AOC_OTHER]
    dest = _partial(library, tmp_path, first)
    proc = run_cli("people", dest, "--no-report", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "seeded by clustering" in proc.stdout
    before = _index(dest)
    aoc = _gid(before, library, AOC_CLIP)
    a, b = sorted(g for g in before.global_person_id.unique() if g != aoc)[:2]  # two different people
    proc = run_cli("people", dest, "--no-report", "--name", f"{aoc}=Alexandria", "--name", f"{a}=Pat",
                   "--merge", str(a), str(b), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"person {aoc} is Alexandria" in proc.stdout and f"person {a} is Pat" in proc.stdout
    corrected = _index(dest)

    _add(library, dest, [AOC_OTHER, MONTAGE, OBAMA_PHOTO, PAIR])  # new material arrives
    proc = run_cli("people", dest, "--no-report", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "updated: " in proc.stdout and "attached to known ones" in proc.stdout, proc.stdout
    after = _index(dest)
    old = corrected.set_index(["video_id", "person_id"]).global_person_id
    new = after.set_index(["video_id", "person_id"]).global_person_id
    assert (new.loc[old.index] == old).all(), "an old (video, person) changed its global id"
    names = after.dropna(subset=["name"]).groupby("global_person_id")["name"].first().to_dict()
    assert names == {aoc: "Alexandria", a: "Pat"}
    assert set(after[after.global_person_id == a].video_id) >= set(before[before.global_person_id.isin([a, b])].video_id)
    # the woman of the new clip is the one named before; the montage's six people attach to the known five
    assert _gid(after, library, AOC_OTHER) == aoc
    assert (after.global_person_id.max() - before.global_person_id.max()) <= 4  # obama, biden (+ at most 2)
    assert after[after.global_person_id == aoc].name.eq("Alexandria").all()

    # a split is kept too, and so is everything else when nothing is new
    vid = results[AOC_OTHER].video_id
    proc = run_cli("people", dest, "--no-report", "--split", f"{vid}:0", timeout=300)
    assert proc.returncode == 0, proc.stderr
    split = _gid(_index(dest), library, AOC_OTHER)
    assert split != aoc
    proc = run_cli("people", dest, "--no-report", timeout=300)
    assert proc.returncode == 0, proc.stderr
    again = _index(dest)
    assert _gid(again, library, AOC_OTHER) == split
    assert again.set_index(["video_id", "person_id"]).global_person_id.equals(
        _index(dest).set_index(["video_id", "person_id"]).global_person_id)


def test_search_by_video_finds_the_same_woman_elsewhere(library, tmp_path):
    dest = _partial(library, tmp_path, [k for k in library["results"] if k != AOC_CLIP and k != "broken"
                                        and library["results"][k].status == "succeeded"])
    proc = run_cli("search", str(MEDIA / AOC_CLIP), dest, "--json", "--top", "5", timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert len(doc["faces"]) == 1 and doc["results"], doc
    top = doc["results"]
    wanted = {library["results"][AOC_OTHER].video_id, library["results"][MONTAGE].video_id}
    assert top[0]["video_id"] in wanted, top[0]
    assert {r["video_id"] for r in top if r["global_person_id"] == top[0]["global_person_id"]} == wanted
    assert all(r["similarity"] >= doc["min_similarity"] for r in top)
    assert top == sorted(top, key=lambda r: -r["similarity"])
    montage = next(r for r in top if r["video_id"] == library["results"][MONTAGE].video_id)
    assert montage["first_seen_s"] < 19.08 and montage["last_seen_s"] >= 38.6  # both of her appearances
    assert montage["frame_url"].endswith(".jpg") and montage["face_url"].endswith(".jpg")


def test_search_by_photo_each_face_of_a_pair(library, tmp_path):
    """Leave the query photo out; each of its two faces (--face) finds its own person among the rest."""
    keys = [k for k in library["results"] if k != PAIR and k != "broken"]
    dest = _partial(library, tmp_path, keys)
    found = []
    for face in (0, 1):
        proc = run_cli("search", str(MEDIA / PAIR), dest, "--json", "--face", str(face), timeout=300)
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert len(doc["faces"]) == 2 and doc["faces"][0]["size_px"] >= doc["faces"][1]["size_px"]
        folders = {r["source"].split("/")[-2] for r in doc["results"][:3]
                   if "/face_recognition/" in r["source"] and "/groups/" not in r["source"]}
        found.append(folders)
    assert {frozenset(f) for f in found} == {frozenset({"barack_obama"}), frozenset({"joe_biden"})}, found


@pytest.mark.parametrize("query,code", [("videos/caminandes_10s_no_humans.mp4", "no_face")])
def test_search_without_a_face_is_one_clear_line(library, query, code):
    proc = run_cli("search", str(MEDIA / query), str(library["dest"]), timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"framepipe: failed: {code}: ") and proc.stderr.count("\n") == 1, proc.stderr


def _peak_rss_mb(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    """A CLI run in a process of its own and its peak memory (the child's maxrss, read by a wrapper process)."""
    wrapper = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, file=sys.stderr); "
               "sys.exit(p.returncode)")
    env = {**os.environ, "FRAMEPIPE_MODELS": str(PACK)}
    proc = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "framepipe", *args],
                          capture_output=True, text=True, env=env, timeout=300)
    return proc, float(proc.stderr.strip().splitlines()[-1])


def test_a_huge_photo_is_refused_from_its_header(library, tmp_path):
    """A 16000 x 16000 PNG (0.7 MB on disk, 0.8 GB decoded) is refused before anything decodes it: one typed
    line, and no more memory than a search with an ordinary photo (it took 1.06 GB when FFmpeg's probe decoded
    it first)."""
    from PIL import Image

    huge = tmp_path / "huge.png"
    Image.new("RGB", (16000, 16000)).save(huge)
    proc, huge_mb = _peak_rss_mb("search", str(huge), str(library["dest"]))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("framepipe: failed: input_too_large: ") and "256,000,000 pixels" in proc.stderr, proc.stderr
    normal, normal_mb = _peak_rss_mb("search", str(MEDIA / OBAMA_PHOTO), str(library["dest"]))
    assert normal.returncode == 0, normal.stderr
    assert huge_mb <= normal_mb + 100, (huge_mb, normal_mb)


def test_search_without_models_uses_the_destinations_pack(library, tmp_path):
    """No --models and no FRAMEPIPE_MODELS: the pack the destination's people were embedded with (found under
    the model root), not buffalo_l (a download that fails offline); a pack found nowhere is one line naming
    --models."""
    root = tmp_path / "root"
    (root / "models").mkdir(parents=True)
    (root / "models" / PACK.name).symlink_to(PACK)
    env = {k: v for k, v in os.environ.items() if k != "FRAMEPIPE_MODELS"}
    run = lambda model_root: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "framepipe", "search", str(MEDIA / OBAMA_PHOTO), str(library["dest"]), "--json"],
        capture_output=True, text=True, env={**env, "FRAMEPIPE_MODEL_ROOT": str(model_root)}, timeout=300)
    proc = run(root)
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)["results"]
    assert hits and all("obama" in h["source"].lower() for h in hits[:1]), hits
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run(empty)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f"framepipe: failed: model_not_found: model pack '{PACK.name}' is not in ")
    assert "--models" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_a_moved_destination_keeps_working(library, tmp_path):
    """A destination whose registry and report exist, copied elsewhere (``cp -a``; the same for another bucket or
    prefix): corrections, the report and search work on the copy and link the copy's own files (the rows keep the
    URLs they were written under; they failed with "... is not under" before)."""
    import re
    import shutil

    first = tmp_path / "first"
    shutil.copytree(library["dest"], first)
    assert run_cli("people", str(first), timeout=300).returncode == 0
    moved = tmp_path / "moved"
    shutil.copytree(first, moved, symlinks=True)
    shutil.rmtree(first)  # nothing of the old place is left to be read by mistake
    gid = int(_index(moved).global_person_id.min())
    proc = run_cli("people", str(moved), "--name", f"{gid}=Pat", timeout=300)
    assert proc.returncode == 0 and f"person {gid} is Pat" in proc.stdout, proc.stderr
    pages = [moved / "report" / "index.html", *sorted((moved / "report" / "videos").glob("*.html"))[:3]]
    for page in pages:
        links = re.findall(r'(?:src|href)="([^"#]+\.(?:jpg|png))"', page.read_text())
        assert links, page
        missing = [u for u in links if not (page.parent / u).resolve().is_file()]
        assert not missing, (page, missing[:3])
    proc = run_cli("search", str(MEDIA / OBAMA_PHOTO), str(moved), "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)["results"]
    assert hits and all(h["frame_url"].startswith(f"{moved}/") and os.path.isfile(h["frame_url"]) for h in hits), hits
    from framepipe import manifests  # the notebook's way to an output named by a row

    row = manifests.load_people(moved, columns=["video_id", "face_url"]).iloc[0]
    assert not row.face_url.startswith(f"{moved}/")  # the URL written, of the first place
    assert manifests.read_output(moved, row.face_url).startswith(b"\xff\xd8")
