"""What is written: result.json, the Parquet manifest with its explicit schema, the JPEGs, cost."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pyarrow.parquet as pq
import pytest

from framepipe import schema

pytestmark = [pytest.mark.models]

KEY = "videos/tears_of_steel_10s.mp4"


def _dir(result) -> Path:
    return Path(result.representative_frames[0].url).parents[1]


def test_result_json_has_the_documented_fields(extracted):
    result = extracted(KEY)
    doc = json.loads((_dir(result) / "result.json").read_text())
    assert doc["status"] == "succeeded" and doc["error"] is None
    assert set(doc["video"]) >= {"source", "width", "height", "fps", "total_frames", "duration_s", "codec"}
    assert (doc["video"]["width"], doc["video"]["height"], doc["video"]["total_frames"]) == (640, 360, 240)
    assert doc["video"]["fps"] == 24.0 and abs(doc["video"]["duration_s"] - 10.0) < 0.05
    assert set(doc["processing"]) >= {"duration_s", "estimated_cost_usd", "device", "frames_sampled", "faces_detected"}
    assert doc["processing"]["device"] == "cpu" and doc["processing"]["frames_sampled"] == 20
    for t in doc["talent_frames"]:
        assert set(t) >= {"person_id", "url", "face_url", "timestamp_s", "bbox", "quality", "appearances",
                          "first_seen_s", "last_seen_s"}
    assert len(doc["representative_frames"]) == 10
    assert all(set(r) >= {"url", "timestamp_s"} for r in doc["representative_frames"])
    assert schema.Result.model_validate(doc) == result


def test_cost_is_time_times_hourly_price(extracted, settings):
    p = extracted(KEY).processing
    assert p.hourly_price_usd == settings.price_cpu_usd_per_hour
    assert abs(p.estimated_cost_usd - p.duration_s / 3600 * p.hourly_price_usd) < 1e-5


def test_manifest_has_the_explicit_schema(extracted):
    result = extracted(KEY)
    people = pq.read_table(_dir(result) / "people.parquet")
    video = pq.read_table(_dir(result) / "video.parquet")
    assert people.schema.equals(schema.PERSON_SCHEMA, check_metadata=False)
    assert video.schema.equals(schema.VIDEO_SCHEMA, check_metadata=False)
    assert people.schema.metadata[b"framepipe_schema_version"] == schema.SCHEMA_VERSION.encode()
    assert people.num_rows == len(result.talent_frames) and video.num_rows == 1
    row = video.to_pylist()[0]
    assert row["status"] == "succeeded" and row["people"] == len(result.talent_frames)
    assert len(row["representative_urls"]) == 10
    emb = people.column("embedding").to_pylist()
    assert all(len(e) == 512 and abs(sum(x * x for x in e) - 1) < 1e-3 for e in emb)  # buffalo_s_dq: 512-d


def test_jpegs_are_written_and_decode(extracted):
    result = extracted(KEY)
    for t in result.talent_frames:
        frame, face = cv2.imread(t.url), cv2.imread(t.face_url)
        assert frame.shape[:2] == (360, 640)
        x1, y1, x2, y2 = t.bbox
        assert 0 < face.shape[1] <= frame.shape[1] and face.shape[1] >= 0.9 * (x2 - x1)
    for r in result.representative_frames:
        assert Path(r.url).stat().st_size > 5000
