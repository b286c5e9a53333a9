"""Distances between embeddings, on the NumPy side: their names and how to compute them.

A :class:`~tripletsk.TripletEncoder` is trained with one ``distance`` (see
:mod:`tripletsk.losses` for the TensorFlow twins) and every prediction, score and search
should use the same one. scikit-learn spells them differently (``"l2"`` is
``"euclidean"``): :data:`SKLEARN_METRIC` is the one map between the two spellings.
"""

from __future__ import annotations

import numpy as np

#: The distances an encoder trains with.
DISTANCES = ("l1", "l2", "sqeuclidean", "cosine")

#: How each distance is spelled by ``sklearn.metrics.pairwise_distances`` and
#: ``sklearn.neighbors.NearestNeighbors``.
SKLEARN_METRIC = {"l1": "manhattan", "l2": "euclidean", "sqeuclidean": "sqeuclidean",
                  "cosine": "cosine"}  # fmt: skip


def check_distance(distance: str) -> str:
    """Return ``distance`` if it is one of :data:`DISTANCES`, else raise ``ValueError``."""
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}; got {distance!r}.")
    return distance


def sklearn_metric(distance: str) -> str:
    """The scikit-learn metric name of a training distance.

    Examples
    --------
    >>> from tripletsk.distances import sklearn_metric
    >>> sklearn_metric("l2"), sklearn_metric("l1")
    ('euclidean', 'manhattan')
    """
    return SKLEARN_METRIC[check_distance(distance)]


def metric_of(estimator) -> str:
    """The scikit-learn metric of an estimator's ``distance`` (its last step's, for a pipeline).

    Estimators without a ``distance`` parameter are measured with ``"euclidean"``.

    Examples
    --------
    >>> from tripletsk import TripletEncoder
    >>> from tripletsk.distances import metric_of
    >>> metric_of(TripletEncoder(distance="cosine"))
    'cosine'
    """
    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    return SKLEARN_METRIC.get(getattr(final, "distance", "l2"), "euclidean")


def paired_distance(a: np.ndarray, b: np.ndarray, distance: str = "l2") -> np.ndarray:
    """Distance between matching rows of ``a`` and ``b``.

    NumPy twin of :func:`tripletsk.losses.paired_distance`, for inference.

    Examples
    --------
    >>> import numpy as np
    >>> from tripletsk.distances import paired_distance
    >>> a, b = np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([[3.0, 4.0], [0.0, 1.0]])
    >>> paired_distance(a, b).tolist(), paired_distance(a, b, "l1").tolist()
    ([5.0, 1.4142135623730951], [7.0, 2.0])
    """
    check_distance(distance)
    if distance == "l1":
        return np.abs(a - b).sum(axis=1)
    if distance == "cosine":
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        return 1.0 - np.einsum("ij,ij->i", a, b) / np.maximum(norms, 1e-12)
    squared = np.einsum("ij,ij->i", a - b, a - b)
    return squared if distance == "sqeuclidean" else np.sqrt(squared)
