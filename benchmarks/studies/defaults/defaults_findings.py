"""Reproduce two findings of the defaults study in a few lines each (no training needed).

(b) Label mode, defaults ``batch_size=256, samples_per_class=4``: P x K batches ask for
    P = 256 // 4 = 64 classes; with 10 classes every batch silently holds 10 x 4 = 40
    samples (and the last ones fewer), not 256.
(c) Retrieval metrics break distance ties by row index: a constant embedding (every distance
    tied) scores differently depending on the order of the rows.

Run::

    python benchmarks/studies/defaults/defaults_findings.py
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from tripletsk.evaluation.metrics import retrieval_report
from tripletsk.triplets.mining import pk_batches


def batch_sizes(n_classes: int = 10, per_class: int = 375, seed: int = 0) -> Counter:
    """Sizes of one epoch of the batches that fit(X, y) drew with the defaults of the study
    (``batch_size=256, samples_per_class=4``; today's ``batch_size`` default is ``"auto"``)."""
    k = 4
    p = max(2, 256 // k)  # as TripletEncoder._batch_plan computed it
    y = np.repeat(np.arange(n_classes), per_class)
    return Counter(len(b) for b in pk_batches(y, p, k, random_state=seed))


def constant_embedding_scores(n_classes: int = 10, per_class: int = 200, seed: int = 0):
    """P@1 and MAP@R of a constant embedding, rows sorted by class and shuffled."""
    y = np.repeat(np.arange(n_classes), per_class)
    orders = {"sorted by class": y}
    for s in range(seed, seed + 3):
        orders[f"shuffled (seed {s})"] = np.random.RandomState(s).permutation(y)
    constant = np.zeros((len(y), 2))
    out = {}
    for name, labels in orders.items():
        report = retrieval_report(constant, labels, ks=(1,))
        out[name] = (report["precision_at_1"], report["map_at_r"])
    return out


if __name__ == "__main__":
    sizes = batch_sizes()
    print("(b) defaults, 10 classes x 375 samples: batch size -> number of batches in an epoch:")
    print("   ", dict(sorted(sizes.items(), reverse=True)), "(batch_size=256 asked)")
    print("(c) constant embedding, 10 classes x 200 samples (chance P@1 ~ 0.0995):")
    for name, (p1, mapr) in constant_embedding_scores().items():
        print(f"    rows {name}: P@1 = {p1:.3f}, MAP@R = {mapr:.3f}")
