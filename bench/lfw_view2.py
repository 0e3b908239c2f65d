"""LFW's standard verification protocol (View 2) through the whole pipeline: each photo as
``framepipe extract --images`` makes it a one-frame input, its central person's embedding (the people manifest's
``embedding``) compared with the other photo of the pair.

Prints: photos with no face found and with no person listed (the photos a user's search or names would lose),
then the 10-fold protocol on the folds shared here (1-3): for each fold the threshold that is best on the other
folds, its accuracy on the fold; mean and standard deviation; and the accuracy at the shipped threshold
(``match_similarity`` of the pack's calibration, one threshold for every fold). A pair with a photo that gives no
person counts as wrong. The published anchor for the recognizer of buffalo_s_dq (w600k_mbf) is 99.70% on all ten
folds. Analyses are cached as bench/quality.py's are.

    python bench/lfw_view2.py [--models ../shared/models/buffalo_s_dq] [--fresh] [--list]
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

import numpy as np

from quality import SHARED, analysed  # noqa: E402 (bench/ is the script's folder)

from framepipe import calibration, state
from framepipe.analyzer import LocalAnalyzer
from framepipe.config import Settings

ROOT = SHARED / "media/lfw_view2"


def embeddings(settings: Settings, fresh: bool) -> tuple[dict, list[str], list[str]]:
    """(photo name -> central person's embedding, photos with no face found, photos with faces but no person)."""
    loaded: list[LocalAnalyzer] = []

    def analyzer() -> LocalAnalyzer:
        if not loaded:
            loaded.append(LocalAnalyzer.load(settings))
        return loaded[0]

    found, no_face, no_person = {}, [], []
    for path in sorted((ROOT / "photos").glob("*.jpg")):
        st = analysed(f"lfw_view2/{path.name}", path, settings, analyzer, fresh)
        red = state.reduce(st.people, st.picks.pick(), st.frames_sampled, settings)
        if not red.people:
            (no_person if st.people.records else no_face).append(path.stem)
            continue
        central = red.people[calibration.central([p.best.face.bbox for p in red.people], (250, 250))]
        found[path.stem] = central.mean_embedding
    return found, no_face, no_person


def best_threshold(sims: np.ndarray, same: np.ndarray) -> float:
    """The threshold with the best accuracy on these pairs (midway between neighbouring similarities)."""
    order = np.sort(np.unique(sims))
    candidates = np.r_[order[0] - 1e-3, (order[1:] + order[:-1]) / 2, order[-1] + 1e-3]
    acc = [np.mean((sims >= t) == same) for t in candidates]
    return float(candidates[int(np.argmax(acc))])


def main() -> int:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=str(SHARED / "models/buffalo_s_dq"))
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--list", action="store_true", help="name the photos without a person")
    args = ap.parse_args()
    settings = Settings(models=args.models)
    found, no_face, no_person = embeddings(settings, args.fresh)
    pairs = json.loads((ROOT / "pairs.json").read_text())
    name = lambda p: f"{p[0]}_{int(p[1]):04d}"  # noqa: E731
    sims = np.array([float(found[name(p["a"])] @ found[name(p["b"])]) if name(p["a"]) in found and
                     name(p["b"]) in found else np.nan for p in pairs])
    same = np.array([bool(p["same"]) for p in pairs])
    fold = np.array([p["fold"] for p in pairs])
    dim = len(next(iter(found.values())))
    shipped = calibration.lookup(None, dim, settings.models).match_similarity
    both = ~np.isnan(sims)
    print(f"photos {len(found) + len(no_face) + len(no_person)}: no face found {len(no_face)}, faces but no person "
          f"{len(no_person)}; pairs {len(pairs)}, with a person on both photos {int(both.sum())}")
    if args.list:
        print("no face:", " ".join(no_face) or "-")
        print("no person:", " ".join(no_person) or "-")
    filled = np.where(both, sims, -np.inf)  # a pair missing a person: never "same", so wrong when it is
    accs, accs_both = [], []
    for k in sorted(set(fold)):
        train, test = (fold != k) & both, fold == k
        t = best_threshold(sims[train], same[train])
        accs.append(float(np.mean((filled[test] >= t) == same[test])))
        accs_both.append(float(np.mean((sims[test & both] >= t) == same[test & both])))
        print(f"fold {k}: threshold {t:.3f} (best on the other folds), accuracy {accs[-1]:.4f} "
              f"(pairs with both persons {accs_both[-1]:.4f})")
    at_shipped = float(np.mean((filled >= shipped) == same))
    print(f"{len(accs)}-fold accuracy {100 * np.mean(accs):.2f}% +- {100 * np.std(accs):.2f} (pairs with both "
          f"persons {100 * np.mean(accs_both):.2f}%); at the shipped threshold {shipped:.3f}: {100 * at_shipped:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
