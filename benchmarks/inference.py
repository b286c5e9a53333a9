"""Inference throughput of a fitted TripletEncoder (NumPy) against the Keras head, in one run.

A fitted encoder is plain NumPy. Measured on cached-size features (2048-d, head 2048 -> 512
-> 10):

* ``transform`` rows/s, from feature rows and from integer indices into ``features``;
* ``predict_triplets`` triplets/s on index triplets;
* the same head as a Keras model (``tripletsk.training.head.build_keras_head``) on the same
  standardised rows: ``model.predict`` and a compiled ``tf.function`` call; outputs are
  checked to agree with ``transform``;
* NumPy's own float32 matmul GFLOP/s, to put ``transform`` in proportion to the machine.

Each figure is the median of interleaved repeats; the ratios are computed within each repeat.

Usage::

    python benchmarks/inference.py                 # 20000 rows
    python benchmarks/inference.py --rows 50000 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def best_time(fn, reps: int = 3) -> float:
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import tensorflow as tf

    from tripletsk import TripletEncoder
    from tripletsk.training.head import build_keras_head
    from tripletsk.training.rows import FeatureRows

    n, d = args.rows, args.dim
    rng = np.random.RandomState(0)
    X = rng.standard_normal((n, d)).astype(np.float32)
    T = rng.randint(0, n, size=(n, 3))
    enc = TripletEncoder(features=X, max_epochs=1, random_state=0).fit(T[:2000])
    h = enc.weights_[0][0].shape[1]
    c = enc.weights_[-1][0].shape[1]
    flop_per_row = 2 * d * h + 2 * h * c

    model = build_keras_head(enc.weights_)
    # Keras gets rows already standardised, as in training.
    scaled = FeatureRows.from_array(X).standardized(enc.feature_mean_, enc.feature_scale_).take()
    call = tf.function(lambda x: model(x, training=False))
    # Agreement (and warm-up of every path).
    ref = enc.transform(X)
    err_predict = np.abs(model.predict(scaled, batch_size=1024, verbose=0) - ref).max()
    err_call = np.abs(call(tf.constant(scaled)).numpy() - ref).max()
    enc.predict_triplets(T)
    enc.transform(np.arange(n))
    a = rng.standard_normal((2048, 2048)).astype(np.float32)
    a @ a

    rows = {k: [] for k in ("transform X", "transform idx", "predict_triplets", "keras predict",
                            "keras tf.function", "numpy matmul GF/s")}  # fmt: skip
    ratios = {k: [] for k in ("predict", "call", "of_numpy_peak")}
    for _ in range(args.repeats):
        t_tx = best_time(lambda: enc.transform(X))
        t_ti = best_time(lambda: enc.transform(np.arange(n)))
        t_pt = best_time(lambda: enc.predict_triplets(T))
        t_kp = best_time(lambda: model.predict(scaled, batch_size=1024, verbose=0))
        t_kc = best_time(lambda: call(tf.constant(scaled)).numpy())
        t_mm = best_time(lambda: a @ a, reps=5)
        rows["transform X"].append(n / t_tx)
        rows["transform idx"].append(n / t_ti)
        rows["predict_triplets"].append(n / t_pt)
        rows["keras predict"].append(n / t_kp)
        rows["keras tf.function"].append(n / t_kc)
        peak = 2 * 2048**3 / t_mm / 1e9
        rows["numpy matmul GF/s"].append(peak)
        ratios["predict"].append(t_kp / t_tx)
        ratios["call"].append(t_kc / t_tx)
        ratios["of_numpy_peak"].append(n * flop_per_row / t_tx / 1e9 / peak)

    med = {k: float(np.median(v)) for k, v in rows.items()}
    print(f"machine: {os.cpu_count()} CPUs, NumPy {np.__version__}, TensorFlow {tf.__version__}")
    print(f"{n} rows of {d} features, head {d} -> {h} -> {c}; medians of {args.repeats} repeats")
    print()
    print(f"transform (feature rows)          {med['transform X']:10.0f} rows/s")
    print(f"transform (indices into features) {med['transform idx']:10.0f} rows/s")
    print(f"predict_triplets (index triplets) {med['predict_triplets']:10.0f} triplets/s")
    print(f"Keras head, model.predict         {med['keras predict']:10.0f} rows/s")
    print(f"Keras head, compiled call         {med['keras tf.function']:10.0f} rows/s")
    print(f"NumPy float32 matmul peak         {med['numpy matmul GF/s']:10.1f} GFLOP/s")
    print()
    print(f"transform / Keras model.predict:  {np.median(ratios['predict']):6.2f}x")
    print(f"transform / Keras compiled call:  {np.median(ratios['call']):6.2f}x")
    print(f"transform GFLOP/s / NumPy matmul peak: {np.median(ratios['of_numpy_peak']):.2f}")
    print(f"max |Keras - transform|: predict {err_predict:.1e}, compiled call {err_call:.1e}")


if __name__ == "__main__":
    main()
