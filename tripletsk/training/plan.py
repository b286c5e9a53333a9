"""The plan of an epoch: which batches of indices a fit trains on, epoch after epoch (NumPy).

:func:`epoch_batches` turns the fit's mining word (its row of
:data:`~tripletsk.training.strategies.STRATEGIES`) into a function ``(epoch, weights) ->
batches``: the given triplets (plus each anchor's hardest known triplet, ``"hard"``), random
label triplets, or P x K batches of labelled samples (plus offline hard examples,
``"hybrid"``), drawn with :mod:`tripletsk.triplets.mining`. With ``stream``, an epoch visits the
rows window by window, each made of whole storage blocks.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import numpy as np

from tripletsk.training.config import TrainingConfig
from tripletsk.training.head import HeadWeights
from tripletsk.training.rows import FeatureRows, block_windows, embed
from tripletsk.training.windows import window_rows
from tripletsk.triplets.mining import (
    hard_examples,
    hardest_known,
    pk_batches,
    sample_label_triplets,
)

EpochPlan = Callable[[int, HeadWeights], Iterator[np.ndarray]]


def epoch_batches(
    items: FeatureRows, triplets, labels, train: np.ndarray, config: TrainingConfig, rng
) -> EpochPlan:
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
    config : TrainingConfig
        ``config.strategy`` says what the batches are (:mod:`tripletsk.training.strategies`);
        ``batch_size`` is triplets or items per batch; ``distance``, ``samples_per_class``,
        ``hard_per_anchor``, ``refresh_every`` and ``stream`` as for
        :class:`~tripletsk.TripletEncoder`.
    rng : RandomState
    """
    batches = config.strategy.batches
    if batches == "triplets":
        return _triplet_plan(items, triplets[train], config, rng)
    if batches == "random":
        return _random_plan(items, labels[train], train, config, rng)
    return _pk_plan(items, labels[train], train, config, rng)


def _windows(items: FeatureRows, train: np.ndarray, config: TrainingConfig, rng):
    """Positions into ``train``: all at once, or block windows when streaming."""
    if not config.stream:
        return [np.arange(len(train))]
    return block_windows(items.rows[train], items.block_rows, window_rows(config.n_features), rng)


def _triplet_plan(items, train_triplets, config: TrainingConfig, rng) -> EpochPlan:
    batch_size, known = config.batch_size, config.strategy.extra == "known"

    def given(epoch, weights):
        epoch_triplets = train_triplets
        if known:
            mined = hardest_known(train_triplets, embed(items, weights), config.distance)
            epoch_triplets = np.concatenate([train_triplets, mined])
        if config.stream:  # by the storage block of each triplet's anchor
            anchor_rows = items.rows[epoch_triplets[:, 0]]
            rows = window_rows(config.n_features) // 3
            order = np.concatenate(block_windows(anchor_rows, items.block_rows, rows, rng))
        else:
            order = rng.permutation(len(epoch_triplets))
        for start in range(0, len(order), batch_size):
            yield epoch_triplets[order[start : start + batch_size]]

    return given


def _random_plan(items, train_labels, train, config: TrainingConfig, rng) -> EpochPlan:
    def random_triplets(epoch, weights):
        for window in _windows(items, train, config, rng):
            try:
                sampled = sample_label_triplets(train_labels[window], random_state=rng)
            except ValueError:
                if not config.stream:
                    raise
                continue  # a streamed window with a single class or no pair: skip it
            sampled = train[window[sampled]]
            for start in range(0, len(sampled), config.batch_size):
                yield sampled[start : start + config.batch_size]

    return random_triplets


def _pk_plan(items, train_labels, train, config: TrainingConfig, rng) -> EpochPlan:
    n_classes = len(np.unique(train_labels))
    p, k = pk_shape(config.batch_size, config.samples_per_class, n_classes)
    per_anchor, refresh_every = config.hard_per_anchor, config.refresh_every
    hard = None
    if config.strategy.extra == "offline":
        hard = hard_examples(items.select(train), train_labels, per_anchor)

    def pk(epoch, weights):
        nonlocal hard
        if hard is not None and refresh_every and epoch and epoch % refresh_every == 0:
            # Re-mine with the head as trained so far: what is hard changes as it learns.
            hard = hard_examples(embed(items, weights, train), train_labels, per_anchor)
        for window in _windows(items, train, config, rng):
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
    >>> from tripletsk.training.plan import pk_shape
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
                # pk_shape <- _pk_plan <- epoch_batches <- fitting.train <- fitting.fit_head
                # <- fit <- sklearn's wrapper <- the caller of fit
                stacklevel=8,
            )
    return max(2, batch_size // k), k


def with_hard_examples(batch, hard, n_anchors: int, rng) -> np.ndarray:
    """Add the offline hard positives and negatives of up to ``n_anchors`` batch anchors."""
    hard_pos, hard_neg = hard
    anchors = rng.choice(batch, size=min(n_anchors, len(batch)), replace=False)
    extra = np.concatenate([hard_pos[anchors].ravel(), hard_neg[anchors].ravel()])
    extra = extra[extra >= 0]
    return np.concatenate([batch, np.setdiff1d(extra, batch)])
