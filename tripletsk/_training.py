"""The TensorFlow training loop of the head (private: used by ``TripletEncoder.fit``).

Features live in memory as one tensor; each step receives only the indices of its batch, so a
step costs a gather and the small head. Each distinct item of a batch is embedded once,
whatever the number of triplets it appears in.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from tripletsk.head import HeadWeights, build_keras_head, get_head_weights
from tripletsk.losses import BATCH_LOSSES, triplet_loss


@dataclass
class TrainingResult:
    weights: HeadWeights
    loss_curve: list[float] = field(default_factory=list)
    active_fraction: list[float] = field(default_factory=list)
    validation_scores: list[float] = field(default_factory=list)
    best_validation_score: float | None = None
    n_iter: int = 0
    stopped_on_nan: bool = False


def _make_steps(model, optimizer, features, labels, distance, margin, mining):
    """Compiled train steps: one for index triplets, one for labelled batches."""

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.int32)], reduce_retracing=True)
    def triplet_step(idx):
        unique, inverse = tf.unique(tf.reshape(idx, [-1]))
        with tf.GradientTape() as tape:
            emb = model(tf.gather(features, unique), training=True)
            emb = tf.reshape(tf.gather(emb, inverse), [-1, 3, tf.shape(emb)[-1]])
            loss, active = triplet_loss(emb[:, 0], emb[:, 1], emb[:, 2], distance, margin)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss, active

    batch_loss = BATCH_LOSSES.get(mining)  # None for triplet-only training

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32)], reduce_retracing=True)
    def batch_step(idx):
        with tf.GradientTape() as tape:
            emb = model(tf.gather(features, idx), training=True)
            loss, active = batch_loss(emb, tf.gather(labels, idx), distance, margin)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss, active

    return triplet_step, batch_step


def train_head(
    features: np.ndarray,
    initial_weights: HeadWeights,
    epoch_batches: Callable[[int, HeadWeights], Iterable[np.ndarray]],
    *,
    labels: np.ndarray | None,
    distance: str,
    margin: float | None,
    mining: str,
    dropout: float,
    learning_rate: float,
    max_epochs: int,
    tol: float,
    n_iter_no_change: int,
    validation_score: Callable[[HeadWeights], float] | None,
    seed: int,
    verbose: int = 0,
) -> TrainingResult:
    """Train the head and return its best weights with the training history.

    ``epoch_batches(epoch, current_weights)`` yields the epoch's batches: arrays of shape
    (b, 3) of item indices (triplets) or of shape (b,) (labelled batches mined online with
    ``mining``). With ``validation_score``, training stops once the score has not improved by
    ``tol`` for ``n_iter_no_change`` epochs and the best weights are returned; without it, the
    same rule applies to the training loss and the last weights are returned. A non-finite loss
    stops training with a warning and returns the last finite weights.
    """
    model = build_keras_head(initial_weights, dropout=dropout, seed=seed)
    import keras

    optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    feats = tf.constant(features, dtype=tf.float32)
    labs = tf.constant(labels, dtype=tf.int32) if labels is not None else None
    triplet_step, batch_step = _make_steps(model, optimizer, feats, labs, distance, margin, mining)

    result = TrainingResult(weights=initial_weights)
    best, best_weights, no_change = -math.inf, initial_weights, 0
    last_finite = initial_weights
    for epoch in range(max_epochs):
        losses, actives, sizes = [], [], []
        for batch in epoch_batches(epoch, last_finite):
            step = triplet_step if batch.ndim == 2 else batch_step
            loss, active = step(tf.constant(batch, dtype=tf.int32))
            losses.append(float(loss))
            actives.append(float(active))
            sizes.append(len(batch))
        epoch_loss = float(np.average(losses, weights=sizes))
        if not math.isfinite(epoch_loss):
            warnings.warn(
                f"The training loss became {epoch_loss} at epoch {epoch + 1}; training stopped "
                "and the last finite weights were kept. Lower learning_rate.",
                RuntimeWarning,
                stacklevel=3,
            )
            result.stopped_on_nan = True
            break
        last_finite = get_head_weights(model)
        result.n_iter = epoch + 1
        result.loss_curve.append(epoch_loss)
        result.active_fraction.append(float(np.average(actives, weights=sizes)))
        if validation_score is not None:
            score = validation_score(last_finite)
            result.validation_scores.append(score)
            progress = score
        else:
            progress = -epoch_loss
        if verbose:
            line = (
                f"epoch {epoch + 1}: loss {epoch_loss:.4f}, active {result.active_fraction[-1]:.3f}"
            )
            if validation_score is not None:
                line += f", validation accuracy {score:.4f}"
            print(line, flush=True)
        if progress > best + tol:
            best, best_weights, no_change = progress, last_finite, 0
        else:
            no_change += 1
            if no_change >= n_iter_no_change:
                break
    if validation_score is not None and result.validation_scores:
        result.weights = best_weights
        result.best_validation_score = best
    else:
        result.weights = last_finite
    return result
