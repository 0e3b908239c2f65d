"""s3:// in and s3:// out through a real S3-compatible server (moto, started by the test on 127.0.0.1)."""

from __future__ import annotations

import io
import json

import boto3
import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import MEDIA, run_cli

pytestmark = [pytest.mark.models]


def test_s3_in_s3_out_through_the_cli(bucket, s3_server):
    s3 = boto3.client("s3")
    s3.upload_file(str(MEDIA / "videos/tears_of_steel_10s.mp4"), bucket, "in/clip one.mp4")
    proc = run_cli("extract", f"s3://{bucket}/in/clip one.mp4", "--out", f"s3://{bucket}/out", "--json",
                   env_extra=s3_server["env"])
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == "succeeded" and doc["video"]["source"] == f"s3://{bucket}/in/clip one.mp4"
    assert doc["video"]["size_bytes"] == (MEDIA / "videos/tears_of_steel_10s.mp4").stat().st_size
    assert 2 <= len(doc["talent_frames"]) <= 3 and len(doc["representative_frames"]) == 10
    prefix = f"out/{doc['video_id']}/"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]}
    assert {prefix + n for n in ("result.json", "people.parquet", "video.parquet")} <= keys
    for t in doc["talent_frames"]:
        for url in (t["url"], t["face_url"]):
            assert url.startswith(f"s3://{bucket}/{prefix}talent/")
            body = s3.get_object(Bucket=bucket, Key=url.split("/", 3)[3])["Body"].read()
            assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR) is not None
    stored = json.loads(s3.get_object(Bucket=bucket, Key=prefix + "result.json")["Body"].read())
    assert stored["talent_frames"] == doc["talent_frames"]
    people = pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=prefix + "people.parquet")["Body"].read()))
    assert people.num_rows == len(doc["talent_frames"])
    obj = s3.get_object(Bucket=bucket, Key=prefix + "representative/frame_00.jpg")
    assert obj["ContentType"] == "image/jpeg"


def test_missing_s3_object_fails_cleanly(bucket, s3_server, tmp_path):
    proc = run_cli("extract", f"s3://{bucket}/nope.mp4", "--out", str(tmp_path), env_extra=s3_server["env"])
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "source_not_found" in proc.stderr and "Traceback" not in proc.stderr


def test_a_destination_moved_to_another_prefix_keeps_working(bucket, s3_server, tmp_path):
    """Every object of an S3 destination copied to another prefix and the old ones deleted (as ``aws s3 mv``):
    corrections, the report and search work there and name the new prefix's objects."""
    import posixpath
    import re

    s3 = boto3.client("s3")
    env = s3_server["env"]
    proc = run_cli("extract", str(MEDIA / "videos/tears_of_steel_10s.mp4"), "--out", f"s3://{bucket}/old", env_extra=env)
    assert proc.returncode == 0, proc.stderr
    assert run_cli("people", f"s3://{bucket}/old", "--no-report", env_extra=env, timeout=300).returncode == 0
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="old/")
            for o in page.get("Contents", [])]
    for key in keys:
        s3.copy_object(Bucket=bucket, Key="new/" + key[4:], CopySource={"Bucket": bucket, "Key": key})
        s3.delete_object(Bucket=bucket, Key=key)
    proc = run_cli("people", f"s3://{bucket}/new", "--name", "0=Pat", env_extra=env, timeout=300)
    assert proc.returncode == 0 and "person 0 is Pat" in proc.stdout, proc.stderr
    page = s3.get_object(Bucket=bucket, Key="new/report/index.html")["Body"].read().decode()
    links = re.findall(r'src="([^"]+\.jpg)"', page)
    assert links
    for link in links:
        s3.head_object(Bucket=bucket, Key=posixpath.normpath(posixpath.join("new/report", link)))
    face = tmp_path / "face.jpg"
    face.write_bytes(s3.get_object(Bucket=bucket, Key=next(k for k in ("new/" + k[4:] for k in keys)
                                                              if k.endswith("person_000.jpg")))["Body"].read())
    proc = run_cli("search", str(face), f"s3://{bucket}/new", "--json", env_extra=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)["results"]
    assert hits and all(h["frame_url"].startswith(f"s3://{bucket}/new/") for h in hits), hits
