"""HDF5's Fletcher-32 chunk checksum, computed with NumPy over many chunks at once.

HDF5's ``fletcher32`` filter appends to each stored chunk the Fletcher-32 checksum of its bytes
(``H5_checksum_fletcher32``: big-endian 16-bit words, sums folded modulo 65535, the result
stored little-endian). Reading a chunk through HDF5 verifies it; the memory-mapped fast path
(:mod:`tripletsk.cache.mapped`) reads chunks without HDF5 and verifies them here instead.

Also :func:`file_digest`, the BLAKE2b of a whole file that identifies model files.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

__all__ = ["CHECKSUM_BYTES", "checksums_match", "file_digest", "fletcher32"]

#: Bytes the filter appends to each chunk.
CHECKSUM_BYTES = 4
_MOD = 65535


def file_digest(path: str) -> str:
    """The 128-bit BLAKE2b of the file at ``path`` (hex), read in 1 MiB blocks."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fletcher32(data: np.ndarray) -> np.ndarray:
    """Fletcher-32 of each row of a 2-D uint8 array, exactly as HDF5 computes it.

    Parameters
    ----------
    data : ndarray of uint8, shape (k, n_bytes)
        One chunk's bytes per row.

    Returns
    -------
    ndarray of uint32, shape (k,)
    """
    data = np.asarray(data, dtype=np.uint8)
    if data.strides[1] != 1:  # (rows may be apart, as long as each is contiguous)
        data = np.ascontiguousarray(data)
    if data.shape[1] % 2:  # HDF5 counts a last odd byte as the high byte of one more word
        data = np.concatenate([data, np.zeros((data.shape[0], 1), np.uint8)], axis=1)
    words = data.view(">u2")
    # sum1 = sum of the words; sum2 = sum of the running sums = sum of (n - i) * word[i]. With
    # weights below 65535 every term is below 2**32, so uint64 sums are exact (einsum is the
    # fastest exact integer dot product NumPy has).
    sum1 = words.sum(axis=1, dtype=np.uint64)
    sum2 = np.einsum("ki,i->k", words, _weights(words.shape[1]), dtype=np.uint64, casting="unsafe")
    # HDF5 folds the sums into 1..65535 once any word is non-zero (65535, not 0, for a
    # multiple of 65535) and leaves them 0 for all-zero data.
    folded = np.stack([sum1, sum2], axis=1) % _MOD
    folded = np.where((folded == 0) & (sum1[:, None] > 0), _MOD, folded).astype(np.uint32)
    return (folded[:, 1] << np.uint32(16)) | folded[:, 0]


@functools.lru_cache(maxsize=4)
def _weights(n: int) -> np.ndarray:
    """``(n - i) % 65535`` for i in 0..n-1, as uint64."""
    weights = np.arange(n, 0, -1, dtype=np.uint64) % _MOD
    weights.flags.writeable = False
    return weights


def checksums_match(raw: np.ndarray) -> np.ndarray:
    """Whether each stored chunk (a row of ``raw``: data then its checksum) is intact.

    Like HDF5, this also accepts the byte-swapped checksum that HDF5 before 1.6.3 wrote.
    """
    raw = np.asarray(raw, dtype=np.uint8)
    stored = np.ascontiguousarray(raw[:, -CHECKSUM_BYTES:]).view("<u4").reshape(-1)
    computed = fletcher32(raw[:, :-CHECKSUM_BYTES])
    mask = np.uint32(0x00FF00FF)
    swapped = ((computed & mask) << np.uint32(8)) | ((computed >> np.uint32(8)) & mask)
    return (stored == computed) | (stored == swapped)
