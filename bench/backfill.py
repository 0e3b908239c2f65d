"""Backfill throughput: `framepipe extract SRC_DIR` (one process, no Ray) vs the Ray Data job (not a test).

    python bench/backfill.py [--models PACK] [--copies 1,3] [--all] [--split] [--cluster] [--no-local] [--repeat N]
                             [--long] [--kill-node [--kill-at S]]

In one run, on the same inputs, each command a fresh process timed as a whole (start-up included):

(a) ``framepipe extract SRC_DIR --out DEST``: every video one after another, models loaded once;
(b) ``python -m jobs.backfill --source SRC_DIR --dest DEST``: the Ray Data job with its defaults (a local Ray; on
    CPUs the fused layout), and with ``--split`` also ``--layout split`` (decode tasks -> model actors -> finish).

(c) with ``--cluster``: the same job on a Ray that is already running, as on a cluster: ``ray start --head`` (timed
    apart, not counted), then ``ray job submit -- python -m jobs.backfill ...`` timed as a whole.

``--copies 1,3``: the 16 labelled shared videos, then 3 copies of them (48); ``--all``: every shared video (24, so
``--copies 3`` is 72). Prints videos/minute and the ratio
(b)/(a) for each, and the job's peak object-store use and spilled bytes. ``--repeat N``: the commands in turn N
times, each ratio against the extract of its own round, then each ratio's median (this machine's speed drifts by
10% within minutes: one pair is one sample).
``--kill-node``: only the cost of losing a node, on a three-node Ray on this machine (``ray.cluster_utils``: a head
of 1 CPU, two workers of 2 CPUs with a custom ``t4`` resource for the model actors, ``--actor-resources``), per
layout: the job undisturbed, then on a fresh cluster the same job with one worker node killed ``--kill-at`` seconds
in and a fresh one added 5 s later; the ratio of the times, the summary's ``faults`` and the bytes spilled
(``--all --copies 3``: the 72-video set).
``--long``: two 12-minute 720p videos plus the 16 short ones in one Ray run: says when the first short video's
outputs were written against when the first 12-minute video was finished, peak object store and spilled bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
SHARED = Path(os.environ.get("FRAMEPIPE_SHARED", ROOT.parent / "shared"))
BIN = Path(sys.executable).parent


def videos_dir(copies: int, long_videos: list[Path] = (), every: bool = False) -> tuple[str, int]:
    gt = json.loads((SHARED / "media" / "ground_truth.json").read_text())
    paths = [SHARED / "media" / k for k in gt if k.startswith("videos/")]
    if every:
        paths = sorted(p for p in (SHARED / "media" / "videos").rglob("*") if p.suffix in {".mp4", ".mov", ".mkv"})
    d = tempfile.mkdtemp(prefix="fpbench-videos-")
    for c in range(copies):
        for p in paths:
            os.symlink(p, os.path.join(d, f"{c}_{p.name}"))
    for i, p in enumerate(long_videos):
        os.symlink(p, os.path.join(d, f"long{i}_{p.name}"))
    return d, len(paths) * copies + len(long_videos)


def timed(cmd: list[str], models: str, prefix: str, env: dict | None = None) -> tuple[float, str]:
    env = {**(env or os.environ), "FRAMEPIPE_MODELS": models}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(prefix)]
    if not lines:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-3000:])
    return elapsed, lines[-1].split(": ", 1)[1]


def extract(src: str, models: str) -> float:
    out = tempfile.mkdtemp(prefix="fpbench-extract-")
    try:
        secs, _ = timed([str(BIN / "framepipe"), "extract", src, "--out", out], models, "extract summary: ")
        return secs
    finally:
        shutil.rmtree(out, ignore_errors=True)


def ray_job(src: str, models: str, *extra: str) -> tuple[float, dict, str]:
    out = tempfile.mkdtemp(prefix="fpbench-ray-")
    try:
        secs, summary = timed([sys.executable, "-m", "jobs.backfill", "--source", src, "--dest", out, *extra], models,
                              "backfill summary: ")
        return secs, json.loads(summary), out
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_job(src: str, models: str, *extra: str) -> tuple[float, float, dict]:
    """``ray start --head`` (its seconds returned apart), then ``ray job submit`` of the backfill, timed as a whole;
    the Ray is stopped after."""
    import secrets

    # Ray 2.60's token authentication, as a cluster runs it: the head and the client share the token
    env = {**os.environ, "FRAMEPIPE_MODELS": models, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    dash = free_port()
    t0 = time.perf_counter()
    subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={free_port()}", f"--dashboard-port={dash}",
                    "--include-dashboard=true", "--disable-usage-stats"], env=env, check=True, capture_output=True)
    start_s = time.perf_counter() - t0
    out = tempfile.mkdtemp(prefix="fpbench-cluster-")
    try:
        secs, summary = timed([str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--",
                               sys.executable, "-m", "jobs.backfill", "--source", src, "--dest", out, *extra],
                              models, "backfill summary: ", env)
        return start_s, secs, json.loads(summary)
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True)
        shutil.rmtree(out, ignore_errors=True)


def node_loss(src: str, models: str, layout: str, kill_at: float | None) -> tuple[float, dict]:
    """The backfill on a three-node Ray started here; ``kill_at``: seconds into the job when one worker node is
    killed (a fresh one joins 5 s later). (seconds, summary)."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    out = tempfile.mkdtemp(prefix="fpbench-kill-")
    try:
        workers = [c.add_node(num_cpus=2, resources={"t4": 1}) for _ in range(2)]
        c.wait_for_nodes()
        env = {**os.environ, "FRAMEPIPE_MODELS": models}
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "jobs.backfill", "--source", src, "--dest", out,
                                 "--ray-address", c.address, "--layout", layout, "--actors", "2",
                                 "--actor-resources", '{"t4": 1}'], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        if kill_at is not None:
            time.sleep(kill_at)
            c.remove_node(workers[0], allow_graceful=False)
            time.sleep(5)
            c.add_node(num_cpus=2, resources={"t4": 1})
        stdout, _ = proc.communicate()
        secs = time.perf_counter() - t0
        lines = [ln for ln in stdout.splitlines() if ln.startswith("backfill summary: ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"exit {proc.returncode}: {stdout[-2000:]}")
        return secs, json.loads(lines[-1].split(": ", 1)[1])
    finally:
        c.shutdown()
        shutil.rmtree(out, ignore_errors=True)


def finished_at(out: str) -> dict[str, float]:
    """When each video's result.json was written (mtime)."""
    return {d: os.path.getmtime(os.path.join(out, d, "result.json")) for d in os.listdir(out)
            if os.path.exists(os.path.join(out, d, "result.json"))}


def mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=str(SHARED / "models" / "buffalo_s_dq"))
    ap.add_argument("--copies", default="1,3")
    ap.add_argument("--long", action="store_true")
    ap.add_argument("--split", action="store_true", help="also time the split layout (decode tasks -> model actors)")
    ap.add_argument("--cluster", action="store_true", help="also time `ray job submit` to a running Ray head")
    ap.add_argument("--all", action="store_true", help="every shared video, not only the 16 labelled ones")
    ap.add_argument("--no-local", action="store_true", help="skip (b), the job on a local Ray it starts itself")
    ap.add_argument("--repeat", type=int, default=1,
                    help="time (a), (b) and (c) in turn this many times; prints the median of each ratio")
    ap.add_argument("--kill-node", action="store_true", help="only the cost of losing a worker node (see above)")
    ap.add_argument("--kill-at", type=float, default=20.0, help="seconds into the job (--kill-node)")
    args = ap.parse_args()
    print(f"{os.cpu_count()} cores")
    if args.kill_node:
        for copies in [int(c) for c in args.copies.split(",") if c]:
            src, n = videos_dir(copies, every=args.all)
            try:
                for layout in ("fused", "split"):
                    calm, s0 = node_loss(src, args.models, layout, None)
                    hit, s1 = node_loss(src, args.models, layout, args.kill_at)
                    print(f"{n} videos, {layout}: undisturbed {calm:6.1f} s (spilled {mib(s0['spilled_bytes'])}, "
                          f"faults {json.dumps(s0['faults'])})")
                    print(f"{n} videos, {layout}: a worker node killed at {args.kill_at:.0f} s {hit:6.1f} s, ratio "
                          f"{hit / calm:.2f} ({s1['succeeded']} ok, {s1['failed']} failed; spilled "
                          f"{mib(s1['spilled_bytes'])}; faults {json.dumps(s1['faults'])})", flush=True)
            finally:
                shutil.rmtree(src, ignore_errors=True)
        return
    for copies in [int(c) for c in args.copies.split(",") if c]:
        src, n = videos_dir(copies, every=args.all)
        rate = lambda secs: n / secs * 60  # noqa: E731
        ratios: dict[str, list[float]] = {}
        try:
            for r in range(args.repeat):
                run = f" [run {r + 1}/{args.repeat}]" if args.repeat > 1 else ""
                a = extract(src, args.models)
                print(f"{n} videos{run}: (a) framepipe extract SRC_DIR {a:6.1f} s {rate(a):6.1f} videos/min")
                for layout in ([] if args.no_local else ["auto"]) + (["split"] if args.split else []):
                    b, s, out = ray_job(src, args.models, "--layout", layout)
                    shutil.rmtree(out, ignore_errors=True)
                    name = "Ray job" if layout == "auto" else "Ray job --layout split"
                    ratios.setdefault(f"(b) {name}", []).append(a / b)
                    print(f"{n} videos{run}: (b) {name} {b:6.1f} s {rate(b):6.1f} videos/min ({s['succeeded']} ok, "
                          f"{s['failed']} failed) | ratio (b)/(a) {a / b:.2f} | peak object store "
                          f"{mib(s['peak_object_store_bytes'])}, spilled {mib(s['spilled_bytes'])}")
                if args.cluster:
                    start_s, c, s = cluster_job(src, args.models)
                    ratios.setdefault("(c) ray job submit", []).append(a / c)
                    print(f"{n} videos{run}: (c) ray job submit to a running head {c:6.1f} s {rate(c):6.1f} "
                          f"videos/min ({s['succeeded']} ok, {s['failed']} failed; ray start --head took "
                          f"{start_s:.1f} s, not counted) | ratio (c)/(a) {a / c:.2f}")
            if args.repeat > 1:
                for name, rs in ratios.items():
                    print(f"{n} videos: {name}: ratio to (a) of the same run, median {statistics.median(rs):.2f} "
                          f"(min {min(rs):.2f}, max {max(rs):.2f}, {len(rs)} runs)")
        finally:
            shutil.rmtree(src, ignore_errors=True)
    if args.long:
        import inputs

        long_video = inputs.thirty_minute(copies=4)  # 12 minutes, 1280x720, 30 fps
        src, n = videos_dir(1, [long_video, long_video])
        try:
            secs, s, out = ray_job(src, args.models)
            done = finished_at(out)
            shutil.rmtree(out, ignore_errors=True)
            first_short = min(t for d, t in done.items() if not d.startswith("long"))
            first_long = min(t for d, t in done.items() if d.startswith("long"))
            print(f"{n} videos incl. two 12-minute 720p ones: Ray job {secs:.1f} s; first short video written "
                  f"{first_long - first_short:.1f} s before the first 12-minute one was finished "
                  f"({'OK' if first_short < first_long else 'NOT streaming'}); peak object store "
                  f"{mib(s['peak_object_store_bytes'])}, spilled {mib(s['spilled_bytes'])}")
        finally:
            shutil.rmtree(src, ignore_errors=True)


if __name__ == "__main__":
    main()
