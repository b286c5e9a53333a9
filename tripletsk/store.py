"""The HDF5 feature cache: reading it (:class:`FeatureStore`) and writing it safely.

File layout (format version 1, see ``docs/extraction.md``)::

    features      (N, D) float32 or float16, contiguous (memory-mapped for look-ups)
    keys          (N,)   UTF-8 strings, image path relative to the image root, '/' separators
    fingerprints  (N,)   compound: size, mtime_ns, blake2b (hex of a 16-byte digest), hashed_ns
    failed        (F, 2) UTF-8 strings: key, reason
    attributes    format, format_version, backbone, weights, image_size, preprocessing,
                  compute_dtype, backend, weights_source, dim, dtype, versions (JSON),
                  created, updated, image_root, generation

Crash safety: the cache file is never modified in place. A run writes each finished batch to its own
file in ``<cache>.parts/`` (written under a temporary name, fsynced, then renamed), and at the end
writes a complete new cache next to the old one and renames it over the old one (``os.replace``,
atomic). Whatever moment a process is killed, ``<cache>`` is the old or the new complete file, and
the parts of the interrupted run are picked up by the next run. ``<cache>.lock`` (``flock``)
keeps two extractors from writing the same cache.

Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import difflib
import json
import mmap
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from tripletsk.errors import (
    CacheFormatError,
    CacheLockedError,
    CacheMismatchError,
    CacheNotFoundError,
    UnknownKeyError,
)

__all__ = [
    "DEFAULT_CACHE",
    "FINGERPRINT_DTYPE",
    "FORMAT_VERSION",
    "PROVENANCE_KEYS",
    "CacheLock",
    "CacheMismatchError",
    "FeatureStore",
    "UnknownKeyError",
    "check_provenance",
]

DEFAULT_CACHE = os.path.join("cache", "features.h5")
FORMAT_NAME = "tripletsk-features"
FORMAT_VERSION = 1
#: Attributes that identify the model; two caches are compatible when these are equal.
PROVENANCE_KEYS = ("backbone", "weights", "image_size", "preprocessing", "compute_dtype")
#: Per-row file fingerprint: size and mtime to notice a change cheaply, a content hash to be sure.
#: ``hashed_ns`` is when the hash was taken (to detect files modified within the mtime granularity).
FINGERPRINT_DTYPE = np.dtype(
    [("size", "<i8"), ("mtime_ns", "<i8"), ("blake2b", "S32"), ("hashed_ns", "<i8")]
)
_READ_BLOCK = 4096  # rows per block when streaming features


def _h5py():
    import h5py

    return h5py


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. directories cannot be opened on Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_provenance(found: dict, expected: dict, path: str | os.PathLike) -> None:
    """Raise :class:`CacheMismatchError` when ``found`` and ``expected`` describe other models."""
    diffs = []
    for k in PROVENANCE_KEYS:
        a, b = found.get(k), expected.get(k)
        if a is None and b is None:
            continue
        if str(a) != str(b):
            diffs.append(f"{k}: cache has {a!r}, requested {b!r}")
    if diffs:
        raise CacheMismatchError(
            f"{path} was made with different settings ({'; '.join(diffs)}). Mixing features "
            "from two models is not allowed: rerun with the cache's settings, or choose another "
            "--output (or delete the cache) to start a new one."
        )


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass
class CacheHeader:
    """Everything in a cache except the features (small enough to hold in memory)."""

    path: str
    attrs: dict
    keys: list
    fingerprints: np.ndarray
    failed: list
    dim: int
    dtype: str
    provenance: dict = field(default_factory=dict)


def _decode_str(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def read_header(path: str | os.PathLike) -> CacheHeader:
    """Read a cache's attributes, keys, fingerprints and failures (not its features)."""
    h5py = _h5py()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CacheNotFoundError(
            f"feature cache not found: {path}; run `tripletsk extract-features IMAGES_DIR` "
            "first (or pass features= an array or another cache)"
        )
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _attr_value(v) for k, v in f.attrs.items()}
            if attrs.get("format") != FORMAT_NAME:
                raise CacheFormatError(f"{path} is not a tripletsk feature cache")
            version = int(attrs.get("format_version", -1))
            if version > FORMAT_VERSION:
                raise CacheFormatError(
                    f"{path} has cache format version {version}; this tripletsk reads up to "
                    f"{FORMAT_VERSION}: upgrade tripletsk"
                )
            keys = [_decode_str(k) for k in f["keys"][()]] if len(f["keys"]) else []
            fps = np.asarray(f["fingerprints"][()], dtype=FINGERPRINT_DTYPE)
            failed_ds = f["failed"]
            failed = (
                [(_decode_str(k), _decode_str(r)) for k, r in failed_ds[()]]
                if failed_ds.shape[0]
                else []
            )
            feats = f["features"]
            dim, dtype = int(feats.shape[1]), str(feats.dtype)
            if feats.shape[0] != len(keys) or len(fps) != len(keys):
                raise CacheFormatError(
                    f"{path} is inconsistent: {feats.shape[0]} feature rows, {len(keys)} keys, "
                    f"{len(fps)} fingerprints"
                )
    except (OSError, KeyError) as e:
        raise CacheFormatError(
            f"{path} is not a readable tripletsk feature cache ({e}); choose another --output "
            "or delete the file"
        ) from e
    prov = {k: attrs.get(k) for k in (*PROVENANCE_KEYS, "backend", "weights_source")}
    return CacheHeader(path, attrs, keys, fps, failed, dim, dtype, prov)


def _attr_value(v):
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.generic):
        return v.item()
    return v


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
    so scikit-learn's ``clone`` and joblib never copy the features.

    Examples
    --------
    >>> store = FeatureStore("cache/features.h5")  # doctest: +SKIP
    >>> store.lookup(["a/x.jpg", "b/y.jpg", "a/x.jpg"]).shape  # doctest: +SKIP
    (3, 2048)
    """

    def __init__(self, path: str | os.PathLike = DEFAULT_CACHE, *, in_memory: bool = False):
        self.path = os.fspath(path)
        self.in_memory = bool(in_memory)
        self._hdr: CacheHeader | None = None
        self._index: dict | None = None
        self._feats = None
        self._h5 = None
        self._mmap = None  # the file's memory map, when the features are read through one
        self._data_offset = 0
        self._open()

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def _lazy(cls, path: str, in_memory: bool) -> FeatureStore:
        obj = cls.__new__(cls)
        obj.path, obj.in_memory = path, in_memory
        obj._hdr = obj._index = obj._feats = obj._h5 = obj._mmap = None
        obj._data_offset = 0
        return obj

    def _open(self) -> None:
        if self._hdr is not None:
            return
        hdr = read_header(self.path)
        index = {k: i for i, k in enumerate(hdr.keys)}
        if len(index) != len(hdr.keys):
            raise CacheFormatError(f"{self.path} has duplicate keys")
        self._hdr, self._index = hdr, index

    def _features(self):
        """The (N, D) features: a read-only memmap, an in-memory array, or an h5py dataset."""
        self._open()
        if self._feats is None:
            h5py = _h5py()
            f = h5py.File(self.path, "r")
            ds = f["features"]
            offset = ds.id.get_offset() if ds.chunks is None and ds.compression is None else None
            n, d = ds.shape
            if n == 0:
                self._feats = np.zeros((0, d), dtype=ds.dtype)
                f.close()
            elif offset is not None and ds.dtype.byteorder in "<=|":
                f.close()
                if self.in_memory:
                    feats = np.fromfile(self.path, dtype=ds.dtype, count=n * d, offset=offset)
                else:
                    with open(self.path, "rb") as fh:
                        self._mmap = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                    self._data_offset = offset
                    feats = np.frombuffer(self._mmap, dtype=ds.dtype, count=n * d, offset=offset)
                self._feats = feats.reshape(n, d)
            elif self.in_memory:
                self._feats = ds[()]
                f.close()
            else:  # chunked or compressed (e.g. written by another tool): read through h5py
                self._h5, self._feats = f, ds
        return self._feats

    @property
    def chunk_rows(self) -> int | None:
        """Rows per HDF5 chunk of the features, or None when they are stored contiguously."""
        chunks = getattr(self._features(), "chunks", None)  # memmaps and arrays have none
        return int(chunks[0]) if chunks else None

    def close(self) -> None:
        """Release the file (the store reopens it on next use)."""
        if self._h5 is not None:
            with contextlib.suppress(Exception):
                self._h5.close()
        self._h5 = None
        self._feats = None
        self._mmap = None  # closed by the garbage collector once no array uses it

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    def __getstate__(self) -> dict:
        return {"path": self.path, "in_memory": self.in_memory}

    def __setstate__(self, state: dict) -> None:
        self.path, self.in_memory = state["path"], state["in_memory"]
        self._hdr = self._index = self._feats = self._h5 = self._mmap = None
        self._data_offset = 0

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
            "file_size": os.path.getsize(self.path) if os.path.exists(self.path) else None,
        }

    def check_compatible(self, provenance: dict) -> None:
        """Raise :class:`CacheMismatchError` unless ``provenance`` describes this cache's model."""
        check_provenance(self.provenance, provenance, self.path)

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
            r = index.get(k) if isinstance(k, str) else index.get(_decode_str(k))
            if r is None:
                unknown.append(k)
                out[i] = -1
            else:
                out[i] = r
        if unknown:
            raise UnknownKeyError(self._unknown_message(unknown))
        return out

    def _unknown_message(self, unknown: list) -> str:
        uniq = list(dict.fromkeys(map(str, unknown)))
        shown = uniq[:5]
        known = self._hdr.keys
        parts = []
        for k in shown:
            base = k.rsplit("/", 1)[-1]
            pool = known
            if len(known) > 20000:  # difflib is slow on huge caches: same folder or file name
                folder = k.rsplit("/", 1)[0] + "/" if "/" in k else ""
                pool = [x for x in known if x.startswith(folder) or x.endswith(base)][:20000]
            close = difflib.get_close_matches(k, pool, n=3, cutoff=0.6) if len(pool) else []
            if not close:  # also try by file name, for keys given without their folder
                close = [x for x in pool if x.rsplit("/", 1)[-1] == base][:3]
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            parts.append(f"{k!r}{hint}")
        more = f" and {len(uniq) - len(shown)} more" if len(uniq) > len(shown) else ""
        failed = {k for k, _ in self._hdr.failed}
        nfail = sum(1 for k in uniq if k in failed)
        fail_note = (
            f"; {nfail} of them could not be read as images when the cache was made "
            "(see FeatureStore.failed)"
            if nfail
            else ""
        )
        return (
            f"{len(uniq)} unknown image key(s) not in {self.path}: {', '.join(parts)}{more}"
            f"{fail_note}. Keys are paths relative to the extracted image folder with '/' "
            "separators; run `tripletsk extract-features` on the folder to add new images."
        )

    def lookup(self, keys) -> np.ndarray:
        """Features of ``keys`` as an (n, D) float32 array, in the requested order.

        ``keys`` is one key (str) or a sequence of keys; duplicates are allowed.
        """
        idx = self.indices(keys)
        return self.take(idx)

    def take(self, idx, out: np.ndarray | None = None) -> np.ndarray:
        """Features of row numbers ``idx`` as an (n, D) float32 array (written to ``out`` if
        given: a float32 array of that shape)."""
        feats = self._features()
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"row index out of range for a cache of {n} rows")
        idx = np.where(idx < 0, idx + n, idx)
        if isinstance(feats, np.ndarray):  # mapped or in memory: numpy handles order/duplicates
            self._will_need(np.unique(idx))
            if out is not None and feats.dtype == out.dtype:
                # mode="clip" (indices are checked above) lets numpy skip a buffered copy.
                return np.take(feats, idx, axis=0, out=out, mode="clip")
            return _into(np.asarray(feats[idx], dtype=np.float32), out)
        # h5py dataset: fancy reads need sorted unique indices; read those, then reorder.
        uniq, inverse = np.unique(idx, return_inverse=True)
        if uniq.size == 0:
            return _into(np.zeros((0, self.dim), dtype=np.float32), out)
        span = int(uniq[-1] - uniq[0] + 1)
        if span <= 4 * uniq.size:  # dense: read whole blocks and pick
            rows = np.empty((uniq.size, self.dim), dtype=np.float32)
            lo0 = int(uniq[0])
            for start in range(lo0, lo0 + span, _READ_BLOCK):
                stop = min(start + _READ_BLOCK, lo0 + span)
                sel = (uniq >= start) & (uniq < stop)
                if sel.any():
                    rows[sel] = feats[start:stop][uniq[sel] - start]
        else:
            rows = np.asarray(feats[uniq], dtype=np.float32)
        return _into(rows[inverse.reshape(-1)], out)

    def iter_chunks(self, chunk_size: int = 4096) -> Iterator[tuple[list[str], np.ndarray]]:
        """Yield ``(keys, features)`` in row order, ``chunk_size`` rows at a time."""
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        feats = self._features()
        keys = self._hdr.keys
        for start in range(0, len(keys), chunk_size):
            stop = min(start + chunk_size, len(keys))
            self._will_need(np.arange(start, stop))
            yield keys[start:stop], np.asarray(feats[start:stop], dtype=np.float32)

    def to_array(self) -> np.ndarray:
        """All features as one (N, D) float32 array."""
        feats = self._features()
        self._will_need(np.arange(len(feats)))
        return np.asarray(feats[()], dtype=np.float32)

    def prefetch(self, idx) -> None:
        """Start reading rows ``idx`` from disk in the background (a hint; returns at once)."""
        self._features()
        self._will_need(np.unique(np.asarray(idx, dtype=np.int64)))

    def _will_need(self, rows: np.ndarray) -> None:
        """Have the kernel read exactly the pages of ``rows`` (sorted, distinct), all at once.

        A page fault in a memory map reads the file around the faulting page, as much as the
        device's read-ahead (``read_ahead_kb``: 8 MiB on the development machine). Once a cache
        no longer fits the page cache, rows read at random would then read up to a thousand
        times what they use. ``MADV_WILLNEED`` reads the given ranges only, and issues them
        together; the copy that follows finds its pages in memory and reads nothing more.
        """
        if self._mmap is None or rows.size == 0 or not hasattr(mmap, "MADV_WILLNEED"):
            return
        row_bytes = self.dim * self.dtype.itemsize
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1  # runs of consecutive rows
        first, last = rows[np.r_[0, breaks]], rows[np.r_[breaks - 1, rows.size - 1]]
        starts = self._data_offset + first * row_bytes
        ends = self._data_offset + (last + 1) * row_bytes
        starts -= starts % mmap.PAGESIZE  # madvise wants page-aligned starts
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            self._mmap.madvise(mmap.MADV_WILLNEED, start, end - start)


def _into(rows: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        return rows
    out[...] = rows
    return out


# --------------------------------------------------------------------------------------------
# Writing: lock, parts journal, atomic consolidation
# --------------------------------------------------------------------------------------------


class CacheLock:
    """Exclusive, non-blocking lock on ``<cache>.lock`` (released by the OS if the process dies)."""

    def __init__(self, cache_path: str | os.PathLike):
        self.cache_path = os.fspath(cache_path)
        self.path = self.cache_path + ".lock"
        self._fd = None

    def acquire(self) -> CacheLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock_fd(fd)
        except OSError:
            holder = ""
            with contextlib.suppress(Exception):  # (no os.pread on Windows)
                txt = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
                holder = f" (held by {txt})" if txt else ""
            os.close(fd)
            raise CacheLockedError(
                f"another extraction is writing {self.cache_path}{holder}; wait for it to finish "
                f"or write to another --output. (The lock is {self.path}; it is released when "
                "that process exits.)"
            ) from None
        with contextlib.suppress(Exception):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} since {now_iso()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            with contextlib.suppress(OSError):
                _unlock_fd(self._fd)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> CacheLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _lock_fd(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _unlock_fd(fd: int) -> None:
    try:
        import fcntl
    except ImportError:
        import msvcrt

        os.lseek(fd, 0, 0)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_UN)


@dataclass
class PartInfo:
    """One finished batch in the parts journal (features not loaded)."""

    path: str
    keys: list
    fingerprints: np.ndarray
    failed: list  # (key, reason, size, mtime_ns)


class PartsJournal:
    """The ``<cache>.parts/`` directory: one file per finished batch, each written atomically.

    ``meta.json`` holds the settings of the run; parts from a run with other settings are refused.
    """

    META = "meta.json"

    def __init__(self, cache_path: str | os.PathLike, meta: dict):
        self.cache_path = os.fspath(cache_path)
        self.dir = self.cache_path + ".parts"
        self.meta = meta
        self.parts: list[PartInfo] = []
        self._next = 0

    def exists(self) -> bool:
        return os.path.isdir(self.dir)

    def open(self) -> list[PartInfo]:
        """Load the existing journal (validating its settings) or start an empty one."""
        if os.path.isdir(self.dir):
            meta_path = os.path.join(self.dir, self.META)
            old = None
            with contextlib.suppress(OSError, ValueError):
                with open(meta_path, encoding="utf-8") as fh:
                    old = json.load(fh)
            has_parts = any(
                n.startswith("part-") and n.endswith(".npz") for n in os.listdir(self.dir)
            )
            if old is None or not has_parts:  # nothing finished in there (e.g. a run that
                shutil.rmtree(self.dir, ignore_errors=True)  # failed before its first batch)
            else:
                try:
                    check_provenance(old.get("provenance", {}), self.meta["provenance"], self.dir)
                except CacheMismatchError as e:
                    raise CacheMismatchError(
                        f"an interrupted extraction with other settings left {self.dir}: "
                        f"{e}. Rerun it with its own settings to finish it, or delete "
                        f"{self.dir} to discard its work."
                    ) from None
                if int(old.get("dim", -1)) != int(self.meta["dim"]) and self.meta["dim"]:
                    raise CacheMismatchError(f"{self.dir} holds features of another dimension")
        if not os.path.isdir(self.dir):
            os.makedirs(self.dir)
            _atomic_write_bytes(
                os.path.join(self.dir, self.META),
                json.dumps(self.meta, indent=1, sort_keys=True).encode(),
            )
            _fsync_path(os.path.dirname(self.dir) or ".", directory=True)
        self.parts = []
        for name in sorted(os.listdir(self.dir)):
            p = os.path.join(self.dir, name)
            if name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.remove(p)
                continue
            if not (name.startswith("part-") and name.endswith(".npz")):
                continue
            try:
                with np.load(p, allow_pickle=False) as z:
                    keys = [str(k) for k in z["keys"]]
                    fps = np.asarray(z["fingerprints"], dtype=FINGERPRINT_DTYPE)
                    failed = [
                        (str(k), str(r), int(s), int(m))
                        for (k, r), (s, m) in zip(z["failed"], z["failed_stat"], strict=True)
                    ]
                    if z["features"].shape[0] != len(keys):
                        raise ValueError("row count mismatch")
            except Exception:  # unreadable part (should not happen): redo its images
                with contextlib.suppress(OSError):
                    os.remove(p)
                continue
            self.parts.append(PartInfo(p, keys, fps, failed))
            self._next = max(self._next, int(name[5:-4]) + 1)
        return self.parts

    def write(self, keys: Sequence[str], features: np.ndarray, fingerprints: np.ndarray, failed):
        """Durably record one finished batch. ``failed`` is ``[(key, reason, size, mtime_ns)]``."""
        dim = int(self.meta["dim"])
        path = os.path.join(self.dir, f"part-{self._next:08d}.npz")
        self._next += 1
        fk = np.array([[k, r] for k, r, _, _ in failed], dtype=str).reshape(-1, 2)
        fs = np.array([[s, m] for _, _, s, m in failed], dtype=np.int64).reshape(-1, 2)
        tmp = path + ".tmp"
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                keys=np.array(list(keys), dtype=str).reshape(-1),
                features=np.asarray(features, dtype=np.float32).reshape(len(keys), dim),
                fingerprints=np.asarray(fingerprints, dtype=FINGERPRINT_DTYPE),
                failed=fk,
                failed_stat=fs,
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        info = PartInfo(path, list(keys), np.asarray(fingerprints, FINGERPRINT_DTYPE), failed)
        self.parts.append(info)
        return info

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _atomic_write_bytes(path: str, data: bytes) -> None:
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_part_features(path: str) -> np.ndarray:
    with np.load(path, allow_pickle=False) as z:
        return np.asarray(z["features"], dtype=np.float32)


def remove_stale_temp_files(cache_path: str | os.PathLike) -> None:
    """Delete temporary cache files left by a killed consolidation (call under the lock)."""
    cache_path = os.fspath(cache_path)
    d = os.path.dirname(cache_path) or "."
    prefix = os.path.basename(cache_path) + ".tmp-"
    with contextlib.suppress(OSError):
        for name in os.listdir(d):
            if name.startswith(prefix):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(d, name))


def write_cache(
    path: str | os.PathLike,
    *,
    keys: Sequence[str],
    fingerprints: np.ndarray,
    feature_blocks: Iterable[np.ndarray],
    dim: int,
    dtype: str,
    failed: Sequence[tuple[str, str]],
    attrs: dict,
) -> None:
    """Write a complete cache to a temporary file, fsync it, and atomically rename it to ``path``.

    ``feature_blocks`` yields row blocks whose concatenation is aligned with ``keys``; memory stays
    bounded by one block.
    """
    h5py = _h5py()
    path = os.fspath(path)
    n = len(keys)
    if len(fingerprints) != n:
        raise ValueError("fingerprints and keys differ in length")
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with h5py.File(tmp, "w") as f:
            for k, v in attrs.items():
                f.attrs[k] = v
            sdt = h5py.string_dtype("utf-8")
            f.create_dataset("keys", data=np.array(list(keys), dtype=object), dtype=sdt, shape=(n,))
            f.create_dataset(
                "fingerprints", data=np.asarray(fingerprints, dtype=FINGERPRINT_DTYPE), shape=(n,)
            )
            fl = np.array([[k, r] for k, r in failed], dtype=object).reshape(-1, 2)
            f.create_dataset("failed", data=fl, dtype=sdt, shape=(len(fl), 2))
            ds = f.create_dataset("features", shape=(n, dim), dtype=np.dtype(dtype))
            row = 0
            for block in feature_blocks:
                block = np.asarray(block)
                if block.shape[0] == 0:
                    continue
                if block.ndim != 2 or block.shape[1] != dim:
                    raise ValueError(f"feature block of shape {block.shape}, expected (m, {dim})")
                if row + block.shape[0] > n:
                    raise ValueError("more feature rows than keys")
                ds[row : row + block.shape[0]] = block.astype(ds.dtype, copy=False)
                row += block.shape[0]
            if row != n:
                raise ValueError(f"{row} feature rows written for {n} keys")
        _fsync_path(tmp)
        os.replace(tmp, path)
        _fsync_path(os.path.dirname(path) or ".", directory=True)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def read_feature_rows(
    path: str, rows: np.ndarray, block: int = _READ_BLOCK
) -> Iterator[np.ndarray]:
    """Yield the features of sorted ``rows`` of an existing cache, block by block."""
    h5py = _h5py()
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
            data = ds[start:stop]
            yield data[rows[a:b] - start]


def library_versions() -> dict:
    """Versions of the libraries that shape the features (recorded in the cache)."""
    import sys
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in ("tripletsk", "tensorflow", "keras", "h5py", "numpy", "pillow"):
        with contextlib.suppress(Exception):
            out[name] = metadata.version(name)
    if "tripletsk" not in out:
        from tripletsk import __version__

        out["tripletsk"] = __version__
    return out
