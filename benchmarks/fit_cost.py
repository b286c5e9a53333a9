"""What one epoch of a labelled fit costs, by head width, batch size and fused steps, against
the machine's float32 matrix-multiply peak, in one interleaved run (issue 21, item 2).

For each setting, ``TripletEncoder(**setting).fit(X, y)`` runs for 1 and for 1 + E epochs
(no stopping); the difference over E is the time of an epoch, and the 1-epoch fit minus one
epoch is the fixed cost of a fit (building the Keras head, tracing the compiled loop,
standardising, the final checks). Settings run in turn, round after round, so that load
from other jobs falls on all of them alike; medians over rounds are printed. The peak is a
2048 x 2048 x 2048 ``tf.matmul`` measured before every round (the best of the run is used).

FLOPs per sample and epoch, counted as executed (no gradient flows into the features): forward
``2 d h + 2 h c``, backward ``2 d h + 4 h c`` (d inputs, h hidden units, c components).

``fused=False`` runs every step as its own call of the compiled loop instead of an epoch's
steps in one call (``tf.while_loop``), to show what fusing them saves. Data: the 4,000 fit
images of Fashion-MNIST validation split 0 (784 pixels), or with ``--features FILE.npy``
(e.g. ``examples/fashion_mnist.py``'s ResNet50 cache, 2048-d) its first 4,000 rows::

    python benchmarks/fit_cost.py --data /work/data/fashion-mnist
    python benchmarks/fit_cost.py --data DIR \\
        --features FEATS/resnet50-random-64px-train-5000-2000-seed0.npy
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import numpy as np
from defaults_study import datasets, parse_settings
from head_training import matmul_peak

import tripletsk._training as training
from tripletsk import TripletEncoder

SETTINGS = {
    "hidden 2048 (defaults of 2026-12-03)": {"hidden_units": 2048},
    "hidden 1024": {"hidden_units": 1024},
    "hidden 512": {"hidden_units": 512},
    "hidden 1024, batch 512": {"hidden_units": 1024, "batch_size": 512},
    "hidden 1024, unfused steps": {"hidden_units": 1024, "fused": False},
}


def fit_seconds(X, y, epochs: int, fused: bool = True, **params) -> float:
    encoder = TripletEncoder(
        max_epochs=epochs, tol=0.0, n_iter_no_change=10**6, random_state=0, verbose=-1, **params
    )
    windows = training._windows
    if not fused:  # every batch a window of its own: one call of the compiled loop per step
        training._windows = lambda batches, max_rows: windows(batches, 1)
    try:
        start = time.perf_counter()
        encoder.fit(X, y)
        return time.perf_counter() - start
    finally:
        training._windows = windows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="Fashion-MNIST folder of *-ubyte.gz")
    parser.add_argument("--features", help=".npy features of the 5,000 training images")
    parser.add_argument("--epochs", type=int, default=5, help="extra epochs timed (E)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--set",
        action="append",
        metavar="NAME:PARAM=VALUE,...",
        help="replace the settings: a name, a colon, comma-separated values",
    )
    args = parser.parse_args(argv)
    settings = SETTINGS
    if args.set:
        settings = {}
        for spec in args.set:
            name, _, values = spec.partition(":")
            settings[name] = parse_settings(values.split(",")) if values else {}
    X, y, _, _ = datasets(args.data, None, 0, ["fashion"], test_size=0.2, split_seed=0)["fashion"]
    if args.features:
        X_all = np.load(args.features)
        _, y_train, _, _ = __import__("fashion_mnist").split(args.data, 5000, 2000, 0)
        X, y = X_all[:4000], y_train[:4000]
    d, n = X.shape[1], len(y)
    print(f"data: {n} samples x {d} features; {args.rounds} rounds of 1 and 1 + {args.epochs} "
          "epochs per setting", flush=True)  # fmt: skip
    for params in settings.values():  # warm-up: imports, oneDNN kernels
        fit_seconds(X[:500], y[:500], 1, **params)
    per_epoch = {name: [] for name in settings}
    fixed = {name: [] for name in settings}
    peaks = []
    for _ in range(args.rounds):
        peaks.append(matmul_peak("float32"))
        for name, params in settings.items():
            one = fit_seconds(X, y, 1, **params)
            many = fit_seconds(X, y, 1 + args.epochs, **params)
            per_epoch[name].append((many - one) / args.epochs)
            fixed[name].append(one - per_epoch[name][-1])
    peak = max(peaks)
    reference = next(iter(settings))
    print(f"float32 matmul peak (best of the run): {peak:.1f} GFLOP/s\n")
    print("| setting | epoch s | fixed s | epoch vs first | GFLOP/s | of peak |")
    print("|---|---|---|---|---|---|")
    for name, params in settings.items():
        h = params.get("hidden_units", TripletEncoder().hidden_units)
        c = params.get("n_components", TripletEncoder().n_components)
        flop = n * ((2 * d * h + 2 * h * c) + (2 * d * h + 4 * h * c))
        epoch = statistics.median(per_epoch[name])
        relative = statistics.median(
            [e / r for r, e in zip(per_epoch[reference], per_epoch[name], strict=True)]
        )
        gflops = flop / epoch / 1e9
        print(f"| {name} | {epoch:.3f} | {statistics.median(fixed[name]):.2f} | "
              f"{relative:.2f} | {gflops:.1f} | {gflops / peak:.2f} |")  # fmt: skip
    print()
    print(json.dumps({"per_epoch": per_epoch, "fixed": fixed, "peaks": peaks}))


if __name__ == "__main__":
    main()
