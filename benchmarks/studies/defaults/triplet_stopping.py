"""What a fit on given triplets (``fit(T)``) should watch to stop, on training data only.

A fixed set of triplets is soon all ordered right, so the default error rule stops early;
the training loss keeps falling for longer. Each candidate rule is fitted on:

* ``digits``: ``examples/digits_triplets.py``'s protocol inside its training images (inner
  splits 0-2 of ``defaults_study.py``'s ``digits_triplet_validation``: 5,000 triplets fit,
  5,000 among other training images score);
* ``pipeline``: ``examples/sklearn_pipeline.py``'s triplet mode (900 triplets within each of
  two disjoint parts of the digits training images; fit on one part, score on the other),
  for its grid of margins (soft, hinge 0.2) and distances (l2, cosine);
* ``quickstart``: the quickstart's ``make-triplets`` training files (2,000 triplets over 210
  images, ``--seed`` 0-4; made by ``grid_search_leakage.py --work W``), whole and as the
  training folds of ``TripletImageKFold(3, stratify="folders")`` (about 600 triplets each),
  the fits of a grid search; no held-out file is read.

It reports epochs and ``ConvergenceWarning`` counts for every fit, and validation scores
where the data give them. One JSON line per fit is appended to ``--out``::

    PYTHONPATH=. python benchmarks/studies/defaults/triplet_stopping.py --work /tmp/gsl

``--set PARAM=VALUE`` adds a parameter to every rule's fits (``--parts digits pipeline`` need
no ``--work`` folder's files).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[2] / "examples"))

RULES = {
    "error, tol=2e-3": {"stopping": "error"},
    "loss, tol=2e-3": {"stopping": "loss"},
    "loss, tol=3e-3": {"stopping": "loss", "tol": 3e-3},
    "loss, tol=5e-3": {"stopping": "loss", "tol": 5e-3},
}


def _fit(encoder, T):
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        encoder.fit(T)
    return sum(issubclass(w.category, ConvergenceWarning) for w in caught)


def digits(rule: dict):
    from defaults_study import digits_triplet_validation
    from digits_stopping import NAMES

    from tripletsk import TripletEncoder

    today = {k: TripletEncoder().get_params()[k] for k in NAMES}  # over the study's pins
    for inner in (0, 1, 2):
        params = {**today, **rule, "verbose": -1}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            figures = digits_triplet_validation(params, 0, inner_seed=inner)
        yield {"split": inner, **figures, "warnings": len(caught)}


def pipeline(rule: dict):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GroupKFold, train_test_split
    from sklearn_pipeline import triplets_within_parts

    from tripletsk import TripletEncoder

    X, y = load_digits(return_X_y=True)
    X_train, _, y_train, _ = train_test_split(
        X.astype(np.float32), y, test_size=0.3, stratify=y, random_state=0
    )
    T, groups = triplets_within_parts(y_train, n_parts=2, per_part=900)
    for fold, (fit, score) in enumerate(GroupKFold(2).split(T, groups=groups)):
        for margin in (None, 0.2):
            for distance in ("l2", "cosine"):
                enc = TripletEncoder(features=X_train, margin=margin, distance=distance,
                                     random_state=0, verbose=-1, **rule)  # fmt: skip
                n_warnings = _fit(enc, T[fit])
                yield {"fold": fold, "margin": margin, "distance": distance,
                       "triplet_accuracy": round(enc.score(T[score]), 4),
                       "epochs": enc.n_iter_, "warnings": n_warnings}  # fmt: skip


def quickstart(rule: dict, work: Path):
    from tripletsk import TripletEncoder
    from tripletsk.evaluation.model_selection import TripletImageKFold
    from tripletsk.triplets.files import read_triplets

    cache = str(work / "cache" / "features.h5")
    for seed in range(5):
        train = read_triplets(work / f"train_{seed}.txt")
        enc = TripletEncoder(features=cache, random_state=0, verbose=-1, **rule)
        n_warnings = _fit(enc, train)
        yield {"seed": seed, "part": "whole", "epochs": enc.n_iter_, "warnings": n_warnings}
        cv = TripletImageKFold(3, stratify="folders", random_state=0)
        for fold, (fit, score) in enumerate(cv.split(train)):
            for hidden in (128, 512):
                enc = TripletEncoder(features=cache, hidden_units=hidden, random_state=0,
                                     verbose=-1, **rule)  # fmt: skip
                n_warnings = _fit(enc, train[fit])
                yield {"seed": seed, "part": f"fold {fold}", "hidden_units": hidden,
                       "triplet_accuracy": round(enc.score(train[score]), 4),
                       "epochs": enc.n_iter_, "warnings": n_warnings}  # fmt: skip


PARTS = {"digits": digits, "pipeline": pipeline}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="grid_search_leakage.py --work")
    parser.add_argument("--rules", nargs="*", default=list(RULES))
    parser.add_argument("--parts", nargs="*", default=["digits", "pipeline", "quickstart"])
    parser.add_argument("--set", action="append", metavar="PARAM=VALUE",
                        help="another TripletEncoder parameter for every rule's fits")  # fmt: skip
    parser.add_argument("--out", type=Path,
                        default=HERE / "results" / "triplet_stopping.jsonl")  # fmt: skip
    args = parser.parse_args(argv)
    from defaults_study import parse_settings

    extra = parse_settings(args.set or [])
    for name in args.rules:
        rule = {**RULES[name], **extra}
        for part in args.parts:
            rows = quickstart(rule, args.work) if part == "quickstart" else PARTS[part](rule)
            for row in rows:
                row = {"rule": name, **({"set": extra} if extra else {}), "data": part, **row}
                print(json.dumps(row), flush=True)
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
