"""How the people-clustering defaults were chosen: re-cluster the cached face analysis of every labelled shared
video (bench/quality.py) over a grid of settings, and print for each: videos whose people count is in the accept
range, the lowest and mean purity, mean talent F1 and within-video joins. The chosen defaults are marked ``*``;
the margins are the neighbouring cells.

    python bench/tune_clustering.py [--models ../shared/models/scrfd_mobilefacenet]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality  # bench/quality.py: the analysis cache and the measures

from framepipe.config import Settings

GRID = {
    "cluster_max_distance": [0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7],
    "track_max_distance": [0.5, 0.6, 0.7],
    "track_min_iou": [0.1, 0.2, 0.3],
    "track_min_det_score": [0.6, 0.7, 0.8],
}


def main() -> None:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=str(quality.SHARED / "models/scrfd_mobilefacenet"))
    args = ap.parse_args()
    base = Settings(models=args.models)
    videos = quality.load(base)
    print(f"{len(videos)} labelled videos; defaults: " + ", ".join(f"{k}={getattr(base, k)}" for k in GRID))
    print(f"{'':2}" + "".join(f"{k:>22}" for k in GRID) + f"{'in range':>10}{'purity min':>12}{'mean':>7}{'F1':>7}"
          f"{'joins':>7}")
    # one knob at a time around the defaults (the full product is slow and says little more)
    for knob, values in GRID.items():
        for v in values:
            s = base.with_overrides(**{knob: v})
            df = quality.evaluate(videos, s)
            mark = "*" if v == getattr(base, knob) else " "
            print(f"{mark:2}" + "".join(f"{getattr(s, k):>22}" for k in GRID)
                  + f"{int(df['in_range'].sum()):>7}/{len(df):<2}{df['purity'].min():>12.3f}{df['purity'].mean():>7.3f}"
                  f"{df['F1'].mean():>7.3f}{int(df['joins'].sum()):>7}")
        print()


if __name__ == "__main__":
    main()
