"""SharedFeatures: an in-memory feature array that scikit-learn's ``clone`` does not copy.

``sklearn.base.clone`` deep-copies every parameter that is not an estimator. A
``TripletEncoder(features=array)`` inside ``GridSearchCV`` or ``cross_val_score`` therefore
copies the whole feature array once per fit: 12 settings x 3 folds on 1.6 GB of features is
36 copies of 1.6 GB (one alive at a time, but each costs the copy, and twice the memory while
it is made). Wrapping the array avoids that::

    enc = TripletEncoder(features=SharedFeatures(X))

``copy.deepcopy`` of a :class:`SharedFeatures` returns the same object (the array is read-only,
so sharing is safe), which is also what ``clone`` checks for. Pickling stores the array itself,
so joblib's process workers (``n_jobs > 1``) receive it memory-mapped rather than copied, as they
would a plain array. A :class:`~tripletsk.cache.store.FeatureStore` (an HDF5 cache) has the same
property by another route: it is copied by path.
"""

from __future__ import annotations

import numpy as np

from tripletsk.training.rows import array_take


class SharedFeatures:
    """A read-only (n, d) feature array, optionally with one string key per row.

    It works as ``features`` of :class:`~tripletsk.TripletEncoder`: items are integer row
    indices or, when ``keys`` is given, keys. Deep copies (and so ``sklearn.base.clone``)
    return the object itself instead of copying the array.

    Parameters
    ----------
    array : array-like of shape (n_samples, n_features)
        The features; converted to float32 (without copying when it already is) and exposed
        through a read-only view, so the caller's array stays writeable.
    keys : sequence of str, default=None
        One distinct key per row, e.g. image paths.

    Examples
    --------
    >>> import copy
    >>> import numpy as np
    >>> from tripletsk.training.shared import SharedFeatures
    >>> X = np.arange(6, dtype=np.float32).reshape(3, 2)
    >>> shared = SharedFeatures(X, keys=["a.jpg", "b.jpg", "c.jpg"])
    >>> copy.deepcopy(shared) is shared
    True
    >>> shared.lookup(np.array(["c.jpg", "a.jpg"]))
    array([[4., 5.],
           [0., 1.]], dtype=float32)
    >>> shared.lookup(np.array([1]))
    array([[2., 3.]], dtype=float32)
    """

    def __init__(self, array, keys=None):
        array = np.asarray(array, dtype=np.float32)
        if array.ndim != 2:
            raise ValueError(f"features must be a 2-d array (n, d); got shape {array.shape}.")
        view = array.view()
        view.flags.writeable = False
        self._array = view
        self._keys = None
        self._index = None
        if keys is not None:
            keys = np.asarray(keys, dtype=str)
            if keys.shape != (len(array),):
                raise ValueError(
                    f"keys must hold one key per row: {len(array)} rows, got keys of shape "
                    f"{keys.shape}."
                )
            self._index = {key: i for i, key in enumerate(keys.tolist())}
            if len(self._index) != len(keys):
                raise ValueError("keys must be distinct.")
            keys.flags.writeable = False
            self._keys = keys

    @property
    def array(self) -> np.ndarray:
        """The features, as a read-only float32 array."""
        return self._array

    @property
    def keys(self) -> np.ndarray | None:
        """The row keys, or None."""
        return self._keys

    @property
    def dim(self) -> int:
        """Number of features per row."""
        return self._array.shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        return self._array.shape

    def __len__(self) -> int:
        return len(self._array)

    def lookup(self, ids) -> np.ndarray:
        """Rows for integer indices or, with keys, for string keys; shape (len(ids), d).

        Raises ``KeyError`` for an unknown key and ``ValueError`` for an index out of range
        (as the estimator does for a plain array).
        """
        ids = np.asarray(ids)
        return self.take(self.indices(ids)).reshape(*ids.shape, self.dim)

    def indices(self, ids) -> np.ndarray:
        """Row numbers (int64) of integer indices or string keys, checked; same shape as ids."""
        ids = np.asarray(ids)
        if ids.dtype.kind in "USO":
            if self._index is None:
                raise KeyError(
                    "These SharedFeatures have no keys: look rows up by integer index, or "
                    "pass keys= when creating them."
                )
            names = ids.astype(str).ravel().tolist()
            missing = [k for k in names if k not in self._index]
            if missing:
                raise KeyError(
                    f"{len(missing)} keys are not in features (of {len(self)} keys), "
                    f"e.g. {missing[:5]}."
                )
            rows = np.fromiter((self._index[k] for k in names), dtype=np.int64, count=len(names))
            return rows.reshape(ids.shape)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"ids must be integers or string keys; got dtype {ids.dtype}.")
        bad = (ids < 0) | (ids >= len(self))
        if bad.any():
            raise ValueError(
                f"{int(bad.sum())} indices are outside the {len(self)} rows of features "
                f"(valid: 0 to {len(self) - 1}), e.g. {ids[bad][:5].tolist()}."
            )
        return ids.astype(np.int64)

    def take(self, rows, out: np.ndarray | None = None) -> np.ndarray:
        """Features of row numbers ``rows`` (from :meth:`indices`), as a new array or in
        ``out`` (a float32 array of that shape)."""
        return array_take(self._array)(np.asarray(rows, dtype=np.int64).ravel(), out)

    # Shared, not copied: clone() and copy.deepcopy() hand out the same object.
    def __copy__(self) -> SharedFeatures:
        return self

    def __deepcopy__(self, memo) -> SharedFeatures:
        return self

    def __reduce__(self):
        # Pickle as the array (and keys): joblib memory-maps large arrays for its workers.
        keys = None if self._keys is None else np.asarray(self._keys)
        return (SharedFeatures, (np.asarray(self._array), keys))

    def __repr__(self) -> str:
        keyed = ", keyed" if self._keys is not None else ""
        return f"SharedFeatures(shape={self._array.shape}{keyed})"
