"""`framepipe people`: the same person across videos and photos, on the shared footage with its ground truth."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import GROUND_TRUTH, run_cli

pytestmark = [pytest.mark.models]

GROUPS = {
    "photos/face_recognition/groups/kit_with_rose.jpg": {"kit_harington", "rose_leslie"},
    "photos/face_recognition/groups/two_people_obama_biden.jpg": {"barack_obama", "joe_biden"},
    "photos/face_recognition/groups/obama_and_biden_plus_child.jpg": {"barack_obama", "joe_biden"},  # + a child
}


def identity(key: str, talent) -> str | None:
    """Who a person found in ``key`` is, by the ground truth (None for the people of a group photo)."""
    gt = GROUND_TRUTH.get(key, {})
    if "identity" in gt:
        return gt["identity"]
    if "segments" in gt:  # composed videos: the segment in which the person is seen most (group slots aside)
        votes = Counter(
            name for t in talent.seen_s for a, b, name in gt["segments"] if a <= t < b and "+" not in name
        )
        assert votes, f"{key} person {talent.person_id} seen only in group slots"
        return votes.most_common(1)[0][0]
    if key.startswith("photos/face_recognition/") and "/groups/" not in key:
        return key.split("/")[2]  # the folder is the identity
    return None


def test_same_person_gets_the_same_global_id_across_videos_and_photos(library):
    dest, results = library["dest"], library["results"]
    proc = run_cli("people", str(dest), timeout=300)
    assert proc.returncode == 0, proc.stderr
    index_path = dest / "manifests" / "people_index.parquet"
    table = pq.read_table(index_path)
    from framepipe import calibration, schema

    assert table.schema.names == schema.PEOPLE_INDEX_SCHEMA.names
    assert table.schema.metadata[b"framepipe_schema_version"] == schema.SCHEMA_VERSION.encode()
    index = table.to_pandas()
    gid = {(r.video_id, r.person_id): r.global_person_id for r in index.itertuples()}
    expected_rows = sum(len(r.talent_frames) for r in results.values())
    assert len(index) == expected_rows == len(gid), "one index row per (video, person)"
    floor = calibration.lookup(index["embedding_model"].iloc[0], 512).match_similarity  # the pack's calibration
    assert index["similarity"].between(floor, 1.0001).all(), index.sort_values("similarity").head()

    labelled: dict[str, set[int]] = {}
    for key, result in results.items():
        for t in result.talent_frames:
            name = identity(key, t)
            if name:
                labelled.setdefault(name, set()).add(gid[(result.video_id, t.person_id)])
    assert len(labelled) == 12, sorted(labelled)  # 6 talking heads (AOC twice) + the 6 people of the photos
    split = {name: ids for name, ids in labelled.items() if len(ids) != 1}
    assert not split, f"one person, several global ids: {split}"
    owner = {next(iter(ids)): name for name, ids in labelled.items()}
    assert len(owner) == len(labelled), f"different people share a global id: {labelled}"

    for key, names in GROUPS.items():
        ids = {gid[(results[key].video_id, t.person_id)] for t in results[key].talent_frames}
        expected = {next(iter(labelled[n])) for n in names}
        assert expected <= ids, (key, ids, expected)
        strangers = ids - expected  # the child (and whoever else) of obama_and_biden_plus_child.jpg
        assert not strangers & set(owner), (key, {owner.get(i) for i in strangers})
        assert len(ids) == len(results[key].talent_frames), f"{key}: two people of one photo joined"

    # the woman of retalking_3 and of the SadTalker clip, seen twice in the montage (one person there)
    aoc = next(iter(labelled["alexandria_ocasio_cortez"]))
    where = index[index.global_person_id == aoc]
    montage = results["videos/composed/talking_heads_montage.mp4"]
    assert set(where.video_id) == {
        results["videos/talking_heads/retalking_3.mp4"].video_id,
        results["videos/talking_heads/sadtalker_WDA_AlexandriaOcasioCortez_000.mp4"].video_id,
        montage.video_id,
    }
    in_montage = [t for t in montage.talent_frames if gid[(montage.video_id, t.person_id)] == aoc]
    assert len(in_montage) == 1
    seen = in_montage[0].seen_s
    assert any(11.08 <= t < 19.08 for t in seen) and any(38.6 <= t < 43.64 for t in seen), seen

    # the slideshow's six people are the people of the photos
    slideshow = results["videos/composed/photo_slideshow_6people.mp4"]
    photo_ids = {gid[(r.video_id, t.person_id)] for k, r in results.items() if k.startswith("photos/")
                 for t in r.talent_frames}
    assert {gid[(slideshow.video_id, t.person_id)] for t in slideshow.talent_frames} <= photo_ids
    assert "distinct people" in proc.stdout and "report:" in proc.stdout
    assert "0 within-input joins" in proc.stdout, proc.stdout  # no person of one input split in two


def test_embeddings_of_different_models_are_never_compared(library):
    from framepipe import manifests
    from framepipe.people import registry

    people = manifests.load_people(library["dest"])
    other = people.assign(embedding_model="buffalo_l", video_id=people.video_id + "-b")
    index = registry.in_memory_index(pd.concat([people, other], ignore_index=True), max_distance=0.6)
    by_model = index.groupby("global_person_id")["embedding_model"].nunique()
    assert (by_model == 1).all()
    assert index.global_person_id.nunique() == 2 * registry.in_memory_index(people, 0.6).global_person_id.nunique()


def test_beyond_the_in_memory_count_people_are_attached_through_the_index(library, tmp_path):
    """A part of the neighbour graph over FRAMEPIPE_PEOPLE_MAX_COUNT people is not clustered in memory: each of its
    people is attached through the vector index instead (no quadratic memory), and the same woman is still one
    person."""
    from conftest import copy_videos

    dest = tmp_path / "dest"
    copy_videos(library["dest"], dest, [r.video_id for r in library["results"].values()])
    proc = run_cli("people", str(dest), "--no-report", env_extra={"FRAMEPIPE_PEOPLE_MAX_COUNT": "5"})
    assert proc.returncode == 0, proc.stderr
    assert "seeded by clustering" in proc.stdout, proc.stdout  # parts over 5 people attached one by one
    index = pd.read_parquet(dest / "manifests" / "people_index.parquet")
    results = library["results"]
    aoc = {results[k].video_id for k in ("videos/talking_heads/retalking_3.mp4",
                                         "videos/talking_heads/sadtalker_WDA_AlexandriaOcasioCortez_000.mp4")}
    assert index[index.video_id.isin(aoc)].global_person_id.nunique() == 1
    assert len(index) == sum(len(r.talent_frames) for r in results.values())
