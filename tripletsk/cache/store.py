"""Reading the HDF5 feature cache: :class:`FeatureStore`.

The file format and reading its header live in :mod:`tripletsk.cache.format`, writing it in
:mod:`tripletsk.cache.writer`; the features are read through a memory map
(:mod:`tripletsk.cache.mapped`, verifying :mod:`tripletsk.cache.checksums`) or through HDF5
(:mod:`tripletsk.cache.reads`).

Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterator

import numpy as np

from tripletsk.cache.format import CacheHeader, decode_str, read_header
from tripletsk.cache.mapped import MappedFeatures
from tripletsk.cache.messages import changed_message, unknown_keys_message
from tripletsk.cache.pinned import PinnedFile
from tripletsk.cache.reads import READ_BLOCK, check_rows, open_features
from tripletsk.errors import CacheChangedError, CacheFormatError, UnknownKeyError

__all__ = ["DEFAULT_CACHE", "FeatureStore"]

DEFAULT_CACHE = os.path.join("cache", "features.h5")


class FeatureStore:
    """Read-only access to a feature cache made by ``tripletsk extract-features``.

    Parameters
    ----------
    path : str or path-like, default "cache/features.h5"
        The cache file.
    in_memory : bool, default False
        Load all features into memory at first use instead of memory-mapping the file.

    Notes
    -----
    Keys, fingerprints and attributes are read when the store is opened; features are read on
    demand (memory-mapped). A store pickles and deep-copies as its path only, and reopens lazily,
    so scikit-learn's ``clone`` and joblib never copy the features. Each chunk of features is
    verified against its checksum the first time any of its rows is read; damage raises
    :class:`~tripletsk.errors.CacheFormatError` (see ``docs/formats.md``).

    Examples
    --------
    A cache is normally written by ``tripletsk extract-features``; here, by hand:

    >>> import os, tempfile
    >>> import numpy as np
    >>> from tripletsk.cache.format import FINGERPRINT_DTYPE, FORMAT_NAME, FORMAT_VERSION
    >>> from tripletsk.cache.writer import write_cache
    >>> path = os.path.join(tempfile.mkdtemp(), "features.h5")
    >>> write_cache(path, keys=["a/x.jpg", "b/y.jpg"], dim=4, dtype="float32",
    ...             fingerprints=np.zeros(2, FINGERPRINT_DTYPE), failed=[],
    ...             feature_blocks=[np.eye(2, 4, dtype=np.float32)],
    ...             attrs={"format": FORMAT_NAME, "format_version": FORMAT_VERSION})
    >>> store = FeatureStore(path)
    >>> store.lookup(["a/x.jpg", "b/y.jpg", "a/x.jpg"]).shape
    (3, 4)
    """

    def __init__(self, path: str | os.PathLike = DEFAULT_CACHE, *, in_memory: bool = False):
        self.path = os.fspath(path)
        self.in_memory = bool(in_memory)
        self._reset()
        self._open()

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def _lazy(cls, path: str, in_memory: bool) -> FeatureStore:
        obj = cls.__new__(cls)
        obj.path, obj.in_memory = path, in_memory
        obj._reset()
        return obj

    def _reset(self) -> None:
        self._hdr: CacheHeader | None = None
        self._index: dict | None = None
        # The version of the file read (held open until close()), and its identity: a store
        # used again after close() reads on only if the path still names that version.
        self._pin: PinnedFile | None = None
        self._identity: tuple | None = None
        # The features once opened: an in-memory array, a MappedFeatures (memory map of the
        # file), or an H5Features (layouts only HDF5 reads) whose file is kept open in self._h5.
        self._feats = None
        self._h5 = None
        self._chunk_rows: int | None = None
        self._checksummed = False

    def _open(self) -> None:
        if self._hdr is not None:
            return
        pin = PinnedFile(self.path)
        try:
            hdr = read_header(self.path, pin.file)
        except BaseException:
            pin.close()
            raise
        index = {k: i for i, k in enumerate(hdr.keys)}
        if len(index) != len(hdr.keys):
            pin.close()
            raise CacheFormatError(f"corrupt cache: {self.path} has duplicate keys")
        self._hdr, self._index, self._pin, self._identity = hdr, index, pin, pin.identity

    def _pinned(self) -> PinnedFile:
        """The version of the file the keys were read from (opened again after close())."""
        self._open()
        if self._pin is None:
            pin = PinnedFile(self.path)
            if pin.identity != self._identity:
                pin.close()
                raise CacheChangedError(changed_message(self.path))
            self._pin = pin
        return self._pin

    def _features(self):
        """The (N, D) features: an in-memory array, a MappedFeatures or an H5Features."""
        if self._feats is None:
            self._feats = self._load(self.in_memory)
        return self._feats

    def _load(self, in_memory: bool):
        """Open the features of the pinned version (see :meth:`_features`)."""
        pin = self._pinned()
        try:
            opened = open_features(pin, self._hdr, in_memory)
        except CacheChangedError:  # another version of the cache reused the file descriptor
            self._pin.close()
            self._pin = None
            raise
        self._chunk_rows, self._checksummed = opened.chunk_rows, opened.checksummed
        if opened.h5 is not None:  # the file an H5Features reads, kept open until close()
            self._h5 = opened.h5
        if self._h5 is None:  # the map (or memory) holds this version now: one file fewer open
            self._pin.close()
            self._pin = None
        return opened.features

    @property
    def chunk_rows(self) -> int | None:
        """Rows per HDF5 chunk of the features, or None when they are stored contiguously."""
        self._features()
        return self._chunk_rows

    @property
    def checksummed(self) -> bool:
        """Whether the features carry checksums (caches written before checksums do not)."""
        self._features()
        return self._checksummed

    def close(self) -> None:
        """Release the file. The store opens it again on next use if it is still the version
        whose keys it read; if the cache was rewritten meanwhile, that use raises
        :class:`~tripletsk.errors.CacheChangedError` (open a new store)."""
        if self._h5 is not None:
            with contextlib.suppress(Exception):
                self._h5.close()
        self._h5 = None
        self._feats = None  # a memory map closes once no array uses it
        if self._pin is not None:
            self._pin.close()
            self._pin = None

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        # try/except, not contextlib: at interpreter exit module globals may already be None.
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict:
        return {"path": self.path, "in_memory": self.in_memory}

    def __setstate__(self, state: dict) -> None:
        self.path, self.in_memory = state["path"], state["in_memory"]
        self._reset()

    def __copy__(self) -> FeatureStore:
        return self._lazy(self.path, self.in_memory)

    def __deepcopy__(self, memo) -> FeatureStore:
        return self._lazy(copy.deepcopy(self.path, memo), self.in_memory)

    def __repr__(self) -> str:
        n = f"{len(self)} images" if self._hdr is not None else "not opened"
        return f"FeatureStore({self.path!r}, {n})"

    # -- contents ----------------------------------------------------------------------------
    def __len__(self) -> int:
        self._open()
        return len(self._hdr.keys)

    def __contains__(self, key) -> bool:
        self._open()
        return isinstance(key, str) and key in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys)

    @property
    def keys(self) -> list[str]:
        """Image keys (paths relative to the image root, '/' separators) in row order."""
        self._open()
        return list(self._hdr.keys)

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        self._open()
        return self._hdr.dim

    @property
    def dtype(self) -> np.dtype:
        """Storage dtype of the features (look-ups always return float32)."""
        self._open()
        return np.dtype(self._hdr.dtype)

    @property
    def provenance(self) -> dict:
        """The attributes identifying the model: backbone, weights, image size, preprocessing."""
        self._open()
        return dict(self._hdr.provenance)

    @property
    def attrs(self) -> dict:
        """All attributes of the cache file."""
        self._open()
        return dict(self._hdr.attrs)

    @property
    def failed(self) -> list[tuple[str, str]]:
        """Files that could not be read as images: ``(key, reason)``."""
        self._open()
        return list(self._hdr.failed)

    @property
    def fingerprints(self) -> np.ndarray:
        """Per-row file fingerprints (structured array, see ``FINGERPRINT_DTYPE``)."""
        self._open()
        return self._hdr.fingerprints.copy()

    def info(self) -> dict:
        """A summary: counts, dtype, path, provenance and versions."""
        self._open()
        a = self._hdr.attrs
        return {
            "path": self.path,
            "n_images": len(self),
            "n_failed": len(self._hdr.failed),
            "dim": self.dim,
            "dtype": self._hdr.dtype,
            "provenance": self.provenance,
            "format_version": a.get("format_version"),
            "image_root": a.get("image_root"),
            "created": a.get("created"),
            "updated": a.get("updated"),
            "versions": json.loads(a.get("versions", "{}")),
            "file_size": self._identity[2],
            "checksummed": self.checksummed,
        }

    # -- look-ups ----------------------------------------------------------------------------
    def indices(self, keys) -> np.ndarray:
        """Row numbers (int64) of ``keys``, in the given order; duplicates allowed.

        Raises
        ------
        UnknownKeyError
            If any key is not in the cache; the message lists the first few with the nearest
            known names.
        """
        self._open()
        if isinstance(keys, str):
            keys = [keys]
        index = self._index
        keys = list(keys)
        out = np.empty(len(keys), dtype=np.int64)
        unknown = []
        for i, k in enumerate(keys):
            r = index.get(k) if isinstance(k, str) else index.get(decode_str(k))
            if r is None:
                unknown.append(k)
                out[i] = -1
            else:
                out[i] = r
        if unknown:
            raise UnknownKeyError(unknown_keys_message(self.path, unknown, self._hdr))
        return out

    def lookup(self, keys) -> np.ndarray:
        """Features of ``keys`` as an (n, D) float32 array, in the requested order.

        ``keys`` is one key (str) or a sequence of keys; duplicates are allowed.
        """
        idx = self.indices(keys)
        return self.take(idx)

    def take(self, idx, out: np.ndarray | None = None) -> np.ndarray:
        """Features of row numbers ``idx`` as an (n, D) float32 array (written to ``out`` if
        given: a float32 array of that shape).

        Raises
        ------
        CacheFormatError
            If a checksum shows that some of these rows were damaged on disk.
        """
        feats = self._features()
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"row index out of range for a cache of {n} rows")
        idx = np.where(idx < 0, idx + n, idx)
        if isinstance(feats, MappedFeatures):
            uniq = np.unique(idx)
            check_rows(feats, uniq, self.path, self._hdr.keys)
            feats.will_need(uniq)
            if out is not None and feats.dtype == out.dtype:
                return feats.take_into(idx, out)
            return _into(np.asarray(feats.take(idx), dtype=np.float32), out)
        if isinstance(feats, np.ndarray):  # in memory: numpy handles order/duplicates
            if out is not None and feats.dtype == out.dtype:
                return np.take(feats, idx, axis=0, out=out, mode="clip")
            return _into(np.asarray(feats[idx], dtype=np.float32), out)
        return _into(feats.take(idx), out)  # an H5Features

    def iter_chunks(self, chunk_size: int = 4096) -> Iterator[tuple[list[str], np.ndarray]]:
        """Yield ``(keys, features)`` in row order, ``chunk_size`` rows at a time."""
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        self._open()
        keys = self._hdr.keys
        for start in range(0, len(keys), chunk_size):
            stop = min(start + chunk_size, len(keys))
            yield keys[start:stop], self._block(start, stop)

    def to_array(self) -> np.ndarray:
        """All features as one (N, D) float32 array."""
        return self._block(0, len(self))

    def _block(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as float32 (a view of the file where it can be)."""
        feats = self._features()
        if not isinstance(feats, MappedFeatures):
            return self.take(np.arange(start, stop))
        rows = np.arange(start, stop)
        check_rows(feats, rows, self.path, self._hdr.keys)
        feats.will_need(rows)
        return np.asarray(feats.block(start, stop), dtype=np.float32)

    def prefetch(self, idx) -> None:
        """Start reading rows ``idx`` from disk in the background (a hint; returns at once)."""
        feats = self._features()
        if isinstance(feats, MappedFeatures):
            feats.will_need(np.unique(np.asarray(idx, dtype=np.int64)))

    # -- checksums ---------------------------------------------------------------------------
    def corrupt_rows(self, rows=None) -> np.ndarray:
        """Row numbers (sorted int64) whose features fail their checksum; reads the whole file
        (with ``rows``: the chunks holding those rows only).

        Empty for a cache without checksums (see :attr:`checksummed`): damage to it cannot be
        detected. ``tripletsk extract-features --verify`` re-extracts the rows listed here.
        """
        # In memory (loading refuses a damaged file): look at the same version through a map.
        feats = self._load(in_memory=False) if self.in_memory else self._features()
        rows = None if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
        if isinstance(feats, MappedFeatures):
            return feats.all_bad_rows(rows)
        if isinstance(feats, np.ndarray) or not self._checksummed:
            return np.zeros(0, dtype=np.int64)
        return feats.bad_rows(self._chunk_rows or READ_BLOCK, rows)


def _into(rows: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        return rows
    out[...] = rows
    return out
