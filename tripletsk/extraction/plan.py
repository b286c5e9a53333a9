"""Incremental planning: which images to keep, reuse, check, extract and drop.

Pure functions of what was found on disk and what the cache and the parts journal of an
interrupted run already hold; no file is read here, so every case is testable without a model.
A file whose size and modification time match its stored fingerprint is trusted (unless
``verify``); one whose size or time changed is hashed (:func:`apply_checks`) and kept if its
content is the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tripletsk.cache.format import FINGERPRINT_DTYPE
from tripletsk.extraction.discovery import ImageFile

__all__ = ["RACY_NS", "Assembly", "Plan", "apply_checks", "assemble", "plan_run"]

#: A file whose mtime is this close to (or after) the moment it was hashed is re-hashed next run,
#: because a later change within the file system's timestamp granularity could keep its mtime.
RACY_NS = 3_000_000_000


@dataclass
class Plan:
    """What to do with each image found: reuse, keep, check by content, or extract."""

    use_part: dict = field(default_factory=dict)  # key -> (part, row) of an earlier run, reused
    keep_old: dict = field(default_factory=dict)  # key -> fingerprint of a cache row kept
    failed: dict = field(default_factory=dict)  # key -> reason, failures known now
    to_check: list = field(default_factory=list)  # [ImageFile] to hash: changed size/mtime
    pending: list = field(default_factory=list)  # [ImageFile] to extract
    in_parts: dict = field(default_factory=dict)  # key -> (part, row): latest parts entry
    refreshed: dict = field(default_factory=dict)  # (part, row) -> new fingerprint, same content
    corrupt: frozenset = frozenset()  # cached keys whose features fail their checksum


@dataclass
class Assembly:
    """The rows of the new cache: kept cache rows (cache order), then part rows (part order)."""

    old_rows: list  # row indices into the old cache
    old_keys: list
    old_fps: list
    new_sel: list  # [(part index, [rows])]
    new_keys: list
    new_fps: list
    pruned: int = 0
    missing: int = 0  # cached images whose file is gone, kept
    lost: int = 0  # damaged cached rows whose file is gone: dropped, nothing to re-extract

    @property
    def keys(self) -> list:
        return self.old_keys + self.new_keys

    def fingerprints(self) -> np.ndarray:
        return np.array(self.old_fps + self.new_fps, dtype=FINGERPRINT_DTYPE).reshape(-1)


def trust_stat(fp, size: int, mtime_ns: int) -> bool:
    """True if a stored fingerprint's size/mtime match and its hash is not 'racy'."""
    return (
        int(fp["size"]) == size
        and int(fp["mtime_ns"]) == mtime_ns
        and abs(int(fp["hashed_ns"]) - mtime_ns) > RACY_NS  # (future mtimes are fine too)
    )


def latest_entries(parts: Sequence, keys: set | None = None) -> dict:
    """key -> (part index, row), or (None, (reason, size, mtime)), of the last record of each key
    (of ``keys`` only, if given) in the parts journal; later parts override earlier ones."""
    out: dict = {}
    for pi, p in enumerate(parts):
        for r, k in enumerate(p.keys):
            if keys is None or k in keys:
                out[k] = (pi, r)
        for k, reason, size, mtime in p.failed:
            if keys is None or k in keys:
                out[k] = (None, (reason, size, mtime))
    return out


def _same_content(a, b) -> bool:
    return a["blake2b"] == b["blake2b"] and a["size"] == b["size"]


def plan_run(
    files: Sequence[ImageFile],
    failed: Sequence[tuple[str, str]],
    old_keys: Sequence[str],
    old_fps: np.ndarray,
    parts: Sequence,
    *,
    verify: bool = False,
    corrupt: frozenset = frozenset(),
) -> Plan:
    """Classify the files found (``files``, and ``failed`` as ``(key, reason)``) against the cache
    (``old_keys``, ``old_fps``; empty if there is none) and the journal ``parts``. Cached keys in
    ``corrupt`` (damaged features) are extracted again, whatever their fingerprint.

    Parts are newer than the cache, so a file's parts entry wins, except where the cache already
    holds the same version (a run killed between writing the cache and deleting its parts).
    """
    latest = latest_entries(parts)
    in_parts = {k: v for k, v in latest.items() if v[0] is not None}
    part_fail = {k: v[1] for k, v in latest.items() if v[0] is None}
    old_index = {k: i for i, k in enumerate(old_keys)}
    for k in [k for k in in_parts if k in old_index]:
        pi, r = in_parts[k]
        if _same_content(parts[pi].fingerprints[r], old_fps[old_index[k]]):
            del in_parts[k]
    plan = Plan(failed=dict(failed), in_parts=in_parts, corrupt=frozenset(corrupt))
    for f in files:
        if f.key in in_parts:
            pi, r = in_parts[f.key]
            if not verify and trust_stat(parts[pi].fingerprints[r], f.size, f.mtime_ns):
                plan.use_part[f.key] = (pi, r)
                continue
        elif f.key in part_fail:
            reason, size, mtime = part_fail[f.key]
            if size == f.size and mtime == f.mtime_ns:
                plan.failed[f.key] = reason
                continue
        if f.key in plan.corrupt and f.key not in in_parts:
            plan.pending.append(f)
            continue
        if f.key in old_index and f.key not in in_parts:
            fp = old_fps[old_index[f.key]]
            if not verify and trust_stat(fp, f.size, f.mtime_ns):
                plan.keep_old[f.key] = fp
                continue
        if f.key in old_index or f.key in in_parts:
            plan.to_check.append(f)
        else:
            plan.pending.append(f)
    return plan


def apply_checks(
    plan: Plan,
    checked: Sequence[tuple[ImageFile, tuple | None]],
    old_keys: Sequence[str],
    old_fps: np.ndarray,
    parts: Sequence,
) -> None:
    """Settle the files of ``plan.to_check`` from their fingerprints (None: unreadable now):
    the same content as stored -> kept with the new fingerprint, else (or unreadable) extracted."""
    old_index = {k: i for i, k in enumerate(old_keys)}
    for f, res in checked:
        if res is None:  # extraction will report why
            plan.pending.append(f)
            continue
        size, mtime, digest, hashed = res
        new_fp = np.array([(size, mtime, digest.encode(), hashed)], FINGERPRINT_DTYPE)[0]
        if f.key in plan.in_parts:
            pi, r = plan.in_parts[f.key]
            if parts[pi].fingerprints[r]["blake2b"].decode() == digest:
                plan.refreshed[(pi, r)] = new_fp
                plan.use_part[f.key] = (pi, r)
                continue
        elif f.key in old_index:
            if old_fps[old_index[f.key]]["blake2b"].decode() == digest:
                plan.keep_old[f.key] = new_fp
                continue
        plan.pending.append(f)
    plan.to_check = []
    plan.pending.sort(key=lambda f: f.key)


def record_extracted(plan: Plan, parts: Sequence, keys: set) -> None:
    """Take the results of extracting ``keys`` (rows or failures, in ``parts``) into ``plan``."""
    for k, (pi, r) in latest_entries(parts, keys).items():
        if pi is None:
            plan.failed[k] = r[0]
        else:
            plan.use_part[k] = (pi, r)


def assemble(
    plan: Plan,
    present: set,
    old_keys: Sequence[str],
    old_fps: np.ndarray,
    parts: Sequence,
    *,
    prune: bool = False,
) -> Assembly:
    """The rows of the new cache. A cached key whose file is gone (not in ``present``) is dropped
    with ``prune``, else kept and counted as missing; a damaged one is always dropped."""
    out = Assembly([], [], [], [], [], [])
    for i, k in enumerate(old_keys):
        if k in plan.keep_old:
            fp = plan.keep_old[k]
        elif k in plan.corrupt:
            out.lost += k not in present and k not in plan.failed and k not in plan.use_part
            continue
        elif k not in present and k not in plan.failed and k not in plan.use_part:
            if prune:
                out.pruned += 1
                continue
            out.missing += 1
            fp = old_fps[i]
        else:
            continue
        out.old_rows.append(i)
        out.old_fps.append(fp)
        out.old_keys.append(k)
    chosen = set(plan.use_part.values())
    for pi, p in enumerate(parts):
        rows = [r for r in range(len(p.keys)) if (pi, r) in chosen]
        if rows:
            out.new_sel.append((pi, rows))
            out.new_keys.extend(p.keys[r] for r in rows)
            out.new_fps.extend(plan.refreshed.get((pi, r), p.fingerprints[r]) for r in rows)
    return out
