"""How `framepipe people` scales with the number of people in a destination (clustering only; reading the
manifests is one small Parquet file per video). Synthetic 128-d embeddings: identities with noisy copies, shaped
like the real ones (same person ~0.6-0.9 cosine, different people ~0).

    .venv/bin/python bench/people_scale.py [--sizes 1000 4000 8000 16000]

Prints wall time and the growth of the process's peak memory per size (sizes in increasing order), and ratios against the smallest size (n^2 expected).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import resource

from framepipe import people_index


def synthetic(n: int, per_identity: int = 4, dim: int = 128, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.arange(n) // per_identity
    centres = rng.normal(size=(ids.max() + 1, dim))
    emb = centres[ids] + rng.normal(scale=0.6, size=(n, dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    df = pd.DataFrame({
        "video_id": [f"v{i}" for i in range(n)], "person_id": 0, "source": [f"s3://b/v{i}.mp4" for i in range(n)],
        "face_url": "", "frame_url": "", "timestamp_s": 0.0, "quality": 0.9, "embedding_model": "m",
        "embedding": list(emb.astype(np.float32)),
    })
    return df, ids


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 8000, 16000])
    args = ap.parse_args()
    base = None
    print(f"{'people':>7} {'wall s':>8} {'+peak MB':>8} {'global ids':>10} {'correct':>8} {'time ratio':>10} {'n^2 ratio':>9}")
    for n in args.sizes:
        df, ids = synthetic(n)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        t0 = time.perf_counter()
        index = people_index.build(df, 0.6)
        wall = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # sizes grow, so this is this size's peak
        got = index.sort_values("video_id", key=lambda s: s.str[1:].astype(int)).global_person_id.to_numpy()
        correct = len(set(zip(got, ids))) == len(set(ids)) == len(set(got))
        base = base or (n, wall)
        print(f"{n:>7} {wall:>8.2f} {(peak - rss0) / 1e6:>8.0f} {index.global_person_id.nunique():>10} "
              f"{str(correct):>8} {wall / base[1]:>10.1f} {(n / base[0]) ** 2:>9.1f}")


if __name__ == "__main__":
    main()
