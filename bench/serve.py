"""Serve under load (not a test).

    python bench/serve.py [--runs 5] [--bursts 20,100]

Starts, on this machine: a moto S3 server holding one 10-second shared clip, Debian's redis-server as the broker
(the embedded broker if it is not installed), a webhook receiver, and the Serve application (`serve run
serve/config.yaml`). Measures the latency from POST to the webhook over --runs sequential jobs after a warm-up, then,
for each burst size, that many submissions at once (8 client threads): accepted (202), pushed back (429), server
errors (5xx), lost (accepted but no webhook within 15 minutes), when the first result arrived, p50 latency of the
accepted jobs, and the ingress replica's peak RSS during the burst.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import psutil
import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FRAMEPIPE_SHARED", ROOT.parent / "shared"))
CLIP = SHARED / "media/videos/tears_of_steel_10s.mp4"
TOKEN, SECRET = "bench-token", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ARRIVED: dict[str, float] = {}


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        ARRIVED.setdefault(self.headers["webhook-id"], time.perf_counter())
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up")


def post(base: str, hook: str) -> tuple[int, str | None, float]:
    t0 = time.perf_counter()
    r = requests.post(f"{base}/v1/videos", json={"bucket": "bench", "key": "clip.mp4", "webhook_url": hook},
                      headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    return r.status_code, r.json().get("job_id") if r.status_code == 202 else None, t0


def one(base: str, hook: str) -> float:
    code, job, t0 = post(base, hook)
    if code != 202:
        raise RuntimeError(f"POST answered {code}")
    while job not in ARRIVED:
        time.sleep(0.01)
    return ARRIVED[job] - t0


def ingress_rss() -> float:
    return sum(p.memory_info().rss for p in psutil.process_iter(["cmdline"])
               if any("ServeReplica:framepipe:VideoIngress" in c for c in (p.info["cmdline"] or []))) / 2**20


def burst(base: str, hook: str, n: int) -> str:
    peak, stop = [ingress_rss()], threading.Event()

    def sample():
        while not stop.is_set():
            peak.append(ingress_rss())
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post(base, hook), range(n)))
    jobs = {job: t for code, job, t in answers if job}
    deadline = time.time() + 900
    while time.time() < deadline and not set(jobs) <= set(ARRIVED):
        time.sleep(0.2)
    stop.set()
    codes = [code for code, _, _ in answers]
    lat = [ARRIVED[j] - t for j, t in jobs.items() if j in ARRIVED]
    first = min(ARRIVED[j] for j in jobs if j in ARRIVED) - t0 if lat else float("nan")
    return (f"burst of {n}: {codes.count(202)} accepted, {codes.count(429)} got 429, "
            f"{sum(c >= 500 for c in codes)} 5xx, {len(set(jobs) - set(ARRIVED))} lost; first result after "
            f"{first:.1f} s, p50 latency {statistics.median(lat):.1f} s (max {max(lat):.1f} s); ingress peak RSS "
            f"{max(peak):.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--bursts", default="20,100")
    ap.add_argument("--models", default=str(SHARED / "models/buffalo_s_dq"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="fpbench-serve-")
    moto_port, serve_port, redis_port = free_port(), free_port(), free_port()
    exe = shutil.which("moto_server", path=os.path.dirname(sys.executable))
    moto = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(moto_port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    redis = None
    if shutil.which("redis-server"):
        redis = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "",
                                  "--dir", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    aws = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{moto_port}", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}
    hook_server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook_server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{hook_server.server_port}/hook"
    serve_proc = None
    try:
        wait_http(aws["AWS_ENDPOINT_URL"], 30)
        s3 = boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"], aws_access_key_id="x",
                          aws_secret_access_key="x", region_name="us-east-1")
        s3.create_bucket(Bucket="bench")
        s3.upload_file(str(CLIP), "bench", "clip.mp4")
        config = yaml.safe_load((ROOT / "serve/config.yaml").read_text())
        config["http_options"].update(host="127.0.0.1", port=serve_port)
        (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(config))
        env = {**os.environ, **aws, "FRAMEPIPE_MODELS": args.models, "FRAMEPIPE_SERVE_API_TOKEN": TOKEN,
               "FRAMEPIPE_SERVE_WEBHOOK_SECRET": SECRET, "FRAMEPIPE_SERVE_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
               "FRAMEPIPE_SERVE_WEBHOOK_PORTS": "*", "FRAMEPIPE_SERVE_ALLOW_PRIVATE_NETWORKS": "1",
               "FRAMEPIPE_SERVE_OUTPUT": "s3://bench/out", "FRAMEPIPE_SERVE_STATE_DIR": os.path.join(tmp, "state"),
               "FRAMEPIPE_SERVE_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0" if redis else ""}
        serve_bin = os.path.join(os.path.dirname(sys.executable), "serve")
        serve_proc = subprocess.Popen([serve_bin, "run", str(Path(tmp) / "config.yaml")], cwd=ROOT, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        base = f"http://127.0.0.1:{serve_port}"
        wait_http(f"{base}/healthz", 300)
        one(base, hook)  # warm-up
        lat = [one(base, hook) for _ in range(args.runs)]
        print(f"clip: {CLIP.name} (10 s, 640x360); {os.cpu_count()} cores; broker: "
              f"{'redis-server' if redis else 'embedded'}; queue bound {os.environ.get('FRAMEPIPE_SERVE_QUEUE_MAX', 64)}")
        print(f"one job at a time, POST -> webhook over {args.runs} runs: p50 {statistics.median(lat):.2f} s, "
              f"min {min(lat):.2f} s, max {max(lat):.2f} s")
        for n in [int(b) for b in args.bursts.split(",") if b]:
            print(burst(base, hook, n), flush=True)
    finally:
        if serve_proc:
            os.killpg(serve_proc.pid, signal.SIGINT)
            try:
                serve_proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(serve_proc.pid, signal.SIGKILL)
        moto.terminate()
        if redis:
            redis.terminate()
        hook_server.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
