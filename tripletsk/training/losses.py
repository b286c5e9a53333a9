"""Distances and triplet losses, in TensorFlow.

Each loss is a plain function of embeddings (and labels, for the online-mining losses) that
returns the mean loss and the fraction of *active* triplets (those with a positive hinge, i.e.
that still teach something), plus a thin serialisable :class:`TripletLoss` class in the style of
``keras.losses``. Distances:

``"l1"``
    Manhattan distance, ``sum |a - b|``.
``"l2"``
    Euclidean distance, ``sqrt(sum (a - b)^2)``. The square root is taken on a guarded value
    so that its gradient is finite (and masked to 0) at zero distance.
``"sqeuclidean"``
    Squared Euclidean distance.
``"cosine"``
    ``1 - cos(a, b)``.

The triplet loss is ``max(d(a, p) - d(a, n) + margin, 0)``; with ``margin=None`` it is the soft
margin ``log(1 + exp(d(a, p) - d(a, n)))`` (Hermans et al., 2017), which never stops pushing;
its ``scale`` s sharpens it, ``log(1 + exp(s (d(a, p) - d(a, n)))) / s`` (s = 1 in these
functions; ``TripletEncoder`` uses 4): unit-norm embeddings differ by at most 2 in distance, so
at s = 1 even easy triplets keep a gradient of at least ``sigmoid(-2)``.

Online mining (``batch_all``, ``batch_hard``, ``semi_hard``) works on a batch of embeddings and
their labels, embedding each item once and mining inside the batch's distance matrix:
``batch_hard`` needs O(batch^2) memory, ``semi_hard`` O(batch^2 K) for K samples per class;
``batch_all`` averages over every valid
triplet, whose count is O(batch^3) by definition, and builds that cube only at the small
default batch sizes where it costs less than a megabyte per 64 items.
"""

from __future__ import annotations

import numpy as np

from tripletsk._tensorflow import import_keras, import_tensorflow
from tripletsk.distances import DISTANCES, check_distance  # noqa: F401  (DISTANCES: re-export)

tf = import_tensorflow()
keras = import_keras()

# Squared distances below this are treated as zero by the guarded square root.
_SQRT_EPS = 1e-12


def safe_sqrt(x: tf.Tensor) -> tf.Tensor:
    """Square root with a finite gradient at zero: the value and gradient there are 0."""
    positive = x > _SQRT_EPS
    return tf.where(positive, tf.sqrt(tf.where(positive, x, tf.ones_like(x))), tf.zeros_like(x))


def _l2_normalize(x: tf.Tensor) -> tf.Tensor:
    return x * tf.math.rsqrt(tf.maximum(tf.reduce_sum(tf.square(x), -1, keepdims=True), 1e-12))


def paired_distance(a: tf.Tensor, b: tf.Tensor, distance: str = "l2") -> tf.Tensor:
    """Distance between matching rows of ``a`` and ``b`` (both of shape (n, d)) -> (n,)."""
    check_distance(distance)
    if distance == "l1":
        return tf.reduce_sum(tf.abs(a - b), axis=-1)
    if distance == "cosine":
        return 1.0 - tf.reduce_sum(_l2_normalize(a) * _l2_normalize(b), axis=-1)
    squared = tf.reduce_sum(tf.square(a - b), axis=-1)
    return squared if distance == "sqeuclidean" else safe_sqrt(squared)


def pairwise_distance(x: tf.Tensor, distance: str = "l2") -> tf.Tensor:
    """Distance matrix between all rows of ``x`` (n, d) -> (n, n), with an exact zero diagonal."""
    check_distance(distance)
    if distance == "l1":
        return tf.reduce_sum(tf.abs(x[:, None, :] - x[None, :, :]), axis=-1)
    if distance == "cosine":
        unit = _l2_normalize(x)
        return tf.linalg.set_diag(
            1.0 - tf.matmul(unit, unit, transpose_b=True), tf.zeros(tf.shape(x)[:1], x.dtype)
        )
    norms = tf.reduce_sum(tf.square(x), axis=-1)
    squared = norms[:, None] - 2.0 * tf.matmul(x, x, transpose_b=True) + norms[None, :]
    # Rounding can make the Gram form slightly negative, and the diagonal is exactly 0.
    squared = tf.linalg.set_diag(tf.maximum(squared, 0.0), tf.zeros(tf.shape(x)[:1], x.dtype))
    return squared if distance == "sqeuclidean" else safe_sqrt(squared)


def triplet_margin_loss(
    d_ap: tf.Tensor, d_an: tf.Tensor, margin: float | None, scale: float = 1.0
) -> tf.Tensor:
    """Per-triplet loss: hinge ``max(d_ap - d_an + margin, 0)``, or if ``margin`` is None the
    soft margin ``softplus(scale * (d_ap - d_an)) / scale`` (``scale`` is ignored with a
    margin)."""
    if margin is None:
        if scale == 1.0:  # the soft margin as it always was: no extra operations
            return tf.nn.softplus(d_ap - d_an)
        return tf.nn.softplus(scale * (d_ap - d_an)) / scale
    return tf.nn.relu(d_ap - d_an + margin)


def _active(d_ap: tf.Tensor, d_an: tf.Tensor, margin: float | None) -> tf.Tensor:
    """Triplets that still violate the margin (with soft margin: anchor not closer to p)."""
    return d_ap - d_an + (0.0 if margin is None else margin) > 0.0


def _mean_or_zero(values: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """Weighted mean that is 0 (with a zero, finite gradient) when all weights are 0."""
    return tf.math.divide_no_nan(tf.reduce_sum(values * weights), tf.reduce_sum(weights))


def triplet_loss(
    anchor: tf.Tensor,
    positive: tf.Tensor,
    negative: tf.Tensor,
    distance: str = "l2",
    margin: float | None = 0.2,
    scale: float = 1.0,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Mean triplet loss over given triplets of embeddings.

    Parameters
    ----------
    anchor, positive, negative : Tensor of shape (n, d)
    distance : {"l1", "l2", "sqeuclidean", "cosine"}, default="l2"
    margin : float or None, default=0.2
        ``None`` selects the soft margin ``log(1 + exp(d_ap - d_an))``.
    scale : float, default=1.0
        With the soft margin: ``log(1 + exp(scale * (d_ap - d_an))) / scale``.

    Returns
    -------
    loss : scalar Tensor
    active_fraction : scalar Tensor
        Fraction of triplets with ``d_ap - d_an + margin > 0``.

    Examples
    --------
    >>> import tensorflow as tf
    >>> from tripletsk.training.losses import triplet_loss
    >>> a, p, n = tf.constant([[0.0, 0.0]]), tf.constant([[0.0, 1.0]]), tf.constant([[3.0, 0.0]])
    >>> float(triplet_loss(a, p, n, "l2", margin=0.5)[0])
    0.0
    """
    d_ap = paired_distance(anchor, positive, distance)
    d_an = paired_distance(anchor, negative, distance)
    active = tf.cast(_active(d_ap, d_an, margin), anchor.dtype)
    losses = triplet_margin_loss(d_ap, d_an, margin, scale)
    return tf.reduce_mean(losses), tf.reduce_mean(active)


def triplet_error(d_ap: tf.Tensor, d_an: tf.Tensor) -> tf.Tensor:
    """Fraction of wrongly ordered triplets: the anchor not strictly closer to the positive
    (``d_ap >= d_an``, a tie is wrong, as in ``predict_triplets``)."""
    return tf.reduce_mean(tf.cast(d_ap >= d_an, tf.float32))


def batch_triplet_error(
    embeddings: tf.Tensor, labels: tf.Tensor, distance: str = "l2"
) -> tf.Tensor:
    """Fraction of wrongly ordered triplets among *all* valid triplets of a batch.

    The triplet error that :func:`tripletsk.evaluation.metrics.label_triplet_accuracy` counts (one
    minus it), on the batch, whatever triplets the loss mined: for each anchor-positive pair, the
    negatives at least as near as the positive (a tie is wrong). 0 when the batch holds no
    valid triplet.

    Examples
    --------
    >>> import tensorflow as tf
    >>> from tripletsk.training.losses import batch_triplet_error
    >>> x = tf.constant([[0.0], [0.1], [0.3], [1.0]])  # 8 triplets; anchor 2 is nearer
    >>> float(batch_triplet_error(x, tf.constant([0, 0, 1, 1])))  # to both negatives than to 3
    0.25
    """
    dist = tf.cast(pairwise_distance(embeddings, distance), tf.float32)
    is_pos, is_neg = _label_masks(labels)
    pairs = _PositivePairs(dist, is_pos, is_neg)
    wrong = tf.cast(pairs.n_neg - pairs.n_farther(), tf.float32)
    valid = tf.cast(pairs.valid, tf.float32)
    total = tf.cast(pairs.n_neg, tf.float32) * valid
    return tf.math.divide_no_nan(tf.reduce_sum(wrong * valid), tf.reduce_sum(total))


class _PositivePairs:
    """Each anchor's positives as columns of a (b, k) block, k the most positives any anchor
    has (K - 1 in a P x K batch), and each pair's negatives as a (b, k, b) block: O(b^2 k)
    memory and no sorting (TensorFlow's CPU sort and binary search took most of a step).

    ``pos`` (b, k) are column indices, ``valid`` (b, k) marks real positives of anchors that
    have a negative, ``d_ap`` (b, k) their distances, ``farther`` (b, k, b) each pair's
    distances to the negatives strictly farther than its positive (the largest float
    elsewhere), ``n_neg`` (b, 1) each anchor's number of negatives.
    """

    def __init__(self, dist: tf.Tensor, is_pos: tf.Tensor, is_neg: tf.Tensor):
        b = tf.shape(dist)[0]
        n_pos = tf.reduce_sum(tf.cast(is_pos, tf.int32), axis=1)
        k = tf.reduce_max(tf.concat([n_pos, [0]], axis=0))
        # Positives first, in column order: the k largest of -column (others far below).
        columns = tf.range(b)[None, :]
        _, self.pos = tf.math.top_k(tf.where(is_pos, -columns, -columns - 2 * b), k=k)
        self.n_neg = tf.reduce_sum(tf.cast(is_neg, tf.int32), axis=1, keepdims=True)
        self.valid = tf.logical_and(tf.range(k)[None, :] < n_pos[:, None], self.n_neg > 0)
        self.d_ap = tf.gather(dist, self.pos, batch_dims=1)
        is_farther = tf.logical_and(is_neg[:, None, :], dist[:, None, :] > self.d_ap[..., None])
        self.farther = tf.where(is_farther, dist[:, None, :], dist.dtype.max)

    def n_farther(self) -> tf.Tensor:
        """(b, k): how many negatives are strictly farther than each positive."""
        return tf.reduce_sum(tf.cast(self.farther < self.farther.dtype.max, tf.int32), axis=2)


def _label_masks(labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(positive pair mask without the diagonal, negative pair mask), both (n, n) bool."""
    same = tf.equal(labels[:, None], labels[None, :])
    not_self = tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool))
    return tf.logical_and(same, not_self), tf.logical_not(same)


def batch_all_triplet_loss(
    embeddings: tf.Tensor,
    labels: tf.Tensor,
    distance: str = "l2",
    margin: float | None = 0.2,
    scale: float = 1.0,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Batch-all loss: the mean over the valid triplets of the batch that have positive loss.

    Valid means ``a != p``, ``label[a] == label[p]`` and ``label[a] != label[n]``. Averaging
    over active triplets only (Hermans et al., 2017) keeps the gradient from vanishing as easy
    triplets pile up. Returns ``(loss, active_fraction)``; both are 0 when the batch holds no
    valid triplet.
    """
    dist = pairwise_distance(embeddings, distance)
    is_pos, is_neg = _label_masks(labels)
    valid = tf.logical_and(is_pos[:, :, None], is_neg[:, None, :])  # (a, p, n)
    d_ap, d_an = dist[:, :, None], dist[:, None, :]
    losses = triplet_margin_loss(d_ap, d_an, margin, scale)
    active = tf.logical_and(valid, _active(d_ap, d_an, margin))
    valid_f, active_f = tf.cast(valid, dist.dtype), tf.cast(active, dist.dtype)
    # Soft margin: every valid triplet has positive loss, so average over all of them.
    weights = valid_f if margin is None else active_f
    return _mean_or_zero(losses, weights), _mean_or_zero(active_f, valid_f)


def _hardest(dist: tf.Tensor, is_pos: tf.Tensor, is_neg: tf.Tensor):
    """Batch-hard selection: per anchor, the farthest positive and the nearest negative.

    Returns ``(positive index, negative index, counts)`` of shape (b,); ``counts`` is 1 for
    anchors that have both a positive and a negative in the batch.
    """
    hardest_pos = tf.argmax(tf.where(is_pos, dist, -tf.ones_like(dist)), axis=1)
    big = tf.fill(tf.shape(dist), dist.dtype.max)
    hardest_neg = tf.argmin(tf.where(is_neg, dist, big), axis=1)
    has_both = tf.logical_and(tf.reduce_any(is_pos, axis=1), tf.reduce_any(is_neg, axis=1))
    return tf.cast(hardest_pos, tf.int32), tf.cast(hardest_neg, tf.int32), has_both


def batch_hard_triplet_loss(
    embeddings: tf.Tensor,
    labels: tf.Tensor,
    distance: str = "l2",
    margin: float | None = 0.2,
    scale: float = 1.0,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Batch-hard loss: per anchor, its farthest positive against its nearest negative.

    Anchors without a positive or a negative in the batch are left out. Returns
    ``(loss, active_fraction)`` over the anchors that count.
    """
    dist = pairwise_distance(embeddings, distance)
    hardest_pos, hardest_neg, counts = _hardest(dist, *_label_masks(labels))
    d_ap = tf.gather(dist, hardest_pos, batch_dims=1)
    d_an = tf.gather(dist, hardest_neg, batch_dims=1)
    weights = tf.cast(counts, dist.dtype)
    losses = triplet_margin_loss(d_ap, d_an, margin, scale)
    active = tf.cast(_active(d_ap, d_an, margin), dist.dtype) * weights
    return _mean_or_zero(losses, weights), _mean_or_zero(active, weights)


def _semi_hard(dist: tf.Tensor, is_pos: tf.Tensor, is_neg: tf.Tensor):
    """Semi-hard selection: for each anchor-positive pair, its negative.

    The nearest negative strictly farther than the positive (the lowest column among equally
    near ones); when there is none, the farthest negative. Returns the :class:`_PositivePairs`
    of the batch and the negatives' columns (b, k). Memory O(b^2 k).
    """
    pairs = _PositivePairs(dist, is_pos, is_neg)
    nearest_farther = tf.argmin(pairs.farther, axis=2, output_type=tf.int32)
    has_farther = tf.gather(pairs.farther, nearest_farther, batch_dims=2) < dist.dtype.max
    farthest = tf.argmax(tf.where(is_neg, dist, -1.0), axis=1, output_type=tf.int32)
    return pairs, tf.where(has_farther, nearest_farther, farthest[:, None])


def semi_hard_triplet_loss(
    embeddings: tf.Tensor,
    labels: tf.Tensor,
    distance: str = "l2",
    margin: float | None = 0.2,
    scale: float = 1.0,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Semi-hard loss (FaceNet, Schroff et al., 2015), over every anchor-positive pair.

    For each pair ``(a, p)`` the negative is the nearest one that is farther from the anchor
    than the positive (``d_an > d_ap``); when the loss has a margin and that negative lies
    beyond it, the pair is easy and contributes 0. Fallback when no negative is farther than
    the positive (all of them are harder): the farthest negative, i.e. the least hard of the
    hard ones, as TensorFlow Addons does, which avoids the collapse that the very hardest
    negatives cause early in training. Uses O(batch^2 k) memory, k the most positives of an
    anchor (K - 1 in a P x K batch). Returns
    ``(loss, active_fraction)`` over the anchor-positive pairs.
    """
    dist = pairwise_distance(embeddings, distance)
    pairs, negative = _semi_hard(dist, *_label_masks(labels))
    d_an = tf.gather(dist, negative, batch_dims=1)
    weights = tf.cast(pairs.valid, dist.dtype)
    losses = triplet_margin_loss(pairs.d_ap, d_an, margin, scale)
    active = tf.cast(_active(pairs.d_ap, d_an, margin), dist.dtype) * weights
    return _mean_or_zero(losses, weights), _mean_or_zero(active, weights)


def mined_triplets(
    embeddings, labels, mining: str, distance: str = "l2", margin: float | None = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """The triplets a mining strategy picks in a batch, and which of them are active.

    For inspection and tests: it uses the same selection as the losses. ``batch_all`` picks
    every valid triplet, ``batch_hard`` one per anchor, ``semi_hard`` one per anchor-positive
    pair.

    Returns
    -------
    triplets : ndarray of shape (m, 3)
        ``(anchor, positive, negative)`` batch indices, sorted.
    active : ndarray of shape (m,), bool
        Whether each triplet has ``d(a, p) - d(a, n) + margin > 0``.
    """
    dist = pairwise_distance(tf.convert_to_tensor(embeddings, tf.float32), distance)
    is_pos, is_neg = _label_masks(tf.convert_to_tensor(labels))
    if mining == "batch_all":
        triplets = tf.where(tf.logical_and(is_pos[:, :, None], is_neg[:, None, :]))
    elif mining == "batch_hard":
        hardest_pos, hardest_neg, counts = _hardest(dist, is_pos, is_neg)
        anchors = tf.range(tf.shape(dist)[0])
        triplets = tf.boolean_mask(tf.stack([anchors, hardest_pos, hardest_neg], 1), counts)
    elif mining == "semi_hard":
        pairs, negative = _semi_hard(dist, is_pos, is_neg)
        where = tf.cast(tf.where(pairs.valid), tf.int32)  # (anchor, slot)
        triplets = tf.stack(
            [where[:, 0], tf.gather_nd(pairs.pos, where), tf.gather_nd(negative, where)], axis=1
        )
    else:
        raise ValueError(f"mining must be batch_all, batch_hard or semi_hard; got {mining!r}.")
    triplets = np.asarray(triplets, dtype=np.int64).reshape(-1, 3)
    triplets = triplets[np.lexsort(triplets.T[::-1])]
    d = dist.numpy()
    a, p, n = triplets.T
    return triplets, d[a, p] - d[a, n] + (0.0 if margin is None else margin) > 0


BATCH_LOSSES = {
    "batch_all": batch_all_triplet_loss,
    "batch_hard": batch_hard_triplet_loss,
    "semi_hard": semi_hard_triplet_loss,
}


@keras.saving.register_keras_serializable(package="tripletsk")
class TripletLoss(keras.losses.Loss):
    """Triplet loss as a Keras loss on stacked ``(anchor, positive, negative)`` embeddings.

    ``y_pred`` has shape (n, 3, d); ``y_true`` is ignored. A thin serialisable wrapper of
    :func:`triplet_loss`, for users who assemble their own Keras triplet model.

    Examples
    --------
    >>> import numpy as np
    >>> from tripletsk.training.losses import TripletLoss
    >>> y = np.array([[[0.0, 0.0], [0.0, 1.0], [3.0, 0.0]]], dtype="float32")
    >>> float(TripletLoss(margin=0.5)(None, y))
    0.0
    """

    def __init__(
        self,
        distance: str = "l2",
        margin: float | None = 0.2,
        name="triplet_loss",
        soft_margin_scale: float = 1.0,
    ):
        check_distance(distance)
        super().__init__(name=name, reduction="sum_over_batch_size")
        self.distance = distance
        self.margin = margin
        self.soft_margin_scale = soft_margin_scale

    def call(self, y_true, y_pred):
        y_pred = tf.convert_to_tensor(y_pred)
        d_ap = paired_distance(y_pred[:, 0], y_pred[:, 1], self.distance)
        d_an = paired_distance(y_pred[:, 0], y_pred[:, 2], self.distance)
        return triplet_margin_loss(d_ap, d_an, self.margin, self.soft_margin_scale)

    def __call__(self, y_true, y_pred, sample_weight=None):
        if y_true is None:  # the triplet loss needs no targets
            y_true = tf.zeros(tf.shape(y_pred)[:1])
        return super().__call__(y_true, y_pred, sample_weight)

    def get_config(self) -> dict:
        return {"name": self.name, "distance": self.distance, "margin": self.margin,
                "soft_margin_scale": self.soft_margin_scale}  # fmt: skip
