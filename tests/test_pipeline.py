"""The one per-video pipeline (framepipe/pipeline.py) on real footage: cancellation, keyframe sampling with parallel
parts, and `framepipe extract` over a folder with the backfill's done markers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import MEDIA, PACK, ROOT, run_cli
from framepipe import manifests

pytestmark = [pytest.mark.models, pytest.mark.ray]


def test_a_cancelled_video_writes_one_failed_result_and_nothing_else(settings, model, tmp_path):
    from framepipe import pipeline
    from framepipe.analyzer import LocalAnalyzer
    from framepipe.framesource import Cancel

    cancel = Cancel()

    def progress(done, planned):
        if done >= 8:
            cancel.stop("timeout", "over 1 s")

    source = str(MEDIA / "videos/composed/talking_heads_montage.mp4")
    result = pipeline.process_video(source, str(tmp_path), settings, LocalAnalyzer(model, 4), progress, cancel)
    assert result.status == "failed" and (result.error.type, result.error.message) == ("timeout", "over 1 s")
    written = json.loads((tmp_path / result.video_id / "result.json").read_text())
    assert written["status"] == "failed" and written["error"]["type"] == "timeout"
    assert not (tmp_path / result.video_id / "talent").exists()
    assert not (tmp_path / result.video_id / "representative").exists()


def test_faces_the_recognizer_skips_are_the_same_person_and_the_people_do_not_change(settings, model):
    """Real footage with cuts and four people (framepipe.tracking): the faces skipped take an embedding their own
    would match as the same person, the people found are the same, and a face's embedding does not depend on the
    other faces in the recognizer's batch (a statically exported model: the reuse relies on it)."""
    import cv2
    import numpy as np

    from framepipe import pipeline
    from framepipe.analyzer import LocalAnalyzer

    source = str(MEDIA / "videos/pbs_oval_office_4people.mp4")
    reused = pipeline.analyse_video(source, settings, LocalAnalyzer(model, 4))
    every = pipeline.analyse_video(source, settings.with_overrides(reuse_track_embeddings=False),
                                   LocalAnalyzer(model, 4))
    pairs = list(zip(reused.people.records, every.people.records))
    assert all(a.pts_s == b.pts_s and np.allclose(a.face.bbox, b.face.bbox) for a, b in pairs)
    skipped = [(a.face.embedding, b.face.embedding) for a, b in pairs if not a.face.embedded]
    assert all(b.face.embedded for _, b in pairs)
    assert len(skipped) >= len(pairs) / 4, (len(skipped), len(pairs))  # 22 of 59
    calibrated = 1.0 - model_distance(settings)  # the pack's "same person" similarity for clean photos
    assert min(float(x @ y) for x, y in skipped) >= calibrated
    found = [[(p.best.pts_s, p.appearances) for p in st.finish().people] for st in (reused, every)]
    assert found[0] == found[1] and len(found[0]) >= 4

    faces = every.people.records[:9]
    frames = [cv2.imdecode(np.frombuffer(every.people.face_frames[r.pts_s], np.uint8), cv2.IMREAD_COLOR)
              for r in faces]
    aligned = [model._norm_crop(img, landmark=r.face.kps, image_size=112) for img, r in zip(frames, faces)]
    together = model.embed_crops(aligned)
    alone = np.concatenate([model.embed_crops([a]) for a in aligned])
    assert np.allclose(together, alone, atol=1e-5)


def model_distance(settings) -> float:
    from framepipe import clustering

    return clustering.Params.from_settings(settings, 512).cluster_max_distance


def test_keyframes_with_parallel_parts_analyse_each_keyframe_once(settings, model):
    from framepipe import pipeline
    from framepipe.analyzer import LocalAnalyzer

    source = str(MEDIA / "videos/composed/photo_slideshow_6people.mp4")
    analyzer = LocalAnalyzer(model, 4)
    base = settings.with_overrides(sampling="keyframes", sample_fps=2.0)
    one = pipeline.analyse_video(source, base.with_overrides(decode_workers=1), analyzer)
    two = pipeline.analyse_video(source, base.with_overrides(decode_workers=2), analyzer)
    pts_one = sorted({r.pts_s for r in one.people.records})
    assert one.frames_sampled == two.frames_sampled  # the boundary keyframe is not taken by both readers
    assert sorted({r.pts_s for r in two.people.records}) == pts_one
    assert len(two.people.records) == len(one.people.records)


@pytest.mark.timeout(600)
def test_extract_over_a_folder_matches_the_backfill_and_skips_what_is_done(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for k in ["videos/tears_of_steel_10s.mp4", "videos/talking_heads/retalking_2.mp4"]:
        os.symlink(MEDIA / k, src / os.path.basename(k))
    (src / "notes.mp4").write_text("not a video\n" * 50)
    cli_out, ray_out = tmp_path / "cli", tmp_path / "ray"

    first = run_cli("extract", str(src), "--out", str(cli_out), timeout=300)
    assert first.returncode == 1, first.stderr  # one input failed: its row is written, the exit says so
    summary = json.loads(first.stdout.strip().splitlines()[-1].split(": ", 1)[1])
    assert (summary["listed"], summary["succeeded"], summary["failed"]) == (3, 2, 1)

    env = {**os.environ, "FRAMEPIPE_MODELS": str(PACK)}
    proc = subprocess.run([sys.executable, "-m", "jobs.backfill", "--source", str(src), "--dest", str(ray_out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(os.listdir(cli_out / "_done")) == sorted(os.listdir(ray_out / "_done"))
    assert len(os.listdir(cli_out / "_done")) == 3  # the non-video is final: marked done too
    for vid in manifests.load_videos(cli_out)["video_id"]:
        a = json.loads((cli_out / vid / "result.json").read_text())
        b = json.loads((ray_out / vid / "result.json").read_text())
        assert a["status"] == b["status"] and a["video"] == b["video"]
        assert [t["timestamp_s"] for t in a["talent_frames"]] == [t["timestamp_s"] for t in b["talent_frames"]]
        assert [t["bbox"] for t in a["talent_frames"]] == [t["bbox"] for t in b["talent_frames"]]
        assert [r["timestamp_s"] for r in a["representative_frames"]] == [
            r["timestamp_s"] for r in b["representative_frames"]]

    again = run_cli("extract", str(src), "--out", str(cli_out), timeout=300)
    assert again.returncode == 0 and '"skipped": 3' in again.stdout, again.stdout + again.stderr

    # --force redoes every input of the folder (the done markers notwithstanding), writing them again
    before = (cli_out / vid / "result.json").stat().st_mtime_ns
    forced = run_cli("extract", str(src), "--out", str(cli_out), "--force", timeout=300)
    summary = json.loads(forced.stdout.strip().splitlines()[-1].split(": ", 1)[1])
    assert (summary["skipped"], summary["succeeded"], summary["failed"]) == (0, 2, 1), forced.stdout
    assert (cli_out / vid / "result.json").stat().st_mtime_ns > before
