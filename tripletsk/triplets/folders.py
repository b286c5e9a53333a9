"""Triplets from class folders (``images/<class>/<image>``), for users without a triplet file.

The class of an image is its first folder.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from sklearn.utils import check_array, check_random_state

from tripletsk.errors import TripletDataError
from tripletsk.triplets.files import write_triplets
from tripletsk.triplets.mining import hard_examples, hard_label_triplets, sample_label_triplets

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})


def list_image_keys(root: str | os.PathLike) -> np.ndarray:
    """Image files under ``root``, recursively, as sorted keys relative to it with ``/``.

    Image files are recognised by extension, case-insensitively: jpg, jpeg, png, gif, bmp,
    webp, tif, tiff. Hidden files and folders (starting with ``.``) are skipped.

    Examples
    --------
    >>> import os, tempfile
    >>> from tripletsk.triplets.folders import list_image_keys
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "cat"))
    >>> for name in ["cat/1.JPG", "cat/notes.txt", "2.png"]:
    ...     open(os.path.join(root, name), "wb").close()
    >>> list_image_keys(root).tolist()
    ['2.png', 'cat/1.JPG']
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise TripletDataError(f"{root}: not a folder of images.")
    keys = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = os.path.relpath(folder, root)
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                key = name if rel == "." else os.path.join(rel, name)
                keys.append(key.replace(os.sep, "/"))
    return np.array(sorted(keys), dtype=object)


def labels_from_folders(keys) -> np.ndarray:
    """Class labels from image keys: the first folder of each key (``cat/x.jpg`` -> ``cat``).

    Parameters
    ----------
    keys : array-like of str
        Image keys with ``/`` separators, as in the feature cache.

    Returns
    -------
    labels : ndarray of shape (n_keys,), dtype object

    Raises
    ------
    TripletDataError
        If a key has no folder: its class is unknown.

    Examples
    --------
    >>> from tripletsk.triplets.folders import labels_from_folders
    >>> labels_from_folders(["cat/1.jpg", "dog/puppies/2.jpg"]).tolist()
    ['cat', 'dog']
    """
    keys = [str(k) for k in np.asarray(keys, dtype=object).ravel().tolist()]
    parts = [k.partition("/") for k in keys]
    flat = [
        k for k, (head, sep, rest) in zip(keys, parts, strict=True) if not (head and sep and rest)
    ]
    if flat:
        raise TripletDataError(
            f"{len(flat)} image(s) are not inside a class folder, e.g. {flat[0]!r}; class "
            "labels come from the first folder (images/<class>/<image>)."
        )
    return np.array([p[0] for p in parts], dtype=object)


def make_triplets_from_folders(
    keys_or_root,
    n_triplets: int,
    *,
    strategy: str = "random",
    features=None,
    n_candidates: int = 10,
    random_state=None,
    path: str | os.PathLike | None = None,
) -> np.ndarray:
    """Make distinct triplets of image keys from class folders (``images/<class>/<image>``).

    For users who have images sorted into one folder per class but no triplet file: the
    class of an image is its first folder (:func:`labels_from_folders`). No triplet is
    repeated: when fewer than ``n_triplets`` distinct triplets exist (few images per class),
    all of them are returned, in random order, with a warning that says how many.

    Parameters
    ----------
    keys_or_root : str, path-like or array-like of str
        A folder of class folders (listed recursively with :func:`list_image_keys`), or the
        image keys themselves, e.g. the keys of the feature cache.
    n_triplets : int
        How many distinct triplets to make (an anchor may start several of them).
    strategy : {"random", "hard"}, default="random"
        ``"random"``: uniform positives and negatives (:func:`sample_label_triplets`).
        ``"hard"``: for each anchor, a positive drawn among the ``n_candidates`` farthest
        members of its class and a negative among its ``n_candidates`` nearest images of
        other classes, in ``features`` space. Hard triplets make training converge faster
        but are more sensitive to label noise; mixing both files is a reasonable default.
    features : array-like of shape (n_keys, n_features), default=None
        Required for ``"hard"``: one row per key, in the order of the keys (for a folder,
        the sorted order of :func:`list_image_keys`).
    n_candidates : int, default=10
        How many hardest candidates to draw from, so that hard triplets vary.
    random_state : int, RandomState instance or None, default=None
    path : str or path-like, default=None
        If given, the triplets are also written there with :func:`write_triplets`.

    Returns
    -------
    triplets : ndarray of shape (n_made, 3), dtype object
        Image keys: anchor, positive, negative; ``n_made`` is ``n_triplets``, or the number of
        distinct triplets there are if that is smaller (see :func:`count_folder_triplets`).

    Warns
    -----
    UserWarning
        When fewer than ``n_triplets`` distinct triplets exist.

    Examples
    --------
    >>> import numpy as np
    >>> from tripletsk.triplets.folders import make_triplets_from_folders
    >>> keys = ["cat/1.jpg", "cat/2.jpg", "dog/1.jpg", "dog/2.jpg"]
    >>> t = make_triplets_from_folders(keys, 3, random_state=0)
    >>> t.shape
    (3, 3)
    >>> features = np.array([[0.0], [1.0], [0.2], [5.0]])
    >>> make_triplets_from_folders(keys, 1, strategy="hard", features=features,
    ...                            n_candidates=1, random_state=0).tolist()
    [['cat/1.jpg', 'cat/2.jpg', 'dog/1.jpg']]
    """
    _check_request(strategy, n_triplets)
    keys = _image_keys(keys_or_root)
    y = labels_from_folders(keys)
    rng = check_random_state(random_state)
    if strategy == "hard":
        features = _hard_features(features, len(keys), n_candidates)
    triplets = _distinct_triplets(y, n_triplets, strategy, features, n_candidates, rng)
    if len(triplets) < n_triplets:
        _warn_fewer(len(triplets), n_triplets, strategy, len(keys))
    result = keys[triplets]
    if path is not None:
        write_triplets(path, result)
    return result


def _check_request(strategy: str, n_triplets: int) -> None:
    if strategy not in ("random", "hard"):
        raise ValueError(f"strategy must be 'random' or 'hard'; got {strategy!r}.")
    if isinstance(n_triplets, bool) or not isinstance(n_triplets, (int, np.integer)):
        raise TypeError(f"n_triplets must be an int; got {n_triplets!r}.")
    if n_triplets < 1:
        raise ValueError(f"n_triplets must be at least 1; got {n_triplets}.")


def _warn_fewer(n_made: int, n_triplets: int, strategy: str, n_keys: int) -> None:
    """Warn the caller of :func:`make_triplets_from_folders` that it made fewer triplets."""
    warnings.warn(
        f"Only {n_made} distinct {strategy} triplets exist over these "
        f"{n_keys} images (n_triplets={n_triplets}); returning all {n_made}.",
        UserWarning,
        stacklevel=3,
    )


def _image_keys(keys_or_root) -> np.ndarray:
    """The keys given, or the images found under the folder given."""
    if not isinstance(keys_or_root, (str, os.PathLike)):
        return np.asarray(keys_or_root, dtype=object).ravel()
    keys = list_image_keys(keys_or_root)
    if keys.size == 0:
        raise TripletDataError(f"{os.fspath(keys_or_root)}: no image files found.")
    return keys


def _hard_features(features, n_keys: int, n_candidates: int) -> np.ndarray:
    """``features`` checked for hard triplets: one row per key; ``n_candidates`` at least 1."""
    if features is None:
        raise ValueError("strategy='hard' needs features: one row per key.")
    features = check_array(features, dtype=[np.float64, np.float32])
    if len(features) != n_keys:
        raise ValueError(
            f"features has {len(features)} rows but there are {n_keys} keys; "
            "they must be aligned row for row."
        )
    if n_candidates < 1:
        raise ValueError(f"n_candidates must be at least 1; got {n_candidates}.")
    return features


def count_folder_triplets(labels, strategy: str = "random", n_candidates: int = 10) -> int:
    """How many distinct triplets :func:`make_triplets_from_folders` can make from ``labels``.

    ``"random"``: every anchor of a class of two or more, times the other members of its
    class, times the images of other classes. ``"hard"``: every such anchor, times its
    ``n_candidates`` farthest positives and ``n_candidates`` nearest negatives (fewer where
    its class, or the rest, is smaller).

    Examples
    --------
    >>> from tripletsk.triplets.folders import count_folder_triplets
    >>> count_folder_triplets(["a", "a", "b", "b", "b"])  # 2*1*3 + 3*2*2
    18
    >>> count_folder_triplets(["a", "a", "b", "b", "b"], "hard", n_candidates=1)
    5
    """
    _, sizes = np.unique(np.asarray(labels), return_counts=True)
    sizes = sizes[sizes >= 2].astype(np.int64)
    n = len(np.asarray(labels))
    positives, negatives = sizes - 1, n - sizes
    if strategy == "hard":
        positives = np.minimum(positives, n_candidates)
        negatives = np.minimum(negatives, n_candidates)
    return int(np.sum(sizes * positives * negatives))


def _distinct_triplets(y, n_triplets: int, strategy: str, features, n_candidates: int, rng):
    """Up to ``n_triplets`` distinct triplets of indices into ``y``, in random order.

    When the request is at least half of what exists, every possible triplet is listed and
    a random subset kept (drawing until all were seen would take ~P log P draws); otherwise
    triplets are drawn in rounds and repeats discarded, each round drawing twice what is
    missing (at least half of what remains is new, so few rounds are needed).
    """
    n_possible = count_folder_triplets(y, strategy, n_candidates)
    if n_possible == 0:
        sample_label_triplets(y, 1, random_state=rng)  # raises the reason (one class, ...)
    if 2 * n_triplets >= n_possible:
        every = _every_triplet(y, strategy, features, n_candidates)
        return every[rng.permutation(len(every))[:n_triplets]]

    def draw(m: int) -> np.ndarray:
        if strategy == "random":
            return sample_label_triplets(y, m, random_state=rng)
        return hard_label_triplets(features, y, m, n_candidates, rng)

    made = draw(n_triplets)
    while True:
        _, first = np.unique(made, axis=0, return_index=True)
        made = made[np.sort(first)]  # first draws of each, in the order drawn
        if len(made) >= n_triplets:
            return made[:n_triplets]
        made = np.concatenate([made, draw(2 * (n_triplets - len(made)))])


def _every_triplet(y, strategy: str, features, n_candidates: int) -> np.ndarray:
    """Every distinct triplet of indices into ``y`` that ``strategy`` can draw."""
    y = np.asarray(y)
    _, inverse, sizes = np.unique(y, return_inverse=True, return_counts=True)
    anchors = np.flatnonzero(sizes[inverse] >= 2)
    if strategy == "hard":
        hard_pos, hard_neg = hard_examples(features, y, n_candidates, anchors=anchors)
        candidates = [(p[p >= 0], n[n >= 0]) for p, n in zip(hard_pos, hard_neg, strict=True)]
    else:
        index = np.arange(len(y))
        candidates = [
            (index[(inverse == inverse[a]) & (index != a)], index[inverse != inverse[a]])
            for a in anchors
        ]
    return np.concatenate(
        [
            np.column_stack([np.full(len(p) * len(n), a), np.repeat(p, len(n)), np.tile(n, len(p))])
            for a, (p, n) in zip(anchors, candidates, strict=True)
        ]
    ).astype(np.int64)
