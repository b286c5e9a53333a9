"""How :class:`~tripletsk.extraction.image_features.ImageFeatures` reads the feature cache.

Before serving rows it checks that the cache is of the same images folder, made as when fitted
and with the expected network (:func:`checked_store`); it then serves only the rows of files
still as the cache recorded them (:func:`cached_rows`).
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from tripletsk.cache.format import PROVENANCE_KEYS, check_provenance
from tripletsk.cache.roots import ImageFolderMismatchError, same_folder
from tripletsk.cache.store import FeatureStore
from tripletsk.errors import CacheMismatchError
from tripletsk.extraction.discovery import is_listed_name

__all__ = [
    "INT8_KEYS",
    "cached_rows",
    "check_fitted",
    "check_folder",
    "checked_store",
    "folder_mismatch",
    "key_of",
]

#: The provenance of an int8 cache's quantized model: recorded, but not a choice of ImageFeatures.
INT8_KEYS = ("int8_calibration", "int8_model")


def check_folder(store: FeatureStore, cache: str, root: str) -> None:
    recorded = store.attrs.get("image_root")
    if recorded and not same_folder(recorded, root):
        raise folder_mismatch(cache, str(recorded), root)


def check_fitted(found: dict, fitted: dict, cache: str) -> None:
    """Refuse a cache whose features were made otherwise than those :meth:`fit` saw."""
    diffs = [
        f"{k}: fitted on {fitted.get(k)!r}, the cache now has {found.get(k)!r}"
        for k in PROVENANCE_KEYS
        if (k in fitted or k not in INT8_KEYS) and str(found.get(k)) != str(fitted.get(k))
    ]
    if diffs:
        raise CacheMismatchError(
            f"{cache} changed since this ImageFeatures was fitted: it was made again with other "
            f"settings ({'; '.join(diffs)}). Fit it again (e.g. refit the pipeline) to use the "
            "new cache, or extract the old settings' features again."
        )


@contextlib.contextmanager
def checked_store(cache: str, root: str, expected: dict, fitted: dict | None):
    """The cache, open, once checked: of the images folder ``root``, made as when fitted
    (``fitted``) and with the ``expected`` network (int8 keys aside)."""
    with FeatureStore(cache) as store:
        check_folder(store, cache, root)
        found = store.provenance
        if fitted is not None:
            check_fitted(found, fitted, cache)
        check_provenance(found, {**expected, **{k: found.get(k) for k in INT8_KEYS}}, cache)
        yield store


def key_of(file: str, root: str) -> str | None:
    """The cache key of ``file`` (absolute) under ``root``, or None if it cannot have one."""
    for f, r in ((file, root), (os.path.realpath(file), os.path.realpath(root))):
        try:
            rel = os.path.relpath(f, r)
        except ValueError:  # (another drive, on Windows)
            continue
        if rel != os.pardir and not rel.startswith(os.pardir + os.sep):
            key = rel.replace(os.sep, "/")
            return key if is_listed_name(key) else None
    return None


def folder_mismatch(holder: str, old_root: str, root: str) -> ImageFolderMismatchError:
    err = ImageFolderMismatchError(holder, old_root, root)
    err.args = (err.message("pass another cache=", "delete the cache file"),)
    return err


def cached_rows(store: FeatureStore, files: list, keys: list, verify: bool):
    """``({i: features}, [i not served])``: the rows of ``keys`` the cache holds for the files
    as they are now (same size and modification time as when extracted; same content, with
    ``verify``). The store reads one version of the cache, whatever is written meanwhile."""
    hit = [i for i, k in enumerate(keys) if k is not None and k in store]
    rows = store.indices([keys[i] for i in hit])
    fps = store.fingerprints[rows]
    fresh = [_unchanged(fp, files[i], verify) for fp, i in zip(fps, hit, strict=True)]
    fresh = np.array(fresh, dtype=bool)
    hit, rows = [i for i, ok in zip(hit, fresh, strict=True) if ok], rows[fresh]
    feats = store.take(rows) if hit else []
    served = set(hit)
    return dict(zip(hit, feats, strict=True)), [i for i in range(len(files)) if i not in served]


def _unchanged(fp, file: str, verify: bool) -> bool:
    """Whether ``file`` is as its cached fingerprint ``fp`` says: same size and modification
    time, and same content if ``verify`` or if it was hashed within the time stamps'
    granularity of a change (as the extraction's own plan decides)."""
    from tripletsk.cache.checksums import file_digest
    from tripletsk.extraction.plan import trust_stat

    try:
        st = os.stat(file)
        if int(fp["size"]) != st.st_size or int(fp["mtime_ns"]) != st.st_mtime_ns:
            return False
        if verify or not trust_stat(fp, st.st_size, st.st_mtime_ns):
            return file_digest(file) == bytes(fp["blake2b"]).decode()
    except OSError:  # (gone since it was checked: its extraction or reading will say why)
        return False
    return True
