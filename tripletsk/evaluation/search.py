"""Nearest-neighbour search over embeddings: which images look most like a query."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.neighbors import NearestNeighbors
from sklearn.utils import check_array

from tripletsk.distances import metric_of

__all__ = ["NeighborIndex", "Neighbors", "build_index", "clamped_k", "search"]


@dataclass(frozen=True)
class Neighbors:
    """The neighbours of a batch of queries, nearest first.

    Attributes
    ----------
    indices : ndarray of shape (n_queries, k), dtype int64
        Rows of the index.
    keys : ndarray of shape (n_queries, k)
        The keys of those rows (image names, or the row numbers if the index has no keys).
    distances : ndarray of shape (n_queries, k), dtype float64
    """

    indices: np.ndarray
    keys: np.ndarray
    distances: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def to_list(self) -> list[list[tuple[object, float]]]:
        """One list of ``(key, distance)`` pairs per query, e.g. to print or to JSON."""
        return [
            list(zip(keys, distances, strict=True))
            for keys, distances in zip(self.keys.tolist(), self.distances.tolist(), strict=True)
        ]


def clamped_k(k: int, available: int) -> int:
    """``k``, or the ``available`` neighbours with a warning when ``k`` asks for more.

    For the ``search`` methods of an index: the warning points at their caller.
    """
    if k <= available:
        return k
    warnings.warn(
        f"Asked for {k} neighbours but only {available} can be returned; returning {available}.",
        UserWarning,
        stacklevel=3,
    )
    return int(available)


def _as_keys(keys) -> np.ndarray:
    """A 1-d object array of keys; ``bytes`` (as h5py may return them) decoded as UTF-8."""
    keys = np.asarray(keys, dtype=object).ravel()
    return np.array(
        [k.decode("utf-8") if isinstance(k, bytes) else k for k in keys.tolist()], dtype=object
    )


class NeighborIndex:
    """Exact nearest-neighbour search over a fixed set of embeddings.

    Brute force with :class:`sklearn.neighbors.NearestNeighbors`: exact, no training, and
    fast enough for the ~10^5 images a feature cache typically holds.

    Parameters
    ----------
    embeddings : array-like of shape (n_items, n_dims)
    keys : array-like of shape (n_items,), default=None
        A unique name per row, e.g. image keys; ``None`` uses the row numbers.
    metric : str, default="euclidean"
        Any metric :class:`~sklearn.neighbors.NearestNeighbors` accepts with brute force.

    Examples
    --------
    >>> from tripletsk.evaluation.search import NeighborIndex
    >>> index = NeighborIndex([[0.0], [1.0], [3.0]], keys=["a.jpg", "b.jpg", "c.jpg"])
    >>> found = index.query([[0.9]], k=2)
    >>> found.keys.tolist(), found.distances.round(2).tolist()
    ([['b.jpg', 'a.jpg']], [[0.1, 0.9]])
    >>> index.query([[0.0]], k=1, exclude_self_keys=["a.jpg"]).to_list()
    [[('b.jpg', 1.0)]]
    """

    def __init__(self, embeddings, keys=None, metric: str = "euclidean"):
        self.embeddings = check_array(embeddings, dtype=[np.float64, np.float32])
        n = len(self.embeddings)
        self.keys = np.arange(n) if keys is None else _as_keys(keys)
        if len(self.keys) != n:
            raise ValueError(f"Got {len(self.keys)} keys for {n} embeddings; need one per row.")
        self._row_of = {key: row for row, key in enumerate(self.keys.tolist())}
        if len(self._row_of) != n:
            raise ValueError("keys must be unique: a key names one row of the index.")
        self.metric = metric
        self._nn = NearestNeighbors(algorithm="brute", metric=metric).fit(self.embeddings)

    def __len__(self) -> int:
        return len(self.embeddings)

    def query(self, query_embeddings, k: int = 5, exclude_self_keys=None) -> Neighbors:
        """The ``k`` nearest indexed items of each query, nearest first.

        Parameters
        ----------
        query_embeddings : array-like of shape (n_queries, n_dims)
        k : int, default=5
            Neighbours per query. More than the index can give (its size, or one less when
            excluding) is clamped to that with a ``UserWarning``, so that asking "top 10"
            of a small collection still answers.
        exclude_self_keys : sequence of length n_queries, default=None
            For each query, a key to leave out of its own results (the query image itself,
            when it is indexed), or ``None``. Keys not in the index exclude nothing. The
            item is excluded by key, so its duplicates at distance 0 are still found.

        Returns
        -------
        Neighbors
        """
        queries = check_array(query_embeddings, dtype=[np.float64, np.float32])
        if queries.shape[1] != self.embeddings.shape[1]:
            raise ValueError(
                f"Queries have {queries.shape[1]} dimensions but the index has "
                f"{self.embeddings.shape[1]}."
            )
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int; got {k!r}.")
        excluded = self._excluded_rows(exclude_self_keys, len(queries))
        available = len(self) - (excluded >= 0).any()
        if available < 1:
            raise ValueError("The index holds only the query itself: no neighbour to return.")
        k = clamped_k(k, available)
        n_ask = min(len(self), k + 1) if (excluded >= 0).any() else k
        distances, indices = self._nn.kneighbors(queries, n_neighbors=n_ask)
        # Move the excluded row (if found) to the end, keeping the others' order; cut to k.
        order = np.argsort(indices == excluded[:, None], axis=1, kind="stable")[:, :k]
        indices = np.take_along_axis(indices, order, axis=1).astype(np.int64)
        distances = np.take_along_axis(distances, order, axis=1)
        return Neighbors(indices, self.keys[indices], distances.astype(np.float64))

    def _excluded_rows(self, exclude_self_keys, n_queries: int) -> np.ndarray:
        """The row to exclude for each query, or -1."""
        if exclude_self_keys is None:
            return np.full(n_queries, -1, dtype=np.int64)
        exclude = _as_keys(exclude_self_keys)
        if len(exclude) != n_queries:
            raise ValueError(
                f"exclude_self_keys has {len(exclude)} entries for {n_queries} queries."
            )
        return np.array([self._row_of.get(key, -1) for key in exclude.tolist()], dtype=np.int64)


def _indexed_keys(encoder) -> np.ndarray:
    """All keys of the encoder's ``features``: a cache path, or an object with ``keys``."""
    features = getattr(encoder, "features", None)
    if isinstance(features, str | os.PathLike):
        from tripletsk.cache.opened import open_cache

        features = open_cache(features)
    keys = None if isinstance(features, np.ndarray) else getattr(features, "keys", None)
    if keys is not None and not callable(keys):  # a mapping's keys() is not a key list
        return _as_keys(keys)
    raise ValueError(
        "Cannot tell which images to search: the encoder's features= has no keys. "
        "Pass keys=, or build an index with build_index(encoder, keys)."
    )


def _is_key_list(queries) -> bool:
    """Whether queries are image keys (a 1-d list or array of strings), not feature rows."""
    if isinstance(queries, Sequence) and not isinstance(queries, np.ndarray):
        return len(queries) > 0 and all(isinstance(q, (str, bytes)) for q in queries)
    queries = np.asarray(queries)
    if queries.ndim != 1 or queries.size == 0:
        return False
    return queries.dtype.kind in "US" or all(isinstance(q, (str, bytes)) for q in queries.tolist())


def build_index(
    encoder, keys=None, *, metric: str | None = None, chunk_size: int = 4096
) -> NeighborIndex:
    """Embed cached images with a fitted encoder and index them for :func:`search`.

    Parameters
    ----------
    encoder : fitted estimator with ``transform``
        Typically a fitted :class:`~tripletsk.TripletEncoder`; ``transform(keys)`` must
        accept image keys.
    keys : array-like of str, default=None
        Images to index. ``None`` takes every key of the encoder's feature store (its
        ``features``: a cache path, or an object with a ``keys`` attribute).
    metric : str, default=None
        A :class:`~sklearn.neighbors.NearestNeighbors` metric; ``None`` uses the encoder's
        ``distance`` (:func:`tripletsk.distances.metric_of`), Euclidean if it has none.
    chunk_size : int, default=4096
        Keys embedded at once, to bound memory.

    Returns
    -------
    NeighborIndex
    """
    keys = _indexed_keys(encoder) if keys is None else _as_keys(keys)
    if len(keys) == 0:
        raise ValueError("No keys to index.")
    parts = [encoder.transform(keys[i : i + chunk_size]) for i in range(0, len(keys), chunk_size)]
    if metric is None:
        metric = metric_of(encoder)
    return NeighborIndex(np.concatenate(parts), keys, metric=metric)


def search(
    encoder,
    queries,
    k: int = 5,
    *,
    keys=None,
    index: NeighborIndex | None = None,
    precomputed: bool = False,
    chunk_size: int = 4096,
) -> Neighbors:
    """Find the cached images nearest to each query, in the encoder's embedding space.

    Parameters
    ----------
    encoder : fitted estimator with ``transform``
        E.g. a fitted :class:`~tripletsk.TripletEncoder`.
    queries : str, sequence of str, or array-like of shape (n_queries, n_features)
        Image keys (embedded with ``encoder.transform``; a query that is itself indexed is
        left out of its own results), or feature rows for ``encoder.transform``, or, with
        ``precomputed=True``, embeddings.
    k : int, default=5
        Neighbours per query (clamped with a warning to what the index holds).
    keys : array-like of str, default=None
        The images to search among; ``None`` means all images of the encoder's store.
        Ignored when ``index`` is given.
    index : NeighborIndex, default=None
        An index from :func:`build_index`, to search many times without re-embedding.
    precomputed : bool, default=False
        Whether ``queries`` are already embeddings.
    chunk_size : int, default=4096
        Keys embedded at once when building the index.

    Returns
    -------
    Neighbors
        One row per query.

    Examples
    --------
    >>> import numpy as np
    >>> from tripletsk.evaluation.search import search
    >>> class Store:  # what a FeatureStore offers
    ...     keys = ["a.jpg", "b.jpg", "c.jpg"]
    ...     vectors = {"a.jpg": [0.0], "b.jpg": [1.0], "c.jpg": [5.0]}
    ...     def lookup(self, keys):
    ...         return np.array([self.vectors[k] for k in keys])
    >>> class Encoder:  # a stand-in for a fitted TripletEncoder
    ...     features = Store()
    ...     def transform(self, keys):
    ...         return self.features.lookup(keys)
    >>> search(Encoder(), "a.jpg", k=2).to_list()
    [[('b.jpg', 1.0), ('c.jpg', 5.0)]]
    >>> search(Encoder(), [[4.0]], k=1, precomputed=True).to_list()
    [[('c.jpg', 1.0)]]
    """
    if index is None:
        index = build_index(encoder, keys, chunk_size=chunk_size)
    if isinstance(queries, (str, bytes)):
        queries = [queries]
    exclude = None
    if precomputed:
        embedded = queries
    else:
        if _is_key_list(queries):
            queries = _as_keys(queries)
            exclude = queries  # an indexed query should not find itself
        embedded = encoder.transform(queries)
    return index.query(embedded, k=k, exclude_self_keys=exclude)
