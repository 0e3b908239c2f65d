"""How the person registry scales: 1,000,000 synthetic 128-d people in its vector index (usearch HNSW, the
settings framepipe.registry uses), against exact search on the same vectors.

Synthetic people are shaped like real ones: identities with noisy copies (the same person ~0.6-0.9 cosine,
different people ~0), drawn with the spread of real face embeddings: the standard deviation of the k-th principal
component falls as k^-0.7 (measured on the 624 MobileFaceNet embeddings of the shared footage; isotropic noise
would need `--alpha 0`, a far harder case than faces: at 100,000 people, recall@10 0.79 at ef 128). Prints build time, the index's memory and the process's peak RSS growth, single-query
latency p50/p99 (one thread, as `framepipe search` and each attach in `framepipe people` ask), queries per minute
on one thread and batched on every core, and recall@10 against exact search (brute force in NumPy) on 1,000 queries.
Then the registry's own incremental path: a registry of 20,000 people seeded by clustering, then 2,000 new people
attached one by one through the index (what `framepipe people` and the backfill do with new videos). That part
uses isotropic people (different identities ~0 cosine apart, as real ones are; with the k^-0.7 spread, random
identities come closer than real different people do, and the clustering joins some).

    .venv/bin/python bench/people_scale.py [--people 1000000] [--queries 1000] [--dim 512] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np
import pandas as pd

from framepipe.people import model_registry as registry


def synthetic(n: int, dim: int = 128, per_identity: int = 4, alpha: float = 0.7, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = (np.arange(1, dim + 1) ** -alpha).astype(np.float32)
    scale /= np.sqrt((scale**2).mean())
    centres = rng.standard_normal((n // per_identity + 1, dim), dtype=np.float32) * scale
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):  # in chunks: memory stays ~2x the vectors
        ids = np.arange(start, min(n, start + 100_000)) // per_identity
        x = centres[ids] + rng.standard_normal((len(ids), dim), dtype=np.float32) * 0.6 * scale
        out[start : start + len(ids)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def exact_top(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    best = np.full((len(queries), k), -1, dtype=np.int64)
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    for start in range(0, len(data), 200_000):
        s = queries @ data[start : start + 200_000].T
        idx = np.argpartition(-s, k, axis=1)[:, :k]
        cand_s = np.concatenate([scores, np.take_along_axis(s, idx, 1)], axis=1)
        cand_i = np.concatenate([best, idx + start], axis=1)
        top = np.argsort(-cand_s, axis=1)[:, :k]
        scores, best = np.take_along_axis(cand_s, top, 1), np.take_along_axis(cand_i, top, 1)
    return best


def people_rows(emb: np.ndarray, start: int) -> pd.DataFrame:
    n = len(emb)
    return pd.DataFrame({"video_id": [f"v{start + i}" for i in range(n)], "person_id": 0,
                         "source": [f"s3://b/v{start + i}.mp4" for i in range(n)], "embedding": list(emb),
                         "embedding_model": "m", "seen_s": [[1.0]] * n, "face_url": None, "frame_url": None,
                         "timestamp_s": 0.0, "quality": 0.9})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--people", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--alpha", type=float, default=0.7, help="spectrum decay of the synthetic embeddings (0: isotropic)")
    ap.add_argument("--registry-only", action="store_true", help="only the registry's incremental path")
    ap.add_argument("--dim", type=int, default=128, help="embedding size (buffalo packs: 512)")
    ap.add_argument("--dtype", default=registry.INDEX_DTYPE, help="the index's vector type (f32, bf16, f16, i8)")
    args = ap.parse_args()
    registry.INDEX_DTYPE = args.dtype
    cores = os.cpu_count() or 1
    if args.registry_only:
        return registry_path(synthetic(22_000, alpha=0.0))
    data = synthetic(args.people, dim=args.dim, alpha=args.alpha)
    rng = np.random.default_rng(1)
    queries = data[rng.choice(len(data), args.queries, replace=False)] + rng.standard_normal(
        (args.queries, data.shape[1]), dtype=np.float32) * 0.05  # a new face of a known person, roughly
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    print(f"{args.people:,} people, {data.shape[1]}-d, index {args.dtype}, {cores} cores; vectors "
          f"{data.nbytes / 1e6:.0f} MB")

    rss0 = rss_mb()
    index = registry._new_index(data.shape[1])
    t0 = time.perf_counter()
    index.add(np.arange(len(data), dtype=np.uint64), data, threads=cores)
    build = time.perf_counter() - t0
    print(f"build: {build:.1f} s ({len(data) / build:,.0f} people/s on {cores} threads); index memory "
          f"{index.memory_usage / 1e6:.0f} MB, peak RSS +{rss_mb() - rss0:.0f} MB")

    truth = exact_top(data, queries, 10)
    print(f"{'ef':>5} {'recall@10':>9} {'p50 ms':>7} {'p99 ms':>7} {'q/min 1 thread':>15} {'q/min batched':>14}")
    for ef in (128, 256, 448):
        index.expansion_search = ef
        lat = []
        for q in queries:
            t = time.perf_counter()
            index.search(q, 10, threads=1)
            lat.append(time.perf_counter() - t)
        lat = np.array(lat) * 1000
        t = time.perf_counter()
        found = index.search(queries, 10, threads=cores)
        batched = time.perf_counter() - t
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(np.asarray(found.keys, dtype=np.int64), truth)])
        mark = "*" if ef == registry.EXPANSION_SEARCH else " "
        print(f"{mark}{ef:>4} {recall:>9.4f} {np.percentile(lat, 50):>7.3f} {np.percentile(lat, 99):>7.3f} "
              f"{60_000 / lat.mean():>15,.0f} {60 * len(queries) / batched:>14,.0f}")
    print("goals: recall@10 >= 0.95 against exact search (NumPy brute force), >= 30,000 queries/min; "
          "* = framepipe.people.registry's setting")
    del index
    registry_path(synthetic(22_000, alpha=0.0))


def registry_path(data: np.ndarray) -> None:
    base = len(data) - 2000
    reg = registry.Registry.empty("m", data.shape[1])
    t = time.perf_counter()
    seeded = reg.update(people_rows(data[:base], 0), 0.6)
    seed = time.perf_counter() - t
    t = time.perf_counter()
    u = reg.update(people_rows(data[base:], base), 0.6)
    inc = time.perf_counter() - t
    print(f"registry: {base:,} people seeded by clustering in {seed:.1f} s ({seeded.created:,} global people); "
          f"2,000 new people attached in {inc:.1f} s ({inc / 2000 * 1000:.1f} ms each; {u.attached} attached, "
          f"{u.created} new)")


if __name__ == "__main__":
    main()
