"""Features of image files outside the cache, computed exactly as the cache's were.

Used for search queries that are not in the cache: the backbone, weights, image size,
preprocessing and precision are read from the cache's provenance and rebuilt.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np

from tripletsk.cache.format import check_provenance
from tripletsk.cache.store import DEFAULT_CACHE, FeatureStore
from tripletsk.errors import CacheMismatchError, ImageDecodeError, UserError
from tripletsk.extraction.architecture import architecture_of, with_model_file
from tripletsk.extraction.backbone import (
    cached_backbone,
    provenance_for,
    random_init_of,
    resolve_weights,
)
from tripletsk.extraction.decode import load_image
from tripletsk.extraction.model_folders import models_dir

__all__ = ["extraction_settings_of_cache", "features_for_files", "weights_of_cache"]


def _dtype(prov: dict) -> str:
    return str(prov.get("compute_dtype") or "float32")


def features_for_files(
    paths: Sequence[str | os.PathLike],
    like: FeatureStore | str | os.PathLike = DEFAULT_CACHE,
    *,
    weights=None,
    backbone=None,
    batch_size: int = 32,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Features of image files computed exactly as for the cache ``like`` (same backbone, weights,
    image size, preprocessing), e.g. for a search query that is not in the cache.

    ``weights`` (``backbone``) is needed only if the cache was made from a local weights file
    (backbone model file) that has moved.

    Raises
    ------
    UserError
        If a file cannot be read as an image, or the cache's model cannot be rebuilt.
    """
    store = like if isinstance(like, FeatureStore) else FeatureStore(like)
    prov = store.provenance
    image_size = int(prov["image_size"])
    spec = weights_of_cache(store, weights, backbone)
    arrays = []
    for p in paths:
        try:
            arrays.append(load_image(p, image_size, max_pixels=max_pixels))
        except ImageDecodeError as e:
            raise UserError(f"cannot read {os.fspath(p)} as an image: {e}") from None
    if not arrays:
        return np.zeros((0, store.dim), np.float32)
    backend = str(prov.get("backend") or "tensorflow")
    precision = _dtype(prov)
    folder = _int8_folder(store) if precision == "int8" else None
    backbone = cached_backbone(spec, image_size, int(batch_size), backend, precision, folder,
                               models_dir(store.path))  # fmt: skip
    return backbone(np.stack(arrays))


def _expected(spec, prov: dict) -> dict:
    """The provenance of ``spec``'s features made like the cache's (``prov``)."""
    int8 = {k: prov.get(k) for k in ("int8_calibration", "int8_model")}
    precision = _dtype(prov)
    return provenance_for(
        spec,
        int(prov["image_size"]),
        precision=precision,
        int8=int8 if precision == "int8" else None,
    )


def _int8_folder(store: FeatureStore) -> str:
    """The quantized model the int8 cache ``store`` recorded, in ``.tripletsk-models/``."""
    from tripletsk.extraction.quantization import find_quantized_model

    folder = find_quantized_model(models_dir(store.path), str(store.provenance["int8_model"]))
    if folder is None:
        raise UserError(
            f"{store.path} holds int8 features, but its quantized model is not in "
            f"{models_dir(store.path)} any more; run `tripletsk extract-features IMAGES_DIR -o "
            f"{store.path} --backend openvino --precision int8` to quantize it again"
        )
    return folder


def extraction_settings_of_cache(store: FeatureStore) -> dict:
    """The :func:`~tripletsk.extraction.extract_features` arguments that made the cache's
    features (``backbone``, ``weights``, ``seed``, ``image_size``, ``backend``, ``precision``):
    how to add images to it with the same network."""
    prov = store.provenance
    spec = weights_of_cache(store)
    if spec.kind == "none":
        weights = "none"
    elif spec.kind == "file" or (spec.kind == "imagenet" and spec.path):
        weights = spec.path
    else:  # "imagenet" (Keras download) or a model file's own
        weights = "imagenet"
    return {
        "backbone": spec.arch, "weights": weights, "seed": spec.seed,
        "image_size": int(prov["image_size"]), "backend": str(prov.get("backend") or "tensorflow"),
        "precision": _dtype(prov),
    }  # fmt: skip


def weights_of_cache(store: FeatureStore, weights=None, backbone=None):
    """The network (architecture and weights) the cache's features were made with, to build
    again. ``weights`` / ``backbone``: the weights file / backbone model file, if it moved.

    Raises
    ------
    UserError
        If a file the cache was made with is gone (the message names it) or is another file.
    """
    prov = store.provenance
    arch = architecture_of(prov, store.path)
    if arch.is_file:
        arch = with_model_file(arch, backbone, store.path)
    ident = str(prov.get("weights"))
    if weights is not None:
        spec = resolve_weights(weights, 0, arch)
        if spec.kind == "none":
            m = re.match(r"none:seed=(-?\d+)", ident)
            spec = resolve_weights("none", int(m.group(1)) if m else 0, arch)
        check_provenance(prov, _expected(spec, prov), store.path)
    elif ident == "in-file":
        spec = resolve_weights("imagenet", 0, arch)
    elif ident.startswith("none:"):
        m = re.match(r"none:seed=(-?\d+):init=(.*)$", ident)
        if not m or m.group(2) != random_init_of(arch):
            raise CacheMismatchError(f"{store.path}: unknown random initialisation {ident!r}")
        spec = resolve_weights("none", int(m.group(1)), arch)
    elif ident == "imagenet":
        src = str(prov.get("weights_source") or "")
        spec = resolve_weights(src if os.path.isfile(src) else "imagenet", 0, arch)
    else:
        src = str(prov.get("weights_source") or "")
        if not os.path.isfile(src):
            raise UserError(
                f"{store.path} was made with the weights file {src or '?'}, which is not found; "
                "pass weights=PATH (Python) or --weights PATH (command line), the same file"
            )
        spec = resolve_weights(src, 0, arch)
        check_provenance(prov, _expected(spec, prov), store.path)
    return spec
