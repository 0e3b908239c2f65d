"""People found on the real footage against the hand-made ground truth."""

from __future__ import annotations

from itertools import permutations

import pytest

from conftest import VIDEOS, bench_quality

pytestmark = [pytest.mark.models]

WITH_RANGE = sorted(k for k, v in VIDEOS.items() if v.get("accept"))
COMPOSED = sorted(k for k in VIDEOS if k.startswith("videos/composed/"))


@pytest.mark.parametrize("key", WITH_RANGE)
def test_people_count_within_ground_truth(extracted, key):
    result = extracted(key)
    low, high = VIDEOS[key]["accept"]
    assert result.status == "succeeded"
    assert low <= len(result.talent_frames) <= high, [
        (t.person_id, t.timestamp_s, t.appearances) for t in result.talent_frames
    ]


def _identities_at(segments, t: float) -> set[str]:
    return {name for start, end, names in segments if start <= t < end for name in names.split("+")}


@pytest.mark.parametrize("key", COMPOSED)
def test_composed_no_person_split_or_merged(extracted, key):
    """Each talent frame lies in its own person's segments, and each person has exactly one talent frame."""
    segments = VIDEOS[key]["segments"]
    people = sorted({n for _, _, names in segments for n in names.split("+")})
    talent = extracted(key).talent_frames
    candidates = [_identities_at(segments, t.timestamp_s) for t in talent]
    assert all(candidates), f"talent frames outside every segment: {[t.timestamp_s for t in talent]}"
    assert len(talent) == len(people), f"{len(talent)} talent frames for {len(people)} people"
    # a one-to-one assignment of talent frames to people must exist
    assert any(all(p in c for p, c in zip(perm, candidates)) for perm in permutations(people)), candidates


SPANS = sorted(k for k, v in VIDEOS.items() if v.get("people") or v.get("segments"))


@pytest.mark.parametrize("key", SPANS)
def test_people_are_pure_and_their_talent_frames_match(extracted, key):
    """Purity: the share of every person's ``seen_s`` inside the on-screen spans of the one identity best covering
    that person (a merge of two people seen at different times shows at once); F1 of talent frames matched one to
    one to identities (bench/quality.py prints the same for every labelled video)."""
    quality = bench_quality()
    result = extracted(key)
    spans = quality.identity_spans(VIDEOS[key], result.video.start_s + result.video.duration_s)
    s = quality.score([(t.seen_s, t.timestamp_s) for t in result.talent_frames], spans, quality.wide_shots(key))
    assert s["purity"] >= 0.95 and s["f1"] >= 0.9, (s, [(t.timestamp_s, t.seen_s) for t in result.talent_frames])


def test_framepipe_people_joins_no_two_persons_of_one_video(extracted, outdir):
    """A cross-video join of two persons of one video is a split the per-video pass missed (or a merge of two
    people by the cross-video pass): none on the labelled shared set."""
    from framepipe import manifests
    from framepipe.people import grouping, registry
    from framepipe.config import Settings

    for key in WITH_RANGE:
        extracted(key)
    index = registry.in_memory_index(manifests.load_people(outdir), Settings().people_max_distance)
    assert index["video_id"].nunique() >= len(WITH_RANGE) - 1  # every video with a person
    assert grouping.within_video_joins(index) == []


def test_composed_montage_joins_both_appearances_of_the_same_woman(extracted):
    """AOC appears at 11-19 s and again at 38.6-43.6 s, from two different source clips: one person."""
    talent = extracted("videos/composed/talking_heads_montage.mp4").talent_frames
    spans = [(t.first_seen_s, t.last_seen_s) for t in talent]
    assert any(first < 19.08 and last >= 38.6 for first, last in spans), spans


def test_no_humans_video_gives_zero_people_and_ten_frames(extracted):
    result = extracted("videos/caminandes_10s_no_humans.mp4")
    assert result.status == "succeeded"
    assert result.talent_frames == []
    assert len(result.representative_frames) == 10
    assert any("no face" in w for w in result.warnings)


def test_best_frame_is_the_best_quality_face(extracted):
    """Talent frame quality is the maximum quality of that person's faces (the score decides the frame)."""
    import pyarrow.parquet as pq

    result = extracted("videos/short_hamilton_clip.mp4")
    people = pq.read_table(result.talent_frames[0].url.rsplit("/talent/", 1)[0] + "/people.parquet").to_pylist()
    assert [p["person_id"] for p in people] == [t.person_id for t in result.talent_frames]
    for row, t in zip(people, result.talent_frames):
        assert row["first_seen_s"] <= t.timestamp_s <= row["last_seen_s"]
        assert 0.0 < t.quality <= 1.0
