"""The fixed cost of a fit: a first fit, then fits of the same shape, and two small grid searches.

Small fits are where tracing the compiled training loops costs more than training itself, and
a grid search is many fits of a few shapes: ``tripletsk.training.compiled`` keeps the traced
loops between fits of one shape. Times are CPU seconds of this process (TensorFlow on one
thread), so that another job on the machine changes them little; wall seconds beside them.

Only public names are used, so the script runs on another tree too (compare two trees in one
run, as ratios)::

    git worktree add /tmp/before <commit>
    PYTHONPATH=/tmp/before python benchmarks/fit_overhead.py
    PYTHONPATH=. python benchmarks/fit_overhead.py
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
for _name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402


def timed(fn) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fits", type=int, default=5, help="fits after the first")
    args = parser.parse_args()

    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV

    import tripletsk
    from tripletsk import TripletEncoder
    from tripletsk.errors import EmbeddingCollapseWarning

    warnings.simplefilter("ignore", ConvergenceWarning)
    # Margin 1.0 collapses on these 5-epoch fits: this times fits, not what they learn.
    warnings.simplefilter("ignore", EmbeddingCollapseWarning)
    X, y = load_digits(return_X_y=True)
    X, y = X[:600].astype(np.float32), y[:600]
    small = dict(hidden_units=64, n_components=16, max_epochs=5, random_state=0)

    print(f"tree: {os.path.dirname(tripletsk.__file__)}")
    cpu, wall = timed(lambda: TripletEncoder(**small).fit(X, y))
    print(f"first fit (600 digits, 5 epochs):      cpu {cpu:6.2f} s   wall {wall:6.2f} s")
    costs = [timed(lambda: TripletEncoder(**small).fit(X, y)) for _ in range(args.fits)]
    cpu, wall = np.median(costs, axis=0)
    print(f"same shape again (median of {args.fits}):        cpu {cpu:6.2f} s   wall {wall:6.2f} s")
    grid = {"hidden_units": [32, 64], "n_components": [8, 16], "learning_rate": [1e-3, 3e-3]}
    search = GridSearchCV(TripletEncoder(max_epochs=5, random_state=0), grid, cv=3)
    cpu, wall = timed(lambda: search.fit(X, y))
    print(f"GridSearchCV 8 settings x 3 folds:     cpu {cpu:6.2f} s   wall {wall:6.2f} s")
    # Margins and weight decays: values of one graph (variables of the traced loops).
    grid = {"margin": [0.1, 0.2, 0.5, 1.0], "weight_decay": [1e-4, 1e-3]}
    search = GridSearchCV(TripletEncoder(**small), grid, cv=3)
    cpu, wall = timed(lambda: search.fit(X, y))
    print(f"GridSearchCV margin x decay, 8 x 3:    cpu {cpu:6.2f} s   wall {wall:6.2f} s")


if __name__ == "__main__":
    main()
