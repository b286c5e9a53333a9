"""The crash-safe parts journal: ``<cache>.parts/``, one atomically written file per batch.

A run writes each finished batch to its own file in ``<cache>.parts/`` (written under a
temporary name, fsynced, then renamed), so a killed run loses at most the batch in progress and
the next run picks up the finished ones. ``meta.json`` records the run's settings; parts of a
run with other settings are refused. Parts are ``.npz`` (zip) files, whose members carry a
CRC-32: a damaged part is dropped when the journal is opened (its images are redone).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tripletsk.cache.format import FINGERPRINT_DTYPE, check_provenance
from tripletsk.cache.writer import fsync_path
from tripletsk.errors import CacheFormatError, CacheMismatchError

__all__ = ["PartInfo", "PartsJournal", "load_part_features", "remove_stale_temp_files"]


@dataclass
class PartInfo:
    """One finished batch in the parts journal (features not loaded)."""

    path: str
    keys: list
    fingerprints: np.ndarray
    failed: list  # (key, reason, size, mtime_ns)


class PartsJournal:
    """The ``<cache>.parts/`` directory: one file per finished batch, each written atomically.

    ``meta.json`` holds the settings of the run; parts from a run with other settings are refused.
    """

    META = "meta.json"

    def __init__(self, cache_path: str | os.PathLike, meta: dict):
        self.cache_path = os.fspath(cache_path)
        self.dir = self.cache_path + ".parts"
        self.meta = meta
        self.parts: list[PartInfo] = []
        self._next = 0

    def open(self) -> list[PartInfo]:
        """Load the existing journal (validating its settings) or start an empty one."""
        if os.path.isdir(self.dir):
            meta_path = os.path.join(self.dir, self.META)
            old = None
            with contextlib.suppress(OSError, ValueError):
                with open(meta_path, encoding="utf-8") as fh:
                    old = json.load(fh)
            has_parts = any(
                n.startswith("part-") and n.endswith(".npz") for n in os.listdir(self.dir)
            )
            if old is None or not has_parts:  # nothing finished in there (e.g. a run that
                shutil.rmtree(self.dir, ignore_errors=True)  # failed before its first batch)
            else:
                try:
                    check_provenance(old.get("provenance", {}), self.meta["provenance"], self.dir)
                except CacheMismatchError as e:
                    raise CacheMismatchError(
                        f"an interrupted extraction with other settings left {self.dir}: "
                        f"{e}. Rerun it with its own settings to finish it, or delete "
                        f"{self.dir} to discard its work."
                    ) from None
                if int(old.get("dim", -1)) != int(self.meta["dim"]) and self.meta["dim"]:
                    raise CacheMismatchError(f"{self.dir} holds features of another dimension")
        if not os.path.isdir(self.dir):
            os.makedirs(self.dir)
            atomic_write_bytes(
                os.path.join(self.dir, self.META),
                json.dumps(self.meta, indent=1, sort_keys=True).encode(),
            )
            fsync_path(os.path.dirname(self.dir) or ".", directory=True)
        self.parts = []
        for name in sorted(os.listdir(self.dir)):
            p = os.path.join(self.dir, name)
            if name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.remove(p)
                continue
            if not (name.startswith("part-") and name.endswith(".npz")):
                continue
            try:
                with np.load(p, allow_pickle=False) as z:
                    keys = [str(k) for k in z["keys"]]
                    fps = np.asarray(z["fingerprints"], dtype=FINGERPRINT_DTYPE)
                    failed = [
                        (str(k), str(r), int(s), int(m))
                        for (k, r), (s, m) in zip(z["failed"], z["failed_stat"], strict=True)
                    ]
                    if z["features"].shape[0] != len(keys):
                        raise ValueError("row count mismatch")
            except Exception:  # unreadable part (should not happen): redo its images
                with contextlib.suppress(OSError):
                    os.remove(p)
                continue
            self.parts.append(PartInfo(p, keys, fps, failed))
            self._next = max(self._next, int(name[5:-4]) + 1)
        return self.parts

    def write(self, keys: Sequence[str], features: np.ndarray, fingerprints: np.ndarray, failed):
        """Durably record one finished batch. ``failed`` is ``[(key, reason, size, mtime_ns)]``."""
        dim = int(self.meta["dim"])
        path = os.path.join(self.dir, f"part-{self._next:08d}.npz")
        self._next += 1
        fk = np.array([[k, r] for k, r, _, _ in failed], dtype=str).reshape(-1, 2)
        fs = np.array([[s, m] for _, _, s, m in failed], dtype=np.int64).reshape(-1, 2)
        tmp = path + ".tmp"
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                keys=np.array(list(keys), dtype=str).reshape(-1),
                features=np.asarray(features, dtype=np.float32).reshape(len(keys), dim),
                fingerprints=np.asarray(fingerprints, dtype=FINGERPRINT_DTYPE),
                failed=fk,
                failed_stat=fs,
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        info = PartInfo(path, list(keys), np.asarray(fingerprints, FINGERPRINT_DTYPE), failed)
        self.parts.append(info)
        return info

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def remove_parts(self, done) -> None:
        """Delete the parts for which ``done(part)`` is true, and the journal once no part is
        left: the others hold finished work another run can still resume."""
        kept = [p for p in self.parts if not done(p)]
        if not kept:
            self.remove()
            return
        for p in self.parts:
            if done(p):
                with contextlib.suppress(OSError):
                    os.remove(p.path)
        self.parts = kept


def atomic_write_bytes(path: str, data: bytes) -> None:
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_part_features(path: str) -> np.ndarray:
    """The features of one part file (zip members carry a CRC-32: damage raises)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return np.asarray(z["features"], dtype=np.float32)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise CacheFormatError(
            f"corrupt part file {path} of an interrupted extraction ({e}); delete "
            f"{os.path.dirname(path)} and run `tripletsk extract-features` again"
        ) from None


def remove_stale_temp_files(cache_path: str | os.PathLike) -> None:
    """Delete temporary cache files left by a killed consolidation (call under the lock)."""
    cache_path = os.fspath(cache_path)
    d = os.path.dirname(cache_path) or "."
    prefix = os.path.basename(cache_path) + ".tmp-"
    with contextlib.suppress(OSError):
        for name in os.listdir(d):
            if name.startswith(prefix):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(d, name))
