"""Triplets as a graph of images: each triplet's images as ids, and the groups of triplets
linked by shared images (the connected components of the graph whose nodes are images and whose
edges join the three images of each triplet), from which the splits of
:mod:`tripletsk.evaluation.model_selection` keep an image on one side."""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["images_and_ids", "triplet_groups"]


def _image_ids(triplets) -> np.ndarray | None:
    """Node ids of shape (n, 3) for image keys or indices; None for feature triplets."""
    found = images_and_ids(triplets)
    return None if found is None else found[1]


def images_and_ids(triplets) -> tuple[np.ndarray, np.ndarray] | None:
    """The distinct images (sorted) and each triplet's images as positions among them."""
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
        images, inverse = np.unique(t.ravel(), return_inverse=True)
    except TypeError:
        raise ValueError("Triplets must hold keys of one type (all str or all int).") from None
    return images, inverse.reshape(t.shape)


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
    >>> from tripletsk.evaluation.triplet_graph import triplet_groups
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
