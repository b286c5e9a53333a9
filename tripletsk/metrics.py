"""Honest evaluation metrics for embeddings: triplet accuracy and retrieval figures."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import pairwise_distances


def triplet_accuracy(d_ap, d_an) -> float:
    """Fraction of triplets whose anchor is strictly closer to the positive than the negative.

    A tie counts as wrong, matching ``TripletEncoder.predict_triplets``.

    Examples
    --------
    >>> from tripletsk.metrics import triplet_accuracy
    >>> triplet_accuracy([0.1, 0.5, 0.3], [0.2, 0.4, 0.3])
    0.3333333333333333
    """
    d_ap, d_an = np.asarray(d_ap), np.asarray(d_an)
    if d_ap.size == 0:
        raise ValueError("triplet_accuracy needs at least one triplet; got none.")
    return float(np.mean(d_ap < d_an))


def label_triplet_accuracy(
    embeddings, y, metric: str = "euclidean", chunk_size: int = 1024
) -> float:
    """Triplet accuracy over every valid triplet that the labels define, computed exactly.

    Every ``(a, p, n)`` with ``y[a] == y[p]``, ``a != p`` and ``y[a] != y[n]`` counts once.
    Instead of enumerating the O(n^3) triplets, each anchor's negative distances are sorted
    and each positive distance is ranked among them, so the cost is O(n^2 log n) time and
    O(chunk_size * n) memory.

    Parameters
    ----------
    embeddings : array-like of shape (n_samples, n_dims)
    y : array-like of shape (n_samples,)
    metric : str, default="euclidean"
        Any metric of :func:`sklearn.metrics.pairwise_distances`.
    chunk_size : int, default=1024
        Anchors handled at once.

    Returns
    -------
    accuracy : float

    Examples
    --------
    >>> import numpy as np
    >>> from tripletsk.metrics import label_triplet_accuracy
    >>> label_triplet_accuracy(np.array([[0.0], [0.1], [1.0], [1.2]]), [0, 0, 1, 1])
    1.0
    """
    embeddings = np.asarray(embeddings)
    y = np.asarray(y)
    if len(embeddings) != len(y):
        raise ValueError(
            f"embeddings and y have different lengths: {len(embeddings)} and {len(y)}."
        )
    correct = 0
    total = 0
    for start in range(0, len(y), chunk_size):
        rows = np.arange(start, min(start + chunk_size, len(y)))
        dist = pairwise_distances(embeddings[rows], embeddings, metric=metric)
        for i, d in zip(rows, dist, strict=True):
            same = y == y[i]
            same[i] = False
            if not same.any():
                continue
            negatives = np.sort(d[y != y[i]])
            if negatives.size == 0:
                continue
            # Negatives strictly farther than each positive: a tie is a wrong answer.
            farther = negatives.size - np.searchsorted(negatives, d[same], side="right")
            correct += int(farther.sum())
            total += int(same.sum()) * negatives.size
    if total == 0:
        raise ValueError(
            "The labels define no valid triplet: need a class with 2 samples and another class."
        )
    return correct / total
