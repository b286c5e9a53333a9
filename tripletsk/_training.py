"""The TensorFlow training loop of the head (private: used by ``TripletEncoder.fit``).

Features live in memory as one tensor; each step receives only the indices of its batch, so a
step costs a gather and the small head. Each distinct item of a batch is embedded once,
whatever the number of triplets it appears in. An epoch's batches are fed as stacked index
arrays and run inside one compiled loop, so Python is not involved between steps. Measured
throughput against the machine's matrix-multiply peak: ``benchmarks/head_training.py``.
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


PRECISIONS = {"float32": None, "bfloat16": "mixed_bfloat16"}


def _make_steps(model, optimizer, features, labels, distance, margin, mining):
    """Compiled training loops: one for index triplets, one for labelled batches.

    Each takes a stack of equally sized batches, shape (k, b, 3) or (k, b), and runs its k
    steps inside one graph (a ``tf.while_loop``), returning each step's loss and active
    fraction. One call per run of equal batches instead of one per step removes the Python
    and dispatch overhead between steps, which dominates when features are narrow.
    """

    def triplet_step(idx):
        unique, inverse = tf.unique(tf.reshape(idx, [-1]))
        with tf.GradientTape() as tape:
            emb = model(tf.gather(features, unique), training=True)
            emb = tf.cast(emb, tf.float32)
            emb = tf.reshape(tf.gather(emb, inverse), [-1, 3, tf.shape(emb)[-1]])
            loss, active = triplet_loss(emb[:, 0], emb[:, 1], emb[:, 2], distance, margin)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss, active

    batch_loss = BATCH_LOSSES.get(mining)  # None for triplet-only training

    def batch_step(idx):
        with tf.GradientTape() as tape:
            emb = tf.cast(model(tf.gather(features, idx), training=True), tf.float32)
            loss, active = batch_loss(emb, tf.gather(labels, idx), distance, margin)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss, active

    def looped(step, signature):
        @tf.function(input_signature=[signature], reduce_retracing=True)
        def run(batches):
            n = tf.shape(batches)[0]
            losses = tf.TensorArray(tf.float32, size=n)
            actives = tf.TensorArray(tf.float32, size=n)
            for i in tf.range(n):
                loss, active = step(batches[i])
                losses = losses.write(i, loss)
                actives = actives.write(i, active)
            return losses.stack(), actives.stack()

        return run

    return (
        looped(triplet_step, tf.TensorSpec([None, None, 3], tf.int32)),
        looped(batch_step, tf.TensorSpec([None, None], tf.int32)),
    )


def _runs_of_equal_batches(batches: Iterable[np.ndarray]):
    """Group consecutive batches of the same shape into stacks: (k, b, 3) or (k, b)."""
    run: list[np.ndarray] = []
    for batch in batches:
        batch = np.asarray(batch)
        if run and batch.shape != run[0].shape:
            yield np.stack(run)
            run = []
        run.append(batch)
    if run:
        yield np.stack(run)


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
    precision: str = "float32",
) -> TrainingResult:
    """Train the head and return its best weights with the training history.

    ``epoch_batches(epoch, current_weights)`` yields the epoch's batches: arrays of shape
    (b, 3) of item indices (triplets) or of shape (b,) (labelled batches mined online with
    ``mining``). With ``validation_score``, training stops once the score has not improved by
    ``tol`` for ``n_iter_no_change`` epochs and the best weights are returned; without it, the
    same rule applies to the training loss and the last weights are returned. A non-finite loss
    stops training with a warning and returns the last finite weights.

    ``precision="bfloat16"`` runs the head's layers under Keras' ``mixed_bfloat16`` policy
    (float32 weights and optimizer state, bfloat16 matrix products); distances and the loss stay
    in float32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}; got {precision!r}.")
    model = build_keras_head(
        initial_weights, dropout=dropout, seed=seed, dtype=PRECISIONS[precision]
    )
    import keras

    optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    # Create the optimizer's slots now: variables created inside the first call of a
    # tf.function make it trace twice, and tracing is most of a small fit's fixed cost.
    optimizer.build(model.trainable_variables)
    feats = tf.constant(features, dtype=tf.float32)
    labs = tf.constant(labels, dtype=tf.int32) if labels is not None else None
    triplet_loop, batch_loop = _make_steps(model, optimizer, feats, labs, distance, margin, mining)

    result = TrainingResult(weights=initial_weights)
    best, best_weights, no_change = -math.inf, initial_weights, 0
    last_finite = initial_weights
    for epoch in range(max_epochs):
        losses, actives, sizes = [], [], []
        for run in _runs_of_equal_batches(epoch_batches(epoch, last_finite)):
            loop = triplet_loop if run.ndim == 3 else batch_loop
            run_losses, run_actives = loop(tf.constant(run, dtype=tf.int32))
            losses.extend(run_losses.numpy().tolist())
            actives.extend(run_actives.numpy().tolist())
            sizes.extend([run.shape[1]] * len(run))
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
