"""The TensorFlow training loop of the head (private: used by ``TripletEncoder.fit``).

An epoch's batches are fed in windows: consecutive, equally shaped batches whose rows together
fit in ``WINDOW_BYTES``. A window's distinct rows are read once (standardised, as one tensor)
and its batches arrive as stacked index arrays into it; they run inside one compiled loop, so
Python is not involved between steps. Each distinct item of a batch is embedded once, however
many triplets it appears in. The next window is read in a background thread while the current
one trains, so reading overlaps computing, and memory stays O(window) whatever the number of
cached images. Measured throughput against the machine's matrix-multiply peak:
``benchmarks/head_training.py``; memory: ``benchmarks/memory.py``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from tripletsk._rows import FeatureRows
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

# Feature rows read per window (64 MiB: 8,192 rows at 2048-d, ~10 batches of 256 triplets).
# Two windows are alive at once (one training, one being read), plus TensorFlow's copy.
WINDOW_BYTES = 64 * 2**20


def _make_steps(model, optimizer, mean, scale, distance, margin, mining):
    """Compiled training loops: one for index triplets, one for labelled batches.

    Each takes a window's features (and labels), and a stack of equally sized batches of
    indices into them, shape (k, b, 3) or (k, b), and runs its k steps inside one graph (a
    ``tf.while_loop``), returning each step's loss and active fraction. One call per window
    instead of one per step removes the Python and dispatch overhead between steps, which
    dominates when features are narrow. Rows arrive as stored and are standardised with
    ``mean`` and ``scale`` in the graph, per batch (cheaper than a pass over each window).
    """

    def standardized(features, idx):
        return (tf.gather(features, idx) - mean) / scale

    def triplet_step(features, labels, idx):
        unique, inverse = tf.unique(tf.reshape(idx, [-1]))
        with tf.GradientTape() as tape:
            emb = model(standardized(features, unique), training=True)
            emb = tf.cast(emb, tf.float32)
            emb = tf.reshape(tf.gather(emb, inverse), [-1, 3, tf.shape(emb)[-1]])
            loss, active = triplet_loss(emb[:, 0], emb[:, 1], emb[:, 2], distance, margin)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss, active

    batch_loss = BATCH_LOSSES.get(mining)  # None for triplet-only training

    def batch_step(features, labels, idx):
        with tf.GradientTape() as tape:
            emb = tf.cast(model(standardized(features, idx), training=True), tf.float32)
            loss, active = batch_loss(emb, tf.gather(labels, idx), distance, margin)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss, active

    def looped(step, signature):
        @tf.function(
            input_signature=[
                tf.TensorSpec([None, None], tf.float32),
                tf.TensorSpec([None], tf.int32),
                signature,
            ],
            reduce_retracing=True,
        )
        def run(features, labels, batches):
            n = tf.shape(batches)[0]
            losses = tf.TensorArray(tf.float32, size=n)
            actives = tf.TensorArray(tf.float32, size=n)
            for i in tf.range(n):
                loss, active = step(features, labels, batches[i])
                losses = losses.write(i, loss)
                actives = actives.write(i, active)
            return losses.stack(), actives.stack()

        return run

    return (
        looped(triplet_step, tf.TensorSpec([None, None, 3], tf.int32)),
        looped(batch_step, tf.TensorSpec([None, None], tf.int32)),
    )


def _windows(batches: Iterable[np.ndarray], max_rows: int) -> Iterator[np.ndarray]:
    """Group consecutive batches into stacks (k, b, 3) or (k, b): equal shapes, at most
    ``max_rows`` indices in all (a larger batch is a window of its own)."""
    run: list[np.ndarray] = []
    size = 0
    for batch in batches:
        batch = np.asarray(batch)
        if run and (batch.shape != run[0].shape or size + batch.size > max_rows):
            yield np.stack(run)
            run, size = [], 0
        run.append(batch)
        size += batch.size
    if run:
        yield np.stack(run)


def _read_window(items: FeatureRows, labels: np.ndarray | None, stack: np.ndarray):
    """A window's distinct rows, their labels, and the batches as indices into those rows:
    tensors for the compiled loop."""
    ids, local = np.unique(stack, return_inverse=True)
    window_labels = labels[ids] if labels is not None else np.zeros(0, dtype=np.int32)
    return (
        tf.convert_to_tensor(items.take(ids)),
        tf.convert_to_tensor(window_labels, dtype=tf.int32),
        tf.convert_to_tensor(local.reshape(stack.shape), dtype=tf.int32),
    )


def _read_ahead(iterable: Iterable) -> Iterator:
    """Iterate ``iterable`` one item ahead in a background thread.

    TensorFlow releases the GIL while it trains on one window, so the next window's batches are
    planned and its rows read meanwhile.
    """
    done = object()
    iterator = iter(iterable)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tripletsk-read") as pool:
        pending = pool.submit(next, iterator, done)
        while (item := pending.result()) is not done:
            pending = pool.submit(next, iterator, done)
            yield item


def train_head(
    items: FeatureRows,
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

    ``items`` are the feature rows (with their standardisation), read a window at a time.
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
    d = items.n_features
    mean = tf.constant(np.zeros(d) if items.mean is None else items.mean, tf.float32)
    scale = tf.constant(np.ones(d) if items.scale is None else items.scale, tf.float32)
    triplet_loop, batch_loop = _make_steps(model, optimizer, mean, scale, distance, margin, mining)
    stored = items.raw()  # standardised in the graph
    window_rows = max(1, WINDOW_BYTES // (4 * items.n_features))

    result = TrainingResult(weights=initial_weights)
    best, best_weights, no_change = -math.inf, initial_weights, 0
    last_finite = initial_weights
    for epoch in range(max_epochs):
        losses, actives, sizes = [], [], []
        windows = _windows(epoch_batches(epoch, last_finite), window_rows)
        read = (_read_window(stored, labels, stack) for stack in windows)
        for features, window_labels, stack in _read_ahead(read):
            loop = triplet_loop if stack.shape.rank == 3 else batch_loop
            run_losses, run_actives = loop(features, window_labels, stack)
            losses.extend(run_losses.numpy().tolist())
            actives.extend(run_actives.numpy().tolist())
            sizes.extend([int(stack.shape[1])] * int(stack.shape[0]))
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
