"""`serve run serve/config.yaml` with no broker configured: the embedded default (Celery's filesystem transport and a
SQLite store) works on one machine, and a job over its time limit fails cleanly, its replica still serving (the old
design closed the decoder under a thread still inside it: SIGSEGV, every job on the replica lost)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import requests
import yaml

from conftest import MEDIA, PACK, ROOT, free_port

pytestmark = pytest.mark.timeout(600)

TOKEN = "embedded-" + os.urandom(8).hex()


@pytest.fixture(scope="module")
def embedded(s3_server, tmp_path_factory):
    import boto3

    bucket = f"embedded-{os.getpid()}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    s3.upload_file(str(MEDIA / "videos/tears_of_steel_10s.mp4"), bucket, "tears.mp4")
    s3.upload_file(str(MEDIA / "videos/composed/talking_heads_montage.mp4"), bucket, "montage.mp4")  # 44 s
    d = tmp_path_factory.mktemp("embedded")
    port = free_port()
    config = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    config["http_options"].update(host="127.0.0.1", port=port)
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAMEPIPE_SERVE_")}  # no broker: embedded
    env.update({"FRAMEPIPE_MODELS": str(PACK), "FRAMEPIPE_SERVE_API_TOKEN": TOKEN,
                "FRAMEPIPE_SERVE_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "FRAMEPIPE_SERVE_OUTPUT": str(d / "out"), "FRAMEPIPE_SERVE_STATE_DIR": str(d / "state"),
                "FRAMEPIPE_SERVE_JOB_TIMEOUT_S": "4", "PYTHONUNBUFFERED": "1"})
    log = open(d / "serve.log", "w")
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "serve"), "run", str(d / "config.yaml")],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            raise RuntimeError((d / "serve.log").read_text()[-4000:])
        time.sleep(1)
    else:
        raise RuntimeError("Serve did not come up:\n" + (d / "serve.log").read_text()[-4000:])
    yield {"base": base, "dir": d, "bucket": bucket}
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "ray"), "stop", "--force"], capture_output=True,
                   timeout=120)


HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def submit(embedded, key: str) -> str:
    r = requests.post(f"{embedded['base']}/v1/videos", json={"bucket": embedded["bucket"], "key": key},
                      headers=HEADERS, timeout=30)
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def wait(embedded, job_id, timeout=240) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        doc = requests.get(f"{embedded['base']}/v1/videos/{job_id}", headers=HEADERS, timeout=10).json()
        if doc["status"] in ("succeeded", "failed"):
            return doc
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not end")


def worker_pid() -> int:
    import psutil

    [pid] = [p.pid for p in psutil.process_iter(["cmdline"])
             if any("ServeReplica:framepipe:VideoWorker" in c for c in (p.info["cmdline"] or []))]
    return pid


def test_the_embedded_broker_runs_jobs_with_no_server(embedded):
    doc = wait(embedded, submit(embedded, "tears.mp4"))
    assert doc["status"] == "succeeded" and len(doc["result"]["representative_frames"]) == 10
    assert (embedded["dir"] / "state" / "jobs.sqlite").exists()


def test_jobs_over_the_time_limit_fail_and_the_worker_keeps_serving(embedded):
    before = worker_pid()
    slow = [submit(embedded, "montage.mp4") for _ in range(4)]
    for job_id in slow:
        doc = wait(embedded, job_id)
        assert doc["status"] == "failed" and doc["result"]["error"] == {"type": "timeout", "message": "over 4 s"}
    assert wait(embedded, submit(embedded, "tears.mp4"))["status"] == "succeeded"
    assert worker_pid() == before  # no crash, no restart


def test_search_by_an_uploaded_photo_or_an_s3_photo(embedded):
    """POST /v1/search: a frame of one job's person finds that person (uploaded, or as an S3 object); what is not
    an image, too big or not there gets a clear 4xx, and nothing is read before the token is checked."""
    import boto3

    doc = wait(embedded, submit(embedded, "tears.mp4"))
    talent = doc["result"]["talent_frames"][1]  # the man with glasses, seen from 3 to 7.5 s
    photo = open(talent["url"], "rb").read()
    url = f"{embedded['base']}/v1/search"
    r = requests.post(url, data=photo, headers={**HEADERS, "Content-Type": "image/jpeg"}, timeout=120)
    assert r.status_code == 200, r.text
    found = r.json()
    assert found["faces"] and found["results"], found
    top = found["results"][0]
    assert top["video_id"] == doc["result"]["video_id"] and top["person_id"] == talent["person_id"], top
    assert top["similarity"] >= found["min_similarity"] and top["seen_s"] == talent["seen_s"]

    boto3.client("s3").put_object(Bucket=embedded["bucket"], Key="query.jpg", Body=photo)
    r = requests.post(url, json={"bucket": embedded["bucket"], "key": "query.jpg"}, headers=HEADERS,
                      params={"top": 1}, timeout=120)
    assert r.status_code == 200 and r.json()["results"][0]["person_id"] == talent["person_id"], r.text
    assert len(r.json()["results"]) == 1

    bad = [(b"GIF89a not what it says", {"Content-Type": "image/jpeg"}, 422),
           (b"x" * 100, {"Content-Type": "text/plain"}, 415),
           (b'{"bucket": "' + embedded["bucket"].encode() + b'", "key": "missing.jpg"}',
            {"Content-Type": "application/json"}, 404),
           (b'{"bucket": "b", "key": "../x"}', {"Content-Type": "application/json"}, 422)]
    for body, headers, status in bad:
        r = requests.post(url, data=body, headers={**HEADERS, **headers}, timeout=60)
        assert r.status_code == status, (body[:30], r.status_code, r.text)
    big = b"\xff\xd8\xff" + b"\x00" * (10 * 1024**2 + 1)
    r = requests.post(url, data=big, headers={**HEADERS, "Content-Type": "image/jpeg"}, timeout=60)
    assert r.status_code == 413
    r = requests.post(url, data=photo, headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert r.status_code == 401
