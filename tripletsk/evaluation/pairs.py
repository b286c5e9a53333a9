"""Pair verification: "same class or not?" answered by thresholding a distance."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.metrics.pairwise import paired_distances
from sklearn.utils import check_array, check_consistent_length, check_random_state, column_or_1d
from sklearn.utils.validation import check_is_fitted

from tripletsk.distances import paired_distance
from tripletsk.triplets.mining import sample_label_triplets

__all__ = [
    "PairVerifierMixin",
    "choose_threshold",
    "make_pairs",
    "pair_distances",
    "pair_verification_report",
]


def make_pairs(y, n_pairs: int | None = None, random_state=None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of sample indices with whether they share a label.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
    n_pairs : int, default=None
        ``None``: every pair ``i < j`` once (n * (n - 1) / 2 pairs, as unbalanced as the
        labels). An int: a balanced random draw, ``n_pairs // 2`` same-label pairs and the
        rest different-label pairs, drawn uniformly with replacement and shuffled.
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    pairs : ndarray of shape (n_pairs, 2), dtype int64
    same : ndarray of shape (n_pairs,), dtype bool

    Examples
    --------
    >>> from tripletsk.evaluation.pairs import make_pairs
    >>> pairs, same = make_pairs([0, 0, 1])
    >>> pairs.tolist(), same.tolist()
    ([[0, 1], [0, 2], [1, 2]], [True, False, False])
    """
    y = column_or_1d(y)
    if n_pairs is None:
        i, j = np.triu_indices(len(y), k=1)
        pairs = np.stack([i, j], axis=1).astype(np.int64)
        return pairs, y[i] == y[j]
    if n_pairs < 2:
        raise ValueError(f"n_pairs must be at least 2 (one of each kind); got {n_pairs}.")
    rng = check_random_state(random_state)
    n_same = n_pairs // 2
    same_pairs = sample_label_triplets(y, n_same, random_state=rng)[:, :2]
    different = []
    n_left = n_pairs - n_same
    while n_left > 0:  # rejection sampling: uniform over different-label pairs
        draw = rng.randint(0, len(y), size=(2 * n_left + 16, 2))
        draw = draw[y[draw[:, 0]] != y[draw[:, 1]]][:n_left]
        different.append(draw)
        n_left -= len(draw)
    pairs = np.concatenate([same_pairs, *different]).astype(np.int64)
    same = np.arange(n_pairs) < n_same
    order = rng.permutation(n_pairs)
    return pairs[order], same[order]


def pair_distances(embeddings, pairs, metric: str = "euclidean") -> np.ndarray:
    """Distance within each pair of rows, ``d(embeddings[i], embeddings[j])``.

    Examples
    --------
    >>> from tripletsk.evaluation.pairs import pair_distances
    >>> pair_distances([[0.0], [3.0], [4.0]], [[0, 1], [1, 2]]).tolist()
    [3.0, 1.0]
    """
    embeddings = check_array(embeddings, dtype=[np.float64, np.float32])
    pairs = check_array(pairs, dtype=np.int64)
    if pairs.shape[1] != 2:
        raise ValueError(f"pairs must have shape (n_pairs, 2); got {pairs.shape}.")
    return paired_distances(embeddings[pairs[:, 0]], embeddings[pairs[:, 1]], metric=metric)


def _check_pairs(distances, same) -> tuple[np.ndarray, np.ndarray]:
    distances = column_or_1d(distances).astype(np.float64)
    same = column_or_1d(same).astype(bool)
    check_consistent_length(distances, same)
    if len(same) == 0:
        raise ValueError("Need at least one pair; got none.")
    return distances, same


def choose_threshold(distances, same, criterion: str = "balanced_accuracy") -> float:
    """The distance threshold that best separates same-label from different-label pairs.

    Pairs at a distance ``<= threshold`` are answered "same". Choose it on *validation*
    pairs and report on other pairs with :func:`pair_verification_report`: a threshold tuned
    on the test pairs overstates the accuracy.

    Parameters
    ----------
    distances : array-like of shape (n_pairs,)
    same : array-like of bool, shape (n_pairs,)
        Whether each pair shares a label; both kinds must be present.
    criterion : {"balanced_accuracy", "accuracy"}, default="balanced_accuracy"
        ``"accuracy"`` suits test pairs drawn with the same base rate as real use;
        ``"balanced_accuracy"`` weighs both kinds of pairs equally.

    Returns
    -------
    threshold : float
        Halfway between the two distances where the answer changes; the smallest such one
        if several thresholds are equally good.

    Examples
    --------
    >>> from tripletsk.evaluation.pairs import choose_threshold
    >>> choose_threshold([0.1, 0.2, 0.9, 1.0], [True, True, False, False])
    0.55
    """
    if criterion not in ("balanced_accuracy", "accuracy"):
        raise ValueError(f"criterion must be 'balanced_accuracy' or 'accuracy'; got {criterion!r}.")
    distances, same = _check_pairs(distances, same)
    if same.all() or not same.any():
        raise ValueError("Choosing a threshold needs both same-label and different-label pairs.")
    values, inverse = np.unique(distances, return_inverse=True)
    # Candidate j answers "same" for distances <= values[j]; j = -1 answers "different" always.
    tp = np.concatenate([[0], np.cumsum(np.bincount(inverse, weights=same))])
    fp = np.concatenate([[0], np.cumsum(np.bincount(inverse, weights=~same))])
    n_same, n_diff = same.sum(), (~same).sum()
    tn = n_diff - fp
    if criterion == "accuracy":
        score = (tp + tn) / len(same)
    else:
        score = (tp / n_same + tn / n_diff) / 2
    j = int(np.argmax(score)) - 1
    if j < 0:
        return float(np.nextafter(values[0], -np.inf))
    if j == len(values) - 1:
        return float(values[-1])
    middle = values[j] + (values[j + 1] - values[j]) / 2
    return float(middle if middle < values[j + 1] else values[j])


def pair_verification_report(distances, same, threshold: float) -> dict[str, float]:
    """Accuracy of answering "same" for pairs at distance ``<= threshold``, with context.

    An accuracy alone can flatter: if 90% of pairs differ, answering "different" always is
    90% accurate. So the report also gives the base rate and that trivial accuracy.

    Parameters
    ----------
    distances : array-like of shape (n_pairs,)
    same : array-like of bool, shape (n_pairs,)
    threshold : float
        Chosen beforehand on validation pairs with :func:`choose_threshold`.

    Returns
    -------
    report : dict
        ``threshold``, ``n_pairs``, ``accuracy``, ``balanced_accuracy`` (mean of the
        accuracies on same and on different pairs), ``base_rate`` (fraction of same pairs)
        and ``majority_accuracy`` (accuracy of always giving the commoner answer).

    Examples
    --------
    >>> from tripletsk.evaluation.pairs import pair_verification_report
    >>> r = pair_verification_report([0.1, 0.5, 0.9, 1.0], [True, True, False, False], 0.3)
    >>> r["accuracy"], r["balanced_accuracy"], r["base_rate"], r["majority_accuracy"]
    (0.75, 0.75, 0.5, 0.5)
    """
    distances, same = _check_pairs(distances, same)
    predicted = distances <= threshold
    base_rate = float(same.mean())
    return {
        "threshold": float(threshold),
        "n_pairs": len(same),
        "accuracy": float(accuracy_score(same, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(same, predicted)),
        "base_rate": base_rate,
        "majority_accuracy": max(base_rate, 1.0 - base_rate),
    }


class PairVerifierMixin:
    """Pair verification for a fitted embedding estimator with ``transform`` and ``distance``."""

    def pair_distance(self, A, B) -> np.ndarray:
        """Embedding distance between matching items of ``A`` and ``B``."""
        return paired_distance(self.transform(A), self.transform(B), self.distance)

    def fit_threshold(self, A, B, same, criterion: str = "balanced_accuracy"):
        """Choose the "same / different" distance threshold on validation pairs.

        Never call this with test pairs: a threshold tuned on test data inflates the test
        figure. ``same`` is 1 for pairs of the same class. Sets ``threshold_``.
        """
        check_is_fitted(self)
        self.threshold_ = float(
            choose_threshold(self.pair_distance(A, B), np.asarray(same), criterion=criterion)
        )
        return self

    def predict_pairs(self, A, B) -> np.ndarray:
        """1 ("same") where the pair's distance is at most ``threshold_``, else 0."""
        check_is_fitted(self, "threshold_")
        return (self.pair_distance(A, B) <= self.threshold_).astype(int)
