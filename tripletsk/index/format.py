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

from tripletsk.cache.writer import fsync_path, now_iso
from tripletsk.errors import IndexFormatError, UserError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST",
    "IndexLock",
    "bytes_digest",
    "chunk_rows_for",
    "commit_manifest",
    "new_name",
    "read_manifest",
    "short_reason",
    "write_file",
]

FORMAT_NAME = "tripletsk-index"
FORMAT_VERSION = 1
MANIFEST = "index.json"
_MAX_MANIFEST_BYTES = 16 << 20
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


def write_file(path: str, write) -> None:
    """Create ``path`` (never an existing file), ``write(fh)`` into it, and sync it to disk."""
    with open(path, "xb") as fh:  # a fresh name: never an existing file
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())


def chunk_rows_for(dim: int) -> int:
    """Rows per checksummed chunk: 64 KiB of float32 rows (256 rows of 64 numbers)."""
    return max(1, _CHUNK_BYTES // (4 * max(1, dim)))


def bytes_digest(data: bytes) -> str:
    """The BLAKE2b digest (16 bytes, hex) that a manifest records for ``data``."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _manifest_digest(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return bytes_digest(json.dumps(body, sort_keys=True, ensure_ascii=True).encode("ascii"))


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
            f"{path}: not valid JSON ({short_reason(exc)}); the index is damaged"
        ) from None
    _check_manifest(path, manifest)
    return manifest


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number an index holds")


def short_reason(exc: BaseException) -> str:
    """At most 200 characters of ``exc``'s message (or its type), for an error message."""
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
