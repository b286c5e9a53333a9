"""Head training throughput against the machine's matrix-multiply peak, in one run.

Measures, for each precision (float32, and bfloat16 where the CPU has native bf16 arithmetic):

* the peak: GFLOP/s of a large ``tf.matmul`` (2048 x 2048 x 2048) in that precision;
* ``TripletEncoder.fit`` on cached 2048-d features: item-embeddings per second, forward and
  backward, from the time per epoch (the difference between fits of 1 and 1 + E epochs, so
  model building and tracing are left out; they are reported separately as the fixed cost of
  a fit);
* the fraction of the peak that training reaches, from the FLOPs it performs.

The peak is measured just before and just after each pair of fits (the best of the two is the
neighbour peak) and the median ratio is reported: absolute times on a shared machine are
noise, the ratio of neighbours much less so. The fraction of the best matmul seen in the
whole run is printed too: it is the conservative figure (a busy moment can only lower a
peak measurement, so a ratio to a neighbour can exceed 1; the ratio to the best cannot
easily).

FLOPs per item (d=2048 inputs, h hidden units, c components), counted as executed:
forward ``2dh + 2hc``; backward ``2dh + 4hc`` (the weight gradients of both layers and the
gradient of the hidden layer; no gradient flows into the cached features, so the first
layer's input gradient is never computed). The convention "backward = 2 x forward" would
count ~1.5x as many FLOPs; it is printed too, but the fraction uses the executed count.

Every triplet uses three items no other triplet uses, so each batch embeds exactly
3 x batch_size distinct items and the item count per epoch is exact.

Usage::

    python benchmarks/head_training.py                     # batch 256 (default), both precisions
    python benchmarks/head_training.py --batch-sizes 64 256 1024 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from tripletsk import TripletEncoder


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def matmul_peak(precision: str, n: int = 2048, reps: int = 8) -> float:
    """GFLOP/s of an n x n x n matmul in ``precision`` (best of a few timed loops)."""
    import tensorflow as tf

    dtype = tf.bfloat16 if precision == "bfloat16" else tf.float32
    a = tf.cast(tf.random.stateless_normal([n, n], seed=[1, 2]), dtype)
    b = tf.cast(tf.random.stateless_normal([n, n], seed=[3, 4]), dtype)

    @tf.function
    def run(a, b):
        return tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32))

    run(a, b).numpy()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(reps):
            run(a, b).numpy()
        best = min(best, (time.perf_counter() - start) / reps)
    return 2 * n**3 / best / 1e9


def fit_seconds(X, T, epochs: int, **params) -> float:
    enc = TripletEncoder(
        features=X, max_epochs=epochs, tol=0.0, n_iter_no_change=10**6, random_state=0, **params
    )
    start = time.perf_counter()
    enc.fit(T)
    elapsed = time.perf_counter() - start
    assert enc.n_iter_ == epochs, enc.n_iter_
    return elapsed


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-triplets", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--components", type=int, default=10)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--epochs", type=int, default=6, help="extra epochs timed (E)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", default=None)
    args = parser.parse_args(argv)

    import tensorflow as tf

    precisions = args.precisions or (["float32", "bfloat16"] if cpu_has_bf16() else ["float32"])
    d, h, c = args.dim, args.hidden, args.components
    rng = np.random.RandomState(0)
    n_items = 3 * args.n_triplets
    X = rng.standard_normal((n_items, d)).astype(np.float32)
    T = rng.permutation(n_items).reshape(-1, 3)  # every item in exactly one triplet
    flop_exec = (2 * d * h + 2 * h * c) + (2 * d * h + 4 * h * c)
    flop_conv = 3 * (2 * d * h + 2 * h * c)
    print(
        f"machine: {os.cpu_count()} CPUs, TensorFlow {tf.__version__}, intra-op threads "
        f"{tf.config.threading.get_intra_op_parallelism_threads() or 'default'}; "
        f"bf16 in CPU: {cpu_has_bf16()}"
    )
    print(
        f"head {d} -> {h} -> {c}; {args.n_triplets} triplets = {n_items} items per epoch; "
        f"{flop_exec / 1e6:.2f} MFLOP per item executed ({flop_conv / 1e6:.2f} by the 3x-forward "
        "convention)"
    )
    print()
    print(f"{'precision':>9} {'batch':>5} | {'peak GF/s':>9} {'items/s':>8} {'GF/s':>6} "
          f"{'of peak':>7} {'of fp32 peak':>12} | {'fit fixed s':>11}")  # fmt: skip
    all_peaks: dict[str, list[float]] = {}
    summary = {}
    for batch_size in args.batch_sizes:
        for precision in precisions:
            params = dict(batch_size=batch_size, hidden_units=h, n_components=c)
            params["precision"] = precision
            fit_seconds(X, T[:200], 1, **params)  # warm-up: imports, oneDNN kernels
            ratios, ratios32, rates, peaks, fixed = [], [], [], [], []
            for _ in range(args.repeats):
                before = matmul_peak(precision)
                t1 = fit_seconds(X, T, 1, **params)
                tn = fit_seconds(X, T, 1 + args.epochs, **params)
                # The peak just before and just after the fits: the best of the two.
                peak = max(before, matmul_peak(precision))
                peak32 = peak if precision == "float32" else matmul_peak("float32")
                per_epoch = (tn - t1) / args.epochs
                rate = n_items / per_epoch
                gflops = rate * flop_exec / 1e9
                ratios.append(gflops / peak)
                ratios32.append(gflops / peak32)
                rates.append(rate)
                peaks.append(peak)
                fixed.append(t1 - per_epoch)
                all_peaks.setdefault(precision, []).append(peak)
            med = statistics.median
            summary[(precision, batch_size)] = med(rates)
            print(
                f"{precision:>9} {batch_size:>5} | {med(peaks):9.1f} {med(rates):8.0f} "
                f"{med(rates) * flop_exec / 1e9:6.1f} {med(ratios):7.2f} {med(ratios32):12.2f} |"
                f" {med(fixed):11.2f}",
                flush=True,
            )
    print()
    for (precision, batch_size), rate in summary.items():
        best = max(all_peaks[precision])
        best32 = max(all_peaks.get("float32", [best]))
        print(
            f"{precision} batch {batch_size}: {rate * flop_exec / 1e9:.1f} GFLOP/s = "
            f"{rate * flop_exec / 1e9 / best:.2f} of the best {precision} matmul of the run "
            f"({best:.1f} GFLOP/s), {rate * flop_exec / 1e9 / best32:.2f} of the best float32"
        )
    print()
    print("columns: medians over repeats; 'of peak' = training GFLOP/s / matmul GFLOP/s in the")
    print("same precision, measured next to each other; 'fit fixed s' = fit(1 epoch) minus one")
    print("epoch (building the Keras head, tracing the compiled loop, standardising).")
    for batch_size in args.batch_sizes:
        if ("bfloat16", batch_size) in summary and ("float32", batch_size) in summary:
            speedup = summary[("bfloat16", batch_size)] / summary[("float32", batch_size)]
            print(f"bfloat16 / float32 items/s at batch {batch_size}: {speedup:.2f}x")


if __name__ == "__main__":
    main()
