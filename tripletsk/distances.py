"""Distances between embeddings, on the NumPy side: their names and how to compute them.

A :class:`~tripletsk.TripletEncoder` is trained with one ``distance`` (see
:mod:`tripletsk.training.losses` for the TensorFlow twins) and every prediction, score and search
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

    NumPy twin of :func:`tripletsk.training.losses.paired_distance`, for inference.

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


#: Triplets whose distances are computed at a time: 3 x 65,536 rows of a 64-d float32
#: embedding are 48 MiB, whatever the number of triplets.
TRIPLET_CHUNK = 65_536


def triplet_distances(
    embeddings: np.ndarray, triplets: np.ndarray, distance: str = "l2"
) -> tuple[np.ndarray, np.ndarray]:
    """``(d(anchor, positive), d(anchor, negative))`` of triplets of rows of ``embeddings``.

    Computed :data:`TRIPLET_CHUNK` triplets at a time, so that memory is the two results plus
    one chunk, not three copies of the embedding per triplet.

    Examples
    --------
    >>> import numpy as np
    >>> from tripletsk.distances import triplet_distances
    >>> emb = np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]])
    >>> d_ap, d_an = triplet_distances(emb, np.array([[0, 1, 2], [2, 0, 1]]))
    >>> d_ap.tolist(), d_an.tolist()
    ([5.0, 1.0], [1.0, 4.47213595499958])
    """
    check_distance(distance)
    triplets = np.asarray(triplets)
    dtype = np.result_type(embeddings.dtype, np.float32)
    d_ap, d_an = np.empty(len(triplets), dtype), np.empty(len(triplets), dtype)
    for start in range(0, len(triplets), TRIPLET_CHUNK):
        part = triplets[start : start + TRIPLET_CHUNK]
        a = embeddings[part[:, 0]]
        d_ap[start : start + len(part)] = paired_distance(a, embeddings[part[:, 1]], distance)
        d_an[start : start + len(part)] = paired_distance(a, embeddings[part[:, 2]], distance)
    return d_ap, d_an
