"""Writing a complete feature cache: :func:`write_cache`, and the attributes every writer records.

A cache file is never modified in place: :func:`write_cache` writes a complete new file next to
the old one and renames it over it (``os.replace``, atomic), so ``<cache>`` is always the old or
the new complete file. The layout written is that of :mod:`tripletsk.cache.format`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import uuid
from collections.abc import Iterable, Sequence

import numpy as np

from tripletsk.cache.format import FINGERPRINT_DTYPE, INDEX_CHECKSUMS, h5py_module, index_checksums

__all__ = ["CHUNK_BYTES", "fsync_path", "library_versions", "now_iso", "write_cache"]

#: Target bytes per stored chunk of features: the unit of checksum verification. Small, as the
#: first read of a row reads and verifies its whole chunk (64 KiB: 8 rows of 2048 float32).
CHUNK_BYTES = 64 << 10


def now_iso() -> str:
    """The current UTC time to the second, ISO 8601 (``created`` and ``updated`` attributes)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    """Flush the file (or, with ``directory``, the folder's entries) at ``path`` to disk; where
    the system cannot, do nothing."""
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
    h5py = h5py_module()
    path = os.fspath(path)
    n = len(keys)
    if len(fingerprints) != n:
        raise ValueError("fingerprints and keys differ in length")
    row_bytes = max(1, dim * np.dtype(dtype).itemsize)
    # Chunks of whole rows, each with its Fletcher-32 checksum (see ``tripletsk.cache.mapped``).
    chunk_rows = max(1, min(n, CHUNK_BYTES // row_bytes))
    layout = {"chunks": (chunk_rows, dim), "fletcher32": True} if n and dim else {}
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with h5py.File(tmp, "w") as f:
            for k, v in attrs.items():
                f.attrs[k] = v
            f.attrs[INDEX_CHECKSUMS] = json.dumps(index_checksums(keys, fingerprints, failed))
            sdt = h5py.string_dtype("utf-8")
            f.create_dataset("keys", data=np.array(list(keys), dtype=object), dtype=sdt, shape=(n,))
            f.create_dataset(
                "fingerprints", data=np.asarray(fingerprints, dtype=FINGERPRINT_DTYPE), shape=(n,)
            )
            fl = np.array([[k, r] for k, r in failed], dtype=object).reshape(-1, 2)
            f.create_dataset("failed", data=fl, dtype=sdt, shape=(len(fl), 2))
            ds = f.create_dataset("features", shape=(n, dim), dtype=np.dtype(dtype), **layout)
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
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(os.path.dirname(path) or ".", directory=True)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


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
