"""The feature rows an estimator uses, read a chunk at a time (private).

Cached features can be most of a machine's memory, so a fit must hold no more than the
features themselves plus O(batch). The estimator therefore never gathers "the items of a fit"
into a new array: it describes them as a source and row numbers (:class:`FeatureRows`) and
reads them in chunks: once for the standardisation statistics and the input checks, then per
window of batches during training (``training/windows.py``) and per chunk for inference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from sklearn.utils import check_array

from tripletsk.errors import NonFiniteFeaturesError
from tripletsk.training.head import HeadWeights, forward

# Rows read at a time: 32 MiB of float32 features (4,096 rows at 2048-d). Large enough that
# per-chunk overhead is negligible, small enough to count as O(batch) next to the features.
CHUNK_BYTES = 32 * 2**20
# Contiguous rows read as one block when streaming (``stream=True``): 2 MiB (256 rows at
# 2048-d), or whole HDF5 chunks of a chunked cache. Large enough for sequential disk reads.
BLOCK_BYTES = 2 * 2**20
# Rows copied and standardised together into a buffer: 1 MiB stays in the CPU cache between
# the copy and the arithmetic (measured 2x faster than a whole window per step).
CACHE_BYTES = 2**20


class FeatureRows:
    """Items as rows of a feature source: ``take(rows[i])`` gives item ``i``'s features.

    Parameters
    ----------
    take : callable
        ``take(rows, out=None)``: row numbers (1-d int64) -> a new float array (len,
        n_features), or the rows written into ``out`` (float32, that shape) and returned.
    rows : ndarray of shape (n_items,)
        Row number of each item in the source.
    n_features : int
        Width of the rows.
    mean, scale : ndarray of shape (n_features,), optional
        If given, rows come out standardised: ``(x - mean) / scale``.
    chunk_rows : int, optional
        Rows per chunk of the source's storage (an HDF5 chunked dataset), if any.
    prefetch : callable, optional
        ``prefetch(rows)``: start reading these (sorted, distinct) row numbers from disk in the
        background; for sources on disk.
    """

    def __init__(
        self,
        take: Callable[[np.ndarray], np.ndarray],
        rows: np.ndarray,
        n_features: int,
        mean: np.ndarray | None = None,
        scale: np.ndarray | None = None,
        chunk_rows: int | None = None,
        prefetch: Callable[[np.ndarray], None] | None = None,
    ):
        self._take = take
        self.rows = np.asarray(rows, dtype=np.int64)
        self.n_features = int(n_features)
        self.mean = mean
        self.scale = scale
        self.chunk_rows = chunk_rows
        self._prefetch = prefetch

    @classmethod
    def from_array(cls, array: np.ndarray) -> FeatureRows:
        """Every row of a 2-d array, in order (no copy of ``array``)."""
        return cls(array_take(array), np.arange(len(array)), array.shape[1])

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), self.n_features

    def select(self, idx) -> FeatureRows:
        """Items ``idx`` of these (repeats allowed), still unread."""
        return self._like(self.rows[idx], self.mean, self.scale)

    def _like(self, rows, mean, scale) -> FeatureRows:
        return FeatureRows(
            self._take, rows, self.n_features, mean, scale, self.chunk_rows, self._prefetch
        )

    @property
    def block_rows(self) -> int:
        """Rows per block for streaming: ``BLOCK_BYTES`` of rows, in whole storage chunks."""
        rows = max(1, BLOCK_BYTES // (4 * max(self.n_features, 1)))
        if self.chunk_rows:
            rows = max(1, rows // self.chunk_rows) * self.chunk_rows
        return rows

    @property
    def chunk_size(self) -> int:
        """Rows per chunk: ``CHUNK_BYTES`` of float32 features, at least 256."""
        return max(256, CHUNK_BYTES // (4 * max(self.n_features, 1)))

    def standardized(self, mean: np.ndarray, scale: np.ndarray) -> FeatureRows:
        """The same items, read as ``(x - mean) / scale``."""
        return self._like(self.rows, mean, scale)

    def prefetch(self, idx) -> None:
        """Start reading items ``idx`` from disk, if the source is there; returns at once."""
        if self._prefetch is not None and len(idx):
            self._prefetch(np.unique(self.rows[np.asarray(idx)]))

    def take(self, idx=None, out: np.ndarray | None = None) -> np.ndarray:
        """Features of items ``idx`` (default: all) as a new float32 array, or written into
        the first rows of ``out`` (a float32 array with room for them) and returned."""
        rows = self.rows if idx is None else self.rows[idx]
        if out is None:
            out = np.asarray(self._take(rows), dtype=np.float32)
            if not out.flags.writeable:
                out = np.array(out)  # ``take`` gives a new array; copy a read-only one to scale
            self._standardize(out)
            return out
        out = out[: len(rows)]
        step = max(1, CACHE_BYTES // (4 * max(self.n_features, 1)))
        for start in range(0, len(rows), step):
            part = out[start : start + step]
            self._standardize(self._take(rows[start : start + step], out=part))
        return out

    def _standardize(self, x: np.ndarray) -> None:
        if self.mean is not None:
            x -= self.mean
            x /= self.scale

    def chunks(self, idx=None) -> Iterator[tuple[slice, np.ndarray]]:
        """``(positions, features)`` of items ``idx`` (default: all), a chunk at a time."""
        idx = np.arange(len(self)) if idx is None else np.asarray(idx)
        size = self.chunk_size
        for start in range(0, len(idx), size):
            self.prefetch(idx[start + size : start + 2 * size])  # disk reads the next meanwhile
            yield slice(start, min(start + size, len(idx))), self.take(idx[start : start + size])

    def checked_mean_and_variance(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-feature mean and variance (float64) of all items, checking each chunk.

        One pass; chunks are merged with Chan et al.'s update, so no float64 copy of the
        features is made. Raises scikit-learn's error for NaN or infinite features.
        """
        mean = np.zeros(self.n_features)
        squares = np.zeros(self.n_features)
        count = 0
        for _, chunk in self.chunks():
            chunk = check_array(chunk, dtype=np.float32, input_name="features")
            m = len(chunk)
            chunk_mean = chunk.mean(axis=0, dtype=np.float64)
            centred = chunk - chunk_mean.astype(np.float32)
            chunk_squares = np.einsum("ij,ij->j", centred, centred, dtype=np.float64)
            delta = chunk_mean - mean
            total = count + m
            mean += delta * (m / total)
            squares += chunk_squares + delta**2 * (count * m / total)
            count = total
        return mean, squares / max(count, 1)


def array_take(array: np.ndarray) -> Callable:
    """The ``take(rows, out=None)`` of a 2-d array (rows already checked)."""

    def take(rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            return array[rows]
        if array.dtype == out.dtype:
            # mode="clip" (rows are checked) lets numpy skip a buffered copy.
            return np.take(array, rows, axis=0, out=out, mode="clip")
        out[...] = array[rows]
        return out

    return take


def embed(rows: FeatureRows, weights: HeadWeights, idx=None) -> np.ndarray:
    """Embeddings of items ``idx`` (default: all), computed a chunk at a time.

    Items are read in the order of their source rows, whatever the order of ``idx`` (a
    shuffled validation split, say), so a pass over a cache on disk is one forward sweep
    instead of random reads; the embeddings are returned in the order of ``idx``.
    """
    idx = np.arange(len(rows)) if idx is None else np.asarray(idx)
    out = np.empty((len(idx), weights[-1][0].shape[1]), dtype=np.float32)
    order = np.argsort(rows.rows[idx], kind="stable")
    for part, chunk in rows.chunks(idx[order]):
        finite = np.isfinite(chunk).all(axis=1)
        if not finite.all():  # a NaN row would embed as NaN and rank anywhere, silently
            bad = idx[order[part]][~finite]
            raise NonFiniteFeaturesError(
                f"{len(bad)} feature row(s) hold NaN or infinite values (source rows "
                f"{rows.rows[bad][:5].tolist()})",
                items=bad,
            )
        out[order[part]] = forward(chunk, weights)
    return out


def block_windows(rows: np.ndarray, block_rows: int, window_size: int, rng) -> list[np.ndarray]:
    """Positions into ``rows`` grouped by storage block, for reading in block order.

    Rows fall into blocks of ``block_rows`` consecutive row numbers. The blocks are visited in
    a random order and cut into windows of whole blocks holding about ``window_size`` positions
    (a window closes once it reaches that size); positions are shuffled within each window.
    Reading window after window then reads every block once, instead of rows at random.
    """
    blocks, of_block = np.unique(np.asarray(rows) // block_rows, return_inverse=True)
    rank = rng.permutation(len(blocks))[of_block]  # each position's block, in visiting order
    per_block = np.bincount(rank, minlength=len(blocks))
    window_of_block = np.concatenate([[0], np.cumsum(per_block)[:-1]]) // max(window_size, 1)
    window = window_of_block[rank]
    order = np.lexsort((rng.random_sample(len(rank)), window))
    cuts = np.flatnonzero(np.diff(window[order])) + 1
    return np.split(order, cuts)
