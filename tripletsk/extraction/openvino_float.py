"""OpenVINO float models of a backbone, converted once and kept beside the cache.

``--backend openvino`` at float32 (or bfloat16) runs the backbone converted to OpenVINO IR.
Converting needs TensorFlow and the Keras model (a SavedModel export, then OpenVINO's
converter: about 10 s for ResNet50 on 2 cores, on top of importing TensorFlow and building the
model); the converted model is kept in ``<cache folder>/.tripletsk-models/openvino-float-<key>/``
(``model.xml``, ``model.bin`` with float32 weights, ``manifest.json``), so later runs, queries
and other caches of that folder load it without TensorFlow. ``<key>`` is a digest of the
network's identity (architecture, layer, weights identity), the image size and the TensorFlow,
Keras and OpenVINO versions: what the conversion depends on. A folder is used only when its
manifest names that key and every file matches its recorded digest (as for int8 models,
:mod:`tripletsk.extraction.model_folders`). The same IR serves float32 and bfloat16 (the precision
is chosen when it is compiled); its features equal those of a model converted in the same process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable

from tripletsk.extraction.model_folders import read_manifest, save_model_folder

__all__ = [
    "OPENVINO_FLOAT_FORMAT",
    "converted_model_folder",
    "float_model_folder",
    "float_model_key",
]

#: Bump when the conversion or the folder layout changes: old folders are then unused.
OPENVINO_FLOAT_FORMAT = 1


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("tensorflow", "keras", "openvino"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def float_model_key(spec, image_size: int) -> tuple[str, dict]:
    """``(key, identity)`` of the converted float model of ``spec`` (a
    :class:`~tripletsk.extraction.backbone.WeightsSpec`) at ``image_size``; no TensorFlow
    import, no model build."""
    network = {k: v for k, v in spec.arch.provenance().items() if k != "backbone_source"}
    identity = {"format": OPENVINO_FLOAT_FORMAT, "network": network, "weights": spec.identity,
                "image_size": int(image_size), "versions": _versions()}  # fmt: skip
    digest = hashlib.blake2b(json.dumps(identity, sort_keys=True).encode(), digest_size=12)
    return digest.hexdigest(), identity


def converted_model_folder(spec, image_size: int, models_dir: str) -> str | None:
    """The intact folder in ``models_dir`` of ``spec`` already converted, else None (no
    TensorFlow import, no conversion)."""
    key, _ = float_model_key(spec, image_size)
    folder = os.path.join(models_dir, f"openvino-float-{key}")
    return folder if read_manifest(folder, key) is not None else None


def float_model_folder(
    spec, image_size: int, models_dir: str, build_model: Callable[[], object]
) -> str | None:
    """The folder in ``models_dir`` of ``spec`` converted to OpenVINO IR (float32 weights),
    converting ``build_model()`` (the Keras model) first if it is missing or damaged; None if
    it cannot be stored there (e.g. a read-only folder: the caller converts in memory)."""
    folder = converted_model_folder(spec, image_size, models_dir)
    if folder is not None:
        return folder
    key, identity = float_model_key(spec, image_size)
    folder = os.path.join(models_dir, f"openvino-float-{key}")
    from tripletsk.extraction.runners import _backbone_to_openvino, _import_openvino

    _import_openvino()  # (before building the model: says how to install it)
    model = build_model()
    ov_model = _backbone_to_openvino(model)
    try:
        save_model_folder(ov_model, folder, key, identity)
    except OSError:  # (read-only, disk full...): convert in memory this time
        return None
    return folder
