"""Honest evaluation metrics for embeddings: triplet accuracy and retrieval figures."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.metrics import pairwise_distances
from sklearn.utils import check_array, check_consistent_length, column_or_1d

from tripletsk.distances import metric_of

__all__ = [
    "SCORERS",
    "label_triplet_accuracy",
    "make_recall_at_k_scorer",
    "map_at_r",
    "map_at_r_scorer",
    "precision_at_1",
    "precision_at_1_scorer",
    "r_precision",
    "r_precision_scorer",
    "recall_at_k",
    "retrieval_report",
    "triplet_accuracy",
    "triplet_accuracy_scorer",
]


def triplet_accuracy(d_ap, d_an) -> float:
    """Fraction of triplets whose anchor is strictly closer to the positive than the negative.

    A tie counts as wrong, matching ``TripletEncoder.predict_triplets``.

    Examples
    --------
    >>> from tripletsk.evaluation.metrics import triplet_accuracy
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
    >>> from tripletsk.evaluation.metrics import label_triplet_accuracy
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


def _nearest_others(embeddings, metric, chunk_size, depth, y):
    """Yield ``(rows, neighbours)``: for each query row, the ``depth`` nearest other samples.

    ``depth`` is an int or one int per sample (the chunk uses its largest). The query itself
    is excluded by index, so a duplicate of it at distance 0 is still a neighbour. Ties are
    counted against the model: among samples at the same distance, those of another label
    than the query's (``y``) rank first, then by index. So a tie never helps a score, and a
    collapsed embedding (every distance equal) scores no better than chance, whatever the
    order of the rows. Memory is O(chunk_size * n_samples): a partition finds each row's
    depth-th distance, and only the candidates up to it are sorted.
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
        relevant = y[c] == y[rows[r]]
        order = np.lexsort((c, relevant, dist[r, c], r))
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

    Each sample queries all the other samples, ranked by distance; samples at equal distance
    rank with the other labels first, so ties never raise a figure.
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
    >>> from tripletsk.evaluation.metrics import retrieval_report
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
    for rows, neighbours in _nearest_others(embeddings, metric, chunk_size, depth, y):
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
    so an exact duplicate counts as a neighbour. Ties count against the model. Samples
    alone in their class are skipped (see :func:`retrieval_report`).

    Examples
    --------
    >>> from tripletsk.evaluation.metrics import precision_at_1
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
    >>> from tripletsk.evaluation.metrics import recall_at_k
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
    >>> from tripletsk.evaluation.metrics import r_precision
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
    >>> from tripletsk.evaluation.metrics import map_at_r
    >>> map_at_r([[0], [1], [3], [2.5]], [0, 0, 0, 1])  # (1/2 + 1/2 + 1/4) / 3
    0.4166666666666667
    """
    return retrieval_report(embeddings, y, [1], metric, chunk_size)["map_at_r"]


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
    return label_triplet_accuracy(estimator.transform(X), y, metric_of(estimator))


def precision_at_1_scorer(estimator, X, y) -> float:
    """:func:`precision_at_1` of ``estimator.transform(X)`` with labels ``y``."""
    return precision_at_1(_embed(estimator, X, y, "precision_at_1"), y, metric_of(estimator))


def r_precision_scorer(estimator, X, y) -> float:
    """:func:`r_precision` of ``estimator.transform(X)`` with labels ``y``."""
    return r_precision(_embed(estimator, X, y, "r_precision"), y, metric_of(estimator))


def map_at_r_scorer(estimator, X, y) -> float:
    """:func:`map_at_r` of ``estimator.transform(X)`` with labels ``y``."""
    return map_at_r(_embed(estimator, X, y, "map_at_r"), y, metric_of(estimator))


def make_recall_at_k_scorer(k: int) -> Callable[..., float]:
    """A scorer computing :func:`recall_at_k` of ``estimator.transform(X)`` at one ``k``.

    Examples
    --------
    >>> from tripletsk.evaluation.metrics import make_recall_at_k_scorer
    >>> make_recall_at_k_scorer(5).__name__
    'recall_at_5_scorer'
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int; got {k!r}.")

    def scorer(estimator, X, y) -> float:
        embeddings = _embed(estimator, X, y, f"recall_at_{k}")
        return recall_at_k(embeddings, y, k=int(k), metric=metric_of(estimator))

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
