"""Repairing a damaged cache (``verify``): find the rows whose checksums fail, read around them.

The cache's features are stored in chunks, each with a Fletcher-32 checksum (see
:mod:`tripletsk.cache.checksums`); :meth:`~tripletsk.cache.store.FeatureStore.corrupt_rows` lists
the rows of the chunks that fail theirs. A verifying run extracts those images again (the plan
treats them as not cached) and copies the other rows, reading only runs of rows that hold no
damaged one (HDF5 refuses to read a damaged chunk at all).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from tripletsk.cache.reads import read_feature_rows
from tripletsk.cache.store import FeatureStore

__all__ = ["corrupt_rows", "read_intact_rows"]


def corrupt_rows(path: str, keys=None) -> np.ndarray:
    """Sorted row numbers of the cache ``path`` whose features fail their checksum (with
    ``keys``: of the chunks holding those keys' rows only)."""
    with FeatureStore(path) as store:
        rows = None if keys is None else store.indices([k for k in keys if k in store])
        return np.asarray(store.corrupt_rows(rows), dtype=np.int64)


def read_intact_rows(path: str, rows: np.ndarray, corrupt: np.ndarray) -> Iterator[np.ndarray]:
    """The features of the sorted ``rows`` (none of them ``corrupt``), block by block, each read
    spanning no row of ``corrupt``."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return
    damaged_before = np.searchsorted(corrupt, rows)  # damaged rows before each row kept
    breaks = np.flatnonzero(np.diff(damaged_before)) + 1
    for run in np.split(rows, breaks):
        yield from read_feature_rows(path, run)
