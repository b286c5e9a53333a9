"""HDF5's Fletcher-32 chunk checksum, computed with NumPy over many chunks at once.

HDF5's ``fletcher32`` filter appends to each stored chunk the Fletcher-32 checksum of its bytes
(``H5_checksum_fletcher32``: big-endian 16-bit words, sums folded modulo 65535, the result
stored little-endian). Reading a chunk through HDF5 verifies it; the memory-mapped fast path
(:mod:`tripletsk.mapped`) reads chunks without HDF5 and verifies them here instead.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CHECKSUM_BYTES", "checksums_match", "fletcher32"]

#: Bytes the filter appends to each chunk.
CHECKSUM_BYTES = 4
_MOD = 65535
# Word sums stay exact in float64 (and so can use BLAS) while below 2**53: a segment of
# 2**20 words sums to at most 2**20 * 65535 * 65534 < 2**53.
_SEGMENT = 1 << 20


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
    data = np.ascontiguousarray(data, dtype=np.uint8)
    if data.shape[1] % 2:  # HDF5 counts a last odd byte as the high byte of one more word
        data = np.concatenate([data, np.zeros((data.shape[0], 1), np.uint8)], axis=1)
    words = data.view(">u2")
    n = words.shape[1]
    # sum1 = sum of the words; sum2 = sum of the running sums = sum of (n - i) * word[i].
    sum1 = np.zeros(len(words))
    sum2 = np.zeros(len(words))
    for start in range(0, n, _SEGMENT):
        seg = words[:, start : start + _SEGMENT].astype(np.float64)
        weights = np.arange(n - start, n - start - seg.shape[1], -1, dtype=np.float64)
        weights = np.fmod(weights, _MOD)
        sum1 = np.fmod(sum1 + seg.sum(axis=1), _MOD)
        sum2 = np.fmod(sum2 + seg @ weights, _MOD)
    # HDF5 folds the sums into 1..65535 once any word is non-zero (65535, not 0, for a
    # multiple of 65535) and leaves them 0 for all-zero data.
    nonzero = np.any(words != 0, axis=1)
    sum1 = np.where((sum1 == 0) & nonzero, _MOD, sum1).astype(np.uint32)
    sum2 = np.where((sum2 == 0) & nonzero, _MOD, sum2).astype(np.uint32)
    return (sum2 << np.uint32(16)) | sum1


def checksums_match(raw: np.ndarray) -> np.ndarray:
    """Whether each stored chunk (a row of ``raw``: data then its checksum) is intact.

    Like HDF5, this also accepts the byte-swapped checksum that HDF5 before 1.6.3 wrote.
    """
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    stored = raw[:, -CHECKSUM_BYTES:].copy().view("<u4").reshape(-1)
    computed = fletcher32(raw[:, :-CHECKSUM_BYTES])
    mask = np.uint32(0x00FF00FF)
    swapped = ((computed & mask) << np.uint32(8)) | ((computed >> np.uint32(8)) & mask)
    return (stored == computed) | (stored == swapped)
