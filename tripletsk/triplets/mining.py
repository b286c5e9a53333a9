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
:func:`epoch_batches` puts these together into the per-epoch plan that the training loop
consumes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import numpy as np
from sklearn.metrics import pairwise_distances
from sklearn.utils import check_random_state

from tripletsk.distances import paired_distance
from tripletsk.training.rows import FeatureRows, block_windows, embed

__all__ = [
    "epoch_batches",
    "hard_examples",
    "hard_label_triplets",
    "hardest_known",
    "pk_batches",
    "sample_label_triplets",
    "with_hard_examples",
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
    features : ndarray of shape (n, d) or FeatureRows
        Samples (read a chunk at a time, never whole, for :class:`FeatureRows`).
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
    if isinstance(features, FeatureRows):
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


def with_hard_examples(batch, hard, n_anchors: int, rng) -> np.ndarray:
    """Add the offline hard positives and negatives of up to ``n_anchors`` batch anchors."""
    hard_pos, hard_neg = hard
    anchors = rng.choice(batch, size=min(n_anchors, len(batch)), replace=False)
    extra = np.concatenate([hard_pos[anchors].ravel(), hard_neg[anchors].ravel()])
    extra = extra[extra >= 0]
    return np.concatenate([batch, np.setdiff1d(extra, batch)])


# --------------------------------------------------------------------------------------------
# The plan of an epoch
# --------------------------------------------------------------------------------------------


def epoch_batches(
    items: FeatureRows,
    triplets,
    labels,
    train: np.ndarray,
    mining: str,
    rng,
    *,
    batch_size: int,
    window_rows: int,
    distance: str = "l2",
    samples_per_class: int | str = "auto",
    hard_per_anchor: int = 2,
    refresh_every: int = 0,
    stream: bool = False,
) -> Callable:
    """A function ``(epoch, weights) -> batches`` of indices into ``items``, for training.

    Parameters
    ----------
    items : FeatureRows
        The (standardised) rows of the fit.
    triplets : ndarray of shape (n, 3) or None
        Given triplets (indices into ``items``), or ``None`` when learning from ``labels``.
    labels : ndarray of shape (len(items),) or None
    train : ndarray of int
        Rows of ``triplets`` (or items, with labels) to train on.
    mining : {"given", "hard", "random", "batch_all", "batch_hard", "semi_hard", "hybrid"}
        ``"given"`` and ``"hard"`` (given plus hardest known) batch triplets; ``"random"``
        batches random label triplets; the others yield P x K batches of items for online
        mining, ``"hybrid"`` with offline hard examples added.
    rng : RandomState
    batch_size, window_rows : int
        Triplets or items per batch; items per training window (with ``stream``, an epoch
        visits the rows window by window, each made of whole storage blocks).
    distance, samples_per_class, hard_per_anchor, refresh_every, stream
        As for :class:`~tripletsk.TripletEncoder`.
    """
    if labels is None:
        return _triplet_plan(items, triplets[train], mining, rng, batch_size, window_rows,
                             distance, stream)  # fmt: skip

    def windows():
        """Positions into ``train``: all at once, or block windows when streaming."""
        if not stream:
            return [np.arange(len(train))]
        return block_windows(items.rows[train], items.block_rows, window_rows, rng)

    train_labels = labels[train]
    if mining == "random":

        def random_triplets(epoch, weights):
            for window in windows():
                try:
                    sampled = sample_label_triplets(train_labels[window], random_state=rng)
                except ValueError:
                    if not stream:
                        raise
                    continue  # a streamed window with a single class or no pair: skip it
                sampled = train[window[sampled]]
                for start in range(0, len(sampled), batch_size):
                    yield sampled[start : start + batch_size]

        return random_triplets
    p, k = pk_shape(batch_size, samples_per_class, len(np.unique(train_labels)))
    hard = None
    if mining == "hybrid":
        hard = hard_examples(items.select(train), train_labels, hard_per_anchor)

    def pk(epoch, weights):
        nonlocal hard
        if hard is not None and refresh_every and epoch and epoch % refresh_every == 0:
            # Re-mine with the head as trained so far: what is hard changes as it learns.
            hard = hard_examples(embed(items, weights, train), train_labels, hard_per_anchor)
        for window in windows():
            for batch in pk_batches(train_labels[window], p, k, random_state=rng):
                batch = window[batch]
                if hard is not None:
                    batch = with_hard_examples(batch, hard, p, rng)
                yield train[batch]

    return pk


def pk_shape(batch_size: int, samples_per_class, n_classes: int) -> tuple[int, int]:
    """``(P, K)``: classes and samples per class of P x K batches of ``batch_size`` items.

    ``samples_per_class="auto"`` takes K = 4, or more when there are fewer than
    ``batch_size // 4`` classes, so that a batch holds about ``batch_size`` items whatever the
    number of classes. A K given as a number is kept; when the classes cannot fill the batch
    with it, a warning says so (P x K asks for more classes than there are, and batches would
    silently shrink to ``n_classes * K`` items).

    Examples
    --------
    >>> from tripletsk.triplets.mining import pk_shape
    >>> pk_shape(256, "auto", n_classes=10), pk_shape(256, "auto", n_classes=1000)
    ((10, 25), (64, 4))
    """
    if samples_per_class == "auto":
        k = max(4, batch_size // max(n_classes, 1))
    else:
        k = int(samples_per_class)
        if n_classes * k < batch_size and batch_size // k > n_classes:
            warnings.warn(
                f"batch_size={batch_size} with samples_per_class={k} asks for "
                f"{batch_size // k} classes per batch, but there are {n_classes}: batches "
                f"hold at most {n_classes * k} samples. Use samples_per_class='auto' (or "
                f"{batch_size // max(n_classes, 1)}), or a smaller batch_size.",
                UserWarning,
                stacklevel=5,  # the caller of fit
            )
    return max(2, batch_size // k), k


def _triplet_plan(items, train_triplets, mining, rng, batch_size, window_rows, distance, stream):
    def given(epoch, weights):
        epoch_triplets = train_triplets
        if mining == "hard":
            mined = hardest_known(train_triplets, embed(items, weights), distance)
            epoch_triplets = np.concatenate([train_triplets, mined])
        if stream:  # by the storage block of each triplet's anchor
            anchor_rows = items.rows[epoch_triplets[:, 0]]
            windows = block_windows(anchor_rows, items.block_rows, window_rows // 3, rng)
            order = np.concatenate(windows)
        else:
            order = rng.permutation(len(epoch_triplets))
        for start in range(0, len(order), batch_size):
            yield epoch_triplets[order[start : start + batch_size]]

    return given
