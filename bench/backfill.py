"""Backfill throughput: the engine one video after another vs the Ray Data job (not a test).

    python bench/backfill.py [--models PACK] [--copies N]

In one run, on the same set of shared videos (all 16 labelled ones by default; --copies repeats the set):
(a) the single-video engine, one video after another, in one process (model loaded once);
(b) the Ray Data job (`python -m jobs.backfill`) with 1 face-model actor, then with 2 actors of half a CPU each,
    each run from a fresh process with a local Ray, its start-up included.
Prints videos/minute for each and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("FRAMEPIPE_SHARED", ROOT.parent / "shared"))


def videos_dir(copies: int) -> tuple[str, int]:
    gt = json.loads((SHARED / "media" / "ground_truth.json").read_text())
    paths = [SHARED / "media" / k for k in gt if k.startswith("videos/")]
    d = tempfile.mkdtemp(prefix="fpbench-videos-")
    for c in range(copies):
        for p in paths:
            os.symlink(p, os.path.join(d, f"{c}_{p.name}"))
    return d, len(paths) * copies


def sequential(src: str, models: str) -> float:
    warnings.filterwarnings("ignore")
    from framepipe import pipeline
    from framepipe.config import Settings
    from framepipe.faces import load_face_model

    out = tempfile.mkdtemp(prefix="fpbench-seq-")
    t0 = time.perf_counter()
    settings = Settings(models=models)
    model = load_face_model(settings)
    for name in sorted(os.listdir(src)):
        pipeline.extract(os.path.join(src, name), out, settings, model=model)
    elapsed = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return elapsed


def ray_job(src: str, models: str, *extra: str) -> tuple[float, dict]:
    out = tempfile.mkdtemp(prefix="fpbench-ray-")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.backfill", "--source", src, "--dest", out, *extra],
        cwd=ROOT, env={**os.environ, "FRAMEPIPE_MODELS": models}, capture_output=True, text=True,
    )
    elapsed = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("backfill summary: ")]
    if proc.returncode or not lines:
        raise RuntimeError(proc.stderr[-3000:])
    return elapsed, json.loads(lines[-1].split(": ", 1)[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=str(SHARED / "models" / "scrfd_mobilefacenet"))
    ap.add_argument("--copies", type=int, default=1)
    args = ap.parse_args()
    src, n = videos_dir(args.copies)
    try:
        print(f"{n} videos, {os.cpu_count()} cores")
        seq = sequential(src, args.models)
        one, s1 = ray_job(src, args.models, "--actors", "1", "--actor-cpus", "1")
        two, s2 = ray_job(src, args.models, "--actors", "2", "--actor-cpus", "0.5")
        rate = lambda secs: n / secs * 60  # noqa: E731
        print(f"(a) engine, one after another: {seq:7.1f} s  {rate(seq):6.1f} videos/min")
        print(f"(b) Ray Data job, 1 actor:      {one:7.1f} s  {rate(one):6.1f} videos/min  "
              f"(job's own clock {s1['seconds']} s; {s1['succeeded']} ok, {s1['failed']} failed)")
        print(f"    Ray Data job, 2 actors:     {two:7.1f} s  {rate(two):6.1f} videos/min  "
              f"(job's own clock {s2['seconds']} s)")
        print(f"ratio (b) 1 actor / (a):        {seq / one:.2f}   (>= 1 means the Ray job is at least as fast)")
        print(f"ratio 2 actors / 1 actor:       {one / two:.2f}")
    finally:
        shutil.rmtree(src, ignore_errors=True)


if __name__ == "__main__":
    main()
