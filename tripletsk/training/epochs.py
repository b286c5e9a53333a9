"""The epoch runner: an epoch's batches through the compiled steps (private: used by the loop).

The rows of a fit stay resident or are read a window at a time (:mod:`tripletsk.training.windows`);
each window's batches run in one call of the compiled loop (:mod:`tripletsk.training.steps`),
so Python is not involved between steps. Before a window trains, the disk reads of the next
one are started (the kernel reads while TensorFlow computes); memory stays O(window) whatever
the number of cached images. Reading rows in a second thread instead was measured slower on 2
cores: the copy competes with TensorFlow's threads for cores and memory bandwidth. Measured:
``benchmarks/head_training.py`` (speed), ``benchmarks/memory.py``, ``benchmarks/streaming.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from tripletsk._tensorflow import import_tensorflow
from tripletsk.training.compiled import CompiledHead
from tripletsk.training.config import TrainingConfig
from tripletsk.training.rows import FeatureRows
from tripletsk.training.windows import (
    WindowBuffer,
    aligned_empty,
    resident,
    stack_windows,
    window_rows,
    with_next,
)

tf = import_tensorflow()


@dataclass(frozen=True)
class EpochFigures:
    """Mean loss, active share and triplet error of an epoch's batches; whether the weights
    are finite after it."""

    loss: float
    active: float
    error: float
    weights_finite: bool


class EpochRunner:
    """Runs the batches of an epoch, ``(b, 3)`` triplets or ``(b,)`` labelled samples as indices
    into ``items`` (standardised rows), through the compiled loops of ``head``."""

    def __init__(self, items: FeatureRows, labels, head: CompiledHead, config: TrainingConfig):
        self.items, self.labels = items, labels
        self.triplet_loop, self.batch_loop = head.triplet_loop, head.batch_loop
        self._resident = None
        if resident(len(items), items.n_features, config.stream):
            rows = items.take(out=aligned_empty((len(items), items.n_features)))
            self._resident = (
                tf.experimental.dlpack.from_dlpack(rows.__dlpack__()),  # no copy
                tf.convert_to_tensor(np.zeros(0) if labels is None else labels, dtype=tf.int32),
            )
            self.window_rows = np.iinfo(np.int64).max  # one window: all equal batches at once
        else:
            self._buffer = WindowBuffer(items.n_features)
            self.window_rows = window_rows(items.n_features)

    def _read(self, plan: np.ndarray):
        """A window's rows, labels and batches (as indices into those rows), as tensors."""
        if self._resident is not None:
            return (*self._resident, tf.convert_to_tensor(plan, dtype=tf.int32))
        return _read_window(self.items, self.labels, plan, self._buffer)

    def run(self, batches: Iterable[np.ndarray]) -> EpochFigures:
        """Train on one epoch's ``batches``; their figures, averaged over triplets or samples."""
        losses, actives, errors, sizes, weights_finite = [], [], [], [], True
        for plan, upcoming in with_next(stack_windows(batches, self.window_rows)):
            features, window_labels, stack = self._read(plan)
            if upcoming is not None:
                self.items.prefetch(upcoming.ravel())
            loop = self.triplet_loop if stack.shape.rank == 3 else self.batch_loop
            run_losses, run_actives, run_errors, finite = loop(features, window_labels, stack)
            weights_finite = weights_finite and bool(finite)
            losses.extend(run_losses.numpy().tolist())
            actives.extend(run_actives.numpy().tolist())
            errors.extend(run_errors.numpy().tolist())
            sizes.extend([int(stack.shape[1])] * int(stack.shape[0]))
        loss, active, error = (np.average(v, weights=sizes) for v in (losses, actives, errors))
        return EpochFigures(float(loss), float(active), float(error), weights_finite)


def _read_window(items: FeatureRows, labels, stack: np.ndarray, buffer: WindowBuffer):
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
