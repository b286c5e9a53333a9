"""The TensorFlow training loop of the head (private: used by ``TripletEncoder.fit``).

Feature rows up to ``RESIDENT_BYTES`` are read once per fit, standardised, into one tensor that
stays resident; an epoch's batches arrive as stacked index arrays into it and run inside one
compiled loop, so Python is not involved between steps. Larger sets (or ``stream=True``) bound
memory instead: the batches are fed in windows, consecutive equally shaped batches whose rows
fit in ``WINDOW_BYTES``. A window's distinct rows are read, standardised, into one reused
buffer, and its batches arrive as indices into it. Either buffer is 64-byte aligned, so
TensorFlow uses it without a copy (DLPack). Each distinct item of a batch is embedded once,
however many triplets it appears in. Before a window trains, the disk reads of the next one are
started (the kernel reads while TensorFlow computes); memory stays O(window) whatever the
number of cached images. Reading rows in a second thread instead was measured slower on 2
cores: the copy competes with TensorFlow's threads for cores and memory bandwidth. Measured:
``benchmarks/head_training.py`` (speed), ``benchmarks/memory.py``, ``benchmarks/streaming.py``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from tripletsk._tensorflow import import_tensorflow
from tripletsk.errors import TrainingDivergedWarning
from tripletsk.training.head import HeadWeights, build_keras_head, get_head_weights
from tripletsk.training.losses import (
    BATCH_LOSSES,
    batch_triplet_error,
    paired_distance,
    triplet_error,
    triplet_loss,
)
from tripletsk.training.progress import FitProgress
from tripletsk.training.rows import FeatureRows
from tripletsk.training.stopping import Stopping, epoch_learning_rate

tf = import_tensorflow()


@dataclass
class TrainingResult:
    weights: HeadWeights
    loss_curve: list[float] = field(default_factory=list)
    active_fraction: list[float] = field(default_factory=list)
    error_curve: list[float] = field(default_factory=list)
    validation_scores: list[float] = field(default_factory=list)
    best_validation_score: float | None = None
    n_iter: int = 0
    stopped_on_nan: bool = False


PRECISIONS = {"float32": None, "bfloat16": "mixed_bfloat16"}

# Up to this size (128k images at 2048-d) the rows of a fit are read once into one resident
# tensor: no per-epoch copies, measured ~20% faster per epoch than windows on 2 cores
# (benchmarks/head_training.py). Beyond it, memory matters more: windows of WINDOW_BYTES.
RESIDENT_BYTES = 1024 * 2**20
# Feature rows read per window (64 MiB: 8,192 rows at 2048-d, ~10 batches of 256 triplets).
# Two windows are alive at once (one training, one being read), plus TensorFlow's copy.
WINDOW_BYTES = 64 * 2**20


class _FusedAdam:
    """Adam exactly as Keras computes it, applied by TensorFlow's fused kernel.

    ``keras.optimizers.Adam`` updates a variable with several element-wise passes (each moment,
    then the variable), each reading and writing the whole tensor; ``ResourceApplyAdam`` makes
    one pass. On the 2048 x 512 kernel that is 1.0 ms instead of 2.8 ms per step (2 Zen 3 cores),
    a third of a 64-triplet step (``benchmarks/cached_vs_end_to_end.py``). The update rule is
    the same (``epsilon`` added to ``sqrt(v)``, bias correction folded into the step size);
    ``tests/training/test_loop.py`` checks it against Keras step by step.
    """

    def __init__(
        self,
        variables,
        learning_rate: float,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        weight_decay: float = 0.0,
    ):
        self.variables = list(variables)
        # Slots are created here, not in the first traced call (which would trace twice).
        self.moments = [
            (tf.Variable(tf.zeros_like(v), trainable=False),
             tf.Variable(tf.zeros_like(v), trainable=False))
            for v in self.variables
        ]  # fmt: skip
        self.iterations = tf.Variable(0.0, trainable=False)
        hyper = {"lr": learning_rate, "beta1": beta_1, "beta2": beta_2, "epsilon": epsilon}
        self.hyper = {name: tf.constant(value, tf.float32) for name, value in hyper.items()}
        # A variable, so that a schedule can change it between epochs without retracing.
        self.hyper["lr"] = tf.Variable(learning_rate, trainable=False, dtype=tf.float32)
        # Decoupled weight decay (AdamW, Loshchilov & Hutter 2019), on kernels only.
        self.decayed = [len(v.shape) > 1 for v in self.variables] if weight_decay else []
        self.weight_decay = tf.constant(weight_decay, tf.float32)

    def set_learning_rate(self, value: float) -> None:
        self.hyper["lr"].assign(value)

    def apply_gradients(self, grads) -> None:
        step = self.iterations.assign_add(1.0)
        hyper = self.hyper
        beta1_power = tf.pow(hyper["beta1"], step)
        beta2_power = tf.pow(hyper["beta2"], step)
        for variable, decay in zip(self.variables, self.decayed, strict=False):
            if decay:
                variable.assign_sub(hyper["lr"] * self.weight_decay * variable)
        for variable, (m, v), grad in zip(self.variables, self.moments, grads, strict=True):
            tf.raw_ops.ResourceApplyAdam(
                var=variable.handle,
                m=m.handle,
                v=v.handle,
                beta1_power=beta1_power,
                beta2_power=beta2_power,
                grad=grad,
                **hyper,
            )


def _make_steps(model, optimizer, distance, margin, mining):
    """Compiled training loops: one for index triplets, one for labelled batches.

    Each takes a window's features (and labels), and a stack of equally sized batches of
    indices into them, shape (k, b, 3) or (k, b), and runs its k steps inside one graph (a
    ``tf.while_loop``), returning each step's loss and active fraction, and whether all
    weights are finite after them. One call per window instead of one per step removes the
    Python and dispatch overhead between steps, which dominates when features are narrow.
    """

    def triplet_step(features, labels, idx):
        unique, inverse = tf.unique(tf.reshape(idx, [-1]))
        with tf.GradientTape() as tape:
            emb = model(tf.gather(features, unique), training=True)
            emb = tf.cast(emb, tf.float32)
            emb = tf.reshape(tf.gather(emb, inverse), [-1, 3, tf.shape(emb)[-1]])
            loss, active = triplet_loss(emb[:, 0], emb[:, 1], emb[:, 2], distance, margin)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(grads)
        error = triplet_error(
            paired_distance(emb[:, 0], emb[:, 1], distance),
            paired_distance(emb[:, 0], emb[:, 2], distance),
        )
        return loss, active, error

    batch_loss = BATCH_LOSSES.get(mining)  # None for triplet-only training

    def batch_step(features, labels, idx):
        with tf.GradientTape() as tape:
            emb = tf.cast(model(tf.gather(features, idx), training=True), tf.float32)
            batch_labels = tf.gather(labels, idx)
            loss, active = batch_loss(emb, batch_labels, distance, margin)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(grads)
        return loss, active, batch_triplet_error(emb, batch_labels, distance)

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
            errors = tf.TensorArray(tf.float32, size=n)
            for i in tf.range(n):
                loss, active, error = step(features, labels, batches[i])
                losses = losses.write(i, loss)
                actives = actives.write(i, active)
                errors = errors.write(i, error)
            # The loss alone can hide divergence: a NaN distance fails every comparison, so
            # the hinge of NaN embeddings reads as a finite margin. Check the weights too.
            finite = tf.reduce_all(
                [tf.reduce_all(tf.math.is_finite(v)) for v in model.trainable_variables]
            )
            return losses.stack(), actives.stack(), errors.stack(), finite

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


class _WindowBuffer:
    """One float32 buffer, reused for the rows of each window in turn.

    It starts on a 64-byte boundary, so TensorFlow uses it in place (through DLPack) instead of
    copying each window, and reusing it saves faulting in fresh pages per window. Windows are
    read one after another, so a window's rows are only overwritten once its training call has
    returned.
    """

    def __init__(self, n_features: int):
        self.n_features = n_features
        self._buffer = np.empty((0, n_features), np.float32)

    def rows(self, n: int) -> np.ndarray:
        if len(self._buffer) < n:
            self._buffer = _aligned_empty((n, self.n_features))
        return self._buffer[:n]


def _aligned_empty(shape: tuple[int, int], alignment: int = 64) -> np.ndarray:
    raw = np.empty(shape[0] * shape[1] * 4 + alignment, dtype=np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start : start + shape[0] * shape[1] * 4].view(np.float32).reshape(shape)


def _read_window(items: FeatureRows, labels, stack: np.ndarray, buffer: _WindowBuffer):
    """A window's distinct rows (standardised), their labels, and the batches as indices into
    those rows: tensors for the compiled loop."""
    ids, local = np.unique(stack, return_inverse=True)
    rows = items.take(ids, out=buffer.rows(len(ids)))
    window_labels = labels[ids] if labels is not None else np.zeros(0, dtype=np.int32)
    return (
        tf.experimental.dlpack.from_dlpack(rows.__dlpack__()),  # no copy
        tf.convert_to_tensor(window_labels, dtype=tf.int32),
        tf.convert_to_tensor(local.reshape(stack.shape), dtype=tf.int32),
    )


def _with_next(iterable: Iterable) -> Iterator[tuple]:
    """``(item, next item or None)`` pairs: the plan of the next window, to prefetch it."""
    iterator = iter(iterable)
    current = next(iterator, None)
    while current is not None:
        upcoming = next(iterator, None)
        yield current, upcoming
        current = upcoming


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
    stream: bool = False,
    learning_rate_schedule: str = "constant",
    weight_decay: float = 0.0,
    input_dropout: float = 0.0,
    weight_averaging: float = 0.0,
    criterion: str = "loss",
    on_epoch: Callable[[TrainingResult, HeadWeights, HeadWeights], None] | None = None,
) -> TrainingResult:
    """Train the head and return its best weights with the training history.

    ``items`` are the (standardised) feature rows: read once if they fit ``RESIDENT_BYTES``
    and ``stream`` is false, else a window at a time.
    ``epoch_batches(epoch, current_weights)`` yields the epoch's batches: arrays of shape
    (b, 3) of item indices (triplets) or of shape (b,) (labelled batches mined online with
    ``mining``). With ``validation_score``, training stops once the score has not improved by
    ``tol`` for ``n_iter_no_change`` epochs and the best weights are returned; without it, the
    same rule applies to ``criterion`` (:mod:`tripletsk.training.stopping`: the share of wrongly
    ordered training triplets, or the loss) and the last weights are returned. A non-finite loss
    or weight stops training with a :class:`~tripletsk.errors.TrainingDivergedWarning` and
    returns the last finite weights; reaching ``max_epochs`` first warns with scikit-learn's
    ``ConvergenceWarning``.

    ``precision="bfloat16"`` runs the head's layers under Keras' ``mixed_bfloat16`` policy
    (float32 weights and optimizer state, bfloat16 matrix products); distances and the loss stay
    in float32.

    ``weight_averaging`` (the decay d) > 0 keeps an exponential moving average of the weights,
    updated after each epoch and bias-corrected as Adam's moments are: after epoch t, the
    weights of epoch i count ``(1 - d) * d**(t - i) / (1 - d**t)``, so a short fit is an
    average of its own recent epochs, not mostly of its first. The average is what is scored,
    kept and returned, while training (and mining) go on with the raw weights.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}; got {precision!r}.")
    model = build_keras_head(
        initial_weights,
        dropout=dropout,
        seed=seed,
        dtype=PRECISIONS[precision],
        input_dropout=input_dropout,
    )
    optimizer = _FusedAdam(model.trainable_variables, learning_rate, weight_decay=weight_decay)
    triplet_loop, batch_loop = _make_steps(model, optimizer, distance, margin, mining)
    if not stream and 4 * items.n_features * len(items) <= RESIDENT_BYTES:
        rows = items.take(out=_aligned_empty((len(items), items.n_features)))
        resident = (
            tf.experimental.dlpack.from_dlpack(rows.__dlpack__()),  # no copy
            tf.convert_to_tensor(np.zeros(0) if labels is None else labels, dtype=tf.int32),
        )
        window_rows = np.iinfo(np.int64).max  # one window: all equally shaped batches at once

        def read(plan):
            return (*resident, tf.convert_to_tensor(plan, dtype=tf.int32))
    else:
        buffer = _WindowBuffer(items.n_features)
        window_rows = max(1, WINDOW_BYTES // (4 * items.n_features))

        def read(plan):
            return _read_window(items, labels, plan, buffer)

    def run_epoch(epoch: int, weights: HeadWeights) -> tuple[float, float, float, bool]:
        """Mean loss, active share and triplet error of an epoch; whether weights are finite."""
        losses, actives, errors, sizes, weights_finite = [], [], [], [], True
        windows = _windows(epoch_batches(epoch, weights), window_rows)
        for plan, upcoming in _with_next(windows):
            features, window_labels, stack = read(plan)
            if upcoming is not None:
                items.prefetch(upcoming.ravel())
            loop = triplet_loop if stack.shape.rank == 3 else batch_loop
            run_losses, run_actives, run_errors, finite = loop(features, window_labels, stack)
            weights_finite = weights_finite and bool(finite)
            losses.extend(run_losses.numpy().tolist())
            actives.extend(run_actives.numpy().tolist())
            errors.extend(run_errors.numpy().tolist())
            sizes.extend([int(stack.shape[1])] * int(stack.shape[0]))
        loss, active, error = (np.average(v, weights=sizes) for v in (losses, actives, errors))
        return float(loss), float(active), float(error), weights_finite

    result = TrainingResult(weights=initial_weights)
    stopping = Stopping(
        "validation" if validation_score is not None else criterion, tol, n_iter_no_change
    )
    progress = FitProgress(max_epochs, verbose, hinge=margin is not None)
    best_weights = last_finite = averaged = initial_weights
    warning = None  # issued once the bar is gone
    try:
        for epoch in range(max_epochs):
            optimizer.set_learning_rate(
                epoch_learning_rate(learning_rate_schedule, learning_rate, epoch, max_epochs)
            )
            loss, active, error, weights_finite = run_epoch(epoch, last_finite)
            if not (math.isfinite(loss) and weights_finite):
                what = f"loss {loss}" + ("" if weights_finite else ", non-finite weights")
                warning = TrainingDivergedWarning(
                    f"Training diverged at epoch {epoch + 1} ({what}); training stopped and "
                    "the last finite weights were kept. Lower learning_rate."
                )
                result.stopped_on_nan = True
                break
            last_finite = get_head_weights(model)
            if weight_averaging:  # the bias-corrected average as a running update
                step = (1.0 - weight_averaging) / (1.0 - weight_averaging ** (epoch + 1))
                averaged = average_weights(averaged, last_finite, 1.0 - step)
            else:
                averaged = last_finite
            result.n_iter = epoch + 1
            result.loss_curve.append(loss)
            result.active_fraction.append(active)
            result.error_curve.append(error)
            score = None if validation_score is None else validation_score(averaged)
            if score is not None:
                result.validation_scores.append(score)
            progress.epoch(epoch + 1, loss, error, active, score)
            if on_epoch is not None:
                on_epoch(result, averaged, last_finite)
            improved, stop = stopping.update(loss, error, score)
            if improved:
                best_weights = averaged
            if stop:
                break
        else:  # every epoch ran and the figure still improved within n_iter_no_change
            if learning_rate_schedule != "cosine":  # cosine: the rate reached 0, complete
                warning = ConvergenceWarning(stopping.not_converged(max_epochs))
    finally:
        progress.close()
    if warning is not None:
        # train_head <- _fitting.train <- fit <- sklearn's wrapper <- the caller of fit
        warnings.warn(warning, stacklevel=5)
    if validation_score is not None and result.validation_scores:
        result.weights, result.best_validation_score = best_weights, stopping.best_score
    else:
        result.weights = averaged
    return result


def average_weights(average: HeadWeights, weights: HeadWeights, decay: float) -> HeadWeights:
    """One step of an exponential moving average of head weights: ``decay`` of ``average``
    plus ``1 - decay`` of ``weights``, layer by layer."""
    return [
        (decay * ka + (1.0 - decay) * kw, decay * ba + (1.0 - decay) * bw)
        for (ka, ba), (kw, bw) in zip(average, weights, strict=True)
    ]
