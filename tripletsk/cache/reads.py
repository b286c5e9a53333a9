"""Opening the features of one version of a cache: memory-mapped where the layout allows, else
read through HDF5, which verifies each chunk's checksum as it reads.

:class:`~tripletsk.cache.store.FeatureStore` reads through a memory map
(:mod:`tripletsk.cache.mapped`) where it can; :class:`H5Features` reads the layouts only HDF5
can (e.g. features compressed by another tool), and :func:`read_feature_rows` streams rows of a
cache being repaired.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from tripletsk.cache.format import CacheHeader, h5py_module, read_part
from tripletsk.cache.mapped import MappedFeatures, warn_unchecksummed
from tripletsk.cache.messages import changed_message, corrupt_rows_message
from tripletsk.cache.pinned import PinnedFile
from tripletsk.errors import CacheChangedError, CacheFormatError

__all__ = [
    "READ_BLOCK",
    "H5Features",
    "OpenedFeatures",
    "check_rows",
    "open_features",
    "read_feature_rows",
]

READ_BLOCK = 4096  # rows per block when streaming features


@dataclass
class OpenedFeatures:
    """The features of one version of a cache, as :func:`open_features` opened them."""

    features: object  # an in-memory array, a MappedFeatures or an H5Features
    h5: object | None  # the open h5py file an H5Features reads (the caller closes it)
    chunk_rows: int | None  # rows per HDF5 chunk, None when stored contiguously
    checksummed: bool  # whether the chunks carry checksums


def open_features(pin: PinnedFile, header: CacheHeader, in_memory: bool) -> OpenedFeatures:
    """The features of the version of the cache ``pin`` holds, whose ``header`` was read.

    Memory-mapped where the layout allows, else an :class:`H5Features` (its file kept open),
    or, with ``in_memory``, an array (every chunk's checksum verified).

    Raises
    ------
    CacheChangedError
        If the file is another version than the one ``header`` was read from (the file
        descriptor was reused after the store was closed).
    CacheFormatError
        If the features cannot be read, or (``in_memory``) some of them are damaged.
    """
    path, h5 = header.path, None
    f = pin.open_h5()
    try:
        if not _same_version(f, header.attrs):
            raise CacheChangedError(changed_message(path))
        ds = f["features"]
        chunk_rows = int(ds.chunks[0]) if ds.chunks else None
        checksummed = ds.fletcher32
        mapped = MappedFeatures.open(path, ds, pin.fd)
        if ds.shape[0] == 0:
            feats = np.zeros(ds.shape, dtype=ds.dtype)
        elif mapped is not None:
            feats = mapped
        elif in_memory:
            feats = H5Features(path, ds, header.keys).read(slice(None))
        else:  # (e.g. compressed by another tool): read through h5py, file kept open
            h5, feats = f, H5Features(path, ds, header.keys)
    except CacheFormatError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise CacheFormatError(
            f"corrupt cache: {path}: dataset 'features' cannot be read ({e}). "
            f"Re-extract it (`tripletsk extract-features IMAGES_DIR -o {path}`)."
        ) from None
    finally:
        if h5 is not f:
            f.close()
    if len(feats) and not checksummed:
        warn_unchecksummed(path)
    if in_memory and isinstance(feats, MappedFeatures):
        rows = np.arange(len(feats))
        check_rows(feats, rows, path, header.keys)
        feats = feats.take(rows)
    return OpenedFeatures(feats, h5, chunk_rows, checksummed)


def _same_version(f, attrs: dict) -> bool:
    """Whether the open h5py file ``f`` has the version attributes of the header ``attrs``."""
    for name in ("generation", "index_checksums"):
        found = f.attrs.get(name)
        found = found.decode() if isinstance(found, bytes) else found
        if found != attrs.get(name):
            return False
    return True


def check_rows(feats: MappedFeatures, rows: np.ndarray, path: str, keys: list) -> None:
    """Verify the chunks of ``rows`` (first read only); damage raises ``CacheFormatError``."""
    bad = feats.bad_rows(rows)
    if bad.size:
        why = "its stored checksum does not match"
        raise CacheFormatError(corrupt_rows_message(path, bad, keys, why))


class H5Features:
    """The (N, D) ``features`` dataset ``ds`` of an open cache ``path`` (``keys``: its keys),
    read through h5py; a read that fails (a damaged chunk) raises ``CacheFormatError``."""

    def __init__(self, path: str, ds, keys: list):
        self.path, self.ds, self.keys = path, ds, keys

    def __len__(self) -> int:
        return len(self.keys)

    def read(self, sel) -> np.ndarray:
        """``ds[sel]``, or a ``CacheFormatError`` naming the rows HDF5 cannot read."""
        try:
            return self.ds[sel]
        except OSError as e:  # HDF5 verifies checksums (and decompresses) as it reads
            why = f"HDF5 cannot read them: {e}"
            rows = np.arange(len(self.keys))[sel]
            message = corrupt_rows_message(self.path, rows, self.keys, why)
            raise CacheFormatError(message) from None

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (any order, repeats allowed) as float32. h5py's fancy reads need sorted
        unique indices: read those, then reorder."""
        dim = self.ds.shape[1]
        uniq, inverse = np.unique(idx, return_inverse=True)
        if uniq.size == 0:
            return np.zeros((0, dim), dtype=np.float32)
        span = int(uniq[-1] - uniq[0] + 1)
        if span <= 4 * uniq.size:  # dense: read whole blocks and pick
            rows = np.empty((uniq.size, dim), dtype=np.float32)
            lo0 = int(uniq[0])
            for start in range(lo0, lo0 + span, READ_BLOCK):
                stop = min(start + READ_BLOCK, lo0 + span)
                sel = (uniq >= start) & (uniq < stop)
                if sel.any():
                    rows[sel] = self.read(slice(start, stop))[uniq[sel] - start]
        else:
            rows = np.asarray(self.read(uniq), dtype=np.float32)
        return rows[inverse.reshape(-1)]

    def bad_rows(self, step: int, rows: np.ndarray | None = None) -> np.ndarray:
        """The rows of the blocks of ``step`` rows (with ``rows``: those holding any of
        ``rows``) that cannot be read (a failed checksum)."""
        n = len(self.keys)
        starts = range(0, n, step) if rows is None else np.unique(rows // step * step).tolist()
        bad = []
        for start in starts:
            with contextlib.suppress(CacheFormatError):
                self.read(slice(start, start + step))
                continue
            bad.append(np.arange(start, min(start + step, n)))
        return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)


def read_feature_rows(path: str, rows: np.ndarray, block: int = READ_BLOCK) -> Iterator[np.ndarray]:
    """Yield the features of sorted ``rows`` of an existing cache, block by block.

    HDF5 verifies the chunk checksums as it reads: damage raises ``CacheFormatError``.
    """
    h5py = h5py_module()
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return
    if np.any(np.diff(rows) <= 0):
        raise ValueError("rows must be strictly increasing")
    with h5py.File(path, "r") as f:
        ds = f["features"]
        lo = int(rows[0])
        end = int(rows[-1]) + 1
        for start in range(lo, end, block):
            stop = min(start + block, end)
            a, b = np.searchsorted(rows, [start, stop])
            if a == b:
                continue
            where = f"rows {start}-{stop - 1} of dataset 'features'"
            data = read_part(path, where, ds.__getitem__, slice(start, stop))
            yield data[rows[a:b] - start]
