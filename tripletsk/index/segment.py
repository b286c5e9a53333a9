"""The segments of an embedding index: files written once under a fresh name, read back checked.

A segment is three files (:mod:`tripletsk.index.format` has the folder's layout):
``seg-<id>.npy`` (float32 embeddings), ``seg-<id>.keys`` (their keys, one per line) and
``seg-<id>.rows.npz`` (ids, content hashes and a Fletcher-32 checksum per 64 KiB chunk of
embedding rows). :class:`SegmentReader` checks each file against the manifest's entry and each
chunk of rows against its checksum as it is read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from tripletsk._npy import read_npy_header
from tripletsk.cache.checksums import file_digest, fletcher32
from tripletsk.errors import IndexFormatError
from tripletsk.index.format import (
    bytes_digest,
    chunk_rows_for,
    new_name,
    short_reason,
    write_file,
)

__all__ = ["SegmentReader", "chunk_checksums", "write_segment"]

_MAX_KEYS_BYTES = 1 << 30


def write_segment(folder: str, keys, embeddings: np.ndarray, ids, hashes) -> dict:
    """Write one segment's files under a fresh name; return its manifest entry.

    ``keys`` are strings without line breaks, ``embeddings`` finite float32 ``(rows, dim)``,
    ``ids`` int64, ``hashes`` the ``S32`` content hashes of the images (empty bytes if none).
    """
    embeddings = np.ascontiguousarray(embeddings, dtype="<f4")
    keys = list(keys)
    if len(keys) != len(embeddings) or embeddings.ndim != 2 or not len(keys):
        raise ValueError("a segment needs one key per embedding row, and at least one row")
    if any("\n" in k or "\r" in k or not k for k in keys):
        raise ValueError("keys must be non-empty and hold no line break")
    name = new_name("seg")
    rows = chunk_rows_for(embeddings.shape[1])
    write_file(os.path.join(folder, name + ".npy"), lambda fh: np.save(fh, embeddings))
    keys_bytes = "".join(f"{k}\n" for k in keys).encode("utf-8", "surrogatepass")
    write_file(os.path.join(folder, name + ".keys"), lambda fh: fh.write(keys_bytes))
    write_file(
        os.path.join(folder, name + ".rows.npz"),
        lambda fh: np.savez(
            fh,
            ids=np.asarray(ids, dtype="<i8"),
            hashes=np.asarray(hashes, dtype="S32"),
            checksums=chunk_checksums(embeddings, rows),
        ),
    )
    return {
        "name": name,
        "rows": len(keys),
        "chunk_rows": rows,
        "keys_digest": bytes_digest(keys_bytes),
        "rows_digest": file_digest(os.path.join(folder, name + ".rows.npz")),
    }


def chunk_checksums(block: np.ndarray, chunk_rows: int) -> np.ndarray:
    """Fletcher-32 of each ``chunk_rows`` rows of ``block`` (the last chunk may be shorter)."""
    raw = np.ascontiguousarray(block, dtype="<f4").view(np.uint8).reshape(len(block), -1)
    n_full = len(block) // chunk_rows
    parts = [fletcher32(raw[: n_full * chunk_rows].reshape(n_full, -1))] if n_full else []
    if len(block) % chunk_rows:
        parts.append(fletcher32(raw[n_full * chunk_rows :].reshape(1, -1)))
    return np.concatenate(parts).astype("<u4") if parts else np.zeros(0, "<u4")


@dataclass
class SegmentReader:
    """Read access to one segment of an index: its keys, ids and verified embedding rows."""

    folder: str
    entry: dict
    dim: int

    def __post_init__(self) -> None:
        self.name = self.entry["name"]
        self.rows = int(self.entry["rows"])
        self.chunk_rows = int(self.entry["chunk_rows"])
        self.path = os.path.join(self.folder, self.name + ".npy")
        self._verified = None
        self._offset = self._check_npy()
        self.keys = self._read_keys()
        self.ids, self.hashes, self._checksums = self._read_rows()

    def _missing(self, path: str) -> IndexFormatError:
        return IndexFormatError(
            f"{path}: missing; the index {self.folder} is incomplete (a file was deleted or "
            "the folder was copied in part). Rebuild it with `tripletsk index --replace`"
        )

    def _check_npy(self) -> int:
        try:
            with open(self.path, "rb") as fh:
                shape, fortran, dtype = read_npy_header(fh)
                offset = fh.tell()
            size = os.path.getsize(self.path)
        except FileNotFoundError:
            raise self._missing(self.path) from None
        except (OSError, ValueError) as exc:
            raise IndexFormatError(
                f"{self.path}: not a NumPy array file ({short_reason(exc)})"
            ) from None
        if dtype != np.dtype("<f4") or fortran or shape != (self.rows, self.dim):
            raise IndexFormatError(
                f"{self.path}: holds {dtype} {shape}, the manifest says float32 "
                f"({self.rows}, {self.dim}); the index is damaged"
            )
        if size != offset + self.rows * self.dim * 4:
            raise IndexFormatError(
                f"{self.path}: {size:,} bytes, {offset + self.rows * self.dim * 4:,} expected "
                "(truncated or damaged); rebuild the index with `tripletsk index --replace`"
            )
        return offset

    def _read_keys(self) -> list[str]:
        path = os.path.join(self.folder, self.name + ".keys")
        try:
            if os.path.getsize(path) > _MAX_KEYS_BYTES:
                raise IndexFormatError(f"{path}: larger than any key list ({_MAX_KEYS_BYTES:,} B)")
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            raise self._missing(path) from None
        if bytes_digest(data) != self.entry["keys_digest"]:
            raise IndexFormatError(f"{path}: does not match its checksum; the index is damaged")
        keys = data.decode("utf-8", "surrogatepass").split("\n")
        if keys[-1] != "" or len(keys) - 1 != self.rows:
            raise IndexFormatError(f"{path}: holds {len(keys) - 1} keys for {self.rows} rows")
        return keys[:-1]

    def _read_rows(self):
        path = os.path.join(self.folder, self.name + ".rows.npz")
        try:
            if file_digest(path) != self.entry["rows_digest"]:
                raise IndexFormatError(f"{path}: does not match its checksum; index damaged")
            with np.load(path, allow_pickle=False) as z:
                ids, hashes, sums = z["ids"], z["hashes"], z["checksums"]
        except FileNotFoundError:
            raise self._missing(path) from None
        except (OSError, ValueError, KeyError) as exc:
            raise IndexFormatError(f"{path}: not readable ({short_reason(exc)})") from None
        n_chunks = -(-self.rows // self.chunk_rows)
        if (
            ids.shape != (self.rows,)
            or ids.dtype.kind != "i"
            or hashes.shape != (self.rows,)
            or hashes.dtype.kind != "S"
            or sums.shape != (n_chunks,)
            or sums.dtype != np.dtype("<u4")
        ):
            raise IndexFormatError(f"{path}: arrays of the wrong shape or type; index damaged")
        return ids.astype(np.int64), hashes, sums

    def _pread(self, lo: int, hi: int) -> np.ndarray:
        """Raw rows ``lo:hi`` from the file (kept open: a writer may delete it meanwhile)."""
        if getattr(self, "_fd", None) is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            except FileNotFoundError:
                raise self._missing(self.path) from None
        out = np.empty((hi - lo, self.dim), dtype="<f4")
        data = os.pread(self._fd, out.nbytes, self._offset + lo * self.dim * 4)
        if len(data) != out.nbytes:
            raise IndexFormatError(f"{self.path}: ends early (truncated); rebuild the index")
        out.view(np.uint8).reshape(-1)[:] = np.frombuffer(data, np.uint8)
        return out

    def __del__(self, _close=os.close):
        # Bound at definition: at interpreter exit module globals may already be None.
        fd = getattr(self, "_fd", None)
        if fd is not None:
            try:
                _close(fd)
            except OSError:
                pass

    def _verify(self, block: np.ndarray, c0: int, c1: int) -> None:
        """Check chunks ``c0:c1`` (``block`` holds exactly their rows) once per process."""
        if self._verified is None:
            self._verified = np.zeros(len(self._checksums), dtype=bool)
        todo = np.flatnonzero(~self._verified[c0:c1]) + c0
        if not len(todo):
            return
        found = chunk_checksums(block, self.chunk_rows)[todo - c0]
        bad = todo[found != self._checksums[todo]]
        if len(bad):
            r0 = int(bad[0]) * self.chunk_rows
            raise IndexFormatError(
                f"corrupt index: {self.path}: rows {r0}-{r0 + self.chunk_rows - 1} (keys "
                f"{self.keys[r0]!r}...) do not match their checksum; rebuild the index with "
                "`tripletsk index --replace`"
            )
        self._verified[todo] = True

    def _finite(self, block: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if not np.isfinite(block).all():
            row = int(rows[np.flatnonzero(~np.isfinite(block).all(axis=1))[0]])
            raise IndexFormatError(
                f"{self.path}: row {row} (key {self.keys[row]!r}) holds NaN or infinite "
                "values; the index is damaged: rebuild it with `tripletsk index --replace`"
            )
        return block

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as float32, each chunk checked against its checksum (once per
        process) and every value checked finite."""
        c0, c1 = start // self.chunk_rows, -(-stop // self.chunk_rows)
        lo, hi = c0 * self.chunk_rows, min(self.rows, c1 * self.chunk_rows)
        out = self._pread(lo, hi)
        self._verify(out, c0, c1)
        return self._finite(out[start - lo : stop - lo], np.arange(start, stop))

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (any order, repeats allowed), reading only the chunks that hold them."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        chunk = rows // self.chunk_rows
        for c in np.unique(chunk):
            lo, hi = int(c) * self.chunk_rows, min(self.rows, (int(c) + 1) * self.chunk_rows)
            block = self._pread(lo, hi)
            self._verify(block, int(c), int(c) + 1)
            mine = chunk == c
            out[mine] = block[rows[mine] - lo]
        return self._finite(out, rows)
