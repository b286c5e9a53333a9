"""The feature rows an estimator uses, read a chunk at a time (private).

Cached features can be most of a machine's memory, so a fit must hold no more than the
features themselves plus O(batch). The estimator therefore never gathers "the items of a fit"
into a new array: it describes them as a source and row numbers (:class:`FeatureRows`) and
reads them in chunks: once for the standardisation statistics and the input checks, then per
window of batches during training (``_training.py``) and per chunk for inference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from sklearn.utils import check_array

from tripletsk.head import HeadWeights, forward

# Rows read at a time: 32 MiB of float32 features (4,096 rows at 2048-d). Large enough that
# per-chunk overhead is negligible, small enough to count as O(batch) next to the features.
CHUNK_BYTES = 32 * 2**20


class FeatureRows:
    """Items as rows of a feature source: ``take(rows[i])`` gives item ``i``'s features.

    Parameters
    ----------
    take : callable
        Row numbers (1-d int64) -> float array (len, n_features); a new array each call.
    rows : ndarray of shape (n_items,)
        Row number of each item in the source.
    n_features : int
        Width of the rows.
    mean, scale : ndarray of shape (n_features,), optional
        If given, rows come out standardised: ``(x - mean) / scale``.
    """

    def __init__(
        self,
        take: Callable[[np.ndarray], np.ndarray],
        rows: np.ndarray,
        n_features: int,
        mean: np.ndarray | None = None,
        scale: np.ndarray | None = None,
    ):
        self._take = take
        self.rows = np.asarray(rows, dtype=np.int64)
        self.n_features = int(n_features)
        self.mean = mean
        self.scale = scale

    @classmethod
    def from_array(cls, array: np.ndarray) -> FeatureRows:
        """Every row of a 2-d array, in order (no copy of ``array``)."""
        return cls(array.__getitem__, np.arange(len(array)), array.shape[1])

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), self.n_features

    def select(self, idx) -> FeatureRows:
        """Items ``idx`` of these (repeats allowed), still unread."""
        return FeatureRows(self._take, self.rows[idx], self.n_features, self.mean, self.scale)

    @property
    def chunk_size(self) -> int:
        """Rows per chunk: ``CHUNK_BYTES`` of float32 features, at least 256."""
        return max(256, CHUNK_BYTES // (4 * max(self.n_features, 1)))

    def standardized(self, mean: np.ndarray, scale: np.ndarray) -> FeatureRows:
        """The same items, read as ``(x - mean) / scale``."""
        return FeatureRows(self._take, self.rows, self.n_features, mean, scale)

    def take(self, idx=None) -> np.ndarray:
        """Features of items ``idx`` (default: all) as a new float32 array."""
        rows = self.rows if idx is None else self.rows[idx]
        out = np.asarray(self._take(rows), dtype=np.float32)
        if not out.flags.writeable:
            out = np.array(out)  # ``take`` gives a new array; a read-only one is copied to scale
        if self.mean is not None:
            out -= self.mean
            out /= self.scale
        return out

    def chunks(self, idx=None) -> Iterator[tuple[slice, np.ndarray]]:
        """``(positions, features)`` of items ``idx`` (default: all), a chunk at a time."""
        n = len(self) if idx is None else len(idx)
        for start in range(0, n, self.chunk_size):
            part = slice(start, min(start + self.chunk_size, n))
            yield part, self.take(np.arange(part.start, part.stop) if idx is None else idx[part])

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


def embed(rows: FeatureRows, weights: HeadWeights, idx=None) -> np.ndarray:
    """Embeddings of items ``idx`` (default: all), computed a chunk at a time."""
    n = len(rows) if idx is None else len(idx)
    out = np.empty((n, weights[-1][0].shape[1]), dtype=np.float32)
    for part, chunk in rows.chunks(idx):
        out[part] = forward(chunk, weights)
    return out
