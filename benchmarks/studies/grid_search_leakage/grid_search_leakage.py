"""Grid search over ``make-triplets`` output: cross-validated score vs the held-out score.

The data are the quickstart's (``examples/quickstart.sh``): 300 digit images (30 per class,
32x32), ResNet50 features with random weights, then ``make-triplets -n 2000 --split test.txt
--test-size 0.3 --seed S``: 2,000 training triplets over 210 images and 857 test triplets over
the 90 held-out images (``--seed 0``, the default, is the quickstart's own split). Random
triplets from class folders link every image to every other, so ``TripletGroupKFold`` finds
one group and refuses to split them.

``GridSearchCV(TripletEncoder(features=cache, max_epochs=15, random_state=0, ...), GRID, cv=...)``
is fitted on the training triplets, and its ``best_score_`` (mean test score of the folds)
compared with ``best_estimator_.score(test triplets)`` (refitted on all training triplets,
scored on the held-out images), for:

* ``cv=3``: plain ``KFold`` over triplets; the test folds' images are in the training folds.
* ``TripletImageKFold(K, n_repeats=R, stratify="folders", random_state=0)``: folds of images;
  triplets across a split are dropped (the counts are printed). K = 3 by default.

By default every parameter that decides the fit is explicit (``FIXED``), so the figures do not
move with the estimator's defaults; ``--fixed defaults`` fits ``TripletEncoder(features=cache,
random_state=0)`` instead (today's defaults: the fit stops by itself) with the same grid.
One JSON line per search (``--out`` appends it to a file too), then a table of the gaps.

Usage::

    S=benchmarks/studies/grid_search_leakage
    python $S/grid_search_leakage.py                  # the quickstart's split (seed 0)
    python $S/grid_search_leakage.py --data-seeds 0 1 2 3 4 --repeats 1 3
    python $S/grid_search_leakage.py --data-seeds 0 1 2 3 4 --fixed defaults
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

GRID = {"hidden_units": [128, 512], "n_components": [16, 64]}  # 4 settings
FIXED = {  # the rest of the fit, pinned
    "max_epochs": 15,
    "random_state": 0,
    "batch_size": 256,
    "learning_rate": 1e-3,
    "learning_rate_schedule": "constant",
    "margin": None,
    "dropout": 0.0,
    "input_dropout": 0.1,
    "weight_averaging": 0.97,
    "weight_decay": 0.0,
    "early_stopping": False,
}
# --fixed defaults: TripletEncoder's own defaults, only the seed pinned
FIXINGS = {"pinned": FIXED, "defaults": {"random_state": 0}}


def make_data(work: Path, seeds) -> None:
    """The quickstart's images and cache in ``work``, and a train/test pair per seed (kept if
    already there): train_S.txt, test_S.txt."""
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    images = [str(REPO / "examples" / "make_digit_images.py"), "images", "--per-class", "30"]
    extract = ["-m", "tripletsk", "extract-features", "images", "--weights", "none"]
    steps = [
        ([*images, "--size", "32"], work / "images"),
        ([*extract, "--image-size", "32", "-q"], work / "cache" / "features.h5"),
    ]
    for seed in seeds:
        make = ["-m", "tripletsk", "make-triplets", "cache/features.h5", "-n", "2000"]
        split = ["--split", f"test_{seed}.txt", "--test-size", "0.3", "--seed", str(seed)]
        steps.append(([*make, "-o", f"train_{seed}.txt", *split], work / f"test_{seed}.txt"))
    for step, made in steps:
        if not made.exists():
            print("$ python", " ".join(step), flush=True)
            subprocess.run([sys.executable, *step], cwd=work, env=env, check=True)


def search(cv, train, test, cache: str, fixed: dict = FIXED) -> dict:
    from sklearn.model_selection import GridSearchCV

    from tripletsk import TripletEncoder

    start = time.perf_counter()
    gs = GridSearchCV(TripletEncoder(features=cache, **fixed), GRID, cv=cv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gs.fit(train)
        held_out = gs.best_estimator_.score(test)
    kinds = sorted({type(w.message).__name__ for w in caught})
    row = {
        "cv": repr(cv),
        "best_score": round(float(gs.best_score_), 4),
        "held_out": round(float(held_out), 4),
        "gap": round(float(gs.best_score_ - held_out), 4),
        "best_params": gs.best_params_,
        "epochs": int(gs.best_estimator_.n_iter_),
        "fold_scores": [
            round(float(gs.cv_results_[f"split{k}_test_score"][gs.best_index_]), 4)
            for k in range(gs.n_splits_)
        ],
        "warnings": kinds,
        "seconds": round(time.perf_counter() - start, 1),
    }
    if hasattr(cv, "n_dropped_"):
        row.update(n_train=cv.n_train_.tolist(), n_test=cv.n_test_.tolist())
        row["n_dropped"] = cv.n_dropped_.tolist()
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("grid_search_leakage"))
    parser.add_argument("--data-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--splits", type=int, nargs="+", default=[3], help="n_splits values")
    parser.add_argument("--repeats", type=int, nargs="+", default=[1, 3], help="n_repeats")
    parser.add_argument("--skip-plain", action="store_true", help="only TripletImageKFold")
    parser.add_argument("--fixed", choices=sorted(FIXINGS), default="pinned",
                        help="pinned: FIXED; defaults: TripletEncoder's defaults")  # fmt: skip
    parser.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    make_data(args.work, args.data_seeds)

    from tripletsk.evaluation.model_selection import TripletImageKFold
    from tripletsk.triplets.files import read_triplets

    cache = str(args.work / "cache" / "features.h5")
    fixed = FIXINGS[args.fixed]
    print(f"grid {GRID}; fixed {fixed}")
    rows = []
    for seed in args.data_seeds:
        train = read_triplets(args.work / f"train_{seed}.txt")
        test = read_triplets(args.work / f"test_{seed}.txt")
        cvs = [] if args.skip_plain else [3]
        cvs += [
            TripletImageKFold(k, n_repeats=r, stratify="folders", random_state=0)
            for k in args.splits
            for r in args.repeats
        ]
        for cv in cvs:
            row = {"data_seed": seed, "fixed": args.fixed, **search(cv, train, test, cache, fixed)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    print(f"\n{'data seed':>9}  {'cv':<52}{'best_score':>10}{'held_out':>10}{'gap':>9}")
    for row in rows:
        print(
            f"{row['data_seed']:>9}  {row['cv']:<52}{row['best_score']:>10.4f}"
            f"{row['held_out']:>10.4f}{row['gap']:>+9.4f}"
        )
    print("\nper cv: mean gap, mean |gap|, max |gap| over the data seeds")
    for name in dict.fromkeys(row["cv"] for row in rows):
        gaps = [row["gap"] for row in rows if row["cv"] == name]
        print(
            f"  {name:<52} {sum(gaps) / len(gaps):+.4f}  "
            f"{sum(map(abs, gaps)) / len(gaps):.4f}  {max(map(abs, gaps)):.4f}"
        )


if __name__ == "__main__":
    main()
