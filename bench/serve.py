"""Serve latency and throughput (not a test).

    python bench/serve.py [--runs 10] [--clients 4]

Starts, on this machine: a moto S3 server holding one 10-second shared clip, a webhook receiver, and the Serve
application (`serve run serve/config.yaml`). Then measures the latency from POST to the webhook's arrival over
--runs sequential requests after one warm-up (p50/p95), and the throughput with --clients concurrent clients.
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
import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FRAMEPIPE_SHARED", ROOT.parent / "shared"))
CLIP = SHARED / "media/videos/tears_of_steel_10s.mp4"
TOKEN, SECRET = "bench-token", "bench-secret"
ARRIVED: dict[str, float] = {}


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        ARRIVED[self.headers["X-Framepipe-Idempotency-Key"]] = time.perf_counter()
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
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up")


def one(base: str, bucket: str, hook: str) -> float:
    t0 = time.perf_counter()
    r = requests.post(f"{base}/v1/videos", json={"bucket": bucket, "key": "clip.mp4", "webhook_url": hook},
                      headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    job = r.json()["job_id"]
    while job not in ARRIVED:
        time.sleep(0.01)
    return ARRIVED[job] - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--models", default=str(SHARED / "models/scrfd_mobilefacenet"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="fpbench-serve-")
    moto_port, serve_port = free_port(), free_port()
    exe = shutil.which("moto_server", path=os.path.dirname(sys.executable))
    moto = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(moto_port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
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
               "FRAMEPIPE_SERVE_OUTPUT": "s3://bench/out"}
        serve_bin = os.path.join(os.path.dirname(sys.executable), "serve")
        serve_proc = subprocess.Popen([serve_bin, "run", str(Path(tmp) / "config.yaml")], cwd=ROOT, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        base = f"http://127.0.0.1:{serve_port}"
        wait_http(f"{base}/healthz", 300)
        while requests.get(f"{base}/healthz", timeout=5).status_code != 200:
            time.sleep(0.5)
        one(base, "bench", hook)  # warm-up
        lat = [one(base, "bench", hook) for _ in range(args.runs)]
        q = statistics.quantiles(lat, n=20)
        print(f"clip: {CLIP.name} (10 s, 640x360); {os.cpu_count()} cores")
        print(f"latency POST -> webhook over {args.runs} sequential runs: p50 {statistics.median(lat):.2f} s, "
              f"p95 {q[18]:.2f} s, min {min(lat):.2f} s, max {max(lat):.2f} s")
        n = args.clients * 3
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(lambda _: one(base, "bench", hook), range(n)))
        elapsed = time.perf_counter() - t0
        print(f"throughput, {args.clients} concurrent clients, {n} videos: {n / elapsed * 60:.1f} videos/min "
              f"(vs {60 / statistics.median(lat):.1f} videos/min one at a time)")
    finally:
        if serve_proc:
            os.killpg(serve_proc.pid, signal.SIGINT)
            try:
                serve_proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(serve_proc.pid, signal.SIGKILL)
        moto.terminate()
        hook_server.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
