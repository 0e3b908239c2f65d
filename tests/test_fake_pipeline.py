"""The per-video pipeline with a FakeAnalyzer: fixed faces and embeddings through the real sampling, shots, people
step and output writer (``pipeline.process_video``, what the CLI and Serve run), with neither the models nor
``../shared``: a video the test encodes, red for 6 s then blue for 6 s (a cut), person A on screen throughout and
person B in the blue shot only."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import encode_frames
from framepipe import manifests

pytestmark = []  # the fast layer: neither the models nor ../shared


class FakeAnalyzer:
    """The :class:`framepipe.analyzer.Analyzer` protocol: faces chosen by the frame's colour."""

    device, pack, batch_size = "cpu", "fake", 4

    def __init__(self, fail_after: int | None = None):
        self.calls, self.fail_after, self.embedded = 0, fail_after, 0

    def analyze(self, images, photo=False):
        found = self.detect(images)
        self.embed([f for faces in found for f in faces])
        return found

    def detect(self, images):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("the fake model broke")
        out = []
        for image in images:
            blue = image[..., 0].mean() > image[..., 2].mean()
            faces = [self._face(0, x=20)] + ([self._face(1, x=200)] if blue else [])
            out.append(faces)
        return out

    def embed(self, faces):
        self.embedded += len(faces)
        for f in faces:  # the fake's "crop" is the face's embedding to be
            f.embedding, f.crop = f.crop, None

    @staticmethod
    def _face(who: int, x: int):
        from framepipe.faces import Face

        emb = np.zeros(512, np.float32)
        emb[who] = 1.0
        kps = np.array([[x + 30, 40], [x + 70, 40], [x + 50, 60], [x + 35, 80], [x + 65, 80]], np.float32)
        return Face(bbox=np.array([x, 10, x + 100, 110], np.float32), kps=kps, det_score=0.9, quality=0.8,
                    crop=emb)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    frames = [np.full((240, 320, 3), (0, 0, 200) if i < 60 else (200, 0, 0), np.uint8) for i in range(120)]
    return encode_frames(tmp_path_factory.mktemp("fake") / "two_shots.mp4", frames, fps=10)


def test_fixed_faces_become_two_people_with_shots_and_appearances(clip, tmp_path):
    from framepipe import pipeline
    from framepipe.config import Settings

    result = pipeline.process_video(str(clip), str(tmp_path), Settings(models="fake"), FakeAnalyzer())
    assert result.status == "succeeded", result.error
    assert [len(t.seen_s) > 0 for t in result.talent_frames] == [True, True]
    a, b = result.talent_frames
    assert a.first_seen_s < 1.0 and a.last_seen_s > 11.0 and 6.0 <= b.first_seen_s  # A throughout, B when blue
    assert len(result.shots) == 2 and 5.5 <= result.shots[1].start_s <= 6.5  # the cut, within half a sample
    assert len(a.time_ranges) == 2 and len(b.time_ranges) == 1  # A's appearance breaks at the cut
    assert a.time_ranges[0].start_s == result.shots[0].start_s and b.time_ranges[-1].end_s == result.shots[1].end_s
    assert result.processing.faces_unlisted == 0 and len(result.representative_frames) == 10
    written = json.loads((tmp_path / result.video_id / "result.json").read_text())
    assert written["shots"] == [s.model_dump() for s in result.shots]
    people = manifests.load_people(tmp_path).to_dict("records")
    assert [len(p["time_ranges"]) for p in people] == [2, 1]
    assert people[0]["embedding_model"] == "fake" and len(people[0]["embedding"]) == 512


def test_a_face_followed_through_a_shot_is_embedded_only_until_its_track_agrees(clip, tmp_path):
    from framepipe import pipeline
    from framepipe.config import Settings

    runs = {}
    for reuse in (True, False):
        analyzer = FakeAnalyzer()
        result = pipeline.process_video(str(clip), str(tmp_path / str(reuse)), Settings(
            models="fake", reuse_track_embeddings=reuse), analyzer)
        assert result.status == "succeeded", result.error
        assert result.processing.faces_embedded == analyzer.embedded
        runs[reuse] = result
    every, reused = runs[False], runs[True]
    assert every.processing.frames_sampled == 20  # 10 red, 10 blue
    assert every.processing.faces_detected == reused.processing.faces_detected == every.processing.faces_embedded
    assert every.processing.faces_detected == 30  # A in all 20 samples, B in the 10 blue ones
    # A in the red shot (samples 0-9): a look at its first face, again after 8 samples, and at its last face (3);
    # the cut ends the track (the same place on screen after a cut may be somebody else): A and B in the blue shot,
    # a look at the first and the last face of each segment (10-15, 16-19: every front door starts tracks afresh at
    # sample 16), 4 each
    assert reused.processing.faces_embedded == 3 + 4 + 4
    assert [t.model_dump(exclude={"url", "face_url"}) for t in reused.talent_frames] == [
        t.model_dump(exclude={"url", "face_url"}) for t in every.talent_frames]


def test_a_failing_analyzer_is_one_failed_video_with_its_record(clip, tmp_path):
    from framepipe import pipeline, videorun
    from framepipe.config import Settings

    result = pipeline.process_video(str(clip), str(tmp_path), Settings(models="fake"), FakeAnalyzer(fail_after=1))
    assert result.status == "failed" and result.error.type == "internal_error", result.error
    assert "the fake model broke" in result.error.message
    assert json.loads((tmp_path / result.video_id / "result.json").read_text())["status"] == "failed"
    assert not (tmp_path / result.video_id / "talent").exists()
    assert not videorun.is_final(result)  # a bug of ours: the next run tries again


def test_a_cancelled_video_writes_only_its_failed_record(clip, tmp_path):
    from framepipe import pipeline
    from framepipe.config import Settings
    from framepipe.framesource import Cancel

    cancel = Cancel()

    def progress(done, planned):
        if done >= 4:
            cancel.stop("timeout", "over 1 s")

    result = pipeline.process_video(str(clip), str(tmp_path), Settings(models="fake"), FakeAnalyzer(), progress,
                                    cancel)
    assert result.status == "failed" and (result.error.type, result.error.message) == ("timeout", "over 1 s")
    assert not (tmp_path / result.video_id / "representative").exists()


def test_the_report_pages_and_redoes_only_what_changed(clip, tmp_path, monkeypatch):
    """Pages of a few cards and people each, every link resolving to a file; a report after one new video
    rewrites that video's page and the index pages its card is on, not the other videos' pages."""
    import re
    import shutil

    from framepipe import pipeline, report
    from framepipe.people import registry
    from framepipe.config import Settings

    monkeypatch.setattr(report, "VIDEOS_PER_PAGE", 2)
    monkeypatch.setattr(report, "PEOPLE_PER_PAGE", 1)
    dest = tmp_path / "dest"
    for i in range(5):
        shutil.copy(clip, tmp_path / f"clip{i}.mp4")
    for i in range(4):
        assert pipeline.process_video(str(tmp_path / f"clip{i}.mp4"), str(dest), Settings(models="fake"),
                                      FakeAnalyzer()).status == "succeeded"
    registry.update_destination(str(dest), max_distance=0.5)
    report.write(str(dest))
    pages = sorted((dest / "report").rglob("*.html"))
    assert {p.name for p in pages} >= {"index.html", "videos-2.html", "people-2.html"}
    for page in pages:  # every image and link of every page is a file of the destination
        for target in re.findall(r'(?:src|href)="([^"#]+)', page.read_text()):
            assert (page.parent / target).resolve().is_file(), (page, target)
    before = {p: p.stat().st_mtime_ns for p in (dest / "report" / "videos").glob("*.html")}
    vid = pipeline.process_video(str(tmp_path / "clip4.mp4"), str(dest), Settings(models="fake"),
                                 FakeAnalyzer()).video_id
    report.write(str(dest))
    after = {p: p.stat().st_mtime_ns for p in (dest / "report" / "videos").glob("*.html")}
    assert set(after) - set(before) == {dest / "report" / "videos" / f"{vid}.html"}
    assert all(after[p] == t for p, t in before.items())  # nothing of the other videos redone
    assert "clip4.mp4" in (dest / "report" / "pages" / "videos-3.html").read_text()


def test_settings_a_then_b_then_a_redoes_a(clip, tmp_path):
    """A done marker stands only while the video's folder holds that run's outputs: after a run with other settings
    (B), a run with the first ones (A) redoes the video, and a fourth run with A skips it."""
    import shutil

    from framepipe import pipeline, schema
    from framepipe.config import Settings

    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    shutil.copy(clip, src / "clip.mp4")
    a, b = Settings(models="fake", sample_fps=1.0), Settings(models="fake", sample_fps=2.0)
    sampled, runs = [], []
    for settings in (a, b, a, a):
        runs.append(pipeline.process_many(str(src), str(dest), settings, FakeAnalyzer()))
        [result] = [schema.Result.model_validate_json(p.read_text()) for p in dest.glob("*/result.json")]
        sampled.append(result.processing.frames_sampled)
    assert [(r.succeeded, r.skipped) for r in runs] == [(1, 0), (1, 0), (1, 0), (0, 1)]
    assert sampled[0] == sampled[2] == sampled[3] < sampled[1]  # the folder holds A's outputs again


class OneFaceAnalyzer(FakeAnalyzer):
    def detect(self, images):
        return [faces[:1] for faces in super().detect(images)]


def test_a_redo_leaves_only_what_its_result_names(clip, tmp_path):
    """A redo that finds fewer people removes the JPEGs of the people it no longer has; a failed redo leaves no
    JPEG its failed result.json does not name."""
    from framepipe import pipeline
    from framepipe.config import Settings

    def files(vid):
        return sorted(str(p.relative_to(tmp_path / vid)) for p in (tmp_path / vid).rglob("*.jpg"))

    first = pipeline.process_video(str(clip), str(tmp_path), Settings(models="fake"), FakeAnalyzer())
    assert len(first.talent_frames) == 2 and "talent/person_001.jpg" in files(first.video_id)
    fewer = pipeline.process_video(str(clip), str(tmp_path), Settings(models="fake"), OneFaceAnalyzer())
    named = {os.path.relpath(u, tmp_path / fewer.video_id) for t in fewer.talent_frames for u in (t.url, t.face_url)}
    named |= {os.path.relpath(f.url, tmp_path / fewer.video_id) for f in fewer.representative_frames}
    assert len(fewer.talent_frames) == 1 and files(fewer.video_id) == sorted(named)
    failed = pipeline.process_video(str(clip), str(tmp_path), Settings(models="fake"), FakeAnalyzer(fail_after=0))
    assert failed.status == "failed" and files(failed.video_id) == []


def test_a_single_file_extract_is_marked_done_for_a_folder_run(clip, tmp_path):
    """``framepipe extract FILE`` (always processed) writes the done marker a later run over its folder honours."""
    import shutil

    from framepipe import pipeline
    from framepipe.config import Settings

    src, dest = tmp_path / "src", str(tmp_path / "dest")
    src.mkdir()
    shutil.copy(clip, src / "clip.mp4")
    settings = Settings(models="fake")
    one = pipeline.process_video(str(src / "clip.mp4"), dest, settings, FakeAnalyzer())
    pipeline.mark_extracted(str(src / "clip.mp4"), dest, settings, one)
    summary = pipeline.process_many(str(src), dest, settings, FakeAnalyzer())
    assert (summary.skipped, summary.succeeded) == (1, 0)
