"""The embedding index on disk: a folder of segment files committed by one small JSON manifest.

Layout of an index folder (``docs/formats.md``, "Embedding indexes")::

    index.json            the manifest: format, distance, width, the model and cache it came
                          from, its segments, the approximate structure; a BLAKE2b digest of
                          its own content
    seg-<id>.npy          float32 embeddings (rows, dim) of one segment, NumPy .npy
    seg-<id>.keys         their keys, UTF-8, one per line
    seg-<id>.rows.npz     ids (int64), content hashes (S32) and the Fletcher-32 checksum of
                          each chunk of embedding rows (uint32)
    ann-<id>.<library>    the approximate-search structure, if any
    .lock                 held by a writer (``flock``; released if it dies)

Files are written once under fresh names and never changed; ``index.json`` is replaced
atomically (write, fsync, rename) and is the only commit point, so a crash at any moment
leaves the old index or the new one, whole. Files no manifest names are deleted by the next
writer. Every file a manifest names carries a digest there (the embeddings: one Fletcher-32
per 64 KiB chunk, :mod:`tripletsk.cache.checksums`, checked as rows are read).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass

import numpy as np

from tripletsk.cache.checksums import file_digest, fletcher32
from tripletsk.cache.writer import fsync_path, now_iso
from tripletsk.errors import IndexFormatError, UserError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST",
    "IndexLock",
    "SegmentReader",
    "commit_manifest",
    "new_name",
    "read_manifest",
    "write_segment",
]

FORMAT_NAME = "tripletsk-index"
FORMAT_VERSION = 1
MANIFEST = "index.json"
_MAX_MANIFEST_BYTES = 16 << 20
_MAX_KEYS_BYTES = 1 << 30
_CHUNK_BYTES = 64 << 10
_SEGMENT = re.compile(r"seg-[0-9a-f]{16}")
_ANN = re.compile(r"ann-[0-9a-f]{16}\.(npz|usearch)")  # usearch: made by an earlier tripletsk
_TOP_LEVEL = {
    "format": str, "format_version": int, "distance": str, "dim": int, "n_rows": int,
    "next_id": int, "segments": list, "model": dict, "cache": dict, "ann": (dict, type(None)),
    "created": str, "updated": str, "digest": str,
}  # fmt: skip
_SEGMENT_FIELDS = {"name": str, "rows": int, "chunk_rows": int, "keys_digest": str,
                   "rows_digest": str}  # fmt: skip


def new_name(prefix: str) -> str:
    """A fresh file name stem, ``<prefix>-<16 hex digits>``."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def chunk_rows_for(dim: int) -> int:
    """Rows per checksummed chunk: 64 KiB of float32 rows (256 rows of 64 numbers)."""
    return max(1, _CHUNK_BYTES // (4 * max(1, dim)))


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _manifest_digest(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return _digest(json.dumps(body, sort_keys=True, ensure_ascii=True).encode("ascii"))


# -- the manifest ------------------------------------------------------------------------------


def read_manifest(folder: str) -> dict:
    """The validated manifest of the index ``folder``.

    Raises
    ------
    IndexFormatError
        If the folder holds no index, or its manifest is damaged, hostile or of another
        format version; the message names the file and what is wrong.
    """
    path = os.path.join(folder, MANIFEST)
    if not os.path.isdir(folder):
        kind = "is a file, not an index folder" if os.path.exists(folder) else "does not exist"
        raise IndexFormatError(f"{folder}: {kind}; build an index with `tripletsk index`")
    try:
        size = os.path.getsize(path)
        if size > _MAX_MANIFEST_BYTES:
            raise IndexFormatError(
                f"{path}: {size:,} bytes, more than any index manifest ({_MAX_MANIFEST_BYTES:,})"
            )
        with open(path, "rb") as fh:
            raw = fh.read(_MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise IndexFormatError(
            f"{folder}: not an embedding index (no {MANIFEST}); build one with `tripletsk index`"
        ) from None
    try:
        manifest = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise IndexFormatError(
            f"{path}: not valid JSON ({_short(exc)}); the index is damaged"
        ) from None
    _check_manifest(path, manifest)
    return manifest


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number an index holds")


def _short(exc: BaseException) -> str:
    return str(exc)[:200] or type(exc).__name__


def _check_manifest(path: str, m) -> None:
    def bad(what: str) -> IndexFormatError:
        return IndexFormatError(f"{path}: {what}; the index is damaged or not a tripletsk index")

    if not isinstance(m, dict) or m.get("format") != FORMAT_NAME:
        raise bad(f"'format' is not {FORMAT_NAME!r}")
    if m.get("format_version") != FORMAT_VERSION:
        raise IndexFormatError(
            f"{path}: index format version {m.get('format_version')!r}; this tripletsk reads "
            f"version {FORMAT_VERSION}: rebuild the index with `tripletsk index --replace`"
        )
    for name, kind in _TOP_LEVEL.items():
        if not isinstance(m.get(name), kind) or isinstance(m.get(name), bool):
            raise bad(f"field {name!r} is missing or of the wrong type")
    if m["digest"] != _manifest_digest(m):
        raise bad("its content does not match its digest (edited or damaged)")
    from tripletsk.distances import DISTANCES

    if m["distance"] not in DISTANCES:
        raise bad(f"unknown distance {m['distance']!r}")
    if not (1 <= m["dim"] <= 1 << 16) or not (0 <= m["n_rows"] < 1 << 40):
        raise bad("'dim' or 'n_rows' out of range")
    total, names = 0, set()
    for seg in m["segments"]:
        for name, kind in _SEGMENT_FIELDS.items():
            if not isinstance(seg, dict) or not isinstance(seg.get(name), kind):
                raise bad(f"a segment's {name!r} is missing or of the wrong type")
        if not _SEGMENT.fullmatch(seg["name"]) or seg["name"] in names:
            raise bad(f"segment name {seg['name'][:40]!r} is not allowed")
        if not (0 < seg["rows"] < 1 << 40) or seg["chunk_rows"] != chunk_rows_for(m["dim"]):
            raise bad(f"segment {seg['name']} has invalid sizes")
        names.add(seg["name"])
        total += seg["rows"]
    if total != m["n_rows"] or not (m["next_id"] >= total >= 0):
        raise bad(f"the segments hold {total} rows, 'n_rows' says {m['n_rows']}")
    ann = m["ann"]
    if ann is not None and not (
        isinstance(ann.get("file"), str)
        and _ANN.fullmatch(ann["file"])
        and isinstance(ann.get("digest"), str)
    ):
        raise bad("the approximate structure's 'file' or 'digest' is not allowed")


def commit_manifest(folder: str, manifest: dict) -> dict:
    """Atomically replace the manifest of ``folder`` (call it holding :class:`IndexLock`), then
    delete the files it no longer names. Returns the manifest as written."""
    manifest = {**manifest, "updated": now_iso()}
    manifest.setdefault("created", manifest["updated"])
    manifest["digest"] = _manifest_digest(manifest)
    path = os.path.join(folder, MANIFEST)
    tmp = os.path.join(folder, f".{MANIFEST}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", encoding="ascii") as fh:
            json.dump(manifest, fh, indent=1, sort_keys=True, ensure_ascii=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_path(folder, directory=True)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    remove_unreferenced(folder, manifest)
    return manifest


def referenced_files(manifest: dict) -> set[str]:
    names = {MANIFEST, ".lock"}
    for seg in manifest.get("segments", []):
        names |= {seg["name"] + ext for ext in (".npy", ".keys", ".rows.npz")}
    if manifest.get("ann"):
        names.add(manifest["ann"]["file"])
    return names


def remove_unreferenced(folder: str, manifest: dict) -> None:
    """Delete segment, structure and temporary files that ``manifest`` does not name."""
    keep = referenced_files(manifest)
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            ours = name.startswith(("seg-", "ann-", f".{MANIFEST}.tmp-"))
            if ours and name not in keep:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, name))


class IndexLock:
    """Exclusive, non-blocking lock of an index folder: one writer at a time."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, ".lock")
        self._fd = None

    def __enter__(self) -> IndexLock:
        from tripletsk.cache.lock import _lock_fd

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock_fd(fd)
        except OSError:
            os.close(fd)
            raise UserError(
                f"another process is writing the index {os.path.dirname(self.path)}; wait for "
                "it to finish (the lock is released when that process exits)"
            ) from None
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        from tripletsk.cache.lock import _unlock_fd

        if self._fd is not None:
            with contextlib.suppress(OSError):
                _unlock_fd(self._fd)
            os.close(self._fd)
            self._fd = None


# -- segments ----------------------------------------------------------------------------------


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
    _write_file(os.path.join(folder, name + ".npy"), lambda fh: np.save(fh, embeddings))
    keys_bytes = "".join(f"{k}\n" for k in keys).encode("utf-8", "surrogatepass")
    _write_file(os.path.join(folder, name + ".keys"), lambda fh: fh.write(keys_bytes))
    _write_file(
        os.path.join(folder, name + ".rows.npz"),
        lambda fh: np.savez(
            fh,
            ids=np.asarray(ids, dtype="<i8"),
            hashes=np.asarray(hashes, dtype="S32"),
            checksums=_chunk_checksums(embeddings, rows),
        ),
    )
    return {
        "name": name,
        "rows": len(keys),
        "chunk_rows": rows,
        "keys_digest": _digest(keys_bytes),
        "rows_digest": file_digest(os.path.join(folder, name + ".rows.npz")),
    }


def _write_file(path: str, write) -> None:
    with open(path, "xb") as fh:  # a fresh name: never an existing file
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())


def _chunk_checksums(block: np.ndarray, chunk_rows: int) -> np.ndarray:
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
                version = np.lib.format.read_magic(fh)
                read = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read(fh)
                offset = fh.tell()
            size = os.path.getsize(self.path)
        except FileNotFoundError:
            raise self._missing(self.path) from None
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"{self.path}: not a NumPy array file ({_short(exc)})") from None
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
        if _digest(data) != self.entry["keys_digest"]:
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
            raise IndexFormatError(f"{path}: not readable ({_short(exc)})") from None
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

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _verify(self, block: np.ndarray, c0: int, c1: int) -> None:
        """Check chunks ``c0:c1`` (``block`` holds exactly their rows) once per process."""
        if self._verified is None:
            self._verified = np.zeros(len(self._checksums), dtype=bool)
        todo = np.flatnonzero(~self._verified[c0:c1]) + c0
        if not len(todo):
            return
        found = _chunk_checksums(block, self.chunk_rows)[todo - c0]
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
