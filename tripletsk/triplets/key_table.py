"""Row numbers of image names among a cache's keys, for millions of names at once (private).

Names read from a triplet file are UTF-8 ``bytes``. :class:`KeyTable` finds their rows two
ways: a dict, for names given one by one (:meth:`KeyTable.rows`), and, for the names of a plain
block given as spans of its bytes (:meth:`KeyTable.rows_of_spans`), a hash table in NumPy
that never makes a Python object per name: each name's bytes, zero-padded to the longest key
rounded up to 8 bytes, are read as 64-bit words; the words and the length are hashed to a
bucket of a table four times larger than the keys; and a match is then checked exactly, word
by word and by length, against the key found. A hash only chooses the candidate: equality
is exact, so no collision (accidental or crafted) can make a name match another key. Keys
whose hashes collide with each other, or longer than 256 bytes, leave the table unused (the
dict serves).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["KeyTable"]

_MIX = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio: a multiplicative hash
_MAX_WIDTH = 256
# _MASKS[v]: the 64-bit word whose first v bytes in memory are 0xff and the others 0.
_MASKS = np.frombuffer(b"".join(bytes([255] * v + [0] * (8 - v)) for v in range(9)), np.uint64)


class _Index(dict):
    """UTF-8 bytes of a key -> its row; -1 for a name that is not a key."""

    def __missing__(self, name: bytes) -> int:
        return -1


def _hash(words: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """One 64-bit hash per row of ``words`` (n, k) uint64 and its length in bytes (zero
    padding makes ``b"a"`` and ``b"a\\x00"`` the same words)."""
    h = lengths.astype(np.uint64)
    for column in words.T:
        h ^= column
        h *= _MIX
        h ^= h >> np.uint64(29)
    return h


class KeyTable:
    """Row numbers of names among ``keys`` (the row of ``keys[i]`` is ``i``; -1: unknown)."""

    def __init__(self, keys: Sequence[str]):
        encoded = [key.encode("utf-8", "surrogatepass") for key in keys]
        self.n_keys = len(encoded)
        self.dtype = np.int32 if self.n_keys < 2**31 else np.int64
        self.index = _Index(zip(encoded, range(self.n_keys), strict=True))
        self.lengths = np.array([len(k) for k in encoded], dtype=np.int64)
        longest = int(self.lengths.max()) if self.n_keys else 0
        self.width = max(8, -(-longest // 8) * 8)
        self.vectorized = 0 < self.n_keys and self.width <= _MAX_WIDTH
        if self.vectorized:
            padded = np.zeros((self.n_keys, self.width), dtype=np.uint8)
            for row, key in enumerate(encoded):
                padded[row, : len(key)] = np.frombuffer(key, dtype=np.uint8)
            self.words = padded.view(np.uint64)
            hashes = _hash(self.words, self.lengths)
            self.vectorized = len(np.unique(hashes)) == self.n_keys
            bits = max(4, (4 * self.n_keys).bit_length())
            self.shift = np.uint64(64 - bits)
            buckets = hashes >> self.shift
            self.order = np.argsort(buckets, kind="stable")
            self.sorted_hashes = hashes[self.order]
            edges = np.arange((1 << bits) + 1, dtype=np.uint64)
            self.bucket_starts = np.searchsorted(buckets[self.order], edges)
            self.max_bucket = int(np.diff(self.bucket_starts).max())

    def rows(self, names: list[bytes]) -> np.ndarray:
        """The rows of ``names`` (-1 for unknown ones), looked up one by one."""
        return np.fromiter(map(self.index.__getitem__, names), self.dtype, len(names))

    def rows_of_spans(self, data: np.ndarray, starts: np.ndarray, stops: np.ndarray):
        """The rows of the names ``data[starts[i]:stops[i]]`` (``data``: uint8 bytes); only
        when :attr:`vectorized`."""
        width = self.width
        lengths = stops - starts
        padded = np.concatenate([data, np.zeros(width, dtype=np.uint8)])
        words = sliding_window_view(padded, width)[starts].view(np.uint64)  # a copy: (n, k)
        for j, column in enumerate(words.T):  # zero the bytes past each name
            column &= _MASKS[np.clip(lengths - 8 * j, 0, 8)]
        hashes = _hash(words, lengths)
        buckets = (hashes >> self.shift).astype(np.intp)
        first = self.bucket_starts[buckets]
        count = self.bucket_starts[buckets + 1] - first
        found = np.zeros(len(hashes), dtype=np.intp)
        todo = np.flatnonzero(count)
        for probe in range(self.max_bucket):  # the keys of a bucket, in turn
            at = first[todo] + probe
            hit = self.sorted_hashes[at] == hashes[todo]
            found[todo[hit]] = self.order[at[hit]]
            todo = todo[~hit & (count[todo] > probe + 1)]
        exact = self.lengths[found] == lengths
        for ours, theirs in zip(self.words.T, words.T, strict=True):
            exact &= ours[found] == theirs
        rows = found.astype(self.dtype)
        rows[~exact] = -1
        return rows
