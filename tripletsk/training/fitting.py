"""The steps of a fit around the training loop (private): the check of the head's size,
standardisation, the early-stopping hold-out and its scorer, the initial weights and the epoch
plan, the call of the loop, and the check that training learned something. All read the
fit's :class:`~tripletsk.training.config.TrainingConfig`."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable

import numpy as np
from sklearn.model_selection import train_test_split

from tripletsk.distances import paired_distance, sklearn_metric
from tripletsk.errors import EmbeddingCollapseWarning
from tripletsk.evaluation.metrics import label_triplet_accuracy, triplet_accuracy
from tripletsk.training.config import TrainingConfig
from tripletsk.training.head import HeadWeights, init_head_weights
from tripletsk.training.plan import epoch_batches
from tripletsk.training.rows import FeatureRows, embed


def fit_head(config: TrainingConfig, items: FeatureRows, triplets, labels, rng) -> dict:
    """Fit a head on ``items`` (raw rows) and ``triplets`` or ``labels``, as ``config`` says.

    Returns the fitted attributes of ``TripletEncoder`` (``weights_``, ``feature_mean_``,
    ``loss_curve_``, ...) by name. ``rng`` draws, in order, the early-stopping hold-out,
    the initial weights, the seed of dropout, the batches, and the rows checked for collapse.
    """
    check_head_size(config)
    mean, scale = standardization(items, config.standardize)
    items = items.standardized(mean, scale)
    train_rows, validation_score = holdout(items, triplets, labels, config, rng)
    result = train(config, items, triplets, labels, train_rows, validation_score, rng)
    warn_if_failed(
        items, result.weights, result.loss_curve, result.active_fraction, config.margin, rng,
        soft_margin_scale=config.loss_scale,
    )  # fmt: skip
    return {
        "feature_mean_": mean,
        "feature_scale_": scale,
        "weights_": result.weights,
        "loss_curve_": result.loss_curve,
        "active_fraction_": result.active_fraction,
        "error_curve_": result.error_curve,
        "validation_scores_": result.validation_scores if config.early_stopping else None,
        "best_validation_score_": result.best_validation_score,
        "n_iter_": result.n_iter,
    }


#: Estimated training memory of the head above which ``fit`` warns, or refuses a head whose
#: embedding is wider than the layer before it (see :func:`check_head_size`).
HEAD_MEMORY_LIMIT = 1 << 30


def check_head_size(config: TrainingConfig) -> None:
    """Refuse a costly head whose extra size buys nothing; warn about any other costly head.

    Training holds about 5 float32 copies of the head's parameters (weights, gradients,
    Adam's two moments, the weight average) plus the activations of a batch: a lower bound of
    its memory. Above :data:`HEAD_MEMORY_LIMIT` (1 GiB):

    * if ``n_components`` is more than the width of the layer before it (the last hidden
      layer, or the features for a linear head), the embedding lies in a space of that width
      whatever ``n_components`` is (its layer is linear), so the extra dimensions change no
      distance: ``ValueError``, before any work (``n_components=100000`` on a 2048-unit
      layer trained 81 s and took 6.6 GB without a word);
    * otherwise a ``UserWarning`` names the parameters and the memory.

    Small heads are never refused, whatever their shape (tests use ``hidden_units=8`` with
    the default ``n_components=64``).
    """
    hidden, n_components = config.hidden_units, config.n_components
    widths = [config.n_features, *hidden, n_components]
    params = sum(a * b + b for a, b in itertools.pairwise(widths))
    memory = 4 * (5 * params + 3 * config.batch_size * sum(widths))
    if memory <= HEAD_MEMORY_LIMIT:
        return
    shape = " -> ".join(f"{w:,}" for w in widths)
    cost = f"a head of {params:,} parameters ({shape}), at least {memory / 2**30:.1f} GiB to train"
    before = widths[-2]
    if n_components > before:
        layer = "units of the last hidden layer" if hidden else "input features"
        raise ValueError(
            f"n_components={n_components} is more than the {before:,} {layer}: the embedding "
            f"spans at most {before:,} dimensions whatever n_components is, so the extra ones "
            f"only cost memory and time ({cost}). Use n_components <= {before:,}."
        )
    # check_head_size <- fit_head <- fit <- sklearn's wrapper <- the caller of fit
    warnings.warn(f"TripletEncoder: {cost}.", UserWarning, stacklevel=5)


def standardization(items: FeatureRows, standardize: bool) -> tuple[np.ndarray, np.ndarray]:
    """The ``(mean, scale)`` that inputs are standardised with, as float32 vectors.

    One pass over the rows, which also checks them (NaN, infinity). With ``standardize``,
    each feature is centred, then all are divided by one overall scale (the root mean
    variance): per-feature unit variance would blow up near-constant features (rare pixels,
    rarely firing CNN channels) into noise as loud as the informative ones.
    """
    d = items.n_features
    mean, variance = items.checked_mean_and_variance()
    if not standardize:
        return np.zeros(d, dtype=np.float32), np.ones(d, dtype=np.float32)
    scale = float(np.sqrt(variance.mean()))
    scale = scale if scale > 10 * np.finfo(np.float32).eps else 1.0
    return mean.astype(np.float32), np.full(d, scale, dtype=np.float32)


def holdout(
    items: FeatureRows, triplets, labels, config: TrainingConfig, rng
) -> tuple[np.ndarray, Callable[[HeadWeights], float] | None]:
    """Training rows (of ``triplets``, or items with ``labels``) and the held-out scorer.

    The scorer maps head weights to the held-out triplet accuracy. Labelled samples are
    held out stratified by label when every class has two samples. Without early stopping
    (``config.holdout_fraction`` is ``None``) everything is trained on, without a scorer.
    """
    fraction, distance = config.holdout_fraction, config.distance
    n = len(triplets) if triplets is not None else len(labels)
    everything = np.arange(n)
    if fraction is None:
        return everything, None
    if labels is None:
        train, held = train_test_split(everything, test_size=fraction, random_state=rng)
        # Only the held-out triplets' items are embedded to score an epoch.
        held_items, held_triplets = np.unique(triplets[held], return_inverse=True)
        held_triplets = held_triplets.reshape(-1, 3)

        def score(weights):
            emb = embed(items, weights, held_items)
            a, pos, neg = (emb[held_triplets[:, i]] for i in range(3))
            return triplet_accuracy(
                paired_distance(a, pos, distance), paired_distance(a, neg, distance)
            )

        return train, score
    _, counts = np.unique(labels, return_counts=True)
    stratify = labels if counts.min() >= 2 else None
    try:
        train, held = train_test_split(
            everything, test_size=fraction, random_state=rng, stratify=stratify
        )
    except ValueError as exc:
        raise ValueError(
            f"early_stopping could not hold out validation_fraction={fraction} of {n} "
            f"samples: {exc}"
        ) from exc
    # In item order, so passes over the training items (hybrid's offline mining) read a
    # cache forward when the items are in the cache's order, not at random.
    train = np.sort(train)
    metric = sklearn_metric(distance)

    def score(weights):
        try:
            return label_triplet_accuracy(embed(items, weights, held), labels[held], metric)
        except ValueError:  # the held-out labels define no triplet
            return 0.0

    return train, score


def train(
    config: TrainingConfig, items: FeatureRows, triplets, labels, train_rows, validation_score, rng
):
    """Train a head on the standardised ``items`` (their ``train_rows``) as ``config`` says:
    initial weights and batches from ``rng``, then the training loop. Returns the loop's
    :class:`~tripletsk.training.loop.TrainingResult`."""
    init = init_head_weights(items.n_features, config.hidden_units, config.n_components, rng)
    seed = int(rng.randint(np.iinfo(np.int32).max))
    batch_rng = np.random.RandomState(rng.randint(np.iinfo(np.int32).max))
    # TensorFlow is needed only from here.
    from tripletsk.training.loop import train_head

    plan = epoch_batches(items, triplets, labels, train_rows, config, batch_rng)
    if config.precision == "bfloat16":
        from tripletsk.extraction.runners import warn_if_bfloat16_is_emulated

        # <- train <- fit_head <- fit <- sklearn's wrapper <- the caller of fit
        warn_if_bfloat16_is_emulated("Training", stacklevel=6)
    codes = None if labels is None else np.unique(labels, return_inverse=True)[1]
    return train_head(
        items, init, plan, config, labels=codes, validation_score=validation_score, seed=seed
    )


def warn_if_failed(
    items: FeatureRows,
    weights: HeadWeights,
    loss_curve,
    active_fraction,
    margin,
    rng,
    soft_margin_scale: float = 1.0,
) -> None:
    """Warn (:class:`EmbeddingCollapseWarning`) if the fitted head learned nothing useful."""
    what = _failure(items, weights, loss_curve, active_fraction, margin, soft_margin_scale, rng)
    if what is not None:
        warnings.warn(
            f"Training failed: {what}. Try mining='semi_hard' or 'random', a smaller margin, "
            "or a lower learning_rate; keep standardize=True; check that the features differ "
            "between images and that the triplets or labels agree with them.",
            EmbeddingCollapseWarning,
            stacklevel=5,  # <- fit_head <- fit <- sklearn's wrapper <- the caller of fit
        )


# A fit is "stuck at the margin" when, at the end, 95% or more of anchors violate the margin
# and the mean loss is within this fraction of it: the hardest negatives sit as close as the
# hardest positives. Measured on 400 samples of 10 classes (32-d Gaussian, class signal of 0, 1
# or 3 along one axis per class): batch_hard ended at 1.025-1.055 with margin 1.0 and 98-100%
# of anchors active, its embeddings shrunk to a tiny cap (per-axis spread 0.012-0.045 against
# 0.31 when healthy); with a clear signal (6) the loss fell to 0.16 with 91% active.
# With the soft margin (margin=None) the loss softplus(d(a, p) - d(a, n)) sits at log(2) (at
# log(2) / s when scaled by s) when negatives are as close as positives: measured at s = 1 on
# the same data with the default head and batch_hard, signal 0 or 1 ended at 0.690 with
# 97-98% of anchors violating (d(a, p) > d(a, n)) and a spread of 0.07; signal 3 at 0.683 with
# 46%, signal 6 at 0.483 with 15% (healthy).
_SOFT_MARGIN_STUCK_LOSS = math.log(2.0)
_STUCK_LOSS = 0.1
_STUCK_ACTIVE = 0.95


def _failure(items, weights, loss_curve, active_fraction, margin, scale, rng) -> str | None:
    """Why the fitted head is useless (collapsed, or stuck at the margin), or ``None``.

    Stuck means the loss stays where ``d(a, p) = d(a, n)`` puts it (``margin``, or the soft
    margin's ``log 2 / scale``) while nearly every anchor still violates it."""
    emb = embed(items, weights, np.sort(rng.permutation(len(items))[:2000]))
    spread = float(np.linalg.norm(emb - emb.mean(axis=0), axis=1).mean())
    if spread < 1e-3:
        return f"the embedding collapsed (mean distance to the centre {spread:.2e})"
    if not loss_curve:
        return None
    stuck_at = _SOFT_MARGIN_STUCK_LOSS / scale if margin is None else margin
    active = active_fraction[-1] if len(active_fraction) else 1.0
    if abs(loss_curve[-1] - stuck_at) < _STUCK_LOSS * stuck_at and active >= _STUCK_ACTIVE:
        where = f"margin {margin}"
        if margin is None:
            at = "log 2" if scale == 1.0 else f"log 2 / {scale:g}"
            where = f"{at}, the soft margin's value for d(a, p) = d(a, n)"
        return (
            f"the loss stayed at the margin ({loss_curve[-1]:.4f}, {where}, "
            f"{active:.0%} of anchors violating it): negatives are as close as positives, and "
            f"the embeddings have shrunk together (mean distance to their centre {spread:.3f} "
            "for unit vectors), so distances carry little information"
        )
    return None
