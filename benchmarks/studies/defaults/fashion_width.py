"""Issue 13's Fashion-MNIST pixel target: which TripletEncoder levers move P@1 and MAP@R.

Candidates are fitted with labels on validation splits of the 5,000 class-balanced *training*
images of ``examples/fashion_mnist.py`` (seed 0): 4,000 fit / 1,000 validation, stratified,
split seeds 0 and 1 (the fit's ``random_state`` is the split seed). The 2,000 test images are
never read here; ``defaults_study.py --test-once`` reports them once for a chosen setting.
``--digits`` instead runs ``examples/digits_triplets.py`` (fit on triplets, held-out triplet
accuracy) for each seed. Each (candidate, seed) result is appended to ``--out`` as it is
measured, and a run resumes from what ``--out`` already holds. Run::

    S=benchmarks/studies/defaults
    python $S/fashion_width.py --data DIR --out width_levers.jsonl            # all
    python $S/fashion_width.py --data DIR --out width_levers.jsonl --only nc64 e200
    python $S/fashion_width.py --out width_digits.jsonl --digits --seeds 0 1 2
    python $S/fashion_width.py --out width_levers.jsonl --report   # the table
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import defaults_study
import digits_triplets
import fashion_mnist

# name -> the setting, as its difference from today's defaults.
_PRIOR = {"mining": "semi_hard", "margin": 0.5, "samples_per_class": 16, "batch_size": 160,
          "n_components": 64, "max_epochs": 200, "hidden_units": (1024, 1024)}  # fmt: skip
CANDIDATES = {
    "defaults": {},
    "prior_best": _PRIOR,
    "nc32": {"n_components": 32},
    "nc64": {"n_components": 64},
    "nc128": {"n_components": 128},
    "nc128_m05": {"n_components": 128, "margin": 0.5},
    "soft_h1024_nc64": {"margin": None, "dropout": 0.0, "hidden_units": 1024,
                        "n_components": 64},
    "soft_h1024_nc64_sq": {"margin": None, "dropout": 0.0, "hidden_units": 1024,
                           "n_components": 64, "distance": "sqeuclidean"},
    "h1024_nc128_m05": {"hidden_units": 1024, "n_components": 128, "margin": 0.5,
                        "max_epochs": 200},
    "prior_lr3e-4": {**_PRIOR, "learning_rate": 3e-4, "max_epochs": 300},
    # Today's defaults still improve at epoch 100 (about 65% of the anchors active).
    "e200": {"max_epochs": 200},
    "e300": {"max_epochs": 300},
    "nc64_e300": {"n_components": 64, "max_epochs": 300},
    "nc128_e300": {"n_components": 128, "max_epochs": 300},
    "h1024_nc64_e300": {"hidden_units": 1024, "n_components": 64, "max_epochs": 300},
    "h1024x2_nc64_e300": {"hidden_units": (1024, 1024), "n_components": 64, "max_epochs": 300},
    # The soft margin, no dropout, one wide layer (probe3.jsonl's best), by part.
    "soft": {"margin": None},
    "soft_nc64": {"margin": None, "n_components": 64},
    "soft_d0_nc64": {"margin": None, "dropout": 0.0, "n_components": 64},
    "soft_h1024_d0": {"margin": None, "dropout": 0.0, "hidden_units": 1024},
    "soft_h1024_nc64_d02": {"margin": None, "hidden_units": 1024, "n_components": 64},
    "soft_h1024_nc128": {"margin": None, "dropout": 0.0, "hidden_units": 1024,
                         "n_components": 128},
    "soft_h1024_nc64_e200": {"margin": None, "dropout": 0.0, "hidden_units": 1024,
                             "n_components": 64, "max_epochs": 200},
    "soft_h2048_nc64": {"margin": None, "dropout": 0.0, "hidden_units": 2048,
                        "n_components": 64},
    "soft_h1024x2_nc64": {"margin": None, "dropout": 0.0, "hidden_units": (1024, 1024),
                          "n_components": 64},
}  # fmt: skip


def splits(data_dir, seeds=(0, 1), n_val: int = 1000) -> dict:
    """seed -> (X_fit, y_fit, X_val, y_val) from the 5,000 training images only."""
    images, y, _, _ = fashion_mnist.split(data_dir, 5000, 2000, 0)
    X = fashion_mnist.pixels(images)
    out = {}
    for seed in seeds:
        fit, val = train_test_split(np.arange(len(y)), test_size=n_val, random_state=seed,
                                    stratify=y)  # fmt: skip
        out[seed] = (X[fit], y[fit], X[val], y[val])
    return out


def report(path: Path) -> str:
    """Mean over seeds of each candidate, as a markdown table."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    by_name: dict = {}
    for r in rows:
        by_name.setdefault(r["name"], []).append(r)
    if "held_out_accuracy" in rows[0]:  # a --digits file
        lines = ["| candidate | digits held-out triplet accuracy, by seed | mean | epochs |",
                 "|---|---|---|---|"]  # fmt: skip
        for name, rs in by_name.items():
            accs = [r["held_out_accuracy"] for r in rs]
            epochs = ", ".join(str(r["epochs"]) for r in rs)
            by_seed = " / ".join(f"{a:.4f}" for a in accs)
            lines.append(f"| {name} | {by_seed} | {np.mean(accs):.4f} | {epochs} |")
        return "\n".join(lines)
    lines = [
        "| candidate | setting (vs defaults) | P@1 | MAP@R (by seed) | triplet acc. | epochs |",
        "|---|---|---|---|---|---|",
    ]
    for name, rs in by_name.items():
        setting = ", ".join(f"{k}={v}" for k, v in rs[0]["params"].items()) or "defaults"
        mean = {k: np.mean([r[k] for r in rs]) for k in
                ("precision_at_1", "map_at_r", "triplet_accuracy")}  # fmt: skip
        per_seed = " / ".join(f"{r['map_at_r']:.3f}" for r in rs)
        lines.append(
            f"| {name} | {setting} | {mean['precision_at_1']:.3f} | "
            f"{mean['map_at_r']:.3f} ({per_seed}) | {mean['triplet_accuracy']:.3f} | "
            f"{', '.join(str(r['epochs']) for r in rs)} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="Fashion-MNIST folder of *-ubyte.gz")
    parser.add_argument("--out", default="width_levers.jsonl")
    parser.add_argument("--only", nargs="*", help="only these candidates, in this order")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    parser.add_argument("--report", action="store_true", help="print --out as a table")
    parser.add_argument(
        "--digits",
        action="store_true",
        help="instead: examples/digits_triplets.py held-out triplet accuracy (fit(T), --seeds)",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.report:
        print(report(out))
        return
    if not args.digits and not args.data:
        parser.error("--data is needed for the Fashion-MNIST validation fits")
    done = set()
    if out.exists():
        done = {(r["name"], r["seed"]) for r in map(json.loads, out.read_text().splitlines())}
    data = None if args.digits else splits(args.data, args.seeds)
    for name in args.only or list(CANDIDATES):
        params = CANDIDATES[name]
        for seed in args.seeds:
            if (name, seed) in done:
                continue
            if args.digits:  # fit(T): the label-mining parameters do not apply
                full = defaults_study.study_params(params)
                kept = {k: v for k, v in full.items() if k not in defaults_study.LABEL_ONLY}
                figures = digits_triplets.run(seed=seed, **kept)
            else:
                figures = defaults_study.validate(params, data[seed], seed)
            row = {"name": name, "seed": seed, "params": params, **figures}
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
