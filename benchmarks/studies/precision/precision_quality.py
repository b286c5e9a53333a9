"""Held-out accuracy and fit time of ``precision="float32"`` against ``"bfloat16"`` on digits.

scikit-learn's digits (8x8 images, 64 features) are split into disjoint train and test images
(stratified, 30% test) for several seeds; 5000 random triplets are drawn among the training
images and 5000 among the test images (``tripletsk.triplets.mining.sample_label_triplets``). Each
precision fits ``TripletEncoder(features=X, random_state=0)`` (defaults otherwise) on the train
triplets and is scored on the test triplets. Same run, same splits; fit times are interleaved.

Digits are narrow (64 features), so this measures accuracy, not the bf16 speed-up: that is
``benchmarks/head_training.py`` on 2048-d features.

Usage::

    python benchmarks/studies/precision/precision_quality.py             # 3 splits
    python benchmarks/studies/precision/precision_quality.py --splits 5
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--triplets", type=int, default=5000)
    args = parser.parse_args(argv)

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from tripletsk import TripletEncoder
    from tripletsk.triplets.mining import sample_label_triplets

    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    scores = {"float32": [], "bfloat16": []}
    times = {"float32": [], "bfloat16": []}
    print(f"digits: {len(X)} images; {args.triplets} train / test triplets per split")
    print(f"{'split':>5} {'float32 acc':>11} {'bfloat16 acc':>12} {'fp32 fit s':>10} "
          f"{'bf16 fit s':>10} {'epochs':>11}")  # fmt: skip
    for seed in range(args.splits):
        train, test = train_test_split(
            np.arange(len(y)), test_size=0.3, random_state=seed, stratify=y
        )
        T_train = train[sample_label_triplets(y[train], args.triplets, random_state=seed)]
        T_test = test[sample_label_triplets(y[test], args.triplets, random_state=seed + 100)]
        epochs = []
        for precision in ("float32", "bfloat16"):
            start = time.perf_counter()
            enc = TripletEncoder(features=X, random_state=0, precision=precision).fit(T_train)
            times[precision].append(time.perf_counter() - start)
            scores[precision].append(enc.score(T_test))
            epochs.append(enc.n_iter_)
        print(
            f"{seed:5d} {scores['float32'][-1]:11.4f} {scores['bfloat16'][-1]:12.4f} "
            f"{times['float32'][-1]:10.1f} {times['bfloat16'][-1]:10.1f} "
            f"{epochs[0]:>5d} {epochs[1]:>5d}",
            flush=True,
        )
    f32, b16 = np.array(scores["float32"]), np.array(scores["bfloat16"])
    print(f"mean  {f32.mean():11.4f} {b16.mean():12.4f}")
    print(f"bfloat16 - float32 accuracy: mean {np.mean(b16 - f32):+.4f}, "
          f"per split {np.round(b16 - f32, 4).tolist()}")  # fmt: skip


if __name__ == "__main__":
    main()
