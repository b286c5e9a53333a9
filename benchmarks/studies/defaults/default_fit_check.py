"""Issue 21's checks of a default fit, on test images, timed side by side in one run.

* ``pixels``: Fashion-MNIST 5,000 training / 2,000 disjoint test images of
  ``examples/fashion_mnist.py`` (seed 0), raw pixels: ``TripletEncoder()`` (today's defaults)
  against the defaults of 2026-12-03 (``DEFAULTS_2026_12_03``: 2048 -> 64, batch 256, 100
  epochs, the loss rule), fitted in turn, round after round (the order alternates), so that load
  from other jobs falls on both alike. Test P@1 / MAP@R (leave-one-out on the test images)
  and the warnings of each fit.
* ``resnet``: the same images as 2048-d ResNet50 features with random weights (64 px) from
  ``--cache-dir``: today's defaults against the *former* head (``FORMER``: 512 -> 10, dropout
  0.2, hinge margin 1.0, no averaging), timed the same way.
* ``mobilenet``: the real ImageNet MobileNet (alpha 0.25) features: today's defaults, once.
* ``digits``: ``examples/digits_triplets.py`` with today's defaults (held-out triplet accuracy).

One JSON line per fit goes to ``--out``; a table of medians is printed. Run::

    python benchmarks/studies/defaults/default_fit_check.py --data /work/data/fashion-mnist \\
        --cache-dir /work/data/features --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples"))

import digits_triplets
import fashion_mnist

from tripletsk import TripletEncoder
from tripletsk.evaluation.metrics import retrieval_report

# Before issue 21 (2026-12-03): the head of docs/findings/defaults_study.md, 100 epochs that stopped
# only on a plateau of the training loss (within 1e-4 for 10 epochs).
DEFAULTS_2026_12_03 = {"hidden_units": 2048, "n_components": 64, "dropout": 0.0,
                       "input_dropout": 0.1, "margin": None, "soft_margin_scale": 1.0,
                       "weight_averaging": 0.97, "batch_size": 256, "max_epochs": 100,
                       "tol": 1e-4, "n_iter_no_change": 10, "stopping": "loss"}  # fmt: skip
# The defaults before 2026-12-03 (benchmarks/studies/defaults/defaults_study.py's STUDY_DEFAULTS).
FORMER = {**DEFAULTS_2026_12_03, "hidden_units": 512, "n_components": 10, "dropout": 0.2,
          "input_dropout": 0.0, "margin": 1.0, "weight_averaging": 0.0}  # fmt: skip


def fit_and_score(params: dict, X, y, X_test, y_test) -> dict:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        encoder = TripletEncoder(random_state=0, verbose=-1, **params).fit(X, y)
        seconds = time.perf_counter() - start
    report = retrieval_report(encoder.transform(X_test), y_test, ks=(1,))
    return {
        "fit_seconds": round(seconds, 2),
        "epochs": encoder.n_iter_,
        "precision_at_1": round(report["precision_at_1"], 4),
        "map_at_r": round(report["map_at_r"], 4),
        "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
    }


def side_by_side(name: str, settings: dict, data, rounds: int, out: Path) -> None:
    """Fit each setting once per round, alternating the order; medians of the times."""
    rows = {label: [] for label in settings}
    for r in range(rounds):
        order = list(settings) if r % 2 == 0 else list(settings)[::-1]
        for label in order:
            row = {"data": name, "setting": label, "round": r, "load": os.getloadavg()[0],
                   **fit_and_score(settings[label], *data)}  # fmt: skip
            rows[label].append(row)
            _append(out, row)
    times = {label: statistics.median(r["fit_seconds"] for r in rs) for label, rs in rows.items()}
    first = next(iter(settings))
    for label, rs in rows.items():
        r = rs[0]
        print(f"| {name} | {label} | {r['precision_at_1']:.3f} | {r['map_at_r']:.3f} | "
              f"{r['epochs']} | {times[label]:.1f} | {times[label] / times[first]:.2f} | "
              f"{len(r['warnings'])} |", flush=True)  # fmt: skip


def _append(out: Path, row: dict) -> None:
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="Fashion-MNIST folder of *-ubyte.gz")
    parser.add_argument("--cache-dir", help="backbone features of examples/fashion_mnist.py")
    parser.add_argument(
        "--out",
        default=str(Path(__file__).resolve().parent / "results" / "default_fit_check.jsonl"),
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parts", nargs="*", default=["pixels", "resnet", "mobilenet", "digits"])
    args = parser.parse_args(argv)
    out = Path(args.out)
    print(f"CPU: {_cpu()}; load at start {os.getloadavg()}")
    print("| data | setting | test P@1 | test MAP@R | epochs | fit s (median) | vs first | "
          "warnings |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    train, y_train, test, y_test = fashion_mnist.split(args.data, 5000, 2000, 0)
    today = {}  # TripletEncoder()'s own defaults
    if "pixels" in args.parts:
        data = (fashion_mnist.pixels(train), y_train, fashion_mnist.pixels(test), y_test)
        settings = {"2026-12-03 defaults": DEFAULTS_2026_12_03, "TripletEncoder()": today}
        side_by_side("pixels", settings, data, args.rounds, out)
    tag = "5000-2000-seed0"
    if "resnet" in args.parts:
        stem = Path(args.cache_dir) / "resnet50-random-64px"
        data = (np.load(f"{stem}-train-{tag}.npy"), y_train,
                np.load(f"{stem}-test-{tag}.npy"), y_test)  # fmt: skip
        settings = {"former (512 -> 10, hinge)": FORMER, "TripletEncoder()": today}
        side_by_side("resnet50-random 2048-d", settings, data, args.rounds, out)
    if "mobilenet" in args.parts:
        stem = Path(args.cache_dir) / "mobilenet-imagenet-224px"
        data = (np.load(f"{stem}-train-{tag}.npy"), y_train,
                np.load(f"{stem}-test-{tag}.npy"), y_test)  # fmt: skip
        side_by_side("mobilenet-imagenet 256-d", {"TripletEncoder()": today}, data, 1, out)
    if "digits" in args.parts:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            figures = digits_triplets.run(verbose=-1)
        row = {"data": "digits-triplets", "setting": "TripletEncoder()", **figures,
               "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}  # fmt: skip
        _append(out, row)
        print(f"digits: held-out triplet accuracy {figures['held_out_accuracy']:.4f}, "
              f"{figures['epochs']} epochs, {figures['fit_seconds']:.1f} s, "
              f"{len(caught)} warnings")  # fmt: skip
    print(f"load at end {os.getloadavg()}")


def _cpu() -> str:
    """The CPU as /proc/cpuinfo names it, with its family and model numbers."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return "unknown"
    return (f"{fields.get('model name')} family {fields.get('cpu family')} model "
            f"{fields.get('model')}, {os.cpu_count()} CPUs")  # fmt: skip


if __name__ == "__main__":
    main()
