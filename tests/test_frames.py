"""Frames: exactly 10 representative frames, timestamps, orientation, decoders."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest

from conftest import GROUND_TRUTH, MEDIA

pytestmark = [pytest.mark.models]


def _image(url: str) -> np.ndarray:
    img = cv2.imread(url)
    assert img is not None, url
    return img


def _pts_of_all_frames(path) -> list[float]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [float(f.pts * s.time_base) for f in c.decode(s)]


@pytest.mark.parametrize(
    "key", ["videos/composed/talking_heads_montage.mp4", "videos/facenet_pytorch_crowd_walk.mp4"]
)
def test_exactly_ten_representative_frames_spread_over_the_video(extracted, settings, key):
    """A 44 s video and a 4.2 s one (only 4 one-per-second samples) both give exactly 10 frames."""
    from framepipe.selection import hamming, measure

    result = extracted(key)
    reps = result.representative_frames
    assert len(reps) == 10 and not result.short_video
    ts = [r.timestamp_s for r in reps]
    assert ts == sorted(ts) and len(set(ts)) == 10
    duration, start = result.video.duration_s, result.video.start_s
    bins = {min(9, int((t - start) / duration * 10)) for t in ts}
    assert len(bins) >= 8, f"frames bunched together: {ts}"
    stats = [measure(_image(r.url)) for r in reps]
    for m in stats:
        assert m.luma >= settings.black_luma and m.sharpness >= settings.blur_min
    if "duplicate" not in result.relaxed_rules:
        hashes = [m.dhash for m in stats]
        # JPEG re-encoding moves a hash by a bit or two; duplicates are far closer than this
        assert min(hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]) > 2


@pytest.mark.parametrize(
    "key", ["videos/composed/photo_slideshow_6people.mp4", "videos/composed/talking_heads_montage.mp4"]
)
def test_representative_frames_come_from_different_shots(extracted, key):
    """Shots from the composition's own segments (16 photos of 3 s; 7 clips): with 10 or more shots, no two frames
    of one shot; with fewer, the frames shared out (at most ceil(10 / shots) of one)."""
    segments = GROUND_TRUTH[key]["segments"]
    result = extracted(key)
    shots = [next(i for i, (s, e, _) in enumerate(segments) if s <= r.timestamp_s < e)
             for r in result.representative_frames]
    most = max(shots.count(s) for s in shots)
    assert len(shots) == 10 and most <= -(-10 // len(segments)), shots
    assert "shot" not in result.relaxed_rules


def test_no_damaged_frame_among_the_representative_frames(settings, model, made, tmp_path):
    """The decoder's corrupt flag spoils the pictures predicted from a damaged one, up to the next keyframe: none
    of them is a representative frame while clean frames are left."""
    from framepipe import pipeline

    path = made("damaged_mid_stream.mp4")
    spoiled, tainted = [], False
    with av.open(str(path)) as c:  # the damaged span, as the decoder reports it
        s = c.streams.video[0]
        for f in c.decode(s):
            tainted = (tainted and not f.key_frame) or f.is_corrupt
            if tainted:
                spoiled.append(float(f.pts * s.time_base))
    assert spoiled and spoiled[-1] - spoiled[0] > 2, "the test file no longer has a damaged span"
    result = pipeline.extract(str(path), str(tmp_path), settings, model=model)
    assert result.status == "succeeded" and len(result.representative_frames) == 10
    assert "damaged" not in result.relaxed_rules
    for r in result.representative_frames:
        assert not spoiled[0] - 1e-3 <= r.timestamp_s <= spoiled[-1] + 1e-3, (r.timestamp_s, spoiled[0], spoiled[-1])


def test_video_shorter_than_ten_frames_yields_all_its_frames(settings, model, made, tmp_path):
    from framepipe import pipeline

    result = pipeline.extract(str(made("tiny_6_frames.mp4")), str(tmp_path), settings, model=model)
    assert result.status == "succeeded"
    assert result.video.total_frames == 6
    assert len(result.representative_frames) == 6 and result.short_video
    assert any("short video" in w for w in result.warnings)
    assert len(result.talent_frames) == 1


def test_portrait_stays_portrait(extracted):
    result = extracted("videos/sppas_demo_portrait.mp4")
    assert (result.video.width, result.video.height) == (1080, 1920)
    for url in [result.talent_frames[0].url] + [r.url for r in result.representative_frames]:
        h, w = _image(url).shape[:2]
        assert (w, h) == (1080, 1920)


def test_rotation_tag_is_applied(settings, model, made, tmp_path):
    """A phone video coded landscape with a 90-degree display matrix comes out portrait, as players show it."""
    from framepipe import pipeline

    result = pipeline.extract(str(made("rotated_phone.mp4")), str(tmp_path), settings, model=model)
    assert (result.video.width, result.video.height) == (360, 640)
    h, w = _image(result.representative_frames[0].url).shape[:2]
    assert (w, h) == (360, 640)


@pytest.mark.parametrize(
    "key,first_pts",
    [("videos/short_hamilton_clip.mp4", 0.852), ("videos/talking_heads/retalking_1.mp4", 0.033)],
)
def test_timestamps_are_presentation_times(extracted, key, first_pts):
    """Late-start (video from 0.852 s) and variable-frame-rate files: every timestamp is a real frame pts."""
    result = extracted(key)
    assert result.video.start_s == pytest.approx(first_pts, abs=0.002)
    pts = np.array(_pts_of_all_frames(MEDIA / key))
    stamps = [r.timestamp_s for r in result.representative_frames]
    stamps += [x for t in result.talent_frames for x in (t.timestamp_s, t.first_seen_s, t.last_seen_s)]
    for t in stamps:
        assert np.min(np.abs(pts - t)) < 0.002, f"{t} is not the pts of any frame"
    assert min(stamps) >= first_pts - 0.002


def test_late_start_person_times_match_ground_truth(extracted):
    """Lin-Manuel Miranda's close-up is at 3.58-7.88 s in container time; his best frame must be there."""
    lin = extracted("videos/short_hamilton_clip.mp4").talent_frames[0]
    assert 3.58 <= lin.timestamp_s <= 7.88


def test_video_not_in_stream_zero(extracted):
    result = extracted("videos/pbs_oval_office_4people.mp4")
    assert result.video.total_frames == 510 and result.video.codec == "h264"


def test_decoders_agree(settings, model):
    """decord and PyAV pick the same frames (same pts) and find the same people."""
    from framepipe.video import open_video, sample_times

    path = str(MEDIA / "videos/talking_heads/retalking_1.mp4")
    seen = {}
    for backend in ("decord", "pyav"):
        stream = open_video(path, backend=backend)
        frames = list(stream.read(sample_times(stream.info, 1.0, 20)))
        seen[backend] = ([round(f.pts_s, 3) for f in frames], [len(model.analyze(f.image)) for f in frames])
    assert seen["decord"] == seen["pyav"]


def test_av1_falls_back_to_pyav(settings, model, made, tmp_path):
    """decord's FFmpeg cannot read AV1; the engine opens it with PyAV and still finds the person."""
    from framepipe import pipeline

    result = pipeline.extract(str(made("av1.mp4")), str(tmp_path), settings, model=model)
    assert result.status == "succeeded", result.error
    assert result.video.codec == "av1" and result.processing.backend == "pyav"
    assert len(result.talent_frames) == 1 and len(result.representative_frames) == 10


def test_keyframes_sampling_mode(settings, model, tmp_path):
    from framepipe import pipeline

    s = settings.with_overrides(sampling="keyframes")
    result = pipeline.extract(str(MEDIA / "videos/composed/photo_slideshow_6people.mp4"), str(tmp_path), s, model=model)
    assert result.status == "succeeded" and result.processing.sampling == "keyframes"
    assert 0 < result.processing.frames_sampled <= 48
    assert len(result.representative_frames) == 10
