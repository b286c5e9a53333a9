"""Triplets: sampling them from class labels, and P x K batches for online mining."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from sklearn.utils import check_random_state


def _class_members(y: np.ndarray) -> list[np.ndarray]:
    """Indices of each class, in order of the sorted unique labels."""
    _, inverse = np.unique(y, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse)
    return np.split(order, np.cumsum(counts)[:-1])


def sample_label_triplets(y, n_triplets: int | None = None, random_state=None) -> np.ndarray:
    """Sample random valid triplets ``(anchor, positive, negative)`` of indices from labels.

    An anchor is any sample whose class has at least two members; its positive is another
    member of its class and its negative a member of another class, both drawn uniformly.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Class labels.
    n_triplets : int, default=None
        How many triplets to draw. ``None`` draws one per eligible anchor, each anchor once.
    random_state : int, RandomState instance or None, default=None
        Controls the draw.

    Returns
    -------
    triplets : ndarray of shape (n_triplets, 3), dtype int64
        Row indices into ``y``.

    Raises
    ------
    ValueError
        If no class has two samples or there is only one class.

    Examples
    --------
    >>> from tripletsk.triplets import sample_label_triplets
    >>> t = sample_label_triplets([0, 0, 1, 1], random_state=0)
    >>> t.shape
    (4, 3)
    """
    y = np.asarray(y)
    rng = check_random_state(random_state)
    members = _class_members(y)
    if len(members) < 2:
        raise ValueError(
            f"Sampling triplets from labels needs at least 2 classes; got {len(members)}."
        )
    _, inverse = np.unique(y, return_inverse=True)
    sizes = np.array([len(m) for m in members])
    eligible = np.flatnonzero(sizes[inverse] >= 2)
    if eligible.size == 0:
        raise ValueError(
            "Sampling triplets from labels needs a class with at least 2 samples; "
            "every class has a single sample."
        )
    if n_triplets is None:
        anchors = rng.permutation(eligible)
    else:
        anchors = rng.choice(eligible, size=n_triplets, replace=True)
    anchor_class = inverse[anchors]
    # Positive: a uniformly drawn other member of the anchor's class.
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    flat = np.concatenate(members)
    position = np.empty(len(y), dtype=np.int64)
    position[flat] = np.arange(len(y)) - np.repeat(starts, sizes)
    offset = rng.randint(0, sizes[anchor_class] - 1)
    offset += offset >= position[anchors]  # skip the anchor itself
    positives = flat[starts[anchor_class] + offset]
    # Negative: a uniformly drawn sample outside the anchor's class.
    pick = rng.randint(0, len(y) - sizes[anchor_class])
    pick += (pick >= starts[anchor_class]) * sizes[anchor_class]
    negatives = flat[pick]
    return np.stack([anchors, positives, negatives], axis=1).astype(np.int64)


def pk_batches(y, p: int, k: int, random_state=None) -> Iterator[np.ndarray]:
    """Yield one epoch of P x K batches: ``p`` classes, up to ``k`` samples from each.

    An epoch visits every sample whose class has at least two members about once: each
    class's members are shuffled and dealt out ``k`` at a time, and each batch takes the next
    deal from ``p`` classes (those with most samples left first, ties broken at random).
    A class with fewer than ``k`` samples left contributes the ones it has, never duplicates:
    a repeated sample would only add zero-distance, trivially easy positives. Classes with a
    single sample never anchor a positive pair, so they are only used as extra negatives,
    mixed in at random. Fewer than ``p`` classes left: the last batches hold fewer classes.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Class labels.
    p : int
        Classes per batch.
    k : int
        Samples per class per batch.
    random_state : int, RandomState instance or None, default=None
        Makes the epoch deterministic.

    Yields
    ------
    batch : ndarray of int64
        Row indices into ``y``, between 2 and ``p * k`` of them, grouped by class.

    Examples
    --------
    >>> from tripletsk.triplets import pk_batches
    >>> [len(b) for b in pk_batches([0, 0, 1, 1, 2, 2], p=2, k=2, random_state=0)]
    [4, 2]
    """
    if p < 1 or k < 2:
        raise ValueError(f"pk_batches needs p >= 1 and k >= 2; got p={p}, k={k}.")
    rng = check_random_state(random_state)
    members = _class_members(np.asarray(y))
    singles = np.concatenate([m for m in members if len(m) == 1] or [np.empty(0, np.int64)])
    queues = [list(rng.permutation(m)) for m in members if len(m) >= 2]
    singles = list(rng.permutation(singles))
    while any(queues):
        left = np.array([len(q) for q in queues])
        candidates = np.flatnonzero(left > 0)
        order = candidates[np.lexsort((rng.random_sample(len(candidates)), -left[candidates]))]
        batch = []
        for c in order[:p]:
            take = queues[c][:k]
            # Never strand one sample: it could not form a positive pair later.
            if len(queues[c]) - len(take) == 1:
                take = queues[c]
            queues[c] = queues[c][len(take) :]
            batch.extend(take)
        if singles:
            batch.extend(singles[:k])
            singles = singles[k:]
        yield np.asarray(batch, dtype=np.int64)
