"""Choosing training triplets, in NumPy (TensorFlow is never imported here).

Vocabulary
----------
For an *anchor*, a *positive* is another sample of its class and a *negative* a sample of
another class. A *hard positive* is a positive far from the anchor, a *hard negative* a
negative near it: the pairs that still violate, or nearly violate, the margin. The *hardest*
are the farthest positive and the nearest negative. Where they are looked for is the *scope*:

known
    Among the positives and negatives that given triplets state for an anchor
    (:func:`hardest_known`; ``TripletEncoder(mining="hard").fit(T)``). Nothing beyond the
    triplets is assumed.
offline
    Among all samples, by label, before batches are formed, on the frozen features or the
    current embedding (:func:`hard_examples`; ``mining="hybrid"`` and
    ``make_triplets_from_folders(strategy="hard")``). Chunked: memory stays O(chunk^2).
online
    Within one P x K batch, on the embedding being trained, in TensorFlow
    (:mod:`tripletsk.training.losses`: ``batch_hard``, ``semi_hard``, ``batch_all``).

Besides hard examples, triplets come from labels at random (:func:`sample_label_triplets`),
and labelled samples are grouped into P x K batches (:func:`pk_batches`).
:mod:`tripletsk.training.plan` puts these together into the per-epoch plan that the training
loop consumes.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from sklearn.metrics import pairwise_distances
from sklearn.utils import check_random_state

from tripletsk.distances import paired_distance

__all__ = [
    "hard_examples",
    "hard_label_triplets",
    "hardest_known",
    "pk_batches",
    "sample_label_triplets",
]


def _class_members(y: np.ndarray) -> list[np.ndarray]:
    """Indices of each class, in order of the sorted unique labels."""
    _, inverse = np.unique(y, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse)
    return np.split(order, np.cumsum(counts)[:-1])


def _anchor_classes(y: np.ndarray):
    """Members of each class, each sample's class, class sizes, and the possible anchors.

    The anchors are the samples whose class has another member; raises if no triplet can
    be formed at all.
    """
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
    return members, inverse, sizes, eligible


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
    >>> from tripletsk.triplets.mining import sample_label_triplets
    >>> t = sample_label_triplets([0, 0, 1, 1], random_state=0)
    >>> t.shape
    (4, 3)
    """
    y = np.asarray(y)
    rng = check_random_state(random_state)
    members, inverse, sizes, eligible = _anchor_classes(y)
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
    >>> from tripletsk.triplets.mining import pk_batches
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


# --------------------------------------------------------------------------------------------
# Hard examples
# --------------------------------------------------------------------------------------------


def hardest_known(triplets: np.ndarray, embeddings: np.ndarray, distance: str) -> np.ndarray:
    """Per anchor: (anchor, its hardest known positive, its hardest known negative).

    "Known" means stated by some triplet with the same anchor, so no constraint is invented
    beyond "the anchor's positives are closer than its negatives".

    Examples
    --------
    >>> import numpy as np
    >>> from tripletsk.triplets.mining import hardest_known
    >>> emb = np.array([[0.0], [1.0], [3.0], [2.5], [9.0]])
    >>> hardest_known(np.array([[0, 1, 3], [0, 2, 4]]), emb, "l2").tolist()
    [[0, 2, 3]]
    """

    def extreme(column: int, farthest: bool) -> tuple[np.ndarray, np.ndarray]:
        pairs = np.unique(triplets[:, [0, column]], axis=0)
        d = paired_distance(embeddings[pairs[:, 0]], embeddings[pairs[:, 1]], distance)
        order = np.lexsort((-d if farthest else d, pairs[:, 0]))
        anchors, first = np.unique(pairs[order, 0], return_index=True)
        return anchors, pairs[order[first], 1]

    anchors, hard_pos = extreme(1, farthest=True)
    _, hard_neg = extreme(2, farthest=False)  # same sorted anchors: every anchor has both
    return np.stack([anchors, hard_pos, hard_neg], axis=1)


def hard_examples(features, labels, k: int, anchors=None, chunk_size: int = 1024):
    """Offline hard examples: each anchor's ``k`` farthest positives and ``k`` nearest negatives.

    Parameters
    ----------
    features : ndarray of shape (n, d), or rows read a chunk at a time
        Samples. An object with a ``chunk_size`` and a ``take(indices)`` (the fit's
        :class:`~tripletsk.training.rows.FeatureRows`) is read ``chunk_size`` candidates at
        a time, never whole.
    labels : ndarray of shape (n,)
    k : int
        Hard positives and hard negatives kept per anchor.
    anchors : ndarray of int, default=None
        The anchors (indices into ``features``); ``None`` means every sample.
    chunk_size : int, default=1024
        Anchors handled at once; distances are Euclidean, computed for a chunk of anchors
        against a chunk of candidates at a time, keeping the running best.

    Returns
    -------
    hard_positives, hard_negatives : ndarray of shape (n_anchors, k), dtype int64
        Indices, hardest first; -1 where there are fewer candidates.

    Examples
    --------
    >>> import numpy as np
    >>> from tripletsk.triplets.mining import hard_examples
    >>> X = np.array([[0.0], [1.0], [3.0], [1.5], [9.0]])
    >>> pos, neg = hard_examples(X, np.array([0, 0, 0, 1, 1]), k=1)
    >>> pos.ravel().tolist(), neg.ravel().tolist()
    ([2, 2, 0, 4, 3], [3, 3, 3, 1, 2])
    """
    # Not ``take`` alone: an ndarray has ``take`` too (without the same meaning of chunks).
    if hasattr(features, "chunk_size") and hasattr(features, "take"):
        take, candidates_per_chunk = features.take, features.chunk_size
    else:
        take, candidates_per_chunk = features.__getitem__, 8 * chunk_size
    labels = np.asarray(labels)
    n = len(labels)
    anchors = np.arange(n) if anchors is None else np.asarray(anchors, dtype=np.int64)
    hard_pos = np.full((len(anchors), k), -1, dtype=np.int64)
    hard_neg = np.full((len(anchors), k), -1, dtype=np.int64)
    for start in range(0, len(anchors), chunk_size):
        at = slice(start, start + chunk_size)
        rows = anchors[at]
        anchor_features = take(rows)
        # Running best: distances, with -inf / inf meaning "none yet".
        pos_d = np.full((len(rows), k), -np.inf)
        neg_d = np.full((len(rows), k), np.inf)
        pos_i = np.full((len(rows), k), -1, dtype=np.int64)
        neg_i = np.full((len(rows), k), -1, dtype=np.int64)
        for c_start in range(0, n, candidates_per_chunk):
            cols = np.arange(c_start, min(c_start + candidates_per_chunk, n))
            dist = pairwise_distances(anchor_features, take(cols))
            same = labels[rows][:, None] == labels[cols][None, :]
            pos = np.where(same & (rows[:, None] != cols[None, :]), dist, -np.inf)
            neg = np.where(same, np.inf, dist)
            pos_d, pos_i = _keep_best(pos_d, pos_i, -pos, cols, k, negate=True)
            neg_d, neg_i = _keep_best(neg_d, neg_i, neg, cols, k)
        hard_pos[at] = np.where(np.isfinite(pos_d), pos_i, -1)
        hard_neg[at] = np.where(np.isfinite(neg_d), neg_i, -1)
    return hard_pos, hard_neg


def _keep_best(best_d, best_i, d, cols, k, negate=False):
    """Merge candidates ``d`` (smaller is better) for columns ``cols`` into the running best k."""
    keyed = -best_d if negate else best_d
    all_d = np.concatenate([keyed, d], axis=1)
    all_i = np.concatenate([best_i, np.broadcast_to(cols, d.shape)], axis=1)
    order = np.argsort(all_d, axis=1, kind="stable")[:, :k]
    chosen = np.take_along_axis(all_d, order, 1)
    return (-chosen if negate else chosen), np.take_along_axis(all_i, order, 1)


def hard_label_triplets(features, y, n_triplets: int, n_candidates: int, random_state=None):
    """Triplets of random anchors with a hard positive and a hard negative each.

    Anchors are drawn with replacement among samples whose class has another member; each
    gets a positive drawn among its ``n_candidates`` farthest positives and a negative among
    its ``n_candidates`` nearest negatives (offline, see :func:`hard_examples`), so that the
    triplets vary.

    Examples
    --------
    >>> import numpy as np
    >>> from tripletsk.triplets.mining import hard_label_triplets
    >>> X = np.array([[0.0], [1.0], [0.2], [5.0]])
    >>> hard_label_triplets(X, [0, 0, 1, 1], 2, n_candidates=1, random_state=0).tolist()
    [[0, 1, 2], [3, 2, 1]]
    """
    y = np.asarray(y)
    rng = check_random_state(random_state)
    anchors = rng.choice(_anchor_classes(y)[3], size=n_triplets, replace=True)
    distinct, inverse = np.unique(anchors, return_inverse=True)
    hard_pos, hard_neg = hard_examples(features, y, n_candidates, anchors=distinct)
    triplets = np.empty((n_triplets, 3), dtype=np.int64)
    triplets[:, 0] = anchors
    for column, hard in ((1, hard_pos[inverse]), (2, hard_neg[inverse])):
        # Candidates are hardest first with -1 padding: draw among the valid ones.
        pick = rng.randint(0, (hard >= 0).sum(axis=1))
        triplets[:, column] = hard[np.arange(n_triplets), pick]
    return triplets
