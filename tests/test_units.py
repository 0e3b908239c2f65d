"""Fast unit tests: no models, no footage, no servers. Sampling, splitting, ids, done-marker keys, clustering on
fixed embeddings, the frame picker, the host allow-list, listing, and what the backfill hands to Ray."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from framepipe import clustering, ids, selection
from framepipe.config import Settings
from framepipe.framesource import FrameSource, SampledFrame, split_times
from framepipe.prefetch import prefetch
from framepipe.video import VideoInfo, sample_times

pytestmark = []  # the fast layer: neither the models nor ../shared

ROOT = Path(__file__).resolve().parents[1]


def _params(**distances) -> "clustering.Params":
    """The clustering's parameters from the settings (the distances explicit: no model pack's calibration)."""
    return clustering.Params.from_settings(Settings(**{"cluster_max_distance": 0.68, "track_max_distance": 0.79,
                                                        **distances}))


def info(duration_s: float, fps: float = 25.0, start_s: float = 0.0) -> VideoInfo:
    return VideoInfo(width=64, height=48, fps=fps, total_frames=int(duration_s * fps), duration_s=duration_s,
                     start_s=start_s, codec="h264", rotation=0, stream_index=0)


# ---- sampling -------------------------------------------------------------------------------------


def test_one_sample_per_second_from_the_first_frame():
    times = sample_times(info(60.0, start_s=0.852), 1.0, 20)
    assert len(times) == 60 and times[0] == 0.852 and times[1] == pytest.approx(1.852)
    assert all(t < 0.852 + 60 for t in times)


def test_short_videos_get_min_samples_or_every_frame():
    assert len(sample_times(info(5.0), 1.0, 20)) == 20
    six = info(0.24)  # 6 frames at 25 fps
    assert len(sample_times(six, 1.0, 20)) == 6


def test_split_times_is_contiguous_and_complete():
    times = [float(t) for t in range(100)]
    parts = split_times(times, 2, 30)
    assert len(parts) == 2 and sum(parts, []) == times
    assert max(parts[0]) < min(parts[1])
    assert split_times(times[:40], 2, 30) == [times[:40]]  # too short to split
    assert split_times([], 2, 30) == [[]]


def test_frames_are_yielded_once_even_when_two_readers_take_the_same_one():
    image = np.zeros((2, 2, 3), np.uint8)
    m = selection.measure(image)
    frames = [SampledFrame(t, image, m) for t in (1.0, 2.0, 2.0, 3.0, 1.0000000001)]
    assert [f.pts_s for f in FrameSource._once(iter(frames))] == [1.0, 2.0, 3.0]


# ---- ids and done markers -------------------------------------------------------------------------


def test_one_video_id_rule_for_success_and_early_failure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.mp4").write_bytes(b"x")
    assert ids.video_id("notes.mp4") == ids.video_id(str(tmp_path / "notes.mp4"))
    assert ids.video_id("notes.mp4").startswith("notes-")  # never "notes.mp4-..."
    assert ids.video_id(f"file://{tmp_path}/notes.mp4") == ids.video_id("notes.mp4")
    assert ids.video_id("s3://b/in/a b.mov").startswith("a_b-")
    assert ids.video_id("s3://b/in/a.mp4") != ids.video_id("s3://b/other/a.mp4")


def test_done_marker_key_follows_results_and_versions(monkeypatch):
    import framepipe

    s = Settings(models="/packs/x")
    key = ids.done_marker("v-1", "etag=1", s)
    assert key.startswith("v-1.")
    assert ids.done_marker("v-1", "etag=1", s.with_overrides(decode_workers=4, device="cpu")) == key
    assert ids.done_marker("v-1", "etag=1", s.with_overrides(cluster_max_distance=0.4)) != key
    assert ids.done_marker("v-1", "etag=2", s) != key
    # destination-wide steps and prices change no video's outputs: a backfill must not redo the bucket for them
    for unchanged in ({"search_min_similarity": 0.3}, {"people_max_distance": 0.7}, {"people_max_count": 9},
                      {"hourly_price_usd": 2.0}, {"analyze_batch": 16}, {"model_root": "/elsewhere"}):
        assert ids.done_marker("v-1", "etag=1", s.with_overrides(**unchanged)) == key, unchanged
    for changed in ({"sample_fps": 2.0}, {"jpeg_quality": 80}, {"min_face_px": 40}, {"representative_count": 5},
                    {"track_min_quality": 0.4}, {"max_pixels": 1000}):
        assert ids.done_marker("v-1", "etag=1", s.with_overrides(**changed)) != key, changed
    monkeypatch.setattr(framepipe, "__version__", "99.0.0")
    assert ids.done_marker("v-1", "etag=1", s) != key  # an upgrade redoes everything


def test_every_setting_says_its_concern_and_whether_it_changes_outputs():
    """A new setting must be declared with config.setting(): its concern (the docs' section) and whether the done
    marker hashes it."""
    from framepipe import config

    for name, f in Settings.model_fields.items():
        assert (f.json_schema_extra or {}).get("concern") in config.CONCERNS, name
    assert {"models", "sample_fps", "jpeg_quality", "cluster_max_distance"} <= Settings.output_settings()
    assert not {"device", "analyze_batch", "people_max_distance", "hourly_price_usd"} & Settings.output_settings()


def test_the_configuration_reference_is_generated_from_the_settings():
    """docs/configuration.md's reference tables are what docs/generate_configuration.py makes of the settings
    models and the backfill's flags: they cannot drift."""
    import runpy

    gen = runpy.run_path(str(ROOT / "docs" / "generate_configuration.py"))
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert gen["reference"]() in doc, "docs/configuration.md is stale: python docs/generate_configuration.py"


def test_the_thresholds_the_docs_state_are_the_codes():
    """Every threshold the prose of docs/ states as what the code does (pipeline, results, serve, the calibration
    table of configuration) is built here from the settings and the shipped calibrations: a changed default or a
    new calibration fails this until the docs say the same (the configuration reference is checked whole, above)."""
    from framepipe import calibration
    from framepipe.config import Settings

    s = Settings()
    buffalo, scrfd = calibration.lookup("buffalo_s_dq", 512), calibration.lookup("scrfd_mobilefacenet", 128)
    match = f"{buffalo.match_similarity:.3f}"
    distance = f"{1 - buffalo.match_similarity:.3f}"
    stated = {
        "pipeline.md": [
            f"`FRAMEPIPE_DECODE_WORKERS` ({s.decode_workers})",
            ("one frame per second" if s.sample_fps == 1 else f"{s.sample_fps:g} frames per second")
            + " (`FRAMEPIPE_SAMPLE_FPS`)",
            f"detection at {s.det_size}×{s.det_size}",
            f"faces below detector score {s.min_det_score:g} or smaller than {s.min_face_px} px dropped",
            f"differ by more than {s.shot_cut_distance:g} (total-variation distance)",
            f"overlap (IoU ≥ {s.track_min_iou:g})",
            f"`1 - link_similarity`, {1 - buffalo.link_similarity:.3f} for buffalo_s_dq",
            f"detected with confidence ≥ {s.track_min_det_score:g} or has quality ≥ {s.track_min_quality:g}",
            f"{distance} for buffalo_s_dq, {1 - scrfd.match_similarity:.3f} for scrfd_mobilefacenet",
            f"only if its quality is ≥ {s.singleton_min_quality:g}",
            f"A photo's faces are people when detected with confidence ≥ {s.track_min_det_score:g} or of quality "
            f"≥ {s.singleton_min_quality:g}",
            f"cut into {s.representative_count} equal time bins",
        ],
        "results.md": [f"`1 - match_similarity`: {distance} for"],
        "configuration.md": [f"| {buffalo.match_similarity:.3f} | {scrfd.match_similarity:.3f} |",
                             f"| {buffalo.link_similarity:.3f} | {scrfd.link_similarity:.3f} |",
                             f"| {buffalo.set_match_similarity:.3f} | {scrfd.set_match_similarity:.3f} |",
                             f"| {buffalo.group_similarity:.3f} (100 LFW people) |"],
        "serve.md": [f'"min_similarity": {match},', f"match similarity, {match} for buffalo_s_dq"],
    }
    for name, phrases in stated.items():
        text = " ".join((ROOT / "docs" / name).read_text().split())
        missing = [p for p in phrases if p not in text]
        assert not missing, f"docs/{name} no longer says what the code does: {missing}"


def test_a_new_calibration_of_the_pack_redoes_its_videos(tmp_path):
    from framepipe import calibration

    pack = tmp_path / "pack"
    pack.mkdir()
    s = Settings(models=str(pack))
    key = ids.done_marker("v-1", "etag=1", s)
    (pack / calibration.FILE).write_text(calibration.Calibration("pack", 512, 0.41, 0.3, 0.5).to_json())
    assert ids.done_marker("v-1", "etag=1", s) != key


# ---- clustering -----------------------------------------------------------------------------------


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return len(set(zip(a.tolist(), b.tolist()))) == len(set(a.tolist())) == len(set(b.tolist()))


def test_average_linkage_matches_scipy_without_constraints():
    from scipy.cluster.hierarchy import fcluster, linkage

    rng = np.random.default_rng(7)
    for _ in range(60):
        k, n = int(rng.integers(1, 6)), int(rng.integers(2, 60))
        x = rng.normal(size=(k, 16))[rng.integers(0, k, n)] + rng.normal(scale=rng.uniform(0.2, 1.0), size=(n, 16))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        t = float(rng.uniform(0.1, 0.9))
        expected = fcluster(linkage(x, method="average", metric="cosine"), t=t, criterion="distance")
        got = clustering.average_linkage(x, np.zeros((n, n), dtype=bool), t)
        assert _same_partition(got, expected)


def test_average_linkage_never_joins_across_a_cannot_link():
    x = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    cannot = np.zeros((3, 3), dtype=bool)
    cannot[0, 1] = cannot[1, 0] = True
    labels = clustering.average_linkage(x, cannot, 0.5)
    assert labels[0] != labels[1] and labels[2] in (labels[0], labels[1])  # the third joins one, never both


def _faces(spec):
    """(sample, x, embedding axis, quality) per face -> the arrays cluster_faces takes."""
    emb = np.stack([np.eye(8)[axis] for _, _, axis, _ in spec]).astype(np.float32)
    boxes = np.array([[x, 0, x + 50, 50] for _, x, _, _ in spec], dtype=np.float32)
    sample = np.array([s for s, _, _, _ in spec])
    quality = np.array([q for _, _, _, q in spec])
    return emb, quality, np.full(len(spec), 0.9), boxes, sample


def test_people_from_fixed_embeddings():
    # two people seen twice (not in consecutive samples), a clear face seen once kept, a poor one dropped
    emb, q, det, boxes, sample = _faces([(0, 0, 0, 0.5), (2, 0, 0, 0.5), (4, 0, 1, 0.5), (6, 0, 1, 0.5),
                                        (8, 0, 2, 0.9), (10, 0, 3, 0.1)])
    labels = clustering.cluster_faces(emb, q, det, boxes, sample, np.zeros(6, int), _params())
    assert labels.tolist() == [0, 0, 1, 1, 2, -1]


def test_two_faces_in_one_frame_are_two_people_even_with_the_same_embedding():
    emb, q, det, boxes, sample = _faces([(0, 0, 0, 0.9), (0, 200, 0, 0.9), (1, 0, 0, 0.9), (1, 200, 0, 0.9)])
    labels = clustering.cluster_faces(emb, q, det, boxes, sample, np.zeros(4, int), _params())
    assert labels.tolist() == [0, 1, 0, 1]  # the boxes keep each track on its own face


def test_a_track_carries_one_person_through_a_pose_change():
    # the same place in consecutive samples: the embedding turns step by step (a head turning)
    angles = np.linspace(0, 5 * np.pi / 6, 6)  # 30 degrees a step; the ends are 150 degrees apart
    emb = np.stack([np.cos(angles), np.sin(angles)] + [np.zeros(6)] * 6, axis=1).astype(np.float32)
    boxes = np.array([[10 * i, 0, 10 * i + 50, 50] for i in range(6)], dtype=np.float32)
    args = (emb, np.full(6, 0.6), np.full(6, 0.9), boxes)
    one_shot = clustering.cluster_faces(*args, np.arange(6), np.zeros(6, int), _params())
    assert one_shot.tolist() == [0] * 6  # only the track joins the ends
    cut = clustering.cluster_faces(*args, np.arange(6), np.array([0, 0, 0, 1, 1, 1]), _params())
    assert len(set(cut.tolist())) == 2  # a shot cut between samples 2 and 3: no track across it


def test_unreliable_tracks_are_not_people():
    emb, q, _, boxes, sample = _faces([(0, 0, 0, 0.2), (1, 0, 0, 0.2), (2, 0, 0, 0.2)])
    labels = clustering.cluster_faces(emb, q, np.full(3, 0.55), boxes, sample, np.zeros(3, int), _params())
    assert labels.tolist() == [-1, -1, -1]  # a blurred background face, however steady
    labels = clustering.cluster_faces(emb, q, np.full(3, 0.8), boxes, sample, np.zeros(3, int), _params())
    assert labels.tolist() == [0, 0, 0]  # detected surely and seen in three samples: a person
    labels = clustering.cluster_faces(emb[:2], q[:2], np.full(2, 0.8), boxes[:2], sample[:2], np.zeros(2, int),
                                      _params())
    assert labels.tolist() == [-1, -1]  # no face clear enough to identify, and seen only twice: counted, not listed


def _turned(angle_deg: float, axis: int = 0, other: int = 1) -> np.ndarray:
    """A unit embedding at ``angle_deg`` from axis ``axis`` towards ``other`` (cosine = cos(angle))."""
    v = np.zeros(8, dtype=np.float32)
    a = np.deg2rad(angle_deg)
    v[axis], v[other] = np.cos(a), np.sin(a)
    return v


def test_poor_faces_are_held_to_the_looser_calibrated_threshold():
    """Two tracks of one person at cosine 0.3 (between the two calibrated thresholds) join when both are poor
    faces, and stay apart when both are clear (clear faces of one person agree more than that)."""
    params = _params(cluster_max_distance=0.63, track_max_distance=0.74)
    emb = np.stack([_turned(0)] * 3 + [_turned(np.rad2deg(np.arccos(0.3)))] * 3)
    boxes = np.array([[0, 0, 50, 50]] * 6, dtype=np.float32)
    sample, shot = np.array([0, 1, 2, 10, 11, 12]), np.array([0, 0, 0, 1, 1, 1])
    poor = clustering.cluster_faces(emb, np.full(6, 0.46), np.full(6, 0.9), boxes, sample, shot, params)
    clear = clustering.cluster_faces(emb, np.full(6, 0.9), np.full(6, 0.9), boxes, sample, shot, params)
    assert poor.tolist() == [0] * 6
    assert clear.tolist() == [0, 0, 0, 1, 1, 1]
    assert clustering.pair_threshold(np.array([0.3, 0.55, 0.9]), params)[0].round(3).tolist() == [0.74, 0.74, 0.74]
    assert clustering.pair_threshold(np.array([0.9, 0.55]), params)[0].round(3).tolist() == [0.63, 0.685]


def test_a_background_face_is_counted_not_listed():
    """One shot, always far smaller than the main face of its frames: not a person of its own."""
    emb = np.stack([_turned(0, 0), _turned(0, 1, 2)] * 3)
    boxes = np.array([[0, 0, 200, 200], [300, 0, 400, 100]] * 3, dtype=np.float32)
    sample = np.repeat(np.arange(3), 2)
    g = clustering.group_faces(emb, np.full(6, 0.9), np.full(6, 0.9), boxes, sample, np.zeros(6, int),
                               _params())
    assert g.labels.tolist() == [0, -1] * 3 and g.unlisted == 3
    bigger = boxes.copy()
    bigger[1::2] = [300, 0, 480, 180]  # 0.9 of the main face: a person beside the main one
    g = clustering.group_faces(emb, np.full(6, 0.9), np.full(6, 0.9), bigger, sample, np.zeros(6, int),
                               _params())
    assert g.labels.tolist() == [0, 1] * 3 and g.unlisted == 0


def test_a_weak_face_joins_the_person_it_surely_is_and_only_then():
    params = _params(cluster_max_distance=0.63, track_max_distance=0.74)
    a, b = _turned(0, 0), _turned(0, 2)
    weak_a, weak_between = _turned(20, 0, 3), (a + b) / np.linalg.norm(a + b)
    emb = np.stack([a, b, a, b, weak_a, weak_between])
    boxes = np.array([[0, 0, 100, 100], [200, 0, 300, 100]] * 2 + [[0, 0, 100, 100], [0, 0, 100, 100]],
                     dtype=np.float32)
    sample, shot = np.array([0, 0, 5, 5, 10, 20]), np.array([0, 0, 1, 1, 2, 3])
    q = np.array([0.9, 0.9, 0.9, 0.9, 0.1, 0.1])
    det = np.array([0.9, 0.9, 0.9, 0.9, 0.5, 0.5])  # the last two are unreliable (never seed a person)
    g = clustering.group_faces(emb, q, det, boxes, sample, shot, params)
    assert g.labels.tolist() == [0, 1, 0, 1, 0, -1]  # near a: joins a; halfway between a and b: neither
    assert g.unlisted == 1


def test_shot_spans_and_appearance_ranges():
    from framepipe.selection import Shots

    shots = Shots([1.0, 2.0, 3.0, 4.0, 5.0], [0, 0, 1, 1, 1], start_s=0.5, end_s=5.8)
    assert shots.spans() == [(0.5, 2.5), (2.5, 5.8)]
    assert shots.ranges([2.0, 3.0, 4.0]) == [(1.5, 2.5), (2.5, 4.5)]  # broken at the cut
    assert shots.ranges([1.0, 5.0]) == [(0.5, 1.5), (4.5, 5.8)]  # broken where a sample did not see it


def test_calibration_from_known_similarities():
    from framepipe import calibration

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(16, 64))
    emb, lab = [], []
    for i, c in enumerate(centres):
        for _ in range(6):
            v = c / np.linalg.norm(c) + rng.normal(scale=0.06, size=64)
            emb.append(v / np.linalg.norm(v))
            lab.append(f"p{i}")
    cal = calibration.from_embeddings(np.array(emb), lab, "synthetic")
    assert cal.genuine_pairs == 16 * 15 and cal.impostor_pairs == 96 * 95 // 2 - 16 * 15
    assert cal.link_similarity <= cal.match_similarity <= cal.set_match_similarity
    assert cal.genuine_median > 0.6 > cal.match_similarity > 0.2  # random 64-d people: about 0 +- 0.12
    assert cal.true_accept_at_match == 1.0
    # 4 photos of 2 people: 4 different-person pairs cannot place a 1-in-1,000 threshold (issue 29 row 4)
    tiny, tiny_lab = np.array(emb[:2] + emb[6:8]), lab[:2] + lab[6:8]
    with pytest.raises(calibration.TooFewPairs, match="4 different-person and 2 same-person pairs"):
        calibration.from_embeddings(tiny, tiny_lab, "synthetic")
    assert calibration.from_embeddings(tiny, tiny_lab, "synthetic", force=True).impostor_pairs == 4


def test_calibration_lookup_prefers_the_pack_folder(tmp_path):
    from framepipe import calibration

    shipped = calibration.lookup("buffalo_s_dq", 512)
    assert shipped.source.endswith("buffalo_s_dq.json")
    assert calibration.lookup("buffalo_l", 512).pack == "buffalo_s_dq"  # the same family until calibrated
    assert calibration.lookup(None, 128).pack == "scrfd_mobilefacenet"
    pack = tmp_path / "buffalo_l"
    pack.mkdir()
    (pack / calibration.FILE).write_text(calibration.Calibration("buffalo_l", 512, 0.4, 0.3, 0.5).to_json())
    mine = calibration.lookup("buffalo_l", 512, str(pack))
    assert (mine.pack, mine.match_distance) == ("buffalo_l", 0.6)
    assert calibration.lookup("buffalo_l", 128, str(pack)).pack == "scrfd_mobilefacenet"  # another size: not it


def test_people_index_never_joins_two_people_seen_together():
    import pandas as pd

    from framepipe.people import grouping, registry

    e = np.eye(4)[0].astype(np.float32)
    rows = pd.DataFrame([
        {"video_id": "v", "source": "v", "person_id": 0, "embedding": e, "embedding_model": "m", "seen_s": [1.0, 2.0],
         "face_url": None, "frame_url": None, "timestamp_s": 1.0, "quality": 0.5},
        {"video_id": "v", "source": "v", "person_id": 1, "embedding": e, "embedding_model": "m", "seen_s": [2.0, 3.0],
         "face_url": None, "frame_url": None, "timestamp_s": 2.0, "quality": 0.5},
        {"video_id": "w", "source": "w", "person_id": 0, "embedding": e, "embedding_model": "m", "seen_s": [2.0],
         "face_url": None, "frame_url": None, "timestamp_s": 2.0, "quality": 0.5},
    ])
    index = registry.in_memory_index(rows, 0.6)
    ids = dict(zip(zip(index["video_id"], index["person_id"]), index["global_person_id"]))
    assert ids[("v", 0)] != ids[("v", 1)] and ids[("w", 0)] in (ids[("v", 0)], ids[("v", 1)])
    assert grouping.within_video_joins(index) == []
    rows.loc[1, "seen_s"] = [5.0]  # not on screen together: a split the per-video pass missed, and reported
    joins = grouping.within_video_joins(registry.in_memory_index(rows, 0.6))
    assert [(j.video_id, j.person_ids) for j in joins] == [("v", [0, 1])]


def _person_rows(embeddings: dict, seen: dict | None = None):
    """People rows of (video, person) -> embedding, each seen at its own time unless ``seen`` says otherwise."""
    import pandas as pd

    return pd.DataFrame([
        {"video_id": v, "source": v, "person_id": p, "embedding": np.asarray(e, np.float32), "embedding_model": "m",
         "seen_s": (seen or {}).get((v, p), [float(10 * p)]), "face_url": None, "frame_url": None,
         "timestamp_s": 0.0, "quality": 0.8}
        for (v, p), e in embeddings.items()])


def _at(*weights: float, dim: int = 64) -> np.ndarray:
    """A unit vector with these cosines to the first axes (the rest on the next axis)."""
    v = np.zeros(dim)
    v[:len(weights)] = weights
    v[len(weights)] = np.sqrt(max(0.0, 1.0 - float(np.sum(np.square(weights)))))
    return v


RULE = dict(match=0.37, floor=0.30, single=0.45, typical=0.0, same_input=0.45, margin=0.05)


def test_the_registry_joins_single_photos_only_on_strong_evidence_and_odd_photos_on_their_group():
    """Two single photos at 0.41 (a match for one pair, but where look-alikes meet by chance in a registry of
    thousands) stay apart; a person's odd photo at 0.36 joins the six others of that person (its average against
    them reaches the group's lower bar), built at once or attached later."""
    from framepipe.people import grouping, registry

    rule = grouping.JoinRule(**RULE)
    assert rule.similarity(1, 1) == pytest.approx(0.45) and rule.similarity(1, 6) == pytest.approx(0.30)
    pair = _person_rows({("a", 0): _at(1.0), ("b", 0): _at(0.41)})
    reg = registry.Registry.empty("m", 64)
    reg.update(pair, rule)
    assert reg.index_rows()["global_person_id"].nunique() == 2
    reg = registry.Registry.empty("m", 64)
    reg.update(pair, grouping.JoinRule.fixed(1 - 0.37))  # one threshold for every join: one person
    assert reg.index_rows()["global_person_id"].nunique() == 1

    rng = np.random.default_rng(0)
    noise = np.zeros((6, 64))
    noise[:, 8:] = rng.normal(scale=0.03, size=(6, 56))  # on axes of their own: about 0.95 to each other
    six = {(f"p{i}", 0): (_at(1.0) + n) / np.linalg.norm(_at(1.0) + n) for i, n in enumerate(noise)}
    odd = {("odd", 0): _at(0.36, 0.0, 0.5)}
    assert 0.32 < np.mean([odd["odd", 0] @ e for e in six.values()]) < 0.37
    reg = registry.Registry.empty("m", 64)
    reg.update(_person_rows(six), rule)
    assert reg.update(_person_rows(odd), rule, partial=True).attached == 1
    index = reg.index_rows()
    assert index["global_person_id"].nunique() == 1
    strict = registry.Registry.empty("m", 64)
    strict.update(_person_rows(six), grouping.JoinRule.fixed(1 - 0.37))
    assert strict.update(_person_rows(odd), grouping.JoinRule.fixed(1 - 0.37), partial=True).created == 1


def test_the_registry_keeps_apart_who_one_input_kept_apart_and_guards_look_alikes():
    """Two people of one video at 0.41 (the per-video step compared their tracks and kept them apart) are never
    joined, even through a photo close to both; a new person barely nearer one of two global persons than the
    other is not joined on that alone."""
    from framepipe.people import grouping, registry

    rule = grouping.JoinRule(**RULE)
    rows = {("v", 0): _at(1.0), ("v", 1): _at(0.41, 0.91), ("w", 0): _at(0.8, 0.55)}  # w: 0.8 and 0.83 to them
    for build in ("batch", "w first, then v"):
        reg = registry.Registry.empty("m", 64)
        if build == "batch":
            reg.update(_person_rows(rows), rule)
        else:  # an update per video: v's two people attached one at a time, w's person already there
            for video in ("w", "v"):
                reg.update(_person_rows({k: e for k, e in rows.items() if k[0] == video}), rule, partial=True)
        ids = dict(zip(zip(reg.index_rows()["video_id"], reg.index_rows()["person_id"]),
                       reg.index_rows()["global_person_id"]))
        assert ids[("v", 0)] != ids[("v", 1)], build
        assert ids[("w", 0)] in (ids[("v", 0)], ids[("v", 1)]), build

    a = {(f"a{i}", 0): _at(1.0, 0.0) for i in range(3)}
    b = {(f"b{i}", 0): _at(0.0, 1.0) for i in range(3)}
    between = {("q", 0): _at(0.40, 0.37)}  # 0.40 to one, 0.37 to the other: a look-alike of both
    for margin, created in ((0.05, 1), (0.0, 0)):
        reg = registry.Registry.empty("m", 64)
        reg.update(_person_rows({**a, **b}), grouping.JoinRule(**{**RULE, "margin": margin}))
        assert reg.update(_person_rows(between), grouping.JoinRule(**{**RULE, "margin": margin}),
                          partial=True).created == created


def test_an_update_joins_two_persons_as_the_batch_build_would_and_keeps_corrections(tmp_path):
    """Two photos of one person at 0.40 (under the bar of two single photos) come one update each: two persons;
    a third photo close to both joins one, and the update then joins the two persons as the batch build joins the
    three photos (their average reaches the bar of a group of two against one). The younger id stays an alias of
    the older, the update writes a segment, not the registry again. A person a correction split off, and two
    persons that one input kept apart, are never joined that way."""
    from framepipe.people import grouping, registry

    rule = grouping.JoinRule(**RULE)
    photos = {("x", 0): _at(1.0, 0.0), ("y", 0): _at(0.40, 0.9165), ("z", 0): _at(0.85, 0.5268)}
    batch = registry.in_memory_index(_person_rows(photos).assign(embedding_model="m"), None)
    reg = registry.Registry.empty("m", 64)
    reports = [reg.update(_person_rows({k: e}), rule, partial=True) for k, e in photos.items()]
    index = reg.index_rows()
    assert index["global_person_id"].nunique() == 1 == reg.live_ids().size
    assert [r.created for r in reports] == [1, 1, 0] and reports[-1].merged == 1
    assert index["global_person_id"].iloc[0] == 0 and reg.resolve(1) == 0  # the older id lives on
    assert reg.members["global_person_id"].tolist() == [0, 1, 0]  # stored where they were: an alias
    assert batch["global_person_id"].nunique() == 1
    assert set(reg.members_of([0])["video_id"]) == {"x", "y", "z"}
    assert set(reg.members_of([0])["global_person_id"]) == {0}

    from framepipe import commits, manifests, schema
    from framepipe.people import files

    dest = str(tmp_path / "dest")  # committed: the join is a segment, the base files stay
    rows = _person_rows(photos)
    d = manifests.destination(dest)
    committed = []
    for n in (1, 2, 3):
        index, updates, _ = registry.update_destination(dest, people=rows.iloc[:n])
        committed.append(commits.latest(d, schema.REGISTRY))
    assert updates["m"].merged == 1 and index["global_person_id"].nunique() == 1
    first, last = committed[0], committed[-1]
    assert last.files["m/persons.parquet"] == first.files["m/persons.parquet"]
    assert sum(bool(files.SEGMENT.match(k.rsplit("/", 1)[-1])) for k in last.files) == 4

    sister = {("v", 0): _at(0.40, 0.9165), ("s1", 0): _at(1.0, 0.0), ("s2", 0): _at(0.95, 0.0, 0.3122)}
    alone = registry.Registry.empty("m", 64)
    assert sum(alone.update(_person_rows({k: e}), rule, partial=True).merged for k, e in sister.items()) == 0
    assert alone.index_rows()["global_person_id"].nunique() == 2

    split = reg.split("y", 0)  # a correction: y is somebody else
    reg.update(_person_rows({("w", 0): _at(0.7, 0.7141)}), rule, partial=True)
    ids = dict(zip(reg.index_rows()["video_id"], reg.index_rows()["global_person_id"]))
    assert ids["y"] == split and ids["x"] == ids["z"] != split

    # one video's two people at 0.41, kept apart, each joined by a photo: never one person
    apart = {("v", 0): _at(1.0, 0.0), ("v", 1): _at(0.41, 0.9121)}
    reg = registry.Registry.empty("m", 64)
    reg.update(_person_rows(apart), rule)
    for key, e in {("p", 0): _at(0.9, 0.2), ("q", 0): _at(0.5, 0.85)}.items():
        reg.update(_person_rows({key: e}), rule, partial=True)
    ids = dict(zip(zip(reg.index_rows()["video_id"], reg.index_rows()["person_id"]),
                   reg.index_rows()["global_person_id"]))
    assert ids[("v", 0)] != ids[("v", 1)]


# ---- the representative-frame picker ---------------------------------------------------------------


def test_picker_gives_exactly_ten_spread_frames_and_skips_black_ones():
    picker = selection.RepresentativePicker.from_settings(0.0, 100.0, Settings())
    rng = np.random.default_rng(1)
    for t in range(100):
        luma = 5.0 if t % 10 == 0 else 120.0  # the first frame of every bin is black
        picker.offer(selection.FrameStats(float(t), luma, 100.0 + t % 7, int(rng.integers(0, 2**63)), jpeg=b"j"))
    reps = picker.pick()
    assert len(reps.frames) == 10 and not reps.short_video and reps.relaxed == []
    assert sorted({int(f.pts_s // 10) for f in reps.frames}) == list(range(10))
    assert all(f.luma > 20 for f in reps.frames)


def test_picker_relaxes_duplicates_for_a_still_video_and_says_so():
    picker = selection.RepresentativePicker.from_settings(0.0, 20.0, Settings())
    for t in range(20):
        picker.offer(selection.FrameStats(float(t), 120.0, 100.0, 0xABCDEF, jpeg=b"j"))
    reps = picker.pick()
    assert len(reps.frames) == 10 and reps.relaxed == ["duplicate"]


def test_picker_on_a_short_video_returns_every_frame():
    picker = selection.RepresentativePicker.from_settings(0.0, 0.2, Settings())
    for t in range(6):
        picker.offer(selection.FrameStats(t / 30, 120.0, 100.0, t * 7919, jpeg=b"j"))
    reps = picker.pick()
    assert len(reps.frames) == 6 and reps.short_video


def _offer(picker, t, colour, damaged=False, dhash=None):
    m = selection.FrameMeasure(120.0, 100.0, dhash if dhash is not None else (int(t * 7919) * 2654435761) % 2**64,
                               colour, damaged)
    picker.note(t, m)
    picker.offer(selection.FrameStats(t, *m, jpeg=b"j"))


def _colour(k: int) -> bytes:
    """A colour signature all in hue bin k (a shot of its own colour)."""
    h = np.zeros(selection.HUE_BINS * selection.SAT_BINS + selection.LUMA_BINS, np.uint8)
    h[k % (selection.HUE_BINS * selection.SAT_BINS)] = 255
    h[-1] = 255
    return h.tobytes()


def test_picker_takes_one_frame_per_shot_when_there_are_ten_shots():
    picker = selection.RepresentativePicker.from_settings(0.0, 60.0, Settings())
    # 12 shots of 5 s, shot k has colour k; bins of 6 s straddle the cuts
    for t in range(60):
        _offer(picker, float(t), _colour(t // 5))
    reps = picker.pick()
    assert reps.shots.count == 12 and reps.shots.cuts == [5.0 * k for k in range(1, 12)]
    shots = [reps.shots.shot_of(f.pts_s) for f in reps.frames]
    assert len(reps.frames) == 10 and len(set(shots)) == 10 and reps.relaxed == []


def test_picker_spreads_frames_over_few_shots_and_skips_damaged_frames():
    picker = selection.RepresentativePicker.from_settings(0.0, 40.0, Settings())
    for t in range(40):  # 2 shots; frames 10-19 decoded damaged
        _offer(picker, float(t), _colour(t // 20), damaged=10 <= t < 20)
    reps = picker.pick()
    shots = [reps.shots.shot_of(f.pts_s) for f in reps.frames]
    assert len(reps.frames) == 10 and shots.count(0) == 5 and shots.count(1) == 5
    assert not any(f.damaged for f in reps.frames) and "damaged" not in reps.relaxed


def test_colour_signature_and_damage_of_real_pixels():
    rng = np.random.default_rng(3)
    natural = cv2.GaussianBlur(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8), (0, 0), 3)
    blocks = np.kron(rng.integers(0, 255, (32, 32, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # flat 8x8 blocks
    assert not selection.measure(natural).damaged and selection.measure(blocks).damaged
    assert selection.measure(natural, corrupt=True).damaged
    red, blue = np.zeros((90, 160, 3), np.uint8), np.zeros((90, 160, 3), np.uint8)
    red[..., 2], blue[..., 0] = 200, 200
    assert selection.colour_distance(selection.measure(red).colour, selection.measure(red).colour) == 0
    assert selection.colour_distance(selection.measure(red).colour, selection.measure(blue).colour) > 0.4


# ---- plumbing -------------------------------------------------------------------------------------


def test_prefetch_closes_each_generator_in_its_own_thread():
    closed_in = []

    def frames():
        try:
            yield from range(100)
        finally:
            closed_in.append(threading.current_thread().name)

    with prefetch(frames(), frames(), depth=2) as items:
        next(items)  # leave early: the producers stop and close their generators themselves
    assert len(closed_in) == 2 and all(n.startswith("framepipe-prefetch-") for n in closed_in)


def test_destination_child_keeps_its_timeout(tmp_path):
    from framepipe.storage import Destination

    assert Destination(str(tmp_path), timeout_s=3.0).child("v").timeout_s == 3.0


def test_listing_skips_a_dangling_symlink(tmp_path):
    from framepipe import sources

    (tmp_path / "a.mp4").write_bytes(b"x")
    os.symlink(tmp_path / "missing.mp4", tmp_path / "y.mp4")
    (tmp_path / "notes.txt").write_text("not listed")
    assert [os.path.basename(s.source) for s in sources.iter_videos(str(tmp_path))] == ["a.mp4"]
    assert not sources.is_single_input(str(tmp_path)) and sources.is_single_input(str(tmp_path / "a.mp4"))
    assert sources.is_single_input("s3://b/k/a.mp4") and not sources.is_single_input("s3://b/k/")


def test_webhook_host_allow_list():
    from serve.webhook import host_allowed

    allowed = ["hooks.example.com", "*.corp.example"]
    assert host_allowed("https://hooks.example.com/x", allowed)
    assert host_allowed("https://a.b.corp.example/x", allowed)
    assert not host_allowed("https://corp.example.evil/x", allowed)
    assert not host_allowed("https://user:pw@hooks.example.com/x", allowed)
    assert not host_allowed("ftp://hooks.example.com/x", allowed)
    assert not host_allowed("http://[::1/", allowed)


def test_webhook_and_source_addresses_must_be_public_and_ports_allowed():
    from serve.webhook import port_allowed, public_only

    for url in ("http://127.0.0.1/x", "http://localhost:8080/x", "http://169.254.169.254/latest", "http://10.1.2.3/",
                "http://[::1]/", "http://192.168.0.1/", "http://no-such-host.invalid/"):
        assert not public_only(url), url
    assert public_only("http://8.8.8.8/hook")
    assert port_allowed("https://hooks.example.com/x", "80,443") and port_allowed("http://h/x", "80,443")
    assert not port_allowed("http://hooks.example.com:6379/x", "80,443")
    assert port_allowed("http://hooks.example.com:6379/x", "*")


def test_webhook_retry_after_is_read_as_seconds_or_a_date():
    import email.utils
    import time

    from serve.webhook import retry_after

    assert retry_after("7") == 7.0 and retry_after("100000") == 300.0 and retry_after(None) is None
    assert 50 <= retry_after(email.utils.formatdate(time.time() + 60, usegmt=True)) <= 61
    assert retry_after("soon") is None


def test_backfill_passes_settings_but_never_credentials_to_ray():
    from jobs.backfill import PASSED_ENV

    passed = ["FRAMEPIPE_MODELS", "FRAMEPIPE_SAMPLE_FPS", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION"]
    kept = ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "FRAMEPIPE_SERVE_API_TOKEN",
            "FRAMEPIPE_SERVE_WEBHOOK_SECRET", "AWS_PROFILE_X"]
    assert all(PASSED_ENV.match(k) for k in passed)
    assert not any(PASSED_ENV.match(k) for k in kept)


def test_the_retries_the_backfill_relies_on_are_ray_datas_defaults():
    """The backfill survives lost nodes through Ray Data's retries (jobs/faults.py): its tasks and its actors' calls
    re-run, its actors restarted, all without limit. Ray 2.60 no longer lets a job set them per stage, so an upgrade
    that changes them must fail here, not silently in a bucket's run."""
    import ray
    from ray.data import DataContext
    from ray.data._internal.execution.operators.actor_pool_map_operator import ActorPoolMapOperator
    from ray.data._internal.remote_fn import cached_remote_fn

    from jobs.faults import RAY_DATA_RETRIES

    actor = ActorPoolMapOperator._apply_default_remote_args({}, DataContext.get_current())
    assert (actor["max_restarts"], actor["max_task_retries"]) == (RAY_DATA_RETRIES["max_restarts"],
                                                                  RAY_DATA_RETRIES["max_task_retries"])
    task = cached_remote_fn(lambda: None)
    assert task._default_options["max_retries"] == RAY_DATA_RETRIES["max_retries"]
    assert DataContext.get_current().max_errored_blocks == 0  # its default: why the backfill sets its own budget
    import importlib
    import inspect

    from jobs.faults import ErroredBlocks

    says = inspect.getsource(importlib.import_module(ErroredBlocks.LOGGER))  # the summary counts dropped blocks by it
    assert ErroredBlocks.SAYS.split(" max_errored_blocks")[0] in says
    assert ray.__version__ == "2.60.0"  # the version these were read from (pyproject.toml pins it)


def test_backfill_layout_fuses_on_cpus_and_splits_for_accelerators_or_pinned_stages():
    from jobs.backfill import parse_args
    from jobs.plan import plan_resources

    def plan(cluster, *extra):
        return plan_resources(parse_args(["--source", "s", "--dest", "d", *extra]), cluster)

    cpu = plan({"CPU": 2.0})  # a whole video per actor, one per CPU, one onnxruntime thread each
    assert (cpu.layout, cpu.actors, cpu.actor_cpus, cpu.actor_threads, cpu.actor_gpus) == ("fused", 2, 0.5, 1, 0.0)
    assert plan({"CPU": 16.0}).actors == 16
    gpu = plan({"CPU": 8.0, "GPU": 2.0})  # decode tasks on CPUs feed one actor per GPU
    assert (gpu.layout, gpu.actors, gpu.actor_gpus, gpu.actor_threads) == ("split", 2, 1.0, 0)
    pinned = plan({"CPU": 3.0, "face_gpu": 1.0}, "--actor-resources", '{"face_gpu": 1}', "--actors", "1")
    assert pinned.layout == "split" and pinned.actor_resources == {"face_gpu": 1}
    split = plan({"CPU": 2.0}, "--layout", "split")
    assert (split.layout, split.actors, split.actor_cpus) == ("split", 2, 0.5)
    with pytest.raises(SystemExit):  # the listing task (one CPU) would never run: refused, not a silent deadlock
        plan({"CPU": 2.0}, "--actors", "2", "--actor-cpus", "1")


def test_settings_reject_non_finite_numbers():
    with pytest.raises(ValueError):
        Settings(sample_fps=float("nan"))


def test_an_unexpected_error_while_decoding_costs_one_video_not_the_dataset(tmp_path, monkeypatch):
    """A bug (any exception that is not a FramepipeError) inside a decode task becomes that video's internal_error
    summary row; nothing escapes the task, so Ray Data never fails the whole backfill on it."""
    import pickle

    import framepipe.framesource
    from framepipe.storage import Destination
    from framepipe.videorun import VideoRun
    from jobs.stages import _decode_one

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(framepipe.framesource, "open_source", broken)
    run = VideoRun(str(tmp_path / "a.mp4"), Destination(str(tmp_path)), Settings(), "size=1")
    rows = list(_decode_one(run, force=True))
    assert len(rows) == 1
    summary = pickle.loads(rows[0]["summary"][0])
    assert summary.error["type"] == "internal_error" and "KeyError" in summary.error["message"]


def test_every_error_code_is_declared_and_failures_keep_their_type():
    import importlib

    from framepipe import errors

    for module in ("framesource", "people.model_registry", "people.search"):  # their error classes
        importlib.import_module(f"framepipe.{module}")

    def classes(cls):
        return [cls] + [c for sub in cls.__subclasses__() for c in classes(sub)]

    codes = {c.code for c in classes(errors.FramepipeError) if c is not errors.FramepipeError}
    assert codes <= set(errors.ErrorCode), codes - set(errors.ErrorCode)
    back = errors.FramepipeError.with_code("source_unreachable", "reset")  # read back from a record
    assert isinstance(back, errors.SourceUnreachable) and back.transient and back.to_dict()["type"] == "source_unreachable"
    assert not errors.FramepipeError.with_code(errors.ErrorCode.CORRUPT_VIDEO, "x").transient
    odd = errors.FramepipeError.with_code("something_new", "x")
    assert type(odd) is errors.FramepipeError and odd.code == "something_new"


def test_a_dead_writers_temporary_files_go_and_a_live_writers_stay(tmp_path):
    """Two writers of one video (a job submitted twice) never remove each other's files in flight."""
    import subprocess

    from framepipe.storage import Destination, partial_name

    d = Destination(str(tmp_path))
    mine = tmp_path / partial_name("a.jpg")  # this process: alive
    dead = subprocess.Popen(["true"])
    dead.wait()
    theirs = tmp_path / f"b.jpg.{partial_name('x').split('.', 1)[1].split('~')[0]}~{dead.pid}~0000.part"
    old_style = tmp_path / "c.jpg.part"  # an older framepipe's: no writer in the name
    for p in (mine, theirs, old_style):
        p.write_bytes(b"x")
    assert d.remove_partials() == 2
    assert mine.exists() and not theirs.exists() and not old_style.exists()


def test_debug_is_taken_before_or_after_the_command():
    from framepipe import cli

    parse = cli._parser().parse_args
    assert parse(["--debug", "report", "d"]).debug and parse(["report", "d", "--debug"]).debug
    assert not parse(["report", "d"]).debug


@pytest.mark.parametrize("search", ["hnsw_neighbours", pytest.param("nndescent_neighbours", marks=pytest.mark.slow)])
def test_the_first_builds_neighbour_graph_finds_the_exact_parts(search):
    """Above 2,000 people the registry's first build finds the pairs within the threshold among each person's
    nearest by sign bits (an HNSW index of them; NN-descent from 100,000 people on); every pair it keeps is within
    the threshold (checked on the exact embeddings) and, on people like the scale bench's (isotropic 512-d, 30% of
    them recurring), it finds the parts the exact graph has."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from framepipe.people import grouping

    rng = np.random.default_rng(7)
    n, dim, max_distance = 6000, 512, 0.6339
    pool = rng.standard_normal((360, dim), dtype=np.float32)
    who = np.where(rng.random(n) < 0.3, rng.integers(0, len(pool), n), -1)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x[who >= 0] = pool[who[who >= 0]]
    x += rng.standard_normal((n, dim), dtype=np.float32) * 0.6
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows, cols = np.nonzero(x @ x.T >= 1.0 - max_distance)
    _, exact = connected_components(coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)), directed=False)
    candidates = getattr(grouping, search)(grouping.sign_bits(x))
    assert candidates.shape[0] == n and (candidates < n).all()
    parts = grouping.neighbour_parts(x, max_distance, candidates)
    assert sorted(np.concatenate(parts).tolist()) == list(range(n))
    for part in parts:  # no pair too many: a found part lies inside one exact part
        assert len(set(exact[part])) == 1
    assert len(parts) <= (exact.max() + 1) * 1.002, (len(parts), exact.max() + 1)
    assert len(parts) < n - 1000  # the recurring people were joined


# --------------------------------------------------------------------------------------------------
# tracking: which faces the recognizer sees
# --------------------------------------------------------------------------------------------------


class _Recognizer:
    """Stands for the recognizer: a face's embedding is its person's unit vector (kept in the fake crop)."""

    def __init__(self):
        self.seen = []

    def embed(self, faces):
        self.seen += faces
        for f in faces:
            f.embedding, f.crop = f.crop, None

    def detect(self, images):  # frames are given as their faces already
        return images


def _person(who: int, x: float, quality: float = 0.7):
    from framepipe.faces import Face

    emb = np.zeros(8, np.float32)
    emb[who] = 1.0
    return Face(bbox=np.array([x, 10, x + 100, 110], np.float32), kps=np.zeros((5, 2), np.float32), det_score=0.9,
                quality=quality, crop=emb)


def _track_run(frames, batch: int = 4, signatures=None):
    """Each frame's faces through tracking (batches of ``batch`` frames), as the pipeline runs it."""
    from framepipe import tracking

    grey = selection.colour_signature(np.full((36, 64, 3), 120, np.uint8))
    signatures = signatures or [grey] * len(frames)
    recognizer, tracks = _Recognizer(), tracking.Tracks(cut_distance=0.2)
    for at in range(0, len(frames), batch):
        tracking.analyse_frames(recognizer, frames[at:at + batch], signatures[at:at + batch], tracks)
    tracking.conclude(recognizer, tracks)
    return recognizer.seen


def test_a_face_followed_through_a_shot_takes_the_embedding_of_the_looks_around_it():
    from framepipe import tracking

    frames = [[_person(0, 20), _person(1, 300)] for _ in range(12)]
    seen = _track_run(frames)
    every = [f for faces in frames for f in faces]
    assert all(f.embedding is not None and f.crop is None for f in every)
    for who in (0, 1):  # its first face, a look every REFRESH samples, its last face
        looked = [i for i, faces in enumerate(frames) if any(f is faces[who] for f in seen)]
        assert looked == [0, tracking.REFRESH, 11]
        assert all(float(faces[who].embedding[who]) == 1.0 for faces in frames)  # nobody got the other's
    assert sum(not f.embedded for f in every) == len(every) - len(seen)
    # the same faces, however the frames are batched
    for batch in (1, 3, 16):
        again = [[_person(0, 20), _person(1, 300)] for _ in range(12)]
        looked = _track_run(again, batch)
        picked = {(i, j) for i, faces in enumerate(again) for j, f in enumerate(faces) if any(f is g for g in looked)}
        assert picked == {(i, j) for i, faces in enumerate(frames) for j, f in enumerate(faces) if
                          any(f is g for g in seen)}


def test_a_track_growing_clearer_is_embedded_at_its_clearest_face_not_at_each_step():
    """Quality rising and falling through one segment: the recognizer sees the first face, the clearest face (once
    the track has shown it) and the last; every face of the track gets its person's embedding, and the faces after
    the clearest take the clearest face's."""
    qualities = [0.3, 0.4, 0.5, 0.6, 0.7, 0.6, 0.5]
    frames = [[_person(0, 20, q)] for q in qualities]
    seen = _track_run(frames)
    assert [i for i, faces in enumerate(frames) if any(f is faces[0] for f in seen)] == [0, 4, 6]
    assert all(faces[0].embedding is not None and float(faces[0].embedding[0]) == 1.0 for faces in frames)
    assert all(frames[i][0].embedding is frames[0][0].embedding for i in (1, 2, 3))
    assert frames[5][0].embedding is frames[4][0].embedding
    # a clearer face on a refresh: embedded then, nothing later
    flat = [[_person(0, 20, 0.9 if i == 8 else 0.5)] for i in range(12)]
    seen = _track_run(flat)
    assert [i for i, faces in enumerate(flat) if any(f is faces[0] for f in seen)] == [0, 8, 11]
    # a track whose last face is its clearest: the closing look is that face, nothing more
    rising = [[_person(0, 20, 0.3 + 0.1 * i)] for i in range(5)]
    seen = _track_run(rising)
    assert [i for i, faces in enumerate(rising) if any(f is faces[0] for f in seen)] == [0, 4]


def test_somebody_else_in_the_same_place_without_a_visible_cut_is_embedded_on_their_own():
    """Two photos of a montage at one place on screen, colours alike: the looks around the faces in between
    disagree, so each of them is embedded (never given the first person's embedding)."""
    frames = [[_person(0, 20)] for _ in range(3)] + [[_person(1, 24)] for _ in range(4)]
    seen = _track_run(frames)
    for i, faces in enumerate(frames):
        assert int(np.argmax(faces[0].embedding)) == (0 if i < 3 else 1), i
    assert all(any(f is g for g in seen) for faces in frames[1:3] for f in faces)  # the run was looked at again


def test_a_face_in_doubt_is_embedded():
    """A cut, a face far from where it was, two faces close together, a clearer face: each one is embedded."""
    from framepipe import selection as sel

    grey = sel.colour_signature(np.full((36, 64, 3), 120, np.uint8))
    red = sel.colour_signature(np.full((36, 64, 3), (0, 0, 200), np.uint8))
    cut = [[_person(0, 20)], [_person(0, 20)], [_person(1, 20)], [_person(1, 20)]]
    seen = _track_run(cut, signatures=[grey, grey, red, red])
    assert any(f is cut[2][0] for f in seen)
    moved = [[_person(0, 20)], [_person(0, 20)], [_person(0, 400)], [_person(0, 400)]]
    assert any(f is moved[2][0] for f in _track_run(moved))
    close = [[_person(0, 20), _person(1, 90)] for _ in range(4)]
    assert len(_track_run(close)) == 8  # boxes overlapping each other: no link is sure
    clearer = [[_person(0, 20, 0.5)], [_person(0, 20, 0.5)], [_person(0, 20, 0.9)], [_person(0, 20, 0.5)],
               [_person(0, 20, 0.5)]]
    looked = _track_run(clearer)
    assert any(f is clearer[2][0] for f in looked) and not any(f is clearer[3][0] for f in looked)
