"""Honest evaluation metrics for embeddings: triplet accuracy and retrieval figures."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, pairwise_distances
from sklearn.metrics.pairwise import paired_distances
from sklearn.utils import check_array, check_consistent_length, check_random_state, column_or_1d

from tripletsk.triplets import sample_label_triplets


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


# --------------------------------------------------------------------------------------------
# Retrieval: each sample queries all the others
# --------------------------------------------------------------------------------------------


def _check_xy(embeddings, y) -> tuple[np.ndarray, np.ndarray]:
    # float64: scikit-learn computes float32 distances by slow upcast blocks, and ties
    # between equal distances are only reproducible in one precision.
    embeddings = check_array(embeddings, dtype=np.float64)
    y = column_or_1d(y, warn=True)
    check_consistent_length(embeddings, y)
    if len(y) < 2:
        raise ValueError(f"Retrieval metrics need at least 2 samples; got {len(y)}.")
    return embeddings, y


def _n_relevant(y: np.ndarray) -> np.ndarray:
    """R for each sample: how many *other* samples share its label."""
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    return counts[inverse] - 1


def _nearest_others(embeddings, metric, chunk_size, depth):
    """Yield ``(rows, neighbours)``: for each query row, the ``depth`` nearest other samples.

    ``depth`` is an int or one int per sample (the chunk uses its largest). The query itself
    is excluded by index, so a duplicate of it at distance 0 is still a neighbour. Ties are
    broken by sample index, so results are deterministic and match a stable sort. Memory
    is O(chunk_size * n_samples): a partition finds each row's depth-th distance, and only
    the candidates up to it are sorted.
    """
    n = len(embeddings)
    depth = np.broadcast_to(np.asarray(depth), (n,))
    for start in range(0, n, chunk_size):
        rows = np.arange(start, min(start + chunk_size, n))
        width = int(depth[rows].max())
        if width == 0:
            yield rows, np.empty((len(rows), 0), dtype=np.int64)
            continue
        dist = pairwise_distances(embeddings[rows], embeddings, metric=metric)
        dist[np.arange(len(rows)), rows] = np.inf  # exclude self by index, not by distance
        cutoff = np.partition(dist, width - 1, axis=1)[:, width - 1 : width]
        r, c = np.nonzero(dist <= cutoff)  # row-major: ascending index within each row
        order = np.lexsort((c, dist[r, c], r))
        r, c = r[order], c[order]
        first = np.searchsorted(r, np.arange(len(rows)))
        keep = np.arange(len(r)) - first[r] < width
        yield rows, c[keep].reshape(len(rows), width)


def retrieval_report(
    embeddings,
    y,
    ks=(1, 5, 10),
    metric: str = "euclidean",
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Leave-one-out retrieval figures in one pass: precision@1, recall@k, R-precision, MAP@R.

    Each sample queries all the other samples, ranked by distance (ties broken by index).
    A query with no other sample of its class (R = 0) can neither succeed nor fail, so it is
    skipped by every figure, as in Musgrave et al. (2020); ``n_queries`` counts the rest.

    Parameters
    ----------
    embeddings : array-like of shape (n_samples, n_dims)
    y : array-like of shape (n_samples,)
        Class labels.
    ks : iterable of int, default=(1, 5, 10)
        Cut-offs for recall@k; each must be below ``n_samples``.
    metric : str, default="euclidean"
        Any metric of :func:`sklearn.metrics.pairwise_distances`.
    chunk_size : int, default=1024
        Queries handled at once; memory is O(chunk_size * n_samples).

    Returns
    -------
    report : dict
        ``precision_at_1``, ``recall_at_<k>`` for each k, ``r_precision``, ``map_at_r``
        and ``n_queries``.

    Examples
    --------
    >>> from tripletsk.metrics import retrieval_report
    >>> report = retrieval_report([[0], [1], [3], [5]], [0, 0, 1, 1], ks=[1, 2])
    >>> report["precision_at_1"], report["recall_at_2"], report["n_queries"]
    (0.75, 1.0, 4)
    """
    embeddings, y = _check_xy(embeddings, y)
    ks = sorted({int(k) for k in np.atleast_1d(ks)})
    if not ks or ks[0] < 1 or ks[-1] > len(y) - 1:
        raise ValueError(f"Each k must be between 1 and n_samples - 1 = {len(y) - 1}; got {ks}.")
    requested_1 = 1 in ks
    ks = sorted({1, *ks})
    relevant = _n_relevant(y)
    if not relevant.any():
        raise ValueError("No sample shares its label with another one: nothing to retrieve.")
    depth = np.maximum(relevant, ks[-1])
    totals = dict.fromkeys(["r_precision", "map_at_r", *(f"recall_at_{k}" for k in ks)], 0.0)
    for rows, neighbours in _nearest_others(embeddings, metric, chunk_size, depth):
        query = relevant[rows] > 0
        rows, neighbours = rows[query], neighbours[query]
        hit = y[neighbours] == y[rows, None]  # (queries, depth): relevant at each rank
        for k in ks:
            totals[f"recall_at_{k}"] += hit[:, :k].any(axis=1).sum()
        r = relevant[rows]
        within_r = np.arange(hit.shape[1]) < r[:, None]
        hit_r = hit & within_r
        totals["r_precision"] += (hit_r.sum(axis=1) / r).sum()
        precision_at_i = np.cumsum(hit_r, axis=1) / np.arange(1, hit.shape[1] + 1)
        totals["map_at_r"] += ((precision_at_i * hit_r).sum(axis=1) / r).sum()
    n_queries = int((relevant > 0).sum())
    report = {key: float(value / n_queries) for key, value in totals.items()}
    # Precision@1 is recall@1 over the same queries.
    precision = report["recall_at_1"] if requested_1 else report.pop("recall_at_1")
    return {"precision_at_1": precision, **report, "n_queries": n_queries}


def precision_at_1(embeddings, y, metric: str = "euclidean", chunk_size: int = 1024) -> float:
    """Fraction of queries whose nearest *other* sample has the same label.

    Leave-one-out: each sample queries the others; the sample itself is excluded by index,
    so an exact duplicate counts as a neighbour. Ties are broken by sample index. Samples
    alone in their class are skipped (see :func:`retrieval_report`).

    Examples
    --------
    >>> from tripletsk.metrics import precision_at_1
    >>> precision_at_1([[0], [1], [3], [5]], [0, 0, 1, 1])  # 3 is nearer 1 than 5
    0.75
    """
    return retrieval_report(embeddings, y, [1], metric, chunk_size)["precision_at_1"]


def recall_at_k(
    embeddings, y, k: int | list[int] = 1, metric: str = "euclidean", chunk_size: int = 1024
) -> float | dict[int, float]:
    """Fraction of queries with at least one same-label sample among their k nearest others.

    Parameters
    ----------
    embeddings : array-like of shape (n_samples, n_dims)
    y : array-like of shape (n_samples,)
    k : int or list of int, default=1
        A list returns ``{k: recall}`` for each, computed in one pass.
    metric : str, default="euclidean"
    chunk_size : int, default=1024

    Examples
    --------
    >>> from tripletsk.metrics import recall_at_k
    >>> recall_at_k([[0], [1], [3], [5]], [0, 0, 1, 1], k=[1, 2])
    {1: 0.75, 2: 1.0}
    """
    ks = [k] if np.isscalar(k) else list(k)
    report = retrieval_report(embeddings, y, ks, metric, chunk_size)
    recalls = {int(kk): report[f"recall_at_{int(kk)}"] for kk in ks}
    return recalls[int(k)] if np.isscalar(k) else recalls


def r_precision(embeddings, y, metric: str = "euclidean", chunk_size: int = 1024) -> float:
    """Mean R-precision: the same-label fraction of each query's R nearest others.

    R is the number of other samples with the query's label, so a perfect embedding scores 1
    whatever the class sizes (Musgrave et al., "A Metric Learning Reality Check", 2020).

    Examples
    --------
    >>> from tripletsk.metrics import r_precision
    >>> r_precision([[0], [1], [3], [2]], [0, 0, 0, 1])
    0.5
    """
    return retrieval_report(embeddings, y, [1], metric, chunk_size)["r_precision"]


def map_at_r(embeddings, y, metric: str = "euclidean", chunk_size: int = 1024) -> float:
    """Mean average precision at R (MAP@R, Musgrave et al. 2020).

    For a query with R other same-label samples, ``AP@R = (1/R) * sum_{i<=R} P(i) rel(i)``,
    where ``rel(i)`` says whether the i-th nearest other sample shares the label and ``P(i)``
    is the precision of the first i. Unlike R-precision it rewards ranking the relevant
    samples first within the R.

    Examples
    --------
    >>> from tripletsk.metrics import map_at_r
    >>> map_at_r([[0], [1], [3], [2]], [0, 0, 0, 1])  # (1/2 + 1/2 + 1/4) / 3
    0.4166666666666667
    """
    return retrieval_report(embeddings, y, [1], metric, chunk_size)["map_at_r"]


# --------------------------------------------------------------------------------------------
# Pair verification: "same class or not?" answered by thresholding a distance
# --------------------------------------------------------------------------------------------


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
    >>> from tripletsk.metrics import make_pairs
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
    >>> from tripletsk.metrics import pair_distances
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
    >>> from tripletsk.metrics import choose_threshold
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
    >>> from tripletsk.metrics import pair_verification_report
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


# --------------------------------------------------------------------------------------------
# Scorers: ``scoring=`` for cross_val_score and GridSearchCV
# --------------------------------------------------------------------------------------------


def _embed(estimator, X, y, name):
    if y is None:
        raise ValueError(
            f"The {name} scorer needs class labels y; use it with labelled data (X, y)."
        )
    return estimator.transform(X)


def triplet_accuracy_scorer(estimator, X, y=None) -> float:
    """Triplet accuracy: of triplets ``X`` if ``y`` is None, else of every labelled triplet.

    Without labels, ``X`` holds triplets and this is ``estimator.score(X)``. With labels,
    ``X`` holds samples and this is :func:`label_triplet_accuracy` of their embeddings.
    """
    if y is None:
        return float(estimator.score(X))
    return label_triplet_accuracy(estimator.transform(X), y)


def precision_at_1_scorer(estimator, X, y) -> float:
    """:func:`precision_at_1` of ``estimator.transform(X)`` with labels ``y``."""
    return precision_at_1(_embed(estimator, X, y, "precision_at_1"), y)


def r_precision_scorer(estimator, X, y) -> float:
    """:func:`r_precision` of ``estimator.transform(X)`` with labels ``y``."""
    return r_precision(_embed(estimator, X, y, "r_precision"), y)


def map_at_r_scorer(estimator, X, y) -> float:
    """:func:`map_at_r` of ``estimator.transform(X)`` with labels ``y``."""
    return map_at_r(_embed(estimator, X, y, "map_at_r"), y)


def make_recall_at_k_scorer(k: int) -> Callable[..., float]:
    """A scorer computing :func:`recall_at_k` of ``estimator.transform(X)`` at one ``k``.

    Examples
    --------
    >>> from tripletsk.metrics import make_recall_at_k_scorer
    >>> make_recall_at_k_scorer(5).__name__
    'recall_at_5_scorer'
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int; got {k!r}.")

    def scorer(estimator, X, y) -> float:
        return recall_at_k(_embed(estimator, X, y, f"recall_at_{k}"), y, k=int(k))

    scorer.__name__ = scorer.__qualname__ = f"recall_at_{k}_scorer"
    scorer.__doc__ = f"recall@{k} of ``estimator.transform(X)`` with labels ``y``."
    return scorer


#: Scorers by name, for ``scoring=`` and the command line.
SCORERS: dict[str, Callable[..., float]] = {
    "triplet_accuracy": triplet_accuracy_scorer,
    "precision_at_1": precision_at_1_scorer,
    "r_precision": r_precision_scorer,
    "map_at_r": map_at_r_scorer,
    "recall_at_1": make_recall_at_k_scorer(1),
    "recall_at_5": make_recall_at_k_scorer(5),
    "recall_at_10": make_recall_at_k_scorer(10),
}
