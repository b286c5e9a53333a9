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
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils._set_output import _get_output_config
from sklearn.utils.validation import check_is_fitted

from tripletsk.cache.format import PROVENANCE_KEYS, check_provenance
from tripletsk.cache.roots import ImageFolderMismatchError
from tripletsk.cache.store import FeatureStore
from tripletsk.errors import CacheLockedError, UserError
from tripletsk.extraction.cache_lookup import (
    INT8_KEYS,
    cached_rows,
    check_fitted,
    check_folder,
    checked_store,
    folder_mismatch,
    key_of,
)
from tripletsk.extraction.parameters import (
    AUTO,
    DEFAULTS,
    IMAGE_FEATURES_PARAMETERS,
    NETWORK_PARAMETERS,
)

__all__ = ["ImageFeatures"]

#: The parameters that choose the network, with what "auto" stands for when there is no cache
#: (the defaults of ``extract-features``, but float32: a model fitted in a pipeline is never
#: handed int8 features it did not ask for; ``backend="auto"`` then times the float32 runners).
_NETWORK_DEFAULTS = {**{k: DEFAULTS[k] for k in NETWORK_PARAMETERS}, "precision": "float32"}
#: The other parameters shared with extract_features, passed on as they are.
_RUN_PARAMETERS = tuple(k for k in IMAGE_FEATURES_PARAMETERS if k not in NETWORK_PARAMETERS)


class ImageFeatures(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
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
        The feature cache, created if missing.
    backbone, weights, image_size, backend, precision, seed, layer, preprocessing : "auto" \
or as for :func:`~tripletsk.extraction.extract_features`, default "auto"
        The network. ``"auto"``: the existing cache's (its recorded backbone, layer,
        preprocessing, weights and seed, image size, backend, precision); with no cache yet,
        the defaults of ``extract-features`` (ResNet50, ImageNet weights, 224 px, the fastest
        float32 runner of this CPU: ``backend="auto"``, ``precision="float32"``; int8 only when
        set or when the cache holds it); once fitted, what :meth:`fit` found. A value set
        otherwise is honoured: it must equal the cache's (else
        :class:`~tripletsk.errors.CacheMismatchError` names each difference), whether or not it
        equals a default.
    batch_size, dtype, workers, max_pixels
        As for :func:`~tripletsk.extraction.extract_features`.
    append : bool, default True
        Add the features of new images of ``root`` to the cache. False (or a cache that cannot
        be written, with a warning): they are computed each time, and the cache is never written.
    lock_timeout : float, default 600
        Seconds to wait while another process writes the cache before raising
        :class:`~tripletsk.errors.CacheLockedError`.
    verify : bool, default False
        Read and hash every cached image asked for, and compare with the content hash the cache
        recorded, instead of trusting an unchanged size and modification time: an image
        rewritten in place with both kept is then extracted again, not served stale. (Without
        it, only an image modified within 3 s of its hashing is hashed again.)

    Attributes
    ----------
    network_ : dict
        The network :meth:`fit` resolved (what ``"auto"`` stands for from then on).
    provenance_ : dict
        The cache's record of the network its features were made with, when fitted (or what
        it will record, if there was no cache yet). Every later :meth:`transform` checks that
        the cache still records it, so a cache made again with other settings (another seed,
        image size, weights, backbone, preprocessing or precision) is refused, not used.

    Notes
    -----
    Images outside ``root`` have no key: they are computed each time, never cached. ``fit``
    reads only the cache's header; the transformer holds no model or open file, so it clones,
    pickles and runs in parallel processes cheaply (each process builds the backbone once, when
    it first extracts). Processes that add images to one cache at once take turns; readers
    read one version of the cache, whatever is written meanwhile.

    Examples
    --------
    >>> from tripletsk import ImageFeatures
    >>> features = ImageFeatures(root="images", weights="none", image_size=32)
    >>> features.get_params()["cache"], features.get_params()["backbone"]
    ('cache/features.h5', 'auto')
    """

    def __init__(
        self, root=None, cache=DEFAULTS["output"], backbone=AUTO, weights=AUTO, image_size=AUTO,
        backend=AUTO, precision=AUTO, batch_size=DEFAULTS["batch_size"], *, layer=AUTO,
        preprocessing=AUTO, seed=AUTO, dtype=DEFAULTS["dtype"], append=True,
        workers=DEFAULTS["workers"], max_pixels=DEFAULTS["max_pixels"], lock_timeout=600.0,
        verify=DEFAULTS["verify"],
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
        self.verify = verify

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags

    def fit(self, X=None, y=None) -> ImageFeatures:
        """Record the network and the provenance of the cache's features (the backbone is
        frozen: nothing is learned); ``X`` and ``y`` are not used. Returns ``self``.

        Raises
        ------
        CacheMismatchError
            A parameter set to something other than what the cache records.
        """
        cache = os.fspath(self.cache)
        network = self._network(cache, refit=True)
        expected = _provenance_of(network)
        prov = expected
        if os.path.exists(cache):
            with FeatureStore(cache) as store:
                if self.root is not None:
                    check_folder(store, cache, self._image_root(cache))
                prov = store.provenance
                check_provenance(prov, {**expected, **{k: prov.get(k) for k in INT8_KEYS}}, cache)
        self.network_ = network
        self.provenance_ = {
            k: prov.get(k) for k in PROVENANCE_KEYS if k in prov or k not in INT8_KEYS
        }
        return self

    @property
    def _n_features_out(self) -> int:
        """The length of the feature vectors (for ``get_feature_names_out``)."""
        check_is_fitted(self, "provenance_")
        cache = os.fspath(self.cache)
        if os.path.exists(cache):
            with FeatureStore(cache) as store:
                check_fitted(store.provenance, self.provenance_, cache)
                return store.dim
        from tripletsk.extraction.backbone import feature_dim

        return feature_dim(_spec_of(self.network_), int(self.network_["image_size"]))

    def transform(self, X) -> np.ndarray:
        """Features of the images at the paths ``X``, shape ``X.shape + (d,)``, float32.

        Raises
        ------
        UserError
            A path that is not a readable image file (named in the message), a cache made with
            other settings, or with settings other than when fitted, or of another folder
            (:class:`~tripletsk.errors.CacheMismatchError`).
        """
        X = np.asarray(X, dtype=object)
        if X.size == 0:
            raise ValueError("ImageFeatures.transform needs at least one image path")
        if X.ndim != 1 and _get_output_config("transform", self)["dense"] != "default":
            raise ValueError(
                f"set_output(transform=...) tables hold one row per image: pass a 1-d array of "
                f"paths, not shape {X.shape} (or set_output(transform='default'))"
            )
        flat = [_path_str(p) for p in X.ravel()]
        uniq = list(dict.fromkeys(flat))
        cache = os.fspath(self.cache)
        root = self._image_root(cache)
        files = [os.path.abspath(os.path.join(root, p)) for p in uniq]
        for p, f in zip(uniq, files, strict=True):
            if not os.path.isfile(f):
                where = "" if os.path.isabs(p) else f" (relative to root {root})"
                raise UserError(f"image file not found: {p}{where}")
        feats = self._features(root, cache, files, [key_of(f, root) for f in files])
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
        network = self._network(cache)
        expected = _provenance_of(network, root, cache)
        fitted = getattr(self, "provenance_", None)
        got, todo, extracted = {}, list(range(len(files))), False
        deadline, delay = time.monotonic() + float(self.lock_timeout), 0.05
        while True:
            if os.path.exists(cache):
                with checked_store(cache, root, expected, fitted) as store:
                    got, todo = cached_rows(store, files, keys, bool(self.verify))
            new = [keys[i] for i in todo if keys[i] is not None]
            if extracted or not new or not self._writable(cache, len(new)):
                break
            try:
                self._extract(root, cache, new, network)
                extracted = True
            except CacheLockedError:  # another process writes: wait, then see what is left
                if time.monotonic() >= deadline:
                    raise
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(1.0, delay * 1.5)
        if todo:
            computed = self._computed(root, cache, [files[i] for i in todo], expected, fitted)
            got.update(zip(todo, computed, strict=True))
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

    def _network(self, cache: str, refit: bool = False) -> dict:
        """The network's ``extract_features`` arguments: each parameter set (not "auto") as
        set; the others as fitted (unless ``refit``), else the existing cache's, else the
        defaults."""
        given = {k: getattr(self, k) for k in _NETWORK_DEFAULTS}
        given = {k: v for k, v in given.items() if not (isinstance(v, str) and v == AUTO)}
        base = None if refit else getattr(self, "network_", None)
        if base is None and len(given) < len(_NETWORK_DEFAULTS) and os.path.exists(cache):
            from tripletsk.extraction.query import extraction_settings_of_cache

            with FeatureStore(cache) as store:
                base = {**extraction_settings_of_cache(store), "layer": None, "preprocessing": None}
        base = dict(_NETWORK_DEFAULTS if base is None else base)
        arch = base["backbone"]
        if not isinstance(arch, str) and {"backbone", "layer", "preprocessing"} & set(given):
            # A recorded architecture, refined or replaced by what was set: spelled out.
            base.update(backbone=_backbone_name(arch), layer=arch.layer, preprocessing=arch.mode)
        return {**base, **given}

    def _extract(self, root: str, cache: str, keys: list, network: dict) -> None:
        """Extract the images ``keys`` of ``root`` into ``cache`` (the other rows are kept)."""
        from tripletsk.extraction.run import extract_features

        try:
            summary = extract_features(
                root, cache, progress=False, quiet=True, only=keys, **network,
                **self._run_options(),
            )  # fmt: skip
        except ImageFolderMismatchError as e:
            raise folder_mismatch(e.holder, e.old_root, root) from None
        wanted = set(keys)  # (the cache's failures of other images are kept, not reported)
        failed = [(k, why) for k, why in summary.failed if k in wanted]
        if failed:
            shown = "; ".join(f"{os.path.join(root, k)}: {why}" for k, why in failed[:5])
            raise UserError(f"cannot read {len(failed)} image(s) ({shown})")

    def _run_options(self) -> dict:
        return {**{k: getattr(self, k) for k in _RUN_PARAMETERS}, "verify": bool(self.verify)}

    def _computed(self, root, cache: str, files: list, expected, fitted) -> np.ndarray:
        """Features of ``files`` computed like the cache's, without writing anything."""
        from tripletsk.extraction.query import features_for_files

        if not os.path.exists(cache):
            raise UserError(
                f"the cache {cache} does not exist: it is made by extracting images of the "
                "images folder (root=) with append=True; images outside it are computed with the "
                "cache's settings"
            )
        weights = self.weights
        named = weights is None or (
            isinstance(weights, str) and weights.lower() in ("imagenet", "none", AUTO)
        )
        backbone = os.fspath(self.backbone) if self.backbone is not None else ""
        with checked_store(cache, root, expected, fitted) as store:
            return features_for_files(
                files,
                store,
                weights=None if named else weights,
                backbone=backbone if os.path.isfile(backbone) else None,  # a moved model file
                batch_size=self.batch_size,
                max_pixels=self.max_pixels,
            )


def _spec_of(network: dict):
    from tripletsk.extraction.backbone import resolve_network

    n = network
    return resolve_network(n["weights"], n["seed"], n["backbone"], n["layer"], n["preprocessing"])


def _provenance_of(network: dict, root: str | None = None, cache: str = "") -> dict:
    """What a cache of ``network``'s features records (int8 keys aside); with ``root``, the
    arguments are checked as an extraction checks them. ``backend="auto"``: the runner is
    recorded, not compared (runners of one precision agree to rounding), so the provenance of
    any runner of that precision stands for it; a precision left unset is float32 here."""
    from tripletsk.extraction.backbone import provenance_for
    from tripletsk.extraction.parameters import check_backend, check_image_size

    network = {**network, "precision": network["precision"] or "float32"}
    if root is not None:
        from tripletsk.extraction.options import ExtractOptions

        options = ExtractOptions.from_arguments(
            root, cache, progress=False, quiet=True, batch_size=1, **network
        )
        if options.backend != AUTO:
            return options.provenance
        spec, size, precision = options.spec, options.image_size, options.precision
    else:
        check_image_size(int(network["image_size"]))
        spec, size = _spec_of(network), int(network["image_size"])
        precision = check_backend(network["backend"], network["precision"])[1]
    backend = network["backend"]
    if backend == AUTO:
        backend = "openvino" if precision == "int8" else "tensorflow"
    return provenance_for(spec, size, backend, precision)


def _backbone_name(arch) -> str:
    """What ``backbone=`` names the architecture ``arch`` by: its model file or its name."""
    if arch.is_file:
        return arch.path
    args = ", ".join(f"{k}={v!r}" for k, v in arch.kwargs)
    return f"{arch.name}({args})" if args else arch.name


def _path_str(p) -> str:
    if isinstance(p, (str, os.PathLike)):
        return os.fspath(p)
    raise UserError(f"ImageFeatures takes image file paths (str), got {type(p).__name__} {p!r}")
