"""Reading a cache's features through a memory map, verifying chunk checksums on first read.

HDF5 reads and decodes a whole chunk for every look-up, which makes random row look-ups slow.
Instead, the file is memory-mapped and rows are copied straight from it, at the byte offsets HDF5
records for each chunk. Caches written with checksums store the features in chunks of whole rows
with the ``fletcher32`` filter; the first time any row of a chunk is read in this process, the
whole chunk's checksum is verified (:mod:`tripletsk.cache.checksums`), and later reads of that
chunk copy rows only. Caches written before checksums (contiguous features) are mapped the same
way, without verification.
"""

from __future__ import annotations

import mmap
import os
import warnings

import numpy as np

from tripletsk.cache.checksums import CHECKSUM_BYTES, checksums_match

__all__ = ["MappedFeatures", "warn_unchecksummed"]

_FILTER_FLETCHER32 = 3  # h5py.h5z.FILTER_FLETCHER32
_VERIFY_BYTES = 8 << 20  # chunk bytes verified per batch (bounds the temporary memory)


class MappedFeatures:
    """The (N, D) features of a cache file, read through a memory map.

    Use :meth:`open`; ``offsets[c]`` is the byte offset of chunk ``c`` (``rows_per_chunk``
    rows each; contiguous features are one chunk).
    """

    def __init__(self, path, mm, shape, dtype, offsets, rows_per_chunk, checksummed):
        self.path = path
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.rows_per_chunk = int(rows_per_chunk)
        self.checksummed = bool(checksummed)
        self.row_bytes = self.shape[1] * self.dtype.itemsize
        self._mmap = mm
        flat = np.frombuffer(mm, dtype=np.uint8)
        # Views of the file in which row ``o`` holds the bytes from offset ``o`` on: one fancy
        # index then copies rows (or whole stored chunks) from any offsets, without a loop.
        self._rows_at = _windows(flat, self.row_bytes)
        self._verified = np.zeros(len(self.offsets), dtype=bool)
        self._array = None
        if len(self.offsets) == 1:  # contiguous: an ordinary (N, D) view, fastest to index
            n, d = self.shape
            count = n * d
            self._array = np.frombuffer(mm, self.dtype, count, int(self.offsets[0])).reshape(n, d)
        if self.checksummed:
            self._chunks_at = _windows(flat, self.rows_per_chunk * self.row_bytes + CHECKSUM_BYTES)

    @classmethod
    def open(cls, path: str, ds, fd: int | None = None) -> MappedFeatures | None:
        """Map dataset ``ds`` of the open file ``path``; None if only HDF5 can read it.

        ``fd``: an open file descriptor of that file (one version of it, see
        :mod:`tripletsk.cache.pinned`), mapped instead of opening ``path`` again.

        Mappable: contiguous, or chunks of whole rows with no filter but ``fletcher32``; stored
        little-endian (as NumPy reads natively here) and fully written.
        """
        n, d = ds.shape
        if n == 0 or ds.dtype.byteorder not in "<=|" or ds.dtype.kind not in "fiu":
            return None
        if ds.chunks is None:
            offset = ds.id.get_offset()
            if offset is None:  # never written
                return None
            offsets, rows_per_chunk, checksummed = [offset], n, False
        else:
            dcpl = ds.id.get_create_plist()
            filters = [dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters())]
            if filters != [_FILTER_FLETCHER32] or ds.chunks[1] != d:
                return None
            rows_per_chunk, checksummed = ds.chunks[0], True
            stored = rows_per_chunk * d * ds.dtype.itemsize + CHECKSUM_BYTES
            offsets = np.full(-(-n // rows_per_chunk), -1, dtype=np.int64)
            sizes_ok = [True]

            def record(chunk) -> None:
                offsets[chunk.chunk_offset[0] // rows_per_chunk] = chunk.byte_offset
                sizes_ok[0] &= chunk.size == stored

            ds.id.chunk_iter(record)
            if not sizes_ok[0] or (offsets < 0).any():  # (e.g. partial chunks not filtered)
                return None
        if fd is not None:
            mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        else:
            with open(path, "rb") as fh:
                mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        return cls(path, mm, (n, d), ds.dtype, offsets, rows_per_chunk, checksummed)

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (int64, in range, any order) in the storage dtype, unverified."""
        if self._array is not None:
            return self._array[rows]
        data = self._rows_at[self._byte_offsets(rows)]
        return data.view(self.dtype).reshape(len(rows), self.shape[1])

    def block(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` in the storage dtype (a view of the map when contiguous)."""
        if self._array is not None:
            return self._array[start:stop]
        return self.take(np.arange(start, stop))

    def take_into(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        """:meth:`take` written into ``out`` (an array of the storage dtype and that shape)."""
        if self._array is not None:
            # mode="clip" (callers check indices) lets numpy skip a buffered copy.
            return np.take(self._array, rows, axis=0, out=out, mode="clip")
        out.view(np.uint8).reshape(len(rows), self.row_bytes)[...] = self._rows_at[
            self._byte_offsets(rows)
        ]
        return out

    def bad_rows(self, rows: np.ndarray) -> np.ndarray:
        """Verify the chunks holding ``rows`` not verified yet; the rows of the corrupt ones.

        Chunks that pass are remembered and not verified again; corrupt ones are checked again
        (and reported again) on every read.
        """
        if not self.checksummed or rows.size == 0:
            return np.zeros(0, dtype=np.int64)
        chunks = rows // self.rows_per_chunk
        chunks = chunks[~self._verified[chunks]]
        return self._check_chunks(np.unique(chunks)) if chunks.size else chunks

    def all_bad_rows(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Verify every chunk (reading the whole file; with ``rows``, the chunks holding those
        rows), verified before or not; the rows of the corrupt ones."""
        if not self.checksummed:
            return np.zeros(0, dtype=np.int64)
        if rows is None:
            chunks = np.arange(len(self.offsets))
        else:
            chunks = np.unique(np.asarray(rows, dtype=np.int64) // self.rows_per_chunk)
        self._verified[chunks] = False
        return self._check_chunks(chunks)

    def _check_chunks(self, chunks: np.ndarray) -> np.ndarray:
        stored = self._chunks_at.shape[1]
        self._will_need_bytes(self.offsets[chunks], stored)
        bad = []
        step = max(1, _VERIFY_BYTES // stored)
        for start in range(0, len(chunks), step):
            batch = chunks[start : start + step]
            ok = checksums_match(self._chunks_at[self.offsets[batch]])
            self._verified[batch[ok]] = True
            bad.extend(batch[~ok].tolist())
        rpc, n = self.rows_per_chunk, self.shape[0]
        rows = [np.arange(c * rpc, min((c + 1) * rpc, n)) for c in bad]
        return np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)

    def will_need(self, rows: np.ndarray) -> None:
        """Have the kernel read exactly the pages of ``rows`` (distinct), all at once.

        A page fault in a memory map reads the file around the faulting page, as much as the
        device's read-ahead (``read_ahead_kb``: 8 MiB on the development machine). Once a cache
        no longer fits the page cache, rows read at random would then read up to a thousand
        times what they use. ``MADV_WILLNEED`` reads the given ranges only, and issues them
        together; the copy that follows finds its pages in memory and reads nothing more.
        """
        if rows.size:
            self._will_need_bytes(np.sort(self._byte_offsets(rows)), self.row_bytes)

    def _will_need_bytes(self, starts: np.ndarray, length: int) -> None:
        if starts.size == 0 or not hasattr(mmap, "MADV_WILLNEED"):
            return
        breaks = np.flatnonzero(np.diff(starts) != length) + 1  # runs of adjacent ranges
        first, last = starts[np.r_[0, breaks]], starts[np.r_[breaks - 1, starts.size - 1]]
        ends = last + length
        first = first - first % mmap.PAGESIZE  # madvise wants page-aligned starts
        for start, end in zip(first.tolist(), ends.tolist(), strict=True):
            self._mmap.madvise(mmap.MADV_WILLNEED, start, end - start)

    def _byte_offsets(self, rows: np.ndarray) -> np.ndarray:
        chunk, within = np.divmod(rows, self.rows_per_chunk)
        return self.offsets[chunk] + within * self.row_bytes


_warned_unchecksummed: set[str] = set()


def warn_unchecksummed(path: str) -> None:
    """Warn, once per file and process, that a cache has no checksums."""
    key = os.path.abspath(path)
    if key in _warned_unchecksummed:
        return
    _warned_unchecksummed.add(key)
    warnings.warn(
        f"{path} has no checksums (written before tripletsk checksummed its caches): damage "
        "to its features cannot be detected. Rewrite it with checksums: run `tripletsk "
        f"extract-features IMAGES_DIR -o {path} --verify`.",
        UserWarning,
        stacklevel=4,
    )


def _windows(flat: np.ndarray, width: int) -> np.ndarray:
    """Read-only (len - width + 1, width) view of ``flat``: row ``o`` is ``flat[o : o + width]``."""
    return np.lib.stride_tricks.as_strided(
        flat, shape=(max(flat.size - width + 1, 0), width), strides=(1, 1), writeable=False
    )
