"""Learn from triplets alone: scikit-learn's handwritten digits, disjoint train/test images.

5,000 random training triplets are drawn among 70% of the images, 5,000 test triplets among the
other 30%, and a default ``TripletEncoder`` is fitted on the training triplets (indices into the
pixel features). Run::

    python examples/digits_triplets.py

It prints the held-out triplet accuracy of the learned embedding next to that of raw pixel
distances. Takes about 10-30 s on 2 CPU cores.
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from tripletsk import TripletEncoder
from tripletsk.triplets.mining import sample_label_triplets


def run(seed: int = 0, n_triplets: int = 5000, **params) -> dict:
    """Fit on train triplets and score held-out triplets; returns the figures."""
    X, y = load_digits(return_X_y=True)
    train, test = train_test_split(np.arange(len(y)), test_size=0.3, random_state=seed, stratify=y)
    T_train = train[sample_label_triplets(y[train], n_triplets, random_state=seed)]
    T_test = test[sample_label_triplets(y[test], n_triplets, random_state=seed + 1)]
    a, p, n = (X[T_test[:, i]] for i in range(3))
    raw = float(np.mean(np.linalg.norm(a - p, axis=1) < np.linalg.norm(a - n, axis=1)))
    start = time.perf_counter()
    encoder = TripletEncoder(features=X, random_state=seed, **params).fit(T_train)
    seconds = time.perf_counter() - start
    return {
        "raw_pixel_accuracy": raw,
        "held_out_accuracy": encoder.score(T_test),
        "epochs": encoder.n_iter_,
        "fit_seconds": seconds,
        "shared_images": len(set(T_train.ravel()) & set(T_test.ravel())),
    }


if __name__ == "__main__":
    figures = run()
    print(f"raw pixel L2 distance, held-out triplet accuracy: {figures['raw_pixel_accuracy']:.4f}")
    print(f"TripletEncoder (defaults), held-out accuracy:     {figures['held_out_accuracy']:.4f}")
    print(f"fit: {figures['epochs']} epochs in {figures['fit_seconds']:.1f} s; "
          f"images shared by train and test triplets: {figures['shared_images']}")  # fmt: skip
