"""How the people-grouping defaults were chosen: re-group the cached face analysis of every labelled shared video
(bench/quality.py) with one parameter of :class:`framepipe.clustering.Params` moved at a time around the defaults
(the calibrated distances included), and print for the tuning half and the held-out half separately: videos in
their accept range, the lowest purity, persons per identity and mean talent F1. Choose on ``tune``; ``held`` shows
whether the choice carries over. The defaults are marked ``*``.

    python bench/tune_clustering.py [--models ../shared/models/buffalo_s_dq]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality  # bench/quality.py: the analysis cache and the measures

from framepipe import clustering
from framepipe.config import Settings

GRID = {
    "cluster_max_distance": [-0.06, -0.03, 0.0, 0.03, 0.06],  # offsets from the calibrated value
    "track_max_distance": [-0.06, 0.0, 0.06],
    "clean_quality": [0.55, 0.6, 0.65, 0.7],
    "poor_quality": [0.4, 0.45, 0.5, 0.55],
    "weak_min_samples": [2, 3, 4],
    "background_max_ratio": [0.6, 0.7, 0.8, 0.9],
    "attach_margin": [0.0, 0.1, 0.2],
}
OFFSETS = {"cluster_max_distance", "track_max_distance"}


def halves(df) -> str:
    out = []
    for half in ("tune", "held"):
        p = df[df["half"] == half]
        ids = p["ids"].sum()
        ppi = (p["ppi"].fillna(0) * p["ids"]).sum() / ids if ids else float("nan")
        out.append(f"{half}: {int(p['in_range'].sum()):>2}/{len(p)} in range, purity min {p['purity'].min():.3f}, "
                   f"ppi {ppi:.3f}, F1 {p['F1'].mean():.3f}")
    return " | ".join(out)


def main() -> None:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=str(quality.SHARED / "models/buffalo_s_dq"))
    args = ap.parse_args()
    settings = Settings(models=args.models)
    videos = quality.load(settings)
    calibrated = clustering.Params.from_settings
    first = next(st for _, _, st in videos if st.people.records)
    base = calibrated(settings, len(first.people.records[0].face.embedding))
    print(f"{len(videos)} labelled videos; defaults: {base}")
    try:
        for knob, values in GRID.items():
            for v in values:
                value = round(getattr(base, knob) + v, 4) if knob in OFFSETS else v
                params = dataclasses.replace(base, **{knob: value})
                clustering.Params.from_settings = lambda s, dim=None, p=params: p  # noqa: E731
                mark = "*" if value == getattr(base, knob) else " "
                print(f"{mark} {knob:>20} = {value:<6} {halves(quality.evaluate(videos, settings))}")
            print()
    finally:
        clustering.Params.from_settings = calibrated


if __name__ == "__main__":
    main()
