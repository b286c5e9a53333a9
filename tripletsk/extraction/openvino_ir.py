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
:mod:`tripletsk.extraction.quantization`). The same IR serves float32 and bfloat16 (the precision
is chosen when it is compiled); its features equal those of a model converted in the same process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable

__all__ = ["OPENVINO_FLOAT_FORMAT", "float_model_folder", "float_model_key"]

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


def float_model_folder(
    spec, image_size: int, models_dir: str, build_model: Callable[[], object]
) -> str | None:
    """The folder in ``models_dir`` of ``spec`` converted to OpenVINO IR (float32 weights),
    converting ``build_model()`` (the Keras model) first if it is missing or damaged; None if
    it cannot be stored there (e.g. a read-only folder: the caller converts in memory)."""
    from tripletsk.extraction.quantization import _install, _ir_digest, _read_manifest, file_digest

    key, identity = float_model_key(spec, image_size)
    folder = os.path.join(models_dir, f"openvino-float-{key}")
    if _read_manifest(folder, key) is not None:
        return folder
    from tripletsk.extraction.runners import _import_openvino, _to_openvino

    ov = _import_openvino()
    model = build_model()
    ov_model = _to_openvino(model, [-1, *list(model.input_shape)[1:]])
    try:
        os.makedirs(models_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".openvino-float-{key}.", dir=models_dir)
    except OSError:
        return None
    try:
        ov.save_model(ov_model, os.path.join(tmp, "model.xml"), compress_to_fp16=False)
        files = {name: file_digest(os.path.join(tmp, name)) for name in ("model.xml", "model.bin")}
        manifest = {"key": key, "identity": identity, "files": files,
                    "model_digest": _ir_digest(tmp)}  # fmt: skip
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
        _install(tmp, folder, key)
    except OSError:  # (disk full...): convert in memory this time
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder if _read_manifest(folder, key) is not None else None
