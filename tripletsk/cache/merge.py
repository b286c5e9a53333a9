"""Merging the shard caches of a sharded extraction into one cache, and splitting a cache into
the share of one shard (:mod:`tripletsk.cache.shards`: which image belongs to which shard).

:func:`merge_shards` (``tripletsk merge-features``) checks that the shards fit together and writes
one consolidated cache, identical in content (keys, features, fingerprints, failures) and in
format to a single-process run, atomically, with :func:`~tripletsk.cache.writer.write_cache`.

Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tripletsk.cache.failures import write_failed_list
from tripletsk.cache.format import CacheHeader, check_provenance, read_header
from tripletsk.cache.journal import remove_stale_temp_files
from tripletsk.cache.lock import CacheLock
from tripletsk.cache.shards import SHARD_ASSIGNMENT, SHARD_ATTRS, parse_shard, shard_of
from tripletsk.cache.store import FeatureStore
from tripletsk.cache.writer import now_iso, write_cache
from tripletsk.errors import CacheFormatError, CacheMismatchError, ShardError

__all__ = [
    "MergeSummary",
    "check_shards",
    "merge_shards",
    "merge_shards_locked",
    "remove_shard_files",
    "split_cache",
]

_BLOCK = 4096  # rows per block when merging


@dataclass
class MergeSummary:
    """What :func:`merge_shards` wrote."""

    output: str
    n_shards: int = 0
    n_images: int = 0
    failed: list = field(default_factory=list)  # [(key, reason)]
    shards: list = field(default_factory=list)  # shard files, in shard order
    failed_list: str | None = None  # path of the text file listing failures

    def format(self) -> str:
        return (
            f"merged {self.n_shards} shard(s) into {self.output}: {self.n_images} images, "
            f"{len(self.failed)} failed"
        )


def _read_shards(paths: Sequence[str]) -> list[CacheHeader]:
    headers = []
    for p in paths:
        h = read_header(p)
        if "shard" not in h.attrs:
            raise ShardError(
                f"{p} is not a shard (it was extracted without a shard); merge only the caches "
                "of one sharded extraction (each extracted with shard I/N)"
            )
        if h.attrs.get("shard_assignment") != SHARD_ASSIGNMENT:
            raise ShardError(
                f"{p} assigns images to shards by {h.attrs.get('shard_assignment')!r}, this "
                f"tripletsk by {SHARD_ASSIGNMENT!r}; extract all shards with one version"
            )
        headers.append(h)
    return headers


def check_shards(headers: Sequence[CacheHeader]) -> list[CacheHeader]:
    """Check that shard caches fit together; return them in shard order.

    Raises
    ------
    ShardError
        A shard is missing, given twice, holds keys of another shard, was interrupted, or was
        extracted from another listing of the images.
    CacheMismatchError
        The shards were extracted with different backbone, weights, image size, preprocessing
        or precision (int8: another calibration sample or quantized model).
    """
    if not headers:
        raise ShardError("no shard files given; pass the N files of one sharded extraction")
    first = headers[0]
    n = int(first.attrs["shard_count"])
    by_index: dict[int, CacheHeader] = {}
    for h in headers:
        i, hn = int(h.attrs["shard_index"]), int(h.attrs["shard_count"])
        if hn != n:
            raise ShardError(
                f"{h.path} is shard {i}/{hn} but {first.path} is shard "
                f"{first.attrs['shard']}: merge the shards of one run (the same N)"
            )
        if i in by_index:
            raise ShardError(
                f"shard {i}/{n} given twice: {by_index[i].path} and {h.path} overlap; "
                "pass each shard once"
            )
        by_index[i] = h
    missing = [i for i in range(1, n + 1) if i not in by_index]
    if missing:
        names = ", ".join(f"{i}/{n}" for i in missing)
        raise ShardError(
            f"missing shard(s) {names} of {n}: extract them (shard I/{n}, each to its own "
            f"file) and pass all {n} files"
        )
    ordered = [by_index[i] for i in range(1, n + 1)]
    for h in ordered:
        try:
            check_provenance(h.provenance, first.provenance, h.path)
        except CacheMismatchError as e:
            raise CacheMismatchError(
                f"shards were extracted with different settings: {e}".replace(
                    "requested", f"{first.path} has"
                )
            ) from None
        if h.dim != first.dim or h.dtype != first.dtype:
            raise CacheMismatchError(
                f"{h.path} stores ({h.dim}, {h.dtype}) features, {first.path} ({first.dim}, "
                f"{first.dtype}); extract all shards with the same dtype"
            )
        if not int(h.attrs.get("shard_complete", 0)):
            raise ShardError(
                f"shard {h.attrs['shard']} ({h.path}) is incomplete: its extraction was "
                "interrupted; run the same command again to finish it"
            )
        if h.attrs.get("shard_listing") != first.attrs.get("shard_listing"):
            raise ShardError(
                f"shards {first.attrs['shard']} and {h.attrs['shard']} were extracted from "
                f"different listings of the images ({first.attrs.get('shard_listed')} and "
                f"{h.attrs.get('shard_listed')} files): the folder changed between shard runs; "
                "run the extraction of every shard again so all see the same images"
            )
        i = int(h.attrs["shard_index"])
        stray = [k for k in [*h.keys, *(k for k, _ in h.failed)] if shard_of(k, n) != i]
        if stray:
            raise ShardError(
                f"{h.path} (shard {i}/{n}) holds {len(stray)} image(s) of other shards, e.g. "
                f"{stray[0]!r}; it is not a cache extracted as shard {i}/{n}"
            )
    return ordered


def merge_shards(
    paths: Sequence[str | os.PathLike], output: str | os.PathLike, *, remove: bool = False
) -> MergeSummary:
    """Merge the N shard caches of one sharded extraction into one cache at ``output``.

    The merged cache holds every key once, in sorted key order, with the features, fingerprints
    and failures of its shard: the same as a single-process run over the same images. It is
    consolidated (one self-contained file, features contiguous and memory-mappable), written to
    a temporary file and renamed over ``output`` under ``output``'s lock.

    Parameters
    ----------
    paths : sequence of paths
        The N shard files, in any order.
    output : path
        The merged cache; must not be one of ``paths``. An existing file there is replaced
        only by the merge of the same extraction (same settings and images folder).
    remove : bool, default False
        Delete the shard files (and their lock and failure lists) after a successful merge.

    Returns
    -------
    MergeSummary

    Raises
    ------
    ShardError, CacheMismatchError
        See :func:`check_shards`.
    """
    output = os.fspath(output)
    paths = [os.fspath(p) for p in paths]
    if any(os.path.abspath(p) == os.path.abspath(output) for p in paths):
        raise ShardError(
            f"the output {output} is one of the shard files; write the merge to a new file"
        )
    if os.path.isdir(output):
        raise ShardError(f"the output must be a file path, not a folder: {output}")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with CacheLock(output):
        summary = merge_shards_locked(paths, output)
    if remove:
        remove_shard_files(summary.shards)
    return summary


def _check_existing_output(output: str, first: CacheHeader) -> None:
    """An existing ``output`` is replaced only by the merge of the same extraction: the same
    settings and images folder (e.g. merging again after a shard was redone). Any other file
    there is the user's, and is left alone."""
    if not os.path.exists(output):
        return
    try:
        old = read_header(output)
    except CacheFormatError:
        raise ShardError(
            f"{output} exists and is not a feature cache: write the merge to another file"
        ) from None
    check_provenance(old.provenance, first.provenance, output)
    old_root, new_root = old.attrs.get("image_root"), first.attrs.get("image_root")
    if old_root and new_root and os.path.realpath(old_root) != os.path.realpath(new_root):
        raise CacheMismatchError(
            f"{output} holds the features of the images in {old_root}, but the shards are of "
            f"{new_root}: write the merge to another file, or delete {output} first"
        )


def merge_shards_locked(paths: Sequence[str], output: str) -> MergeSummary:
    """:func:`merge_shards` for a caller that already holds ``output``'s :class:`CacheLock`."""
    remove_stale_temp_files(output)
    shards = check_shards(_read_shards(paths))
    first = shards[0]
    _check_existing_output(output, first)
    # Global sorted key order, as a fresh single-process run writes it.
    owner = [(k, s, r) for s, h in enumerate(shards) for r, k in enumerate(h.keys)]
    owner.sort(key=lambda t: t[0])
    keys = [k for k, _, _ in owner]
    src = np.array([s for _, s, _ in owner], dtype=np.int64)
    rows = np.array([r for _, _, r in owner], dtype=np.int64)
    offsets = np.cumsum([0] + [len(h.keys) for h in shards])
    fps = np.concatenate([h.fingerprints for h in shards])[offsets[src] + rows]
    failed = sorted(f for h in shards for f in h.failed)
    stores = [FeatureStore(h.path) for h in shards]

    def blocks():
        for start in range(0, len(keys), _BLOCK):
            s, r = src[start : start + _BLOCK], rows[start : start + _BLOCK]
            out = np.empty((len(s), first.dim), np.float32)
            for j in np.unique(s):
                sel = s == j
                out[sel] = stores[j].take(r[sel])
            yield out

    attrs = {k: v for k, v in first.attrs.items() if k not in SHARD_ATTRS}
    attrs.update(
        created=min(str(h.attrs.get("created", "")) for h in shards) or now_iso(),
        updated=now_iso(),
        generation=os.urandom(8).hex(),
        merged_from=f"{len(shards)} shards",
    )
    try:
        write_cache(
            output,
            keys=keys,
            fingerprints=fps,
            feature_blocks=blocks(),
            dim=first.dim,
            dtype=first.dtype,
            failed=failed,
            attrs=attrs,
        )
    finally:
        for st in stores:
            st.close()
    failed_list = write_failed_list(output, failed)
    shard_files = [h.path for h in shards]
    return MergeSummary(output, len(shards), len(keys), failed, shard_files, failed_list)


def remove_shard_files(paths: Sequence[str]) -> None:
    """Delete shard caches and the files next to them (lock, failure list)."""
    for p in paths:
        for q in (p, p + ".failed.tsv", p + ".lock"):
            with contextlib.suppress(OSError):
                os.remove(q)


def split_cache(source: str, path: str, shard: tuple[int, int]) -> int:
    """Write the rows of shard ``(i, n)`` of an existing whole cache ``source`` to ``path``.

    Used to start a shard from a previous merged cache, so that a sharded run over a folder
    already extracted is incremental, like a single-process one. The new file is marked
    incomplete (the shard's extraction then brings it up to date). Returns the number of rows.
    """
    i, n = parse_shard(shard)
    hdr = read_header(source)
    if "shard" in hdr.attrs:
        raise ShardError(f"{source} is itself a shard ({hdr.attrs['shard']}); cannot split it")
    rows = np.array([r for r, k in enumerate(hdr.keys) if shard_of(k, n) == i], dtype=np.int64)
    store = FeatureStore(source)
    attrs = {k: v for k, v in hdr.attrs.items() if k != "merged_from"}
    attrs.update(
        shard=f"{i}/{n}",
        shard_index=i,
        shard_count=n,
        shard_assignment=SHARD_ASSIGNMENT,
        shard_listing="",
        shard_listed=0,
        shard_complete=0,
    )
    try:
        write_cache(
            path,
            keys=[hdr.keys[r] for r in rows],
            fingerprints=hdr.fingerprints[rows],
            feature_blocks=(store.take(rows[s : s + _BLOCK]) for s in range(0, len(rows), _BLOCK)),
            dim=hdr.dim,
            dtype=hdr.dtype,
            failed=[(k, r) for k, r in hdr.failed if shard_of(k, n) == i],
            attrs=attrs,
        )
    finally:
        store.close()
    return len(rows)
