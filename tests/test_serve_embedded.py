"""`serve run serve/config.yaml` with no broker configured: the embedded default (Celery's filesystem transport and a
SQLite store) works on one machine; a job over its time limit fails cleanly, its replica still serving (the old
design closed the decoder under a thread still inside it: SIGSEGV, every job on the replica lost); and every accepted
job ends with its webhook when its worker, every replica or the whole `serve run` is killed, at default settings
(the embedded broker never delivers a task again: the jobs' leases do, serve/lifecycle.py). Slow jobs are slow by
construction (a source of the test's own that trickles its bytes), never by hoping the machine is slow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from conftest import MEDIA, PACK, ROOT, SECRET, FileServer, free_port

pytestmark = [pytest.mark.models, pytest.mark.serve, pytest.mark.slow, pytest.mark.timeout(900)]

TOKEN = "embedded-" + os.urandom(8).hex()
JOB_TIMEOUT_S = 60
CLIP = MEDIA / "videos/tears_of_steel_10s.mp4"


class Trickle(FileServer):
    """Serves ``CLIP`` at a rate the URL names: a job over it lasts as long as the test wants."""

    def __init__(self):
        super().__init__(CLIP.read_bytes())

    def url(self, seconds: float) -> str:
        """A URL whose whole file takes about ``seconds`` to arrive."""
        return f"http://127.0.0.1:{self.server_port}/{int(len(self.data) / seconds)}/clip.mp4"

    def send_body(self, handler, body: bytes) -> None:
        step = max(1, int(handler.path.split("/")[1]) // 10)
        for i in range(0, len(body), step):
            handler.wfile.write(body[i:i + step])
            handler.wfile.flush()
            time.sleep(0.1)


@pytest.fixture(scope="module")
def trickle():
    server = Trickle().start()
    yield server
    server.stop()


class Service:
    """`serve run` on a config of its own, restartable with the same state dir (embedded broker, SQLite store)."""

    def __init__(self, d, bucket: str):
        self.dir, self.bucket, self.proc = d, bucket, None
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
        config["http_options"].update(host="127.0.0.1", port=self.port)
        (d / "config.yaml").write_text(yaml.safe_dump(config))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FRAMEPIPE_SERVE_")}  # embedded
        self.env.update({"FRAMEPIPE_MODELS": str(PACK), "FRAMEPIPE_SERVE_API_TOKEN": TOKEN,
                         "FRAMEPIPE_SERVE_WEBHOOK_SECRET": SECRET, "FRAMEPIPE_SERVE_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
                         "FRAMEPIPE_SERVE_WEBHOOK_PORTS": "*", "FRAMEPIPE_SERVE_ALLOW_PRIVATE_NETWORKS": "1",
                         "FRAMEPIPE_SERVE_SOURCE_ALLOWED_HOSTS": "127.0.0.1", "FRAMEPIPE_SERVE_WEBHOOK_BACKOFF_S": "0.2",
                         "FRAMEPIPE_SERVE_OUTPUT": str(d / "out"), "FRAMEPIPE_SERVE_STATE_DIR": str(d / "state"),
                         "FRAMEPIPE_SERVE_JOB_TIMEOUT_S": str(JOB_TIMEOUT_S), "PYTHONUNBUFFERED": "1"})

    def start(self) -> None:
        log = open(self.dir / "serve.log", "a")
        self.proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "serve"), "run",
                                      str(self.dir / "config.yaml")], cwd=ROOT, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                if requests.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError((self.dir / "serve.log").read_text()[-4000:])
            time.sleep(1)
        raise RuntimeError("Serve did not come up:\n" + (self.dir / "serve.log").read_text()[-4000:])

    def stop(self, sig=signal.SIGINT) -> None:
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        subprocess.run([os.path.join(os.path.dirname(sys.executable), "ray"), "stop", "--force"],
                       capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def embedded(s3_server, tmp_path_factory):
    import boto3

    bucket = f"embedded-{os.getpid()}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    s3.upload_file(str(CLIP), bucket, "tears.mp4")
    service = Service(tmp_path_factory.mktemp("embedded"), bucket)
    service.start()
    yield service
    service.stop()


HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def submit(embedded, key: str | None = None, url: str | None = None, hook: str | None = None) -> str:
    body = {"bucket": embedded.bucket, "key": key} if key else {"url": url}
    if hook:
        body["webhook_url"] = hook
    r = requests.post(f"{embedded.base}/v1/videos", json=body, headers=HEADERS, timeout=30)
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def status(embedded, job_id) -> dict | None:
    try:
        return requests.get(f"{embedded.base}/v1/videos/{job_id}", headers=HEADERS, timeout=10).json()
    except (requests.RequestException, ValueError):
        return None  # the ingress restarting


def wait(embedded, job_id, timeout=300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        doc = status(embedded, job_id)
        if doc and doc["status"] in ("succeeded", "failed"):
            return doc
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not end")


def wait_running(embedded, job_ids, timeout=120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any((status(embedded, j) or {}).get("status") == "running" for j in job_ids):
            return
        time.sleep(0.3)
    raise AssertionError("no job started")


def replica_pids(name: str) -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter(["cmdline"])
            if any(f"ServeReplica:framepipe:{name}" in c for c in (p.info["cmdline"] or []))]


def worker_pid() -> int:
    [pid] = replica_pids("VideoWorker")
    return pid


def test_the_embedded_broker_runs_jobs_with_no_server(embedded):
    doc = wait(embedded, submit(embedded, "tears.mp4"))
    assert doc["status"] == "succeeded" and len(doc["result"]["representative_frames"]) == 10
    assert (embedded.dir / "state" / "jobs.sqlite").exists()


def test_jobs_over_the_time_limit_fail_and_the_worker_keeps_serving(embedded, trickle):
    before = worker_pid()
    slow = [submit(embedded, url=trickle.url(3 * JOB_TIMEOUT_S)) for _ in range(2)]  # can only overrun
    for job_id in slow:
        doc = wait(embedded, job_id)
        assert doc["status"] == "failed" and doc["result"]["error"] == {
            "type": "timeout", "message": f"over {JOB_TIMEOUT_S} s"}, doc
    assert wait(embedded, submit(embedded, "tears.mp4"))["status"] == "succeeded"
    assert worker_pid() == before  # no crash, no restart


def test_a_job_longer_than_its_lease_runs_once_while_its_worker_lives(embedded, trickle):
    from serve.lifecycle import QueueSettings

    lease = QueueSettings().lease_s
    t0 = time.time()
    doc = wait(embedded, submit(embedded, url=trickle.url(lease + 15)))
    assert time.time() - t0 > lease + 5  # it really outlived its lease, renewed by the heartbeat
    assert doc["status"] == "succeeded" and doc["attempts"] == 1, doc


def _every_job_ends(embedded, receiver, jobs, killed) -> None:
    """Every job succeeded with its webhook, within 60 s of the kill plus two runs of a job (two at once per
    worker); the broker never delivered anything again: the leases did."""
    docs = [wait(embedded, j, timeout=400) for j in jobs]
    assert all(d["status"] == "succeeded" for d in docs), [
        (d["status"], d["attempts"], (d.get("result") or {}).get("error")) for d in docs]
    deadline = time.time() + 120
    while time.time() < deadline and not set(jobs) <= set(receiver.unique()):
        time.sleep(0.5)
    assert set(jobs) <= set(receiver.unique())
    run = max(d["result"]["processing"]["duration_s"] for d in docs)
    assert time.time() - killed <= 60 + 2 * run + 5, (time.time() - killed, run)
    assert any(d["attempts"] > 1 for d in docs)


def _hook(receiver) -> str:
    return f"http://127.0.0.1:{receiver.server_port}/hook"


def test_a_killed_worker_loses_no_accepted_job(embedded, receiver):
    jobs = [submit(embedded, "tears.mp4", hook=_hook(receiver)) for _ in range(3)]
    wait_running(embedded, jobs)
    os.kill(worker_pid(), signal.SIGKILL)
    _every_job_ends(embedded, receiver, jobs, time.time())


def test_every_replica_killed_at_once_loses_no_accepted_job(embedded, receiver):
    jobs = [submit(embedded, "tears.mp4", hook=_hook(receiver)) for _ in range(3)]
    wait_running(embedded, jobs)
    pids = replica_pids("VideoWorker") + replica_pids("VideoIngress") + replica_pids("FaceModel")
    assert len(pids) == 3
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    _every_job_ends(embedded, receiver, jobs, time.time())


def test_a_restart_of_serve_run_ends_what_was_running(embedded, receiver):
    jobs = [submit(embedded, "tears.mp4", hook=_hook(receiver)) for _ in range(3)]
    wait_running(embedded, jobs)
    embedded.stop(signal.SIGKILL)  # the whole `serve run` and its Ray, at once
    embedded.start()  # the same state dir
    _every_job_ends(embedded, receiver, jobs, time.time())  # the bound counts from the service's return


def test_search_by_an_uploaded_photo_or_an_s3_photo(embedded):
    """POST /v1/search: a frame of one job's person finds that person (uploaded, or as an S3 object); what is not
    an image, too big or not there gets a clear 4xx, and nothing is read before the token is checked."""
    import boto3

    doc = wait(embedded, submit(embedded, "tears.mp4"))
    talent = doc["result"]["talent_frames"][1]  # the man with glasses, seen from 3 to 7.5 s
    photo = open(talent["url"], "rb").read()
    url = f"{embedded.base}/v1/search"
    r = requests.post(url, data=photo, headers={**HEADERS, "Content-Type": "image/jpeg"}, timeout=120)
    assert r.status_code == 200, r.text
    found = r.json()
    assert found["faces"] and found["results"], found
    # other jobs of this module processed the same clip (from a URL): the person is found in each of them
    mine = [h for h in found["results"] if (h["video_id"], h["person_id"]) == (doc["result"]["video_id"],
                                                                             talent["person_id"])]
    assert mine and mine[0]["seen_s"] == talent["seen_s"], found["results"]
    top = found["results"][0]
    assert top["global_person_id"] == mine[0]["global_person_id"] and top["similarity"] >= found["min_similarity"]

    boto3.client("s3").put_object(Bucket=embedded.bucket, Key="query.jpg", Body=photo)
    r = requests.post(url, json={"bucket": embedded.bucket, "key": "query.jpg"}, headers=HEADERS,
                      params={"top": 1}, timeout=120)
    assert r.status_code == 200 and r.json()["results"][0]["global_person_id"] == top["global_person_id"], r.text
    assert len(r.json()["results"]) == 1

    bad = [(b"GIF89a not what it says", {"Content-Type": "image/jpeg"}, 422),
           (b"x" * 100, {"Content-Type": "text/plain"}, 415),
           (b'{"bucket": "' + embedded.bucket.encode() + b'", "key": "missing.jpg"}',
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


SEARCH_RSS_CEILING = 800 * 1024**2  # what a burst of the largest allowed search images may add to the replicas


def test_a_burst_of_the_largest_search_images_stays_under_the_memory_ceiling(embedded):
    """12 uploads at once of a 7680x4320 PNG (exactly max_pixels, 0.1 MB on the wire, 100 MB decoded): at most
    FRAMEPIPE_SERVE_SEARCH_CONCURRENCY (2) are decoded at once, each to 2560 px at most; the replicas' memory grows
    by less than the ceiling, and every answer is a 4xx (no face), never a 5xx."""
    import io
    from concurrent.futures import ThreadPoolExecutor

    import psutil
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (7680, 4320), (40, 120, 200)).save(buf, format="PNG")
    png = buf.getvalue()
    procs = [psutil.Process(p) for name in ("VideoIngress", "FaceModel", "VideoWorker") for p in replica_pids(name)]
    rss = lambda: sum(p.memory_info().rss for p in procs)  # noqa: E731
    before, peak, done = rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    post = lambda _: requests.post(f"{embedded.base}/v1/search", data=png,  # noqa: E731
                                   headers={**HEADERS, "Content-Type": "image/png"}, timeout=300)
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(post, range(12)))
    done.set()
    sampler.join()
    assert [r.status_code for r in answers] == [422] * 12, [(r.status_code, r.text[:100]) for r in answers]
    artifacts = Path(os.environ.get("FRAMEPIPE_ARTIFACTS", ROOT / ".artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / "search_burst.txt").write_text(f"replicas before {before / 2**20:.0f} MiB, peak {peak[0] / 2**20:.0f} "
                                                f"MiB, +{(peak[0] - before) / 2**20:.0f} MiB for 12 x 7680x4320 PNG\n")
    assert peak[0] - before <= SEARCH_RSS_CEILING, (before / 2**20, peak[0] / 2**20)
