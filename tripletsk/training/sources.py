"""Feature sources: where the ids a user passes (row indices or image keys) get their features.

An estimator's ``features=`` can be an array, a :class:`~tripletsk.training.shared.SharedFeatures`,
a :class:`~tripletsk.cache.store.FeatureStore` or the path of one, a mapping key -> vector, or any
object with a ``lookup(keys)`` method. :func:`as_source` turns each into a
:class:`FeatureSource`, whose one question is "the rows of these ids" (as metric-learn's
preprocessor). Rows are described, not copied (:class:`~tripletsk.training.rows.FeatureRows`): an
array, shared features or cache is read later, a chunk at a time; only a mapping or a
``lookup`` object is gathered into a new array.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import numpy as np
from sklearn.utils.validation import check_array

from tripletsk.cache.opened import open_cache
from tripletsk.cache.store import DEFAULT_CACHE, FeatureStore
from tripletsk.errors import NonFiniteFeaturesError
from tripletsk.training.rows import FeatureRows, array_take
from tripletsk.training.shared import SharedFeatures

__all__ = [
    "FeatureSource",
    "as_source",
    "feature_rows",
    "labelled_rows",
    "triplet_rows",
    "unique_inverse",
]


class FeatureSource(Protocol):
    """Anything that gives the rows of distinct ids (integer indices or string keys)."""

    def rows(self, ids: np.ndarray) -> FeatureRows:
        """The rows of ``ids`` (distinct, sorted), unread where the source allows."""


class ArraySource:
    """A 2-d numeric array, indexed by integer row numbers."""

    def __init__(self, array):
        array = np.asarray(array)
        if array.ndim != 2:
            raise ValueError(
                f"features must be a 2-d array (n_samples, n_features); got shape {array.shape}."
            )
        if array.dtype.kind not in "biuf":
            raise ValueError(f"features must be numeric; got an array of dtype {array.dtype}.")
        self.array = array

    def rows(self, ids: np.ndarray) -> FeatureRows:
        if ids.dtype.kind in "US":
            raise ValueError(
                "features is an array, so items must be integer row indices; got strings "
                f"such as {ids.ravel()[0]!r}. Pass a feature cache or a mapping for keys."
            )
        ids = check_indices(ids, len(self.array))
        return FeatureRows(array_take(self.array), ids, self.array.shape[1])


class StoreSource:
    """A :class:`FeatureStore` or :class:`SharedFeatures`: row numbers now, features when read.

    ``provenance`` (a :class:`~tripletsk.cache.provenance.ProvenanceCheck`), if given, checks the
    cache's provenance against the one a model was fitted on before any row is used, and
    records it (in ``fit``).
    """

    def __init__(self, store: FeatureStore | SharedFeatures, provenance=None):
        self.store = store
        self.provenance = provenance

    def rows(self, ids: np.ndarray) -> FeatureRows:
        store = self.store
        if self.provenance is not None:
            self.provenance.read_from(store)
        if ids.dtype.kind in "iu":  # row numbers into the cache
            rows = check_indices(ids, len(store))
        else:
            rows = store.indices(ids)
        return FeatureRows(
            store.take,
            rows,
            store.dim,
            chunk_rows=getattr(store, "chunk_rows", None),  # a SharedFeatures has none
            prefetch=getattr(store, "prefetch", None),
        )


class LookupSource:
    """A mapping key -> vector, or an object with ``lookup(keys)``: gathered into an array."""

    def __init__(self, lookup: Mapping | object):
        self.lookup = lookup

    def rows(self, ids: np.ndarray) -> FeatureRows:
        if isinstance(self.lookup, Mapping) and not hasattr(self.lookup, "lookup"):
            gathered = _lookup_mapping(self.lookup, ids)
        else:
            gathered = self.lookup.lookup(ids)
        gathered = check_array(np.asarray(gathered), dtype=np.float32, input_name="features")
        return FeatureRows.from_array(gathered)


def as_source(features, is_text: bool = True, provenance=None) -> FeatureSource:
    """The :class:`FeatureSource` of an estimator's ``features=`` (see the module docstring).

    ``None`` stands for the default cache ``cache/features.h5``, which only string keys use.
    ``provenance``: a :class:`~tripletsk.cache.provenance.ProvenanceCheck` for a cache's rows.
    """
    if features is None:
        if not is_text:
            raise ValueError(
                "Integer indices need features=: pass the (n_samples, d) array they index."
            )
        if not Path(DEFAULT_CACHE).exists():
            raise ValueError(
                f"Image keys need a feature cache, and the default one ({DEFAULT_CACHE}) "
                "does not exist: run `tripletsk extract-features IMAGES_DIR` first, or "
                "pass features= (a cache path, a FeatureStore or a key -> vector mapping)."
            )
        features = DEFAULT_CACHE
    if isinstance(features, str | os.PathLike):
        features = open_cache(features)
    if isinstance(features, FeatureStore | SharedFeatures):
        return StoreSource(features, provenance)
    if hasattr(features, "lookup") or isinstance(features, Mapping):
        return LookupSource(features)
    return ArraySource(features)


def feature_rows(features, ids, provenance=None) -> tuple[FeatureRows, np.ndarray]:
    """The distinct items of ``ids`` as rows of ``features``, and ``ids`` as indices into them.

    ``provenance``: a :class:`~tripletsk.cache.provenance.ProvenanceCheck` for a cache's rows.

    Examples
    --------
    >>> import numpy as np
    >>> from tripletsk.training.sources import feature_rows
    >>> rows, inverse = feature_rows({"a": [1.0], "b": [2.0]}, np.array(["b", "a", "b"]))
    >>> rows.take().ravel().tolist(), inverse.tolist()
    ([1.0, 2.0], [1, 0, 1])
    """
    ids = np.asarray(ids)
    if ids.dtype.kind == "f" and np.all(np.isfinite(ids)) and np.all(ids == np.round(ids)):
        ids = ids.astype(np.int64)  # e.g. indices that went through a float array
    if ids.dtype.kind not in "iuUSO":
        raise ValueError(
            f"With features set, items must be integer indices or string keys; got dtype "
            f"{ids.dtype}."
        )
    if ids.dtype.kind == "O":
        ids = ids.astype(str)
    unique, inverse = unique_inverse(ids)
    source = as_source(features, is_text=ids.dtype.kind in "US", provenance=provenance)
    try:
        return source.rows(unique), inverse.reshape(ids.shape)
    except KeyError as exc:  # a store's unknown key: keep its message, as a ValueError
        raise ValueError(exc.args[0] if exc.args else str(exc)) from exc


def unique_inverse(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(ids, return_inverse=True)``, the inverse shaped like ``ids``; in linear
    time for integers in a range not much wider than their number (row numbers: the 15
    million of a 5-million-line triplet file take 0.1 s instead of 2 s of sorting).

    Examples
    --------
    >>> import numpy as np
    >>> unique, inverse = unique_inverse(np.array([[7, 3, 7], [5, 3, 3]]))
    >>> unique.tolist(), inverse.tolist()
    ([3, 5, 7], [[2, 0, 2], [1, 0, 0]])
    """
    if ids.dtype.kind in "iu" and ids.size:
        low, high = int(ids.min()), int(ids.max())
        if high - low < 4 * ids.size + 4096:
            offsets = ids - low if low else ids
            present = np.zeros(high - low + 1, dtype=bool)
            present[offsets] = True
            rank = np.cumsum(present) - 1
            return (np.flatnonzero(present) + low).astype(ids.dtype), rank[offsets]
    unique, inverse = np.unique(ids, return_inverse=True)
    return unique, inverse.reshape(ids.shape)


def triplet_rows(features, T, provenance=None) -> tuple[FeatureRows, np.ndarray]:
    """Distinct items of triplets ``T`` as rows, and the (n, 3) indices into them.

    ``T`` holds feature vectors, shape (n, 3, d), or ids into ``features``, shape (n, 3).
    ``provenance`` as for :func:`feature_rows`.

    Examples
    --------
    >>> import numpy as np
    >>> from tripletsk.training.sources import triplet_rows
    >>> rows, triplets = triplet_rows(np.eye(4), [[3, 1, 0], [1, 3, 2]])
    >>> rows.rows.tolist(), triplets.tolist()
    ([0, 1, 2, 3], [[3, 1, 0], [1, 3, 2]])
    """
    if isinstance(T, str | os.PathLike):
        raise ValueError(
            "Triplets must be an array; to read a triplet file use "
            "tripletsk.triplets.files.read_triplets(path)."
        )
    T = np.asarray(T)
    if T.size == 0:
        raise ValueError(f"Found an empty array of triplets (shape {T.shape}); need n >= 1.")
    if T.ndim == 3 and T.shape[1] == 3:
        flat = check_array(T.reshape(-1, T.shape[2]), dtype=np.float32, input_name="triplets")
        # One row per distinct vector, as for keys: an image in many triplets counts once
        # in the standardisation and is embedded once per batch.
        items, inverse = np.unique(flat, axis=0, return_inverse=True)
        return FeatureRows.from_array(items), inverse.reshape(-1, 3)
    # (n, 3) ids: always with features=; without, keys use the default cache and integer
    # indices get as_source's "need features=" error. Float rows need labels.
    if T.ndim == 2 and T.shape[1] == 3 and (features is not None or T.dtype.kind in "iuUSO"):
        return feature_rows(features, T.astype(str) if T.dtype.kind == "O" else T, provenance)
    if T.ndim == 2:
        raise ValueError(
            f"TripletEncoder requires y to be passed, but the target y is None: X of shape "
            f"{T.shape} is neither triplets of feature vectors (n, 3, d) nor triplets of "
            "indices or keys (n, 3) into features=. Call fit(X, y) with class labels, or "
            "fit(T) with triplets."
        )
    raise ValueError(
        f"Triplets must have shape (n, 3, d) (feature vectors) or (n, 3) (indices or keys "
        f"into features); got shape {T.shape}."
    )


def labelled_rows(
    features, X, y, validate: Callable, provenance=None
) -> tuple[FeatureRows, np.ndarray]:
    """Labelled samples as rows (one per sample, repeats included) and checked labels.

    ``X`` holds 1-d ids into ``features`` or, if ``features`` is None or ``X`` is 2-d,
    feature vectors, which ``validate(X, y)`` checks (the estimator's ``validate_data``).
    ``provenance`` as for :func:`feature_rows`.
    """
    X_arr = np.asarray(X) if not hasattr(X, "iloc") else X
    if features is not None and np.ndim(X_arr) == 1:
        distinct, inverse = feature_rows(features, np.asarray(X_arr), provenance)
        items = distinct.select(inverse)
        y = np.asarray(y)
        if len(y) != len(items):
            raise ValueError(f"X has {len(items)} items but y has {len(y)} labels.")
    else:
        X, y = validate(X, y)
        items = FeatureRows.from_array(X)
    return items, check_labels(y)


def check_labels(y: np.ndarray) -> np.ndarray:
    """Class labels that can define triplets: 1-d, 2 classes or more, a class of 2 or more."""
    if y.ndim != 1:
        raise ValueError(f"y should be a 1d array of class labels; got shape {y.shape}.")
    from sklearn.utils.multiclass import check_classification_targets

    with warnings.catch_warnings():
        # Labels here name identities, and many small ones (a few photos per person or product)
        # are the usual case in metric learning, not a sign of regression targets.
        warnings.filterwarnings("ignore", "The number of unique classes is greater than 50%")
        check_classification_targets(y)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ValueError(
            f"Learning from labels needs at least 2 classes; got {len(classes)} class "
            f"in {len(y)} samples."
        )
    if counts.max() < 2:
        raise ValueError(
            "Learning from labels needs a class with at least 2 samples to form a positive "
            f"pair; each of the {len(classes)} classes has one sample."
        )
    return y


def check_indices(idx: np.ndarray, n: int) -> np.ndarray:
    """Integer indices into ``n`` rows, or a ``ValueError`` naming those out of range."""
    if idx.dtype.kind not in "iu":
        raise ValueError(f"Indices into features must be integers; got dtype {idx.dtype}.")
    bad = (idx < 0) | (idx >= n)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} indices are outside the {n} rows of features (valid: 0 to "
            f"{n - 1}), e.g. {idx[bad][:5].tolist()}."
        )
    return idx


def _lookup_mapping(mapping: Mapping, keys: np.ndarray) -> np.ndarray:
    missing = [k for k in keys.tolist() if k not in mapping]
    if missing:
        raise ValueError(
            f"{len(missing)} keys are not in features (of {len(mapping)} keys), e.g. {missing[:5]}."
        )
    return np.stack([np.asarray(mapping[k], dtype=np.float32) for k in keys.tolist()])


def non_finite_ids_error(exc, ids: np.ndarray, inverse: np.ndarray) -> NonFiniteFeaturesError:
    """``exc`` (positions among the distinct items of ``ids``) restated with the ids asked for."""
    asked = np.isin(inverse, exc.items)
    named = ids[asked]
    return NonFiniteFeaturesError(
        f"the features of {', '.join(map(repr, named[:3].tolist()))}"
        f"{' and others' if len(named) > 3 else ''} are NaN or infinite, so they have no "
        "embedding; re-extract those images, or leave them out",
        items=np.flatnonzero(asked),
    )
