"""Digits triplets on validation only: does the default fit stop too early (issue 21)?

``examples/digits_triplets.py``'s protocol inside its training images (inner splits 0-2 of
``defaults_study.py``'s ``digits_triplet_validation``; the test images are never
read): ``TripletEncoder()`` against the same head fitted for all 100 epochs (no stop, or the
2026-12-03 rule on the training loss) and against the 2026-12-03 defaults. One JSON line per
fit is appended to ``--out``::

    PYTHONPATH=. python benchmarks/studies/defaults/digits_stopping.py
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from defaults_study import digits_triplet_validation

from tripletsk import TripletEncoder

NAMES = ("hidden_units", "n_components", "dropout", "input_dropout", "margin",
         "soft_margin_scale", "weight_averaging", "batch_size", "max_epochs", "tol",
         "n_iter_no_change", "stopping")  # fmt: skip
DEFAULTS_2026_12_03 = {"hidden_units": 2048, "n_components": 64, "dropout": 0.0,
                       "input_dropout": 0.1, "margin": None, "soft_margin_scale": 1.0,
                       "weight_averaging": 0.97,
                       "batch_size": 256, "max_epochs": 100, "tol": 1e-4,
                       "n_iter_no_change": 10, "stopping": "loss"}  # fmt: skip


def settings() -> dict:
    today = {k: TripletEncoder().get_params()[k] for k in NAMES}
    return {
        "TripletEncoder()": today,
        "TripletEncoder(), 100 epochs (n_iter_no_change=1000)": {**today, "n_iter_no_change": 1000},
        "TripletEncoder(), stopping='loss', tol=1e-4": {**today, "stopping": "loss", "tol": 1e-4},
        "2026-12-03 defaults": DEFAULTS_2026_12_03,
        # 2026-12-06: watch the loss instead of the error for fit(T) (the error of a fixed
        # triplet set reaches 0 by memorising it), at the default tol and around it.
        "TripletEncoder(), stopping='loss'": {**today, "stopping": "loss"},
        "TripletEncoder(), stopping='loss', tol=1e-3": {**today, "stopping": "loss", "tol": 1e-3},
        "TripletEncoder(), stopping='loss', tol=5e-3": {**today, "stopping": "loss", "tol": 5e-3},
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out",
        default=str(
            Path(__file__).resolve().parent / "results" / "digits_stopping_validation.jsonl"
        ),
    )
    parser.add_argument("--splits", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="*", help="names of settings() to run (default: all)")
    args = parser.parse_args(argv)
    for inner in args.splits:
        for name, params in settings().items():
            if args.settings and name not in args.settings:
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                figures = digits_triplet_validation({**params, "verbose": -1}, 0, inner_seed=inner)
            row = {"dataset": "digits-triplets-validation", "split": inner, "setting": name,
                   **figures, "warnings": len(caught)}  # fmt: skip
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
