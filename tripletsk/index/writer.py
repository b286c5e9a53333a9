"""Writing an embedding index: a new one, rows added or removed, all in one atomic commit.

Every change writes new files under fresh names and then replaces the manifest
(:func:`tripletsk.index.format.commit_manifest`); the old files are deleted only after that, so a
crash or a full disk at any moment leaves the old index whole. One writer at a time
(:class:`~tripletsk.index.format.IndexLock`).
"""

from __future__ import annotations

import os

import numpy as np

from tripletsk.errors import UserError
from tripletsk.index import ann as _ann
from tripletsk.index.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    IndexLock,
    commit_manifest,
    read_manifest,
)
from tripletsk.index.segment import SegmentReader, write_segment

__all__ = ["create_index", "update_index"]

#: More segments than this are merged (all but the first), so that reads stay sequential.
MAX_SEGMENTS = 16
_EMPTY_HASH = b""


def _check_rows(keys, embeddings, hashes, dim: int | None = None):
    keys = [k.decode("utf-8") if isinstance(k, bytes) else k for k in keys]
    if not all(isinstance(k, str) and k and "\n" not in k and "\r" not in k for k in keys):
        raise ValueError("keys must be non-empty strings without line breaks")
    if len(set(keys)) != len(keys):
        raise ValueError("keys must be unique: a key names one row of the index")
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or len(embeddings) != len(keys):
        raise ValueError(
            f"need one embedding row per key: {len(keys)} keys, embeddings of shape "
            f"{embeddings.shape}"
        )
    if dim is not None and embeddings.shape[1] != dim:
        raise ValueError(f"embeddings have {embeddings.shape[1]} dimensions, the index {dim}")
    bad = ~np.isfinite(embeddings).all(axis=1)
    if bad.any():
        first = [keys[i] for i in np.flatnonzero(bad)[:3]]
        raise ValueError(f"{int(bad.sum())} embedding row(s) hold NaN or infinite values: {first}")
    if hashes is None:
        hashes = np.full(len(keys), _EMPTY_HASH, dtype="S32")
    hashes = np.asarray(hashes, dtype="S32")
    if hashes.shape != (len(keys),):
        raise ValueError("need one content hash per key")
    return keys, embeddings, hashes


def create_index(
    path: str,
    keys,
    embeddings,
    *,
    distance: str,
    hashes=None,
    model: dict,
    cache: dict,
    approximate: str = "auto",
    replace: bool = False,
) -> dict:
    """Write a new index at ``path`` (see :meth:`EmbeddingIndex.create`); returns its manifest."""
    keys, embeddings, hashes = _check_rows(keys, embeddings, hashes)
    if not len(keys):
        raise ValueError("an index needs at least one row")
    _check_approximate(approximate)
    _prepare_folder(path, replace)
    with IndexLock(path):
        segments = [write_segment(path, keys, embeddings, np.arange(len(keys)), hashes)]
        ids = np.arange(len(keys), dtype=np.int64)
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "distance": distance,
            "dim": int(embeddings.shape[1]),
            "n_rows": len(keys),
            "next_id": len(keys),
            "segments": segments,
            "model": model,
            "cache": cache,
            "ann": None,
        }
        if _wants_structure(approximate, len(keys), distance):
            manifest["ann"] = _ann.build(path, ids, embeddings, distance)
        return commit_manifest(path, manifest)


def _check_approximate(approximate) -> None:
    if approximate not in ("auto", "yes", "no", None):
        raise ValueError(f"approximate must be 'auto', 'yes' or 'no'; got {approximate!r}")


def _wants_structure(approximate, n_rows: int, distance: str) -> bool:
    if approximate == "no" or distance == "l1":
        if approximate == "yes":
            raise UserError("approximate search supports the l2, sqeuclidean and cosine distances")
        return False
    if approximate == "yes":
        _ann.require()
        return True
    return n_rows >= _ann.APPROXIMATE_FROM and _ann.available()


def _prepare_folder(path: str, replace: bool) -> None:
    if not os.path.exists(path):
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise UserError(f"{path}: the folder {parent} does not exist; create it")
        os.mkdir(path)
        return
    if not os.path.isdir(path):
        raise UserError(f"{path} is a file, not an index folder; not replaced")
    if os.path.exists(os.path.join(path, MANIFEST)):
        if not replace:
            raise UserError(f"{path} already holds an index; pass --replace (replace=True)")
        return  # the new manifest replaces the old one atomically; old files go after
    # Files of an index whose first build was killed before its commit are ours to replace.
    if [n for n in os.listdir(path) if n != ".lock" and not _ours(n)]:
        raise UserError(f"{path} is a folder that is not an index and not empty; not replaced")


def _ours(name: str) -> bool:
    import re

    return bool(re.fullmatch(r"(seg-[0-9a-f]{16}\.(npy|keys|rows\.npz)|ann-[0-9a-f]{16}\.\w+"
                             r"|\.index\.json\.tmp-[0-9a-f]{8})", name))  # fmt: skip


def update_index(
    index, *, add=None, remove=(), approximate: str | None = None, meta: dict | None = None
) -> dict:
    """Remove rows by key and add new ones in one commit (see :meth:`EmbeddingIndex.update`);
    ``meta`` replaces the ``model`` and ``cache`` records."""
    _check_approximate(approximate)
    remove = [remove] if isinstance(remove, str) else list(remove)
    with IndexLock(index.path):
        manifest = read_manifest(index.path)
        if manifest["digest"] != index._manifest["digest"]:
            index._load()  # another writer committed since this index was opened
        unknown = [k for k in remove if k not in index.row_of]
        if unknown:
            raise UserError(f"{index.path}: cannot remove keys not in the index: {unknown[:3]}")
        gone = set(remove)
        segments, removed_ids = _without(index, gone)
        new_ids, new_vectors = np.zeros(0, np.int64), None
        next_id = manifest["next_id"]
        if add is not None:
            keys, new_vectors, hashes = _check_rows(*add, dim=index.dim)
            clash = [k for k in keys if k in index.row_of and k not in gone]
            if clash:
                raise UserError(f"{index.path}: keys already in the index: {clash[:3]}")
            if len(keys):
                new_ids = np.arange(next_id, next_id + len(keys), dtype=np.int64)
                segments.append(write_segment(index.path, keys, new_vectors, new_ids, hashes))
                next_id += len(keys)
        if len(segments) > MAX_SEGMENTS:
            segments = [segments[0], _merge(index.path, segments[1:], index.dim)]
        n_rows = sum(s["rows"] for s in segments)
        if not n_rows:
            raise UserError(f"{index.path}: removing every row would leave an empty index")
        manifest = {**manifest, "segments": segments, "n_rows": n_rows, "next_id": next_id}
        manifest.update({k: v for k, v in (meta or {}).items() if k in ("model", "cache")})
        manifest["ann"] = _structure(
            index, manifest, approximate, removed_ids, new_ids, new_vectors
        )
        return commit_manifest(index.path, manifest)


def _without(index, gone: set) -> tuple[list[dict], np.ndarray]:
    """Segment entries once the rows of keys ``gone`` are dropped (affected segments rewritten)."""
    entries, removed = [], []
    for seg in index._segments:
        drop = np.array([k in gone for k in seg.keys], dtype=bool)
        if not drop.any():
            entries.append(seg.entry)
            continue
        removed.append(seg.ids[drop])
        keep = np.flatnonzero(~drop)
        if len(keep):
            vectors = seg.read(0, seg.rows)[keep]
            keys = [seg.keys[i] for i in keep]
            entries.append(
                write_segment(index.path, keys, vectors, seg.ids[keep], seg.hashes[keep])
            )
    return entries, np.concatenate(removed) if removed else np.zeros(0, np.int64)


def _merge(folder: str, entries: list[dict], dim: int) -> dict:
    readers = [SegmentReader(folder, e, dim) for e in entries]
    return write_segment(
        folder,
        [k for r in readers for k in r.keys],
        np.concatenate([r.read(0, r.rows) for r in readers]),
        np.concatenate([r.ids for r in readers]),
        np.concatenate([r.hashes for r in readers]),
    )


def _structure(index, manifest, approximate, removed_ids, new_ids, new_vectors):
    """The approximate structure after the change: updated in place of a rebuild when one
    exists, built when ``approximate`` asks for it, dropped for ``"no"``."""
    old = manifest["ann"]
    n_rows, distance = manifest["n_rows"], manifest["distance"]
    if approximate == "no":
        return None
    if old is not None and _ann.available():
        return _ann.update(index.path, old, index.ids, manifest, removed_ids, new_ids, new_vectors)
    if old is not None and approximate is None:
        raise UserError(
            f"{index.path} has an approximate structure that must be updated, but "
            f"{_ann.missing_reason()}; install it, or pass --approximate no to drop the structure"
        )
    if _wants_structure(approximate or "auto", n_rows, distance):
        readers = [SegmentReader(index.path, e, manifest["dim"]) for e in manifest["segments"]]
        ids = np.concatenate([r.ids for r in readers])
        vectors = np.concatenate([r.read(0, r.rows) for r in readers])
        return _ann.build(index.path, ids, vectors, distance)
    return None
