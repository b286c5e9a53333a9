"""How a fit's batches are fed: all rows resident, or windows of rows (NumPy only).

Feature rows up to ``RESIDENT_BYTES`` are read once per fit, standardised, into one tensor that
stays resident; an epoch's batches arrive as stacked index arrays into it. Larger sets (or
``stream=True``) bound memory instead: the batches are fed in windows, consecutive equally
shaped batches whose rows fit in ``WINDOW_BYTES``, read into one reused buffer. Either buffer
is 64-byte aligned, so TensorFlow uses it without a copy (DLPack).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

# Up to this size (128k images at 2048-d) the rows of a fit are read once into one resident
# tensor: no per-epoch copies, measured ~20% faster per epoch than windows on 2 cores
# (benchmarks/head_training.py). Beyond it, memory matters more: windows of WINDOW_BYTES.
RESIDENT_BYTES = 1024 * 2**20
# Feature rows read per window (64 MiB: 8,192 rows at 2048-d, ~10 batches of 256 triplets).
# Two windows are alive at once (one training, one being read), plus TensorFlow's copy.
WINDOW_BYTES = 64 * 2**20


def window_rows(n_features: int) -> int:
    """Rows of ``n_features`` float32 features in one window of ``WINDOW_BYTES``."""
    return max(1, WINDOW_BYTES // (4 * n_features))


def resident(n_rows: int, n_features: int, stream: bool) -> bool:
    """Whether the rows of a fit are read once and kept (else a window at a time)."""
    return not stream and 4 * n_features * n_rows <= RESIDENT_BYTES


def stack_windows(batches: Iterable[np.ndarray], max_rows: int) -> Iterator[np.ndarray]:
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


class WindowBuffer:
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
            self._buffer = aligned_empty((n, self.n_features))
        return self._buffer[:n]


def aligned_empty(shape: tuple[int, int], alignment: int = 64) -> np.ndarray:
    """An uninitialised float32 array of ``shape`` whose data starts on ``alignment`` bytes."""
    raw = np.empty(shape[0] * shape[1] * 4 + alignment, dtype=np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start : start + shape[0] * shape[1] * 4].view(np.float32).reshape(shape)


def with_next(iterable: Iterable) -> Iterator[tuple]:
    """``(item, next item or None)`` pairs: the plan of the next window, to prefetch it."""
    iterator = iter(iterable)
    current = next(iterator, None)
    while current is not None:
        upcoming = next(iterator, None)
        yield current, upcoming
        current = upcoming
