"""What one epoch of a labelled fit costs, by head width, batch size and fused steps, against
the machine's float32 matrix-multiply peak, in one interleaved run (issue 21, item 2).

Each setting's ``TripletEncoder(**setting).fit(X, y)`` runs for ``--epochs`` epochs (no
stopping); the time of an epoch is the median of the epochs after the first (from the training
loop's own per-epoch hook), and the fixed cost of a fit is its total time minus its epochs
(building the Keras head, tracing the compiled loop, standardising, the final checks).
Settings run in turn, round after round, so that load from other jobs falls on all of them
alike; medians over rounds are printed, and each setting's epoch time relative to the first
setting's in the same round. The peak is a 2048 x 2048 x 2048 ``tf.matmul`` measured before
every round (the best of the run is used).

FLOPs per sample and epoch, counted as executed (no gradient flows into the features): forward
``2 d h + 2 h c``, backward ``2 d h + 4 h c`` (d inputs, h hidden units, c components).

``fused=False`` runs every step as its own call of the compiled loop instead of an epoch's
steps in one call (``tf.while_loop``), to show what fusing them saves. Data: the 4,000 fit
images of Fashion-MNIST validation split 0 (784 pixels), or with ``--features FILE.npy``
(e.g. ``examples/fashion_mnist.py``'s ResNet50 cache, 2048-d) its first 4,000 rows::

    python benchmarks/studies/defaults/fit_cost.py --data /work/data/fashion-mnist
    python benchmarks/studies/defaults/fit_cost.py --data DIR \\
        --features FEATS/resnet50-random-64px-train-5000-2000-seed0.npy
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/head_training.py
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples"))

import numpy as np
from defaults_study import datasets, parse_settings
from head_training import matmul_peak

import tripletsk.training.epochs as epoch_runner
import tripletsk.training.loop as training
from tripletsk import TripletEncoder

SETTINGS = {
    "hidden 2048, batch 256 (defaults of 2026-12-03)": {"hidden_units": 2048, "batch_size": 256},
    "hidden 1024, batch 256": {"hidden_units": 1024, "batch_size": 256},
    "hidden 1024, batch 192": {"hidden_units": 1024, "batch_size": 192},
    "hidden 1024, batch 128": {"hidden_units": 1024, "batch_size": 128},
    "hidden 512, batch 256": {"hidden_units": 512, "batch_size": 256},
    "hidden 1024, batch 256, unfused steps": {
        "hidden_units": 1024,
        "batch_size": 256,
        "fused": False,
    },
}


def fit_seconds(X, y, epochs: int, fused: bool = True, **params) -> tuple[float, float]:
    """(median seconds of an epoch after the first, total minus all epochs) of one fit."""
    encoder = TripletEncoder(
        max_epochs=epochs, tol=0.0, n_iter_no_change=10**6, random_state=0, verbose=-1, **params
    )
    windows, train_head = epoch_runner.stack_windows, training.train_head
    stamps = []

    def timed(*args, **kwargs):
        stamps.append(time.perf_counter())
        return train_head(*args, on_epoch=lambda *_: stamps.append(time.perf_counter()), **kwargs)

    training.train_head = timed
    if not fused:  # every batch a window of its own: one call of the compiled loop per step
        epoch_runner.stack_windows = lambda batches, max_rows: windows(batches, 1)
    try:
        start = time.perf_counter()
        encoder.fit(X, y)
        total = time.perf_counter() - start
    finally:
        epoch_runner.stack_windows, training.train_head = windows, train_head
    epochs_s = np.diff(stamps)
    return float(np.median(epochs_s[1:])), total - float(epochs_s.sum())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="Fashion-MNIST folder of *-ubyte.gz")
    parser.add_argument("--features", help=".npy features of the 5,000 training images")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per fit")
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
    print(f"data: {n} samples x {d} features; {args.rounds} rounds of a {args.epochs}-epoch fit "
          f"per setting; load {os.getloadavg()}", flush=True)  # fmt: skip
    for params in settings.values():  # warm-up: imports, oneDNN kernels
        fit_seconds(X[:500], y[:500], 2, **params)
    per_epoch = {name: [] for name in settings}
    fixed = {name: [] for name in settings}
    peaks = []
    for _ in range(args.rounds):
        peaks.append(matmul_peak("float32"))
        for name, params in settings.items():
            epoch, rest = fit_seconds(X, y, args.epochs, **params)
            per_epoch[name].append(epoch)
            fixed[name].append(rest)
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
    print(f"\nload at the end {os.getloadavg()}")
    print(json.dumps({"per_epoch": per_epoch, "fixed": fixed, "peaks": peaks}))


if __name__ == "__main__":
    main()
