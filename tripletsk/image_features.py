"""ImageFeatures: a scikit-learn transformer from image paths to backbone features.

The features come from the extraction cache. Rows already cached are read from it; new images of
the images folder are extracted into it by :func:`~tripletsk.extraction.extract_features`,
restricted to them (so crash-safe, locked and checked as ``tripletsk extract-features`` is); images
that cannot be cached (outside the folder, or a read-only cache) are computed exactly as the
cache's by :func:`~tripletsk.extraction.features_for_files`, and nothing is written.
"""

from __future__ import annotations

import os
import time
import warnings

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from tripletsk.errors import CacheLockedError, UserError
from tripletsk.extraction.backbone import DEFAULT_BACKEND
from tripletsk.extraction.discovery import is_listed_name
from tripletsk.extraction.roots import ImageFolderMismatchError, same_folder
from tripletsk.store import DEFAULT_CACHE, FeatureStore, check_provenance

__all__ = ["ImageFeatures"]

_INT8_KEYS = ("int8_calibration", "int8_model")


class ImageFeatures(TransformerMixin, BaseEstimator):
    """Map image paths to the features of a frozen backbone, through the feature cache.

    ``transform(X)`` replaces each path of ``X`` (an array of any shape) by its feature vector:
    (n,) paths give (n, d) features, (n, 3) path triplets give (n, 3, d). Put it in front of a
    :class:`~tripletsk.TripletEncoder` to fit, search and score from image files.

    Parameters
    ----------
    root : path or None, default None
        The images folder: relative paths are relative to it, and cache keys are paths relative
        to it (``/`` separators). None: the folder the cache was extracted from.
    cache : path, default "cache/features.h5"
        The feature cache, created if missing. An existing cache's recorded network (backbone,
        layer, preprocessing, weights, seed, image size, backend, precision) is used for the
        parameters below left at their defaults; one set otherwise must equal the cache's (else
        :class:`~tripletsk.errors.CacheMismatchError`).
    backbone, weights, image_size, backend, precision, batch_size, seed, dtype, workers, \
max_pixels
        As for :func:`~tripletsk.extraction.extract_features`.
    layer, preprocessing : str or None, default None
        The backbone's feature layer and pixel scaling (as ``extract-features --layer``,
        ``--preprocessing``).
    append : bool, default True
        Add the features of new images of ``root`` to the cache. False (or a cache that cannot
        be written, with a warning): they are computed each time, and the cache is never written.
    lock_timeout : float, default 600
        Seconds to wait while another process writes the cache before raising
        :class:`~tripletsk.errors.CacheLockedError`.

    Notes
    -----
    Images outside ``root`` have no key: they are computed each time, never cached. ``fit``
    learns nothing; the transformer holds no model or open file, so it clones, pickles and runs
    in parallel processes cheaply (each process builds the backbone once, when it first
    extracts). Processes that add images to one cache at once take turns.

    Examples
    --------
    >>> from tripletsk import ImageFeatures
    >>> features = ImageFeatures(root="images", weights="none", image_size=32)
    >>> features.get_params()["cache"]
    'cache/features.h5'
    >>> features.fit(["cat/1.jpg"]) is features  # fit learns nothing
    True
    """

    def __init__(
        self, root=None, cache=DEFAULT_CACHE, backbone="ResNet50", weights="imagenet",
        image_size=224, backend=DEFAULT_BACKEND, precision=None, batch_size=32, *,
        layer=None, preprocessing=None, seed=0, dtype=None, append=True, workers=None,
        max_pixels=None, lock_timeout=600.0,
    ):  # fmt: skip
        self.root = root
        self.cache = cache
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.backend = backend
        self.precision = precision
        self.batch_size = batch_size
        self.layer = layer
        self.preprocessing = preprocessing
        self.seed = seed
        self.dtype = dtype
        self.append = append
        self.workers = workers
        self.max_pixels = max_pixels
        self.lock_timeout = lock_timeout

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags

    def fit(self, X, y=None) -> ImageFeatures:
        """Learn nothing (the backbone is frozen); returns ``self``."""
        return self

    def transform(self, X) -> np.ndarray:
        """Features of the images at the paths ``X``, shape ``X.shape + (d,)``, float32.

        Raises
        ------
        UserError
            A path that is not a readable image file (named in the message), a cache made with
            other settings or of another folder (:class:`~tripletsk.errors.CacheMismatchError`).
        """
        X = np.asarray(X, dtype=object)
        if X.size == 0:
            raise ValueError("ImageFeatures.transform needs at least one image path")
        flat = [_path_str(p) for p in X.ravel()]
        uniq = list(dict.fromkeys(flat))
        cache = os.fspath(self.cache)
        root = self._image_root(cache)
        files = [os.path.abspath(os.path.join(root, p)) for p in uniq]
        for p, f in zip(uniq, files, strict=True):
            if not os.path.isfile(f):
                where = "" if os.path.isabs(p) else f" (relative to root {root})"
                raise UserError(f"image file not found: {p}{where}")
        feats = self._features(root, cache, files, [_key(f, root) for f in files])
        index = {p: i for i, p in enumerate(uniq)}
        out = feats[np.array([index[p] for p in flat])]
        return out.reshape((*X.shape, feats.shape[1]))

    # -- where the features come from ---------------------------------------------------------
    def _image_root(self, cache: str) -> str:
        if self.root is not None:
            root = os.path.abspath(os.fspath(self.root))
            if not os.path.isdir(root):
                raise UserError(f"images folder does not exist: {self.root}")
            return root
        if os.path.exists(cache):
            with FeatureStore(cache) as store:
                recorded = store.attrs.get("image_root")
            if recorded:
                return str(recorded)
        raise UserError(f"pass root=, the images folder (the cache {cache} does not record one)")

    def _features(self, root: str, cache: str, files: list, keys: list) -> np.ndarray:
        """(len(files), d): cached rows, then new images extracted into the cache, then the rest
        computed like the cache's."""
        got, todo, extracted = {}, list(range(len(files))), False
        deadline, delay = time.monotonic() + float(self.lock_timeout), 0.05
        while True:
            if os.path.exists(cache):  # (its recorded runner is what backend="auto" means)
                expected = self._options(root, cache).provenance
                got, todo = _cached_rows(cache, root, files, keys, expected)
            new = [keys[i] for i in todo if keys[i] is not None]
            if extracted or not new or not self._writable(cache, len(new)):
                break
            try:
                self._extract(root, cache, new)
                extracted = True
            except CacheLockedError:  # another process writes: wait, then see what is left
                if time.monotonic() >= deadline:
                    raise
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(1.0, delay * 1.5)
        if todo:
            got.update(zip(todo, self._computed(cache, [files[i] for i in todo]), strict=True))
        return np.stack([got[i] for i in range(len(files))]).astype(np.float32, copy=False)

    def _writable(self, cache: str, n_new: int) -> bool:
        if not self.append:
            return False
        folder = os.path.dirname(os.path.abspath(cache))
        ok = os.access(folder, os.W_OK) if os.path.isdir(folder) else True
        ok = ok and (not os.path.exists(cache) or os.access(cache, os.W_OK))
        if not ok:
            warnings.warn(
                f"the cache {cache} cannot be written: the features of {n_new} new image(s) are "
                "computed without caching them (pass append=False to say so)",
                UserWarning,
                stacklevel=4,
            )
        return ok

    def _extraction_kwargs(self, cache: str) -> dict:
        """The arguments of ``extract_features`` (and ``ExtractOptions``): the network of an
        existing cache, except where a parameter is set to something other than its default
        (then the provenance check compares it with the cache's)."""
        network = {name: getattr(self, name) for name in _NETWORK_DEFAULTS}
        if os.path.exists(cache):
            from tripletsk.extraction.query import extraction_settings_of_cache

            with FeatureStore(cache) as store:
                recorded = extraction_settings_of_cache(store)
            unset = [k for k, v in network.items() if _same(v, _NETWORK_DEFAULTS[k])
                     or (k, v) in (("backend", "auto"), ("precision", None))]  # fmt: skip
            if {"layer", "preprocessing"} & set(network) - set(unset):
                unset = [k for k in unset if k != "backbone"]  # they refine a named backbone
            network.update({k: recorded[k] for k in unset if k in recorded})
        return {
            **network, "batch_size": self.batch_size, "dtype": self.dtype,
            "workers": self.workers, "max_pixels": self.max_pixels,
        }  # fmt: skip

    def _options(self, root: str, cache: str):
        """The checked extraction settings (:class:`ExtractOptions`)."""
        from tripletsk.extraction.options import ExtractOptions

        return ExtractOptions.from_arguments(
            root, cache, progress=False, quiet=True, decode_memory=None,
            **self._extraction_kwargs(cache),
        )  # fmt: skip

    def _extract(self, root: str, cache: str, keys: list) -> None:
        """Extract the images ``keys`` of ``root`` into ``cache`` (the other rows are kept)."""
        from tripletsk.extraction.run import extract_features

        try:
            summary = extract_features(
                root, cache, progress=False, quiet=True, only=keys, **self._extraction_kwargs(cache)
            )
        except ImageFolderMismatchError as e:
            raise _folder_mismatch(e.holder, e.old_root, root) from None
        if summary.failed:
            shown = "; ".join(f"{os.path.join(root, k)}: {why}" for k, why in summary.failed[:5])
            raise UserError(f"cannot read {len(summary.failed)} image(s) ({shown})")

    def _computed(self, cache: str, files: list) -> np.ndarray:
        """Features of ``files`` computed like the cache's, without writing anything."""
        from tripletsk.extraction.query import features_for_files

        if not os.path.exists(cache):
            raise UserError(
                f"the cache {cache} does not exist: it is made by extracting images of the "
                "images folder (root=) with append=True; images outside it are computed with the "
                "cache's settings"
            )
        weights = self.weights
        named = isinstance(weights, str) and weights.lower() in ("imagenet", "none")
        backbone = os.fspath(self.backbone) if self.backbone is not None else ""
        return features_for_files(
            files,
            cache,
            weights=None if named or weights is None else weights,
            backbone=backbone if os.path.isfile(backbone) else None,  # a moved model file
            batch_size=self.batch_size,
            max_pixels=self.max_pixels,
        )


#: The parameters that choose the network, with their defaults (those of ``extract-features``).
_NETWORK_DEFAULTS = {"backbone": "ResNet50", "layer": None, "preprocessing": None,
                     "weights": "imagenet", "seed": 0, "image_size": 224,
                     "backend": DEFAULT_BACKEND, "precision": None}  # fmt: skip


def _same(value, default) -> bool:
    return type(value) is type(default) and value == default


def _path_str(p) -> str:
    if isinstance(p, (str, os.PathLike)):
        return os.fspath(p)
    raise UserError(f"ImageFeatures takes image file paths (str), got {type(p).__name__} {p!r}")


def _key(file: str, root: str) -> str | None:
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


def _folder_mismatch(holder: str, old_root: str, root: str) -> ImageFolderMismatchError:
    err = ImageFolderMismatchError(holder, old_root, root)
    err.args = (err.message("pass another cache=", "delete the cache file"),)
    return err


def _identity(path: str) -> tuple:
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns, st.st_size


def _cached_rows(cache: str, root: str, files: list, keys: list, expected: dict):
    """``({i: features}, [i not served])``: the rows of ``keys`` the cache holds for the files
    as they are now (same size and modification time as when extracted)."""
    for _ in range(10):  # the cache was replaced while being read (another process added rows)
        before = _identity(cache)
        with FeatureStore(cache) as store:
            recorded = store.attrs.get("image_root")
            if recorded and not same_folder(recorded, root):
                raise _folder_mismatch(cache, str(recorded), root)
            found = store.provenance
            check_provenance(found, {**expected, **{k: found.get(k) for k in _INT8_KEYS}}, cache)
            hit = [i for i, k in enumerate(keys) if k is not None and k in store]
            rows = store.indices([keys[i] for i in hit])
            fps = store.fingerprints[rows]
            fresh = np.array([_unchanged(fp, files[i]) for fp, i in zip(fps, hit, strict=True)])
            hit, rows = (
                [i for i, ok in zip(hit, fresh, strict=True) if ok],
                rows[fresh.astype(bool)],
            )
            feats = store.take(rows) if hit else []
        if _identity(cache) == before:
            served = set(hit)
            return dict(zip(hit, feats, strict=True)), [
                i for i in range(len(files)) if i not in served
            ]
    raise UserError(f"the cache {cache} keeps changing while being read; try again")


def _unchanged(fp, file: str) -> bool:
    try:
        st = os.stat(file)
    except OSError:  # (gone since it was checked: its extraction or reading will say why)
        return False
    return int(fp["size"]) == st.st_size and int(fp["mtime_ns"]) == st.st_mtime_ns
