"""GridSearchCV with TripletEncoder: wall time, cost per fit, and copies of the feature array.

Part 1, time: ``GridSearchCV`` over 12 settings x 3 folds (36 fits) on 20,000 triplets of
cached 2048-d features (synthetic class clusters; the cost does not depend on the values),
against one fit of the same size alone, timed in the same run. The ratio (time per fit
inside the search / one fit alone) is the search's own overhead: cloning, scoring, and
each fit's fixed cost.

Part 2, memory: ``sklearn.base.clone`` deep-copies every parameter that is not an estimator, so
``TripletEncoder(features=X)`` with a large ``X`` copies ``X`` for every fit of a search. Each
variant runs in a fresh process on a large array (default 200,000 x 2048 float32 = 1.6 GB) with
a small search (2 settings x 2 folds, 1 epoch on 3,000 triplets), and reports peak RSS, the
peak of NumPy allocations during the search (tracemalloc), and the search's wall time:

* ``plain``: ``features=X`` (copied by every clone);
* ``shared``: ``features=tripletsk.training.shared.SharedFeatures(X)`` (clone returns the same
object).

The folds are plain ``KFold(3)`` on triplets: fine for timing; for honest scores use
``tripletsk.evaluation.model_selection.TripletGroupKFold`` so that no image is in both train and
test.

Usage::

    python benchmarks/grid_search.py                       # both parts
    python benchmarks/grid_search.py --big-rows 100000 --skip-time
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import peak_rss  # benchmarks/ is on sys.path when a script runs

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


GRID = {
    "margin": [0.5, 1.0, 1.5],
    "hidden_units": [256, 512],
    "learning_rate": [1e-3, 3e-3],
}  # 12 settings


def clustered(n: int, d: int, n_classes: int, seed: int = 0):
    """Features of n items in n_classes Gaussian clusters, built from a small random block."""
    rng = np.random.RandomState(seed)
    centres = rng.standard_normal((n_classes, d)).astype(np.float32)
    labels = np.arange(n) % n_classes
    block = rng.standard_normal((min(n, 4096), d)).astype(np.float32)
    X = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, len(block)):
        stop = min(start + len(block), n)
        X[start:stop] = block[: stop - start] * 2.0 + centres[labels[start:stop]]
    return X, labels


def time_part(args) -> None:
    from sklearn.model_selection import GridSearchCV, KFold

    from tripletsk import TripletEncoder
    from tripletsk.training.shared import SharedFeatures
    from tripletsk.triplets.mining import sample_label_triplets

    X, labels = clustered(args.items, 2048, 100)
    T = sample_label_triplets(labels, n_triplets=args.triplets, random_state=0)
    features = SharedFeatures(X)
    params = dict(max_epochs=args.epochs, tol=0.0, n_iter_no_change=10**6, random_state=0)
    enc = TripletEncoder(features=features, **params)
    n_settings = int(np.prod([len(v) for v in GRID.values()]))
    n_fits = n_settings * 3
    train_size = len(T) - len(T) // 3

    def one_fit():
        start = time.perf_counter()
        TripletEncoder(features=features, **params).fit(T[:train_size]).score(T[train_size:])
        return time.perf_counter() - start

    TripletEncoder(features=features, **params).fit(T[:200])  # warm-up (imports, kernels)
    alone_before = one_fit()
    search = GridSearchCV(enc, GRID, cv=KFold(3), refit=False, n_jobs=1)
    start = time.perf_counter()
    search.fit(T)
    wall = time.perf_counter() - start
    alone_after = one_fit()
    alone = (alone_before + alone_after) / 2
    print(f"machine: {os.cpu_count()} CPUs")
    print(
        f"part 1: GridSearchCV, {n_settings} settings x 3 folds = {n_fits} fits of "
        f"{args.epochs} epoch(s), {len(T)} triplets over {len(X)} items of 2048 features"
    )
    print(f"  search wall time:            {wall:8.1f} s")
    print(f"  per fit inside the search:   {wall / n_fits:8.2f} s (fit + score of one fold)")
    print(f"  one fit + score alone:       {alone:8.2f} s (mean of before and after)")
    print(f"  ratio per fit / alone:       {wall / n_fits / alone:8.2f}")
    print(f"  best: {search.best_params_}, mean held-out accuracy {search.best_score_:.4f}")


def memory_child(variant: str, rows: int) -> None:
    """One variant in this fresh process; prints a JSON line."""
    import tracemalloc

    from sklearn.model_selection import GridSearchCV, KFold

    from tripletsk import TripletEncoder
    from tripletsk.training.shared import SharedFeatures
    from tripletsk.triplets.mining import sample_label_triplets

    X, labels = clustered(rows, 2048, 100)
    T = sample_label_triplets(labels[:20_000], n_triplets=3000, random_state=0)
    features = X if variant == "plain" else SharedFeatures(X)
    enc = TripletEncoder(features=features, max_epochs=1, random_state=0)
    # Warm up TensorFlow outside the measured window, on a separate small array.
    TripletEncoder(features=X[:1000], max_epochs=1, random_state=0).fit(T[:10] % 1000)
    rss_before = peak_rss()
    tracemalloc.start()
    start = time.perf_counter()
    GridSearchCV(enc, {"margin": [0.5, 1.0]}, cv=KFold(2), refit=False).fit(T)
    wall = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_peak = peak_rss()
    print(json.dumps({
        "variant": variant, "array_gb": X.nbytes / 1e9, "wall": wall,
        "traced_peak_gb": peak / 1e9, "rss_before_gb": rss_before / 1e9,
        "rss_peak_gb": rss_peak / 1e9,
    }))  # fmt: skip


def memory_part(args) -> None:
    print(
        f"part 2: copies of features in GridSearchCV (2 settings x 2 folds), array of "
        f"{args.big_rows} x 2048 float32 = {args.big_rows * 2048 * 4 / 1e9:.2f} GB"
    )
    results = {}
    for variant in ("plain", "shared"):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", variant, "--big-rows", str(args.big_rows)],
            capture_output=True,
            text=True,
            check=True,
        )
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"  {'features=':>22} {'wall s':>7} {'traced peak GB':>14} {'RSS before GB':>13} "
        f"{'RSS peak GB':>11}"
    )
    for variant, label in (("plain", "X (ndarray)"), ("shared", "SharedFeatures(X)")):
        r = results[variant]
        print(
            f"  {label:>22} {r['wall']:7.1f} {r['traced_peak_gb']:14.2f} "
            f"{r['rss_before_gb']:13.2f} {r['rss_peak_gb']:11.2f}"
        )
    plain, shared = results["plain"], results["shared"]
    print(
        f"  wall time plain / shared: {plain['wall'] / shared['wall']:.2f}; extra peak memory "
        f"of plain: {plain['traced_peak_gb'] - shared['traced_peak_gb']:.2f} GB "
        f"({(plain['traced_peak_gb'] - shared['traced_peak_gb']) / plain['array_gb']:.2f} "
        "array sizes)"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--triplets", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--big-rows", type=int, default=200_000)
    parser.add_argument("--skip-time", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-child", choices=["plain", "shared"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child, args.big_rows)
        return
    if not args.skip_time:
        time_part(args)
    if not args.skip_memory:
        memory_part(args)


if __name__ == "__main__":
    main()
