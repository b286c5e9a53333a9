"""Leakage-safe splits of triplets: an image is never in both the train and the test side.

Triplets that share an image are not independent: if ``(a, b, c)`` is in the training set
and ``(a, b, d)`` in the test set, the model has already learned that ``a`` is like ``b``
and the test score flatters it. Two ways to split without such leaks:

* :class:`TripletImageKFold` splits the *images* into folds and keeps the triplets wholly on
  one side of each split, dropping those that cross it. It works on any triplets, including
  random triplets over one set of images (``tripletsk make-triplets``), where every image is
  linked to every other.
* :class:`TripletGroupKFold` and :func:`triplet_train_test_split` keep together all triplets
  linked by shared images (the connected components of the graph whose nodes are images and
  whose edges join the three images of each triplet), and drop nothing; they need triplets
  that form several such groups.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import numpy as np
from sklearn.model_selection import BaseCrossValidator
from sklearn.utils import check_random_state

from tripletsk.evaluation.triplet_graph import images_and_ids, triplet_groups

__all__ = [
    "TripletGroupKFold",
    "TripletImageKFold",
    "triplet_train_test_split",
]


def _too_few_groups(n_groups: int, needed: int, what: str) -> ValueError:
    return ValueError(
        f"The triplets form only {n_groups} connected group(s) of images (triplets that share "
        f"an image must stay on the same side), but {what} needs at least {needed}. Use more "
        "independent triplets, fewer splits, or split the images first (e.g. by class) and "
        "make triplets within each part."
    )


class TripletGroupKFold(BaseCrossValidator):
    """K-fold cross-validation of triplets in which no image is in both train and test.

    Triplets linked by shared images (see
    :func:`~tripletsk.evaluation.triplet_graph.triplet_groups`) stay in the same fold. Groups
    are dealt out largest first, each to the fold with the fewest triplets so far,
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
    >>> from tripletsk.evaluation.model_selection import TripletGroupKFold
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


class TripletImageKFold(BaseCrossValidator):
    """K-fold cross-validation of triplets over one set of images: folds of images, not triplets.

    The distinct images of the triplets are dealt at random into ``n_splits`` folds of equal
    size (within one image; with ``stratify``, each class is spread evenly over the folds).
    In split ``k`` the test side holds the triplets whose three images are all in fold ``k``,
    the train side the triplets with no image in fold ``k``, and the triplets with images on
    both sides are dropped from that split. So no image is ever in both train and test, even
    when every image is linked to every other (random triplets from class folders, as
    ``tripletsk make-triplets`` writes, on which :class:`TripletGroupKFold` finds a single
    group). Usable as ``cv=`` in :func:`~sklearn.model_selection.cross_val_score` and
    :class:`~sklearn.model_selection.GridSearchCV`, with triplets of image keys or indices
    as ``X`` and no ``y``.

    The price is the dropped triplets. A triplet of three random images is in the test side
    of a split with probability ``(1/k)**3`` and in its train side with ``((k-1)/k)**3``: at
    ``k=3`` (the default), 4% and 30% of the triplets, so 67% are dropped from each split and
    each model is fitted on about 30% of the triplets; at ``k=2``, 12.5% and 12.5%; at
    ``k=5``, 0.8% and 51%. After ``split``, the attributes below say how many. Small test
    sides make noisy fold scores: ``n_repeats`` deals the images again (as
    :class:`~sklearn.model_selection.RepeatedKFold`), so that more triplets are tested.

    Parameters
    ----------
    n_splits : int, default=3
        Number of folds of images, at least 2.
    n_repeats : int, default=1
        Number of deals of the images into folds; ``n_splits * n_repeats`` splits in all.
    stratify : None, "folders", mapping or array-like, default=None
        Class of each image, spread evenly over the folds. ``"folders"``: the first folder
        of each image key (``cat/1.jpg`` is in class ``cat``, see
        :func:`tripletsk.triplets.folders.labels_from_folders`); a mapping: key -> class; an array:
        the class of each integer image index.
    random_state : int, RandomState instance or None, default=None
        Controls the deal of images into folds; pass an int for the same folds every time.

    Attributes
    ----------
    n_train_, n_test_, n_dropped_ : ndarray of shape (n_splits * n_repeats,)
        Set by the last call to :meth:`split`: per split, the triplets on the train side, on
        the test side, and dropped because they have images on both sides.

    See Also
    --------
    TripletGroupKFold : drops nothing, for triplets that form several groups of images.

    Examples
    --------
    >>> from itertools import combinations
    >>> from tripletsk.evaluation.model_selection import TripletImageKFold
    >>> T = [[a, b, c] for a, b, c in combinations(range(9), 3)]  # every image linked
    >>> cv = TripletImageKFold(n_splits=3, random_state=0)
    >>> for train, test in cv.split(T):
    ...     train_images = {i for row in train for i in T[row]}
    ...     assert not train_images & {i for row in test for i in T[row]}
    >>> cv.n_train_.tolist(), cv.n_test_.tolist(), cv.n_dropped_.tolist()
    ([20, 20, 20], [1, 1, 1], [63, 63, 63])
    """

    def __init__(self, n_splits: int = 3, *, n_repeats: int = 1, stratify=None, random_state=None):
        for name, value, least in (("n_splits", n_splits, 2), ("n_repeats", n_repeats, 1)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise ValueError(f"{name} must be an int; got {value!r}.")
            if value < least:
                raise ValueError(f"{name} must be at least {least}; got {value}.")
        if isinstance(stratify, str) and stratify != "folders":
            raise ValueError(
                f"stratify must be None, 'folders', a mapping or an array; got {stratify!r}."
            )
        self.n_splits = int(n_splits)
        self.n_repeats = int(n_repeats)
        self.stratify = stratify
        self.random_state = random_state

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        """The number of splits, ``n_splits * n_repeats``."""
        return self.n_splits * self.n_repeats

    def split(self, X, y=None, groups=None):
        """Generate ``(train, test)`` row indices into the triplets ``X``.

        Parameters
        ----------
        X : array-like of shape (n_triplets, 3)
            Triplets of image keys or integer image indices.
        y : None
            Ignored; present for the scikit-learn API.
        groups : None
            Not supported: the folds are made of images (see ``stratify``).

        Yields
        ------
        train, test : ndarray of int64
            Each split's triplets; those with images on both sides are in neither.
        """
        if groups is not None:
            raise ValueError(
                "TripletImageKFold deals images, not triplets, into folds: groups is not "
                "supported. To spread classes of images over the folds, use stratify=."
            )
        found = images_and_ids(X)
        if found is None:
            raise ValueError(
                "TripletImageKFold needs triplets of image keys or indices, shape "
                "(n_triplets, 3); feature triplets (n_triplets, 3, n_features) do not say "
                "which rows are the same image. Use TripletGroupKFold or KFold for those."
            )
        images, ids = found
        if len(images) < self.n_splits:
            raise ValueError(
                f"The triplets hold {len(images)} distinct images, fewer than "
                f"n_splits={self.n_splits} folds of images."
            )
        rng = check_random_state(self.random_state)
        splits = []
        for _ in range(self.n_repeats):
            fold = self._image_folds(images, rng)[ids]  # (n, 3): the fold of each image
            for k in range(self.n_splits):
                in_k = fold == k
                splits.append((np.flatnonzero(~in_k.any(axis=1)), np.flatnonzero(in_k.all(1))))
        self.n_train_ = np.array([len(train) for train, _ in splits])
        self.n_test_ = np.array([len(test) for _, test in splits])
        self.n_dropped_ = len(ids) - self.n_train_ - self.n_test_
        for k, (train, test) in enumerate(splits):
            if not len(train) or not len(test):
                side = "test" if not len(test) else "train"
                raise ValueError(
                    f"Split {k} of TripletImageKFold(n_splits={self.n_splits}) has no "
                    f"triplet on its {side} side (train {len(train)}, test {len(test)}, "
                    f"dropped {self.n_dropped_[k]} of {len(ids)} triplets across the split): "
                    "use fewer splits, or more triplets per image."
                )
        yield from splits

    def _image_folds(self, images: np.ndarray, rng) -> np.ndarray:
        """A fold for each distinct image: dealt in turn, in a random (class-wise) order."""
        order = rng.permutation(len(images))
        labels = self._image_labels(images)
        if labels is not None:  # classes one after the other, shuffled within each
            _, label_ids = np.unique(labels, return_inverse=True)
            order = order[np.argsort(label_ids[order], kind="stable")]
        fold = np.empty(len(images), dtype=np.int64)
        fold[order] = np.arange(len(images)) % self.n_splits
        return fold

    def _image_labels(self, images: np.ndarray) -> np.ndarray | None:
        stratify = self.stratify
        if stratify is None:
            return None
        if isinstance(stratify, str):  # "folders", checked in __init__
            if images.dtype.kind not in "OU":
                raise ValueError(
                    "stratify='folders' needs triplets of image keys (cat/1.jpg); got integer "
                    "indices: pass their classes as an array instead."
                )
            from tripletsk.triplets.folders import labels_from_folders

            return labels_from_folders(images)
        if isinstance(stratify, Mapping):
            missing = [image for image in images.tolist() if image not in stratify]
            if missing:
                raise ValueError(
                    f"stratify has no class for {len(missing)} of the {len(images)} images, "
                    f"e.g. {missing[:3]}."
                )
            return np.array([stratify[image] for image in images.tolist()])
        labels = np.asarray(stratify)
        if images.dtype.kind not in "iu":
            raise ValueError(
                "An array stratify= gives the class of each integer image index; for image "
                "keys pass a mapping key -> class, or 'folders'."
            )
        if labels.ndim != 1 or images.min() < 0 or images.max() >= len(labels):
            raise ValueError(
                f"stratify must be a 1-d array with a class for every image index (0 to "
                f"{images.max()}); got shape {labels.shape}."
            )
        return labels[images]


def triplet_train_test_split(
    triplets, test_size: float | int = 0.25, *, random_state=None, groups=None
) -> tuple[np.ndarray, np.ndarray]:
    """Split triplets into train and test so that no image is on both sides.

    Whole groups of linked triplets
    (:func:`~tripletsk.evaluation.triplet_graph.triplet_groups`) are drawn at random into the
    test side until it is as close as possible to ``test_size``; with large groups the sizes
    are approximate.

    Parameters
    ----------
    triplets : array-like of shape (n_triplets, 3) or (n_triplets, 3, n_features)
    test_size : float or int, default=0.25
        Fraction (between 0 and 1) or number of triplets to put in the test side.
    random_state : int, RandomState instance or None, default=None
    groups : array-like of shape (n_triplets,), default=None
        Extra grouping, as in :func:`~tripletsk.evaluation.triplet_graph.triplet_groups`.

    Returns
    -------
    train, test : ndarray
        Rows of ``triplets``, in their original order.

    Examples
    --------
    >>> from tripletsk.evaluation.model_selection import triplet_train_test_split
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
