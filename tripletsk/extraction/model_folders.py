"""OpenVINO models kept in folders beside the cache, checked before use, installed atomically.

Converted float models (:mod:`tripletsk.extraction.openvino_float`) and quantized int8 ones
(:mod:`tripletsk.extraction.quantization`) live in ``<cache folder>/.tripletsk-models/``, one
subfolder each named by a key (a digest of what the model depends on). A folder holds the
OpenVINO IR (``model.xml``, ``model.bin``) and ``manifest.json``, which names the key, the digest
of each file and of the model itself; a folder is used only when all of them match, and a new
one is written to a temporary folder renamed into place when complete, so a crash or a
concurrent writer never leaves a partial model under the final name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

from tripletsk.cache.checksums import file_digest

__all__ = [
    "MODELS_DIR",
    "ir_digest",
    "ir_output_width",
    "models_dir",
    "read_manifest",
    "save_model_folder",
]

#: Where the models of a cache are kept, next to it (shards of one cache share it).
MODELS_DIR = ".tripletsk-models"
MANIFEST = "manifest.json"
IR_FILES = ("model.xml", "model.bin")


def models_dir(cache_path: str | os.PathLike) -> str:
    """The folder of the models of the cache ``cache_path``."""
    return os.path.join(os.path.dirname(os.path.abspath(os.fspath(cache_path))), MODELS_DIR)


def ir_digest(folder: str, bin_digest: str | None = None) -> str:
    """A digest of the model itself: its constants (``model.bin``: weights, scales) and its
    graph (``model.xml``) without node and tensor names, which OpenVINO and Keras number per
    process (the input is ``keras_tensor_<n>`` for the n-th model built), and runtime info,
    which names temporary files: converting or quantizing the same model on the same images
    again gives the same digest."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    with open(os.path.join(folder, "model.xml"), encoding="utf-8") as f:
        xml = re.sub(r"<rt_info>.*?</rt_info>", "", f.read(), flags=re.DOTALL)
        h.update(re.sub(r' names?="[^"]*"', "", xml).encode())
    h.update((bin_digest or file_digest(os.path.join(folder, "model.bin"))).encode())
    return h.hexdigest()


def ir_output_width(folder: str) -> int | None:
    """The length of the feature vectors of the model in ``folder`` (its output's last
    dimension, read by OpenVINO from ``model.xml``), or None if it is not a fixed number."""
    from tripletsk.extraction.runners import _import_openvino

    ov = _import_openvino()
    shape = ov.Core().read_model(os.path.join(folder, "model.xml")).output(0).get_partial_shape()
    last = shape[shape.rank.get_length() - 1]
    return last.get_length() if last.is_static else None


def read_manifest(folder: str, key: str) -> dict | None:
    """The manifest of a complete model folder whose files are intact, else None."""
    try:
        with open(os.path.join(folder, MANIFEST)) as f:
            manifest = json.load(f)
        if manifest.get("key") != key:
            return None
        files = manifest["files"]
        if sorted(files) != sorted(IR_FILES):
            return None
        for name, digest in files.items():
            if file_digest(os.path.join(folder, name)) != digest:
                return None
        # The digest caches record and compare is recomputed from the files, never taken
        # from the manifest, which anyone who can edit the folder can rewrite.
        if ir_digest(folder, files["model.bin"]) != manifest.get("model_digest"):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return manifest


def save_model_folder(ov_model, folder: str, key: str, identity: dict, **extra) -> dict:
    """Save the OpenVINO model ``ov_model`` (float32 weights) as ``folder`` (whose name is
    ``<kind>-<key>``) with its manifest (``key``, ``identity``, ``files``, ``model_digest`` and
    ``extra``); return the manifest of the folder now in place (ours, or an equivalent one a
    concurrent process put there first).

    Raises
    ------
    OSError
        The folder cannot be written, or holds no intact model afterwards.
    """
    from tripletsk.extraction.runners import _import_openvino

    ov = _import_openvino()
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.", dir=parent)
    try:
        ov.save_model(ov_model, os.path.join(tmp, "model.xml"), compress_to_fp16=False)
        files = {name: file_digest(os.path.join(tmp, name)) for name in IR_FILES}
        manifest = {"key": key, "identity": identity, "files": files,
                    "model_digest": ir_digest(tmp), **extra}  # fmt: skip
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
        _install(tmp, folder, key)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    found = read_manifest(folder, key)
    if found is None:
        raise OSError(f"could not store the model in {folder}")
    return found


def _install(tmp: str, folder: str, key: str) -> None:
    """Rename the complete ``tmp`` folder to ``folder``, replacing a damaged one; if another
    process has put a valid model there meanwhile, keep that one."""
    for _ in range(3):
        try:
            os.rename(tmp, folder)
            return
        except OSError:
            if read_manifest(folder, key) is not None:
                return
            # Damaged or partial (e.g. copied by hand): move it aside, then remove it.
            trash = tempfile.mkdtemp(prefix=f".damaged-{key}.", dir=os.path.dirname(folder))
            try:
                os.rename(folder, os.path.join(trash, "model"))
            except FileNotFoundError:
                pass
            shutil.rmtree(trash, ignore_errors=True)
    os.rename(tmp, folder)
