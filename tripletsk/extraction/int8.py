"""int8 extraction: the calibration sample of a collection and its quantized backbone.

``--precision int8`` (OpenVINO) runs a copy of the backbone quantized with NNCF
(:func:`tripletsk.extraction.quantization.quantize_openvino_int8`), calibrated on
:data:`CALIBRATION_SIZE` of the user's own images: those of :func:`calibration_keys` of the
complete listing (before any
sharding, so every shard picks the same ones), unreadable ones skipped for the next in the ranking.
The quantized model is kept in ``<cache folder>/.tripletsk-models/`` and reused by every run, shard
and query of that cache. An int8 cache records ``int8_calibration`` (the sample's identity),
``int8_model`` (the quantized model's digest), both checked like the rest of the provenance,
and ``int8_calibration_keys`` (the sample's keys, to quantize again if the model is deleted).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from tripletsk.errors import CacheMismatchError
from tripletsk.extraction.backbone import (
    WeightsSpec,
    build_keras_model,
    preprocess,
)
from tripletsk.extraction.decode import process_file
from tripletsk.extraction.discovery import ImageFile
from tripletsk.extraction.model_folders import models_dir

__all__ = [
    "CALIBRATION_SIZE",
    "Int8Model",
    "calibration_identity",
    "calibration_keys",
    "find_model",
    "int8_model_of_cache",
    "quantize_for",
    "with_int8_model",
]

#: How many of the user's images calibrate the quantization (see :func:`calibration_keys`).
#: ResNet50 at 224 px, 64 photos: 32, 128 and 300 calibration images gave the same agreement
#: with TF fp32 (centred cosine mean 0.9919 / 0.9920 / 0.9918) and took 16 / 24 / 37 s to
#: quantize on 2 vCPUs; 128 keeps some margin for real weights and collections (NNCF: 300).
CALIBRATION_SIZE = 128
#: Attribute of an int8 cache holding its calibration keys (JSON list); not compared.
CALIBRATION_KEYS_ATTR = "int8_calibration_keys"


def calibration_keys(keys: Sequence[str], n: int = CALIBRATION_SIZE) -> list[str]:
    """The calibration sample of an image collection: its ``n`` keys of smallest
    ``blake2b("tripletsk-int8-calibration:" + key)``, in that order.

    Deterministic given the same keys, whatever order they are listed in; independent of
    NumPy's random generators; spread over the whole collection (not its first folder). Pick
    from the complete listing of the folder, before any sharding, so that every shard of one
    collection is quantized from the same sample.
    """

    def rank(key: str) -> str:
        salted = f"tripletsk-int8-calibration:{key}".encode()
        return hashlib.blake2b(salted, digest_size=16).hexdigest()

    return sorted(set(keys), key=rank)[: int(n)]


def calibration_identity(samples: Sequence[tuple[str, str]]) -> str:
    """The identity of a calibration sample: a digest of its ``(key, content digest)`` pairs.

    ``samples`` are the chosen keys with a digest of each file's bytes (e.g. the blake2b the
    feature cache records for each image). Same keys and same file contents -> same identity.
    """
    h = hashlib.blake2b(digest_size=16)
    for key, content in sorted(samples):
        h.update(json.dumps([key, content]).encode() + b"\n")
    return f"calibration:n={len(samples)}:blake2b={h.hexdigest()}"


@dataclass(frozen=True)
class Int8Model:
    """A quantized backbone: its folder and what an int8 cache records of it."""

    folder: str
    calibration: str  # calibration_identity of the sample
    digest: str  # the quantized model's model_digest
    calibration_keys: tuple[str, ...]

    @property
    def provenance(self) -> dict:
        """The provenance entries of an int8 cache (checked on reuse and merge)."""
        return {"int8_calibration": self.calibration, "int8_model": self.digest}

    @property
    def attrs(self) -> dict:
        """Everything an int8 cache records of the model."""
        return {**self.provenance, CALIBRATION_KEYS_ATTR: json.dumps(list(self.calibration_keys))}


def _decode_sample(
    files: Sequence[ImageFile], image_size: int, max_pixels: int | None, workers: int
) -> tuple[list[str], np.ndarray, str]:
    """The calibration sample of ``files`` (the whole listing): its keys, uint8 pixels and
    identity. Unreadable files are skipped: the next in the ranking takes their place."""
    by_key = {f.key: f for f in files}
    ranked = calibration_keys(list(by_key), n=len(by_key))
    keys, arrays, samples = [], [], []
    with ThreadPoolExecutor(max(1, workers)) as ex:
        start = 0
        while len(keys) < CALIBRATION_SIZE and start < len(ranked):
            chunk = ranked[start : start + CALIBRATION_SIZE - len(keys)]
            start += len(chunk)
            for r in ex.map(lambda k: process_file(by_key[k], image_size, max_pixels), chunk):
                if r.array is not None:
                    keys.append(r.file.key)
                    arrays.append(r.array)
                    samples.append((r.file.key, r.fingerprint[2]))
    if not arrays:
        return keys, np.zeros((0, image_size, image_size, 3), np.uint8), ""
    return keys, np.stack(arrays), calibration_identity(samples)


def quantize_for(
    spec: WeightsSpec,
    image_size: int,
    files: Sequence[ImageFile],
    cache_path: str,
    *,
    max_pixels: int | None = None,
    workers: int = 1,
    quiet: bool = False,
    calibration_keys: Sequence[str] | None = None,
) -> Int8Model:
    """The int8 model of a cache of ``files`` (the complete listing), quantized unless already
    in :func:`models_dir`. ``calibration_keys``: quantize on these (a recorded sample) instead.
    """
    from tripletsk.extraction import quantization

    if calibration_keys is not None:
        wanted = set(calibration_keys)
        files = [f for f in files if f.key in wanted]
    lookup = _Lookup(spec, image_size, files, cache_path, workers)
    found = lookup.find()
    if found is not None:  # no decoding, no Keras model: the usual case after the first run
        return found
    keys, arrays, identity = _decode_sample(files, image_size, max_pixels, workers)
    if not keys:
        raise CacheMismatchError(
            "--precision int8: no readable image to calibrate the quantization on"
        )
    model = build_keras_model(spec, image_size)

    def calibration() -> np.ndarray:  # called only when the model is not cached yet
        if not quiet:
            print(
                f"quantizing the backbone to int8 once, on {len(keys)} of your images; "
                "later runs reuse it",
                file=sys.stderr,
                flush=True,
            )
        return preprocess(arrays, spec.arch)

    folder, manifest = quantization.quantize_openvino_int8(
        model, calibration, models_dir(cache_path), identity, quiet=quiet
    )
    found = Int8Model(folder, identity, manifest["model_digest"], tuple(keys))
    lookup.record(found)
    return found


def find_model(
    spec: WeightsSpec,
    image_size: int,
    files: Sequence[ImageFile],
    cache_path: str,
    *,
    workers: int = 1,
    **_ignored,
) -> Int8Model | None:
    """The int8 model of a cache of ``files`` if it was quantized already (by its lookup
    record, without decoding or building anything), else None."""
    return _Lookup(spec, image_size, files, cache_path, workers).find()


class _Lookup:
    """Finds the quantized model of a collection without decoding its calibration sample or
    building the Keras model: by a record ``lookup-<key>.json`` in :func:`models_dir`, ``<key>``
    a digest of the network's identity (architecture, weights, preprocessing), the image size,
    the quantization settings and the ``(key, content digest)`` of the first ranked calibration
    candidates. The record names the sample actually used (unreadable candidates were replaced
    by later ones: their contents are checked too) and the model's digest, whose folder is
    verified file by file before use. Saves the decoding of 128 images and the model build
    (about 3 s per run with ResNet50 at 224 px)."""

    def __init__(self, spec, image_size, files, cache_path, workers):
        from tripletsk.extraction.quantization import int8_settings

        self.by_key = {f.key: f for f in files}
        self.folder, self.workers = models_dir(cache_path), workers
        first = calibration_keys(list(self.by_key), n=CALIBRATION_SIZE)
        what = {"backbone": spec.arch.identity, "preprocessing": spec.arch.preprocessing,
                "weights": spec.identity, "image_size": int(image_size),
                "settings": int8_settings(versions_only=True),
                "candidates": self._contents(first)}  # fmt: skip
        digest = hashlib.blake2b(json.dumps(what, sort_keys=True).encode(), digest_size=12)
        self.path = os.path.join(self.folder, f"lookup-{digest.hexdigest()}.json")

    def _contents(self, keys) -> list | None:
        from tripletsk.extraction.decode import safe_fingerprint

        with ThreadPoolExecutor(max(1, self.workers)) as ex:
            fps = list(ex.map(lambda k: safe_fingerprint(self.by_key[k]), keys))
        return [[k, fp[2] if fp is not None else None] for k, fp in zip(keys, fps, strict=True)]

    def find(self) -> Int8Model | None:
        from tripletsk.extraction.quantization import find_quantized_model

        try:
            with open(self.path) as f:
                record = json.load(f)
            samples = [tuple(s) for s in record["samples"]]
            if any(k not in self.by_key for k, _ in samples):
                return None
            now = self._contents([k for k, _ in samples])
            if [tuple(s) for s in now] != samples:
                return None
            identity = calibration_identity(samples)
            if identity != record["calibration"]:
                return None
            folder = find_quantized_model(self.folder, record["model"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if folder is None:
            return None
        return Int8Model(folder, identity, record["model"], tuple(k for k, _ in samples))

    def record(self, model: Int8Model) -> None:
        """Write the record of ``model`` (atomically; a failure only costs the next run time)."""
        samples = self._contents(list(model.calibration_keys))
        record = {"samples": samples, "calibration": model.calibration, "model": model.digest}
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(record, f, indent=1)
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.remove(tmp)


def int8_model_of_cache(
    attrs: dict,
    spec: WeightsSpec,
    image_size: int,
    files: Sequence[ImageFile],
    cache_path: str,
    **kwargs,
) -> Int8Model:
    """The quantized model an int8 cache (its ``attrs``) recorded: found in
    :func:`models_dir`, else quantized again on the recorded calibration images.

    Raises
    ------
    CacheMismatchError
        If the model is gone and quantizing again gives another model (calibration images
        changed or gone, other NNCF/OpenVINO versions): re-extract into a new cache.
    """
    from tripletsk.extraction.quantization import find_quantized_model

    digest, calibration = str(attrs.get("int8_model")), str(attrs.get("int8_calibration"))
    keys = tuple(json.loads(attrs.get(CALIBRATION_KEYS_ATTR) or "[]"))
    folder = find_quantized_model(models_dir(cache_path), digest)
    if folder is not None:
        return Int8Model(folder, calibration, digest, keys)
    gone = CacheMismatchError(
        f"{cache_path} holds int8 features of a quantized model that is gone from "
        f"{models_dir(cache_path)}, and quantizing again gives another model (its "
        "calibration images changed or are gone, or NNCF/OpenVINO were upgraded). int8 "
        "features of two models are not mixed: re-extract into a new cache (another "
        "--output, or --replace)."
    )
    # Calibration images changed or gone: quantizing again could only give another model, so
    # refuse before quantizing (it costs as much as extracting hundreds of images).
    if keys and _calibration_now(keys, files, kwargs.get("workers", 1)) != calibration:
        raise gone
    again = quantize_for(spec, image_size, files, cache_path, calibration_keys=keys, **kwargs)
    if (again.calibration, again.digest) != (calibration, digest):
        raise gone
    return again


def _calibration_now(keys: Sequence[str], files: Sequence[ImageFile], workers: int) -> str:
    """The :func:`calibration_identity` of the calibration images ``keys`` as their files are
    now, without decoding them (those gone or unreadable left out, as quantizing would)."""
    from tripletsk.extraction.decode import safe_fingerprint

    by_key = {f.key: f for f in files}
    present = [by_key[k] for k in keys if k in by_key]
    with ThreadPoolExecutor(max(1, workers)) as ex:
        fps = list(ex.map(safe_fingerprint, present))
    return calibration_identity(
        [(f.key, fp[2]) for f, fp in zip(present, fps, strict=True) if fp is not None]
    )


def with_int8_model(opts, old, listing: list, model):
    """The run's options ``opts`` (:class:`~tripletsk.extraction.options.ExtractOptions`) with the
    quantized model of the cache: the one an existing int8 cache (``old``, its header) or the
    unfinished work of an interrupted run recorded, else ``model``, else one quantized on a
    sample of ``listing`` (the whole collection)."""
    from dataclasses import replace

    from tripletsk.cache.roots import journal_meta

    if old is not None and old.provenance.get("compute_dtype") != "int8":
        return opts  # refused by the provenance check: a float cache
    recorded = old.attrs if old is not None else None
    if recorded is None and not opts.replace:  # resume with the model its batches were made with
        journal = (journal_meta(opts.output + ".parts") or {}).get("provenance") or {}
        if journal.get("compute_dtype") == "int8" and journal.get("int8_model"):
            recorded = journal
    kwargs = {"max_pixels": opts.max_pixels, "workers": opts.workers, "quiet": opts.quiet}
    if recorded is not None:
        args = (recorded, opts.spec, opts.image_size, listing, opts.output)
        model = int8_model_of_cache(*args, **kwargs)
    elif model is None:
        model = quantize_for(opts.spec, opts.image_size, listing, opts.output, **kwargs)
    return replace(opts, int8=model.attrs, int8_folder=model.folder)
