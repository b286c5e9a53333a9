"""Leakage-safe splits of triplets: an image is never in both the train and the test side.

Triplets that share an image are not independent: if ``(a, b, c)`` is in the training set
and ``(a, b, d)`` in the test set, the model has already learned that ``a`` is like ``b``
and the test score flatters it. So the splitters here keep together all triplets linked by
shared images: the connected components of the graph whose nodes are images and whose
edges join the three images of each triplet.
"""

from __future__ import annotations

import numbers

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import BaseCrossValidator
from sklearn.utils import check_random_state

__all__ = ["TripletGroupKFold", "triplet_groups", "triplet_train_test_split"]


def _image_ids(triplets) -> np.ndarray:
    """Node ids of shape (n, 3) for image keys or indices; None for feature triplets."""
    t = np.asarray(triplets)
    if t.ndim == 3 and t.shape[1] == 3:
        return None
    if t.ndim != 2 or t.shape[1] != 3:
        raise ValueError(
            "Expected triplets of shape (n_triplets, 3) (image keys or indices) or "
            f"(n_triplets, 3, n_features); got shape {t.shape}."
        )
    if t.dtype.kind == "f" and not np.all(np.mod(t, 1) == 0):
        raise ValueError(
            "Triplets of shape (n_triplets, 3) must hold image keys or integer indices; got "
            "non-integer floats. For labelled samples (X, y) use a scikit-learn splitter "
            "such as StratifiedKFold or GroupKFold instead."
        )
    try:
        _, inverse = np.unique(t.ravel(), return_inverse=True)
    except TypeError:
        raise ValueError("Triplets must hold keys of one type (all str or all int).") from None
    return inverse.reshape(t.shape)


def triplet_groups(triplets, groups=None) -> np.ndarray:
    """A group id per triplet: triplets linked by shared images get the same id.

    Ids are the connected components of the graph whose nodes are images and whose edges
    join the three images of each triplet. Pass them as ``groups`` to any scikit-learn
    group splitter (``GroupKFold``, ``GroupShuffleSplit``, ...).

    Parameters
    ----------
    triplets : array-like of shape (n_triplets, 3) or (n_triplets, 3, n_features)
        Image keys or indices. Feature triplets carry no image identity, so each is its own
        group.
    groups : array-like of shape (n_triplets,), default=None
        Extra constraint: triplets with equal ``groups`` values also stay together (e.g. the
        photographer, or the source video of frames).

    Returns
    -------
    ids : ndarray of shape (n_triplets,), dtype int64
        Consecutive ids from 0.

    Examples
    --------
    >>> from tripletsk.model_selection import triplet_groups
    >>> triplet_groups([["a", "b", "c"], ["c", "d", "e"], ["f", "g", "h"]]).tolist()
    [0, 0, 1]
    """
    ids = _image_ids(triplets)
    n = len(triplets)
    if ids is None:  # feature triplets: one node each, no shared images
        ids = np.arange(n)[:, None]
        rows, cols = [], []
    else:  # the anchor's edges to positive and negative connect all three
        rows, cols = [ids[:, 0], ids[:, 0]], [ids[:, 1], ids[:, 2]]
    n_nodes = int(ids.max()) + 1 if n else 0
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (n,):
            raise ValueError(f"groups must have shape ({n},); got {groups.shape}.")
        _, group_ids = np.unique(groups, return_inverse=True)
        rows.append(ids[:, 0])
        cols.append(n_nodes + group_ids)  # one extra node per group joins its triplets
        n_nodes += int(group_ids.max()) + 1 if n else 0
    rows = np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)
    cols = np.concatenate(cols) if cols else np.empty(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_nodes, n_nodes))
    _, component = connected_components(graph, directed=False)
    # Renumber by first appearance so ids follow the triplet order.
    _, first, inverse = np.unique(component[ids[:, 0]], return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse]


def _too_few_groups(n_groups: int, needed: int, what: str) -> ValueError:
    return ValueError(
        f"The triplets form only {n_groups} connected group(s) of images (triplets that share "
        f"an image must stay on the same side), but {what} needs at least {needed}. Use more "
        "independent triplets, fewer splits, or split the images first (e.g. by class) and "
        "make triplets within each part."
    )


class TripletGroupKFold(BaseCrossValidator):
    """K-fold cross-validation of triplets in which no image is in both train and test.

    Triplets linked by shared images (see :func:`triplet_groups`) stay in the same fold.
    Groups are dealt out largest first, each to the fold with the fewest triplets so far,
    which balances the folds' sizes as well as the groups allow. Usable as ``cv=`` in
    :func:`~sklearn.model_selection.cross_val_score` and
    :class:`~sklearn.model_selection.GridSearchCV`, with triplets as ``X`` and no ``y``.

    Parameters
    ----------
    n_splits : int, default=5
        Number of folds, at least 2.
    shuffle : bool, default=False
        Whether to randomise which of equally large groups goes to which fold. Without it,
        the folds are a deterministic function of the triplets.
    random_state : int, RandomState instance or None, default=None
        Used when ``shuffle=True``.

    Notes
    -----
    Feature triplets of shape (n_triplets, 3, n_features) do not say which rows are the
    same image, so each triplet is its own group and this is a plain k-fold.

    Examples
    --------
    >>> from tripletsk.model_selection import TripletGroupKFold
    >>> T = [["a", "b", "c"], ["c", "d", "e"], ["f", "g", "h"], ["i", "j", "k"]]
    >>> for train, test in TripletGroupKFold(n_splits=2).split(T):
    ...     print(train.tolist(), test.tolist())
    [2, 3] [0, 1]
    [0, 1] [2, 3]
    """

    def __init__(self, n_splits: int = 5, *, shuffle: bool = False, random_state=None):
        if not isinstance(n_splits, numbers.Integral) or isinstance(n_splits, bool):
            raise ValueError(f"n_splits must be an int; got {n_splits!r}.")
        if n_splits < 2:
            raise ValueError(f"n_splits must be at least 2; got {n_splits}.")
        if not isinstance(shuffle, bool):
            raise TypeError(f"shuffle must be True or False; got {shuffle!r}.")
        self.n_splits = int(n_splits)
        self.shuffle = shuffle
        self.random_state = random_state

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        """The number of folds, ``n_splits``."""
        return self.n_splits

    def _iter_test_indices(self, X=None, y=None, groups=None):
        group = triplet_groups(X, groups)
        sizes = np.bincount(group)
        if len(sizes) < self.n_splits:
            raise _too_few_groups(len(sizes), self.n_splits, f"{self.n_splits}-fold splitting")
        order = np.arange(len(sizes))
        if self.shuffle:
            order = check_random_state(self.random_state).permutation(len(sizes))
        order = order[np.argsort(-sizes[order], kind="stable")]
        fold_of_group = np.empty(len(sizes), dtype=np.int64)
        fold_sizes = np.zeros(self.n_splits, dtype=np.int64)
        for g in order:
            fold = int(np.argmin(fold_sizes))  # the emptiest fold, the first on ties
            fold_of_group[g] = fold
            fold_sizes[fold] += sizes[g]
        fold_of_triplet = fold_of_group[group]
        for fold in range(self.n_splits):
            yield np.flatnonzero(fold_of_triplet == fold)

    def split(self, X, y=None, groups=None):
        """Generate ``(train, test)`` row indices into the triplets ``X``.

        Parameters
        ----------
        X : array-like of shape (n_triplets, 3) or (n_triplets, 3, n_features)
            Triplets of image keys or indices, or feature triplets.
        y : None
            Ignored; present for the scikit-learn API.
        groups : array-like of shape (n_triplets,), default=None
            Extra grouping: triplets with equal values also stay in one fold.

        Yields
        ------
        train, test : ndarray of int64
        """
        yield from super().split(X, y, groups)


def triplet_train_test_split(
    triplets, test_size: float | int = 0.25, *, random_state=None, groups=None
) -> tuple[np.ndarray, np.ndarray]:
    """Split triplets into train and test so that no image is on both sides.

    Whole groups of linked triplets (:func:`triplet_groups`) are drawn at random into the
    test side until it is as close as possible to ``test_size``; with large groups the
    sizes are approximate.

    Parameters
    ----------
    triplets : array-like of shape (n_triplets, 3) or (n_triplets, 3, n_features)
    test_size : float or int, default=0.25
        Fraction (between 0 and 1) or number of triplets to put in the test side.
    random_state : int, RandomState instance or None, default=None
    groups : array-like of shape (n_triplets,), default=None
        Extra grouping, as in :func:`triplet_groups`.

    Returns
    -------
    train, test : ndarray
        Rows of ``triplets``, in their original order.

    Examples
    --------
    >>> from tripletsk.model_selection import triplet_train_test_split
    >>> T = [["a", "b", "c"], ["c", "d", "e"], ["f", "g", "h"], ["i", "j", "k"]]
    >>> train, test = triplet_train_test_split(T, test_size=0.5, random_state=0)
    >>> len(train), len(test)
    (2, 2)
    """
    t = np.asarray(triplets)
    n = len(t)
    if isinstance(test_size, numbers.Integral) and not isinstance(test_size, bool):
        if not 1 <= test_size < n:
            raise ValueError(f"An int test_size must be between 1 and {n - 1}; got {test_size}.")
        target = int(test_size)
    elif isinstance(test_size, numbers.Real) and 0 < test_size < 1:
        target = int(np.ceil(test_size * n))
    else:
        raise ValueError(f"test_size must be a float in (0, 1) or an int; got {test_size!r}.")
    group = triplet_groups(t, groups)
    sizes = np.bincount(group)
    if len(sizes) < 2:
        raise _too_few_groups(len(sizes), 2, "a train/test split")
    order = check_random_state(random_state).permutation(len(sizes))
    filled = np.cumsum(sizes[order])[:-1]  # test sizes with 1, 2, ... groups; train non-empty
    n_test_groups = int(np.argmin(np.abs(filled - target))) + 1
    in_test = np.zeros(len(sizes), dtype=bool)
    in_test[order[:n_test_groups]] = True
    return t[~in_test[group]], t[in_test[group]]
