"""People on the harder footage (``ground_truth_multishot.json``: TV scenes, talk and news clips, two 20-person LFW
photo montages) and the person registry over the montages plus every LFW photo of their 40 people: the real
models through the real pipeline, scored as ``bench/quality.py`` scores them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import MEDIA, bench_quality

pytestmark = [pytest.mark.models, pytest.mark.slow]

MULTISHOT = {k: v for k, v in json.loads((MEDIA / "ground_truth_multishot.json").read_text()).items()
             if k.startswith("videos/")}
LFW = MEDIA / "photos" / "lfw"


@pytest.fixture(scope="module")
def multishot(settings, model, tmp_path_factory):
    """Every multishot video and every LFW photo processed into one destination, as ``framepipe extract`` does."""
    from framepipe import pipeline

    dest = tmp_path_factory.mktemp("multishot") / "out"
    results = {k: pipeline.extract(str(MEDIA / k), str(dest), settings, model=model, raise_errors=True)
               for k in sorted(MULTISHOT)}
    photos = {}
    for path in sorted(LFW.glob("*/*.jpg")):
        photos[f"photos/lfw/{path.parent.name}/{path.name}"] = pipeline.extract(
            str(path), str(dest), settings, model=model, raise_errors=True)
    return {"dest": dest, "results": results, "photos": photos}


@pytest.mark.parametrize("key", sorted(MULTISHOT))
def test_multishot_people_in_range_pure_and_not_split(multishot, key):
    quality = bench_quality()
    truth, result = MULTISHOT[key], multishot["results"][key]
    low, high = truth["accept"]
    found = [(t.timestamp_s, t.seen_s) for t in result.talent_frames]
    assert low <= len(found) <= high, found
    spans = quality.identity_spans(truth, result.video.start_s + result.video.duration_s)
    s = quality.score([(t.seen_s, t.timestamp_s) for t in result.talent_frames], spans, quality.wide_shots(key),
                      quality.dont_care(truth))
    # ellen_talkshow: one weak face at 1.0 s is the guest's half-turned head, which the ground truth calls
    # not visible (its purity is 0.944 for a right answer)
    assert s["purity"] >= 0.94 and s["ppi"] <= 1.2, (s, found)
    for t in result.talent_frames:  # appearances: time ranges covering every sighting, inside the video's shots
        assert all(any(r.start_s <= x <= r.end_s for r in t.time_ranges) for x in t.seen_s)
    assert result.shots and result.shots[0].start_s <= result.talent_frames[0].timestamp_s <= result.shots[-1].end_s


def test_multishot_persons_per_identity_and_f1_overall(multishot):
    quality = bench_quality()
    persons = identities = 0
    f1 = []
    for key, result in multishot["results"].items():
        truth = MULTISHOT[key]
        spans = quality.identity_spans(truth, result.video.start_s + result.video.duration_s)
        s = quality.score([(t.seen_s, t.timestamp_s) for t in result.talent_frames], spans, quality.wide_shots(key),
                          quality.dont_care(truth))
        persons += s["ppi"] * s["identities"]
        identities += s["identities"]
        f1.append(s["f1"])
    assert persons / identities <= 1.10 and np.mean(f1) >= 0.9, (persons / identities, f1)


def test_registry_keeps_one_global_person_per_lfw_person(multishot):
    """Both montages and the 472 photos of their 40 people (and the TV and talk clips beside them) through the
    person registry, as ``framepipe people`` runs it: one global person per real person, none shared."""
    from framepipe import calibration, manifests
    from framepipe.people import registry

    dest, results, photos = multishot["dest"], multishot["results"], multishot["photos"]
    index, _, _ = registry.update_destination(dest, models=None)
    gid = {(r.video_id, r.person_id): r.global_person_id for r in index.itertuples()}
    people = manifests.load_people(dest)
    emb = {(r.video_id, r.person_id): np.asarray(r.embedding) for r in people.itertuples()}
    labels: dict[tuple[str, int], str] = {}
    central: dict[str, tuple[str, np.ndarray]] = {}
    for key, r in photos.items():  # the labelled person of an LFW photo is its central face
        i = calibration.central([t.bbox for t in r.talent_frames], (250, 250))
        if i is not None:
            pid = r.talent_frames[i].person_id
            labels[(r.video_id, pid)] = key.split("/")[2]
            central[key] = (key.split("/")[2], emb[(r.video_id, pid)])
    for key in (k for k in results if "lfw_montage" in k):  # a montage person is the photo it shows
        r = results[key]
        shown = [central[p] for shot in MULTISHOT[key]["shots"] for p in shot if p in central]
        for t in r.talent_frames:
            sims = [(float(emb[(r.video_id, t.person_id)] @ e), who) for who, e in shown]
            best = max(sims)
            if best[0] >= 0.7:
                labels[(r.video_id, t.person_id)] = best[1]
    by_identity: dict[str, set[int]] = {}
    for k, who in labels.items():
        by_identity.setdefault(who, set()).add(gid[k])
    assert len(by_identity) == 40
    global_ids = set().union(*by_identity.values())
    assert len(global_ids) <= 44, {w: g for w, g in by_identity.items() if len(g) > 1}
    majority = {}
    for k, who in labels.items():
        majority.setdefault(gid[k], []).append(who)
    pure = sum(max(ws.count(w) for w in set(ws)) for ws in majority.values()) / len(labels)
    assert pure >= 0.98, pure


def test_calibrate_writes_the_thresholds_every_front_door_reads(tmp_path):
    """``framepipe calibrate`` on photos of 8 LFW people: same-person pairs far above different-person pairs, the
    thresholds written into the pack's folder, and the people step, the registry and search reading them there."""
    from conftest import PACK, run_cli
    from framepipe import calibration, clustering
    from framepipe.people import search
    from framepipe.config import Settings

    pack = tmp_path / "my_pack"
    pack.mkdir()
    for f in PACK.glob("*.onnx"):
        (pack / f.name).symlink_to(f)
    photos = tmp_path / "photos"
    photos.mkdir()
    for person in sorted(LFW.iterdir())[:8]:
        (photos / person.name).symlink_to(person)
    proc = run_cli("calibrate", str(photos), "--models", str(pack), timeout=300)
    assert proc.returncode == 0, proc.stderr
    cal = calibration.Calibration.from_file(pack / calibration.FILE)
    assert (cal.pack, cal.embedding_dim, cal.identities) == ("my_pack", 512, 8)
    assert cal.impostor_median < 0.1 < cal.link_similarity <= cal.match_similarity < 0.6 < cal.genuine_median
    assert cal.true_accept_at_match > 0.9
    settings = Settings(models=str(pack))
    assert clustering.Params.from_settings(settings, 512).cluster_max_distance == cal.match_distance
    assert search.floor_for(settings, "my_pack", 512) == cal.match_similarity
    assert calibration.people_max_distance(None, "my_pack", 512, str(pack)) == cal.match_distance
    assert f"wrote {pack / calibration.FILE}" in proc.stdout

    empty = tmp_path / "empty"
    (empty / "one_person").mkdir(parents=True)
    proc = run_cli("calibrate", str(empty), "--models", str(pack), "--out", str(tmp_path / "x.json"), timeout=120)
    assert proc.returncode == 1 and "cannot calibrate" in proc.stderr and not (tmp_path / "x.json").exists()

    tiny = tmp_path / "tiny"  # 4 photos of 2 people: refused, nothing written (issue 29 row 4)
    for person in sorted(LFW.iterdir())[:2]:
        (tiny / person.name).mkdir(parents=True)
        for photo in sorted(person.iterdir())[:2]:
            (tiny / person.name / photo.name).symlink_to(photo)
    proc = run_cli("calibrate", str(tiny), "--models", str(pack), "--out", str(tmp_path / "y.json"), timeout=120)
    assert proc.returncode == 1 and "4 different-person" in proc.stderr and not (tmp_path / "y.json").exists()
