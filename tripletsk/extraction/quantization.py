"""int8 backbones: NNCF post-training quantization of a Keras model, and its OpenVINO runners.

A backbone is quantized once per (architecture, weights, input size, calibration images, NNCF
and OpenVINO versions) and kept as an OpenVINO model folder keyed by a digest of all of that
(:mod:`tripletsk.extraction.model_folders`: used only when every file matches its recorded
digest). Which images calibrate a cache's model: :mod:`tripletsk.extraction.int8`. The runners
are those of :mod:`tripletsk.extraction.runners`. Why these settings, measured: that module's
docstring. Needs ``nncf`` (``pip install "tripletsk[openvino]"``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable

import numpy as np

from tripletsk.errors import UserError
from tripletsk.extraction.model_folders import MANIFEST, read_manifest, save_model_folder
from tripletsk.extraction.runners import (
    _backbone_to_openvino,
    _compile_runner,
    _import_nncf,
    _import_openvino,
    _openvino_config,
)

#: Bump when the quantization recipe or the cache layout changes: old cached models are unused.
INT8_FORMAT = 1
#: On how many of the calibration images a new quantized model's features are compared with
#: TensorFlow float32's (recorded in its manifest as ``agreement``; ``backend="auto"`` reads it).
AGREEMENT_IMAGES = 32


def _keras_identity(model) -> str:
    """A digest of a Keras model's architecture (layer classes and configs, names left out)
    and of its weights' values: the same backbone with the same weights -> the same digest."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((tuple(model.input_shape), tuple(model.output_shape))).encode())
    for layer in model.layers:
        config = {k: v for k, v in layer.get_config().items() if k != "name"}
        h.update(json.dumps([type(layer).__name__, config], sort_keys=True, default=str).encode())
    for w in model.weights:
        value = np.ascontiguousarray(np.asarray(w.numpy()))
        h.update(repr((value.shape, value.dtype.str)).encode())
        h.update(value.tobytes())
    return h.hexdigest()


def _quantize(keras_model, calibration: np.ndarray, settings: dict, quiet: bool = False):
    """NNCF post-training quantization of ``keras_model`` (dynamic batch) on ``calibration``;
    ``quiet``: without NNCF's progress bars."""
    import logging

    nncf = _import_nncf()
    nncf.set_log_level(logging.ERROR)
    ov_model = _backbone_to_openvino(keras_model)
    # One image per item: NNCF collects statistics per item, and batches of several images
    # would be reduced differently (it warns that batch-wise statistics can be inaccurate).
    items = [calibration[i : i + 1] for i in range(len(calibration))]
    with _quiet_rich() if quiet else contextlib.nullcontext():
        return nncf.quantize(
            ov_model,
            nncf.Dataset(items),
            preset=nncf.QuantizationPreset(settings["preset"]),
            target_device=nncf.TargetDevice.CPU,
            subset_size=len(items),
            fast_bias_correction=settings["fast_bias_correction"],
            advanced_parameters=nncf.AdvancedQuantizationParameters(
                overflow_fix=nncf.OverflowFix(settings["overflow_fix"])
            ),
        )


@contextlib.contextmanager
def _quiet_rich():
    """NNCF draws its progress bars with rich on rich's global console, and has no switch of
    its own: that console is silenced meanwhile."""
    try:
        import rich
    except ImportError:  # no rich, no progress bars
        yield
        return
    console = rich.get_console()
    before, console.quiet = console.quiet, True
    try:
        yield
    finally:
        console.quiet = before


def int8_settings(versions_only: bool = False) -> dict:
    """How models are quantized (part of a quantized model's identity). ``versions_only``:
    the NNCF and OpenVINO versions from the package metadata, without importing them."""
    if versions_only:
        from importlib.metadata import PackageNotFoundError, version

        with contextlib.suppress(PackageNotFoundError):  # else: the import's clear message
            return {"format": INT8_FORMAT, "nncf": version("nncf"),
                    "openvino": version("openvino")}  # fmt: skip
    return _int8_settings()


def _int8_settings() -> dict:
    ov, nncf = _import_openvino(), _import_nncf()
    # PERFORMANCE preset (symmetric int8), NNCF's fast bias correction. Overflow fix on every
    # layer (weights in 7 bits): CPUs without VNNI (AVX2 only, e.g. Zen 3) multiply u8 x s8
    # pairs into saturating int16, so with NNCF's default (the first layer only) their int8
    # features differ from those of VNNI/AMX CPUs (ResNet50, centred cosine to TF fp32 on
    # AVX2: min 0.959, AMX: 0.985). With the fix both gave the same features (min 0.9616,
    # mean 0.9920 on both), so caches made on different machines (shards, Dask) agree; the
    # cost is on VNNI/AMX CPUs (mean 0.9970 without it). Without any fix: mean 0.70 on AVX2.
    return {"format": INT8_FORMAT, "preset": "performance", "fast_bias_correction": True,
            "overflow_fix": "enable",
            "nncf": nncf.__version__, "openvino": ov.__version__.split("-")[0]}  # fmt: skip


def quantize_openvino_int8(
    keras_model,
    calibration,
    cache_dir: str | os.PathLike,
    calibration_id: str | None = None,
    quiet: bool = False,
) -> tuple[str, dict]:
    """The folder of ``keras_model`` quantized to int8 with NNCF, quantizing only if it is not
    cached yet; with the manifest of that folder.

    Parameters
    ----------
    keras_model : keras.Model
        The float32 backbone (single NHWC input, e.g. ResNet50 to ``avg_pool``).
    calibration : ndarray of shape (n, h, w, 3), or a callable returning one
        Calibration images as the model takes them (after ``preprocess_input``). A callable is
        only called when the model has to be quantized (decoding images takes time).
    cache_dir : path
        Where quantized models are kept, one subfolder ``openvino-int8-<key>`` each, ``<key>``
        a digest of the model's architecture and weight values, its input size, the calibration
        identity, the quantization settings and the NNCF and OpenVINO versions.
    calibration_id : str or None
        The identity of the calibration sample
        (:func:`~tripletsk.extraction.int8.calibration_identity`); None computes a
        digest of ``calibration``'s values (then ``calibration`` must be an array).
    quiet : bool, default False
        Hide NNCF's progress bars (``extract-features -q``).

    Returns
    -------
    folder : str
        Holds ``model.xml``/``model.bin`` (the quantized OpenVINO IR, dynamic batch, float32
        input) and ``manifest.json``.
    manifest : dict
        ``key``, ``identity`` (what the key is a digest of), ``files`` (digest of each file)
        and ``model_digest`` (a digest of the quantized model's files: record it with features).

    Notes
    -----
    The model is written to a temporary folder renamed into place when complete, so a crash
    or a concurrent writer never leaves a partial model under the final name. A cached folder
    is used only if its manifest names the same key and every file's digest matches; a
    damaged one is replaced.
    """
    if calibration_id is None:
        if callable(calibration):
            raise ValueError("pass calibration_id when calibration is a callable")
        arr = np.ascontiguousarray(calibration, dtype=np.float32)
        h = hashlib.blake2b(arr.tobytes(), digest_size=16)
        h.update(repr(arr.shape).encode())
        calibration_id = f"array:blake2b={h.hexdigest()}"
    identity = {"model": _keras_identity(keras_model), "calibration": str(calibration_id),
                **_int8_settings()}  # fmt: skip
    key = hashlib.blake2b(json.dumps(identity, sort_keys=True).encode(), digest_size=12).hexdigest()
    cache_dir = os.fspath(cache_dir)
    folder = os.path.join(cache_dir, f"openvino-int8-{key}")
    manifest = read_manifest(folder, key)
    if manifest is not None:
        return folder, manifest

    data = calibration() if callable(calibration) else calibration
    data = np.asarray(data, dtype=np.float32)
    expected = tuple(keras_model.input_shape[1:])
    if data.ndim != 4 or data.shape[1:] != expected or len(data) == 0:
        raise ValueError(f"calibration must be (n, *{expected}) images, got {data.shape}")
    quantized = _quantize(keras_model, data, identity, quiet)
    agreement = _agreement(keras_model, quantized, data[:AGREEMENT_IMAGES])

    manifest = save_model_folder(quantized, folder, key, identity, agreement=agreement)
    return folder, manifest


def _agreement(keras_model, quantized, images: np.ndarray) -> dict:
    """How the quantized model's features agree with TensorFlow float32's on ``images`` (some
    of the calibration images): the least and the mean cosine, image by image."""
    from tripletsk.extraction.runners import make_tensorflow_runner

    ref = np.asarray(make_tensorflow_runner(keras_model)(images), np.float64)
    got = np.asarray(_compile_runner(quantized, {}, "int8")(images), np.float64)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    cos = np.where(den > 0, (ref * got).sum(axis=1) / np.where(den > 0, den, 1.0), 1.0)
    return {"reference": "tensorflow/float32", "images": len(images),
            "least_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}  # fmt: skip


def model_agreement(folder: str | os.PathLike) -> float | None:
    """The least cosine between a quantized model's features and TensorFlow float32's on its
    calibration images, as measured when it was quantized (None: not recorded)."""
    try:
        with open(os.path.join(os.fspath(folder), MANIFEST)) as f:
            return float(json.load(f)["agreement"]["least_cosine"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def find_quantized_model(cache_dir: str | os.PathLike, model_digest: str) -> str | None:
    """The folder in ``cache_dir`` holding an intact quantized model of ``model_digest``, or
    None: how a cache that recorded the model's digest finds it again, even after NNCF or
    OpenVINO were upgraded (which changes the key of newly quantized models)."""
    try:
        entries = sorted(os.scandir(cache_dir), key=lambda e: e.name)
    except OSError:
        return None
    for entry in entries:
        if not entry.name.startswith("openvino-int8-") or not entry.is_dir():
            continue
        manifest = read_manifest(entry.path, entry.name[len("openvino-int8-") :])
        if manifest is not None and manifest.get("model_digest") == model_digest:
            return entry.path
    return None


def load_openvino_int8_runner(
    folder: str | os.PathLike,
    batch_size: int | None = None,
    num_threads: int | None = None,
    performance_hint: str = "THROUGHPUT",
    pinning: bool | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """A runner of the quantized model in ``folder`` (from :func:`quantize_openvino_int8`).

    For workers (processes, Dask) that should use a model quantized once by the caller: they
    need no Keras model and no calibration images. Other arguments as in
    :func:`make_openvino_runner`. The runner's ``model_digest`` identifies the model.

    Raises
    ------
    UserError
        If ``folder`` does not hold a complete, intact quantized model.
    """
    ov = _import_openvino()
    folder = os.fspath(folder)
    try:
        with open(os.path.join(folder, MANIFEST)) as f:
            key = json.load(f).get("key")
    except (OSError, ValueError, AttributeError):
        key = None
    manifest = read_manifest(folder, key) if key else None
    if manifest is None:
        raise UserError(
            f"{folder} does not hold a complete quantized model (missing or damaged files); "
            "delete it and quantize again."
        )
    ov_model = ov.Core().read_model(os.path.join(folder, "model.xml"))
    config = _openvino_config(num_threads, pinning)
    run = _compile_runner(ov_model, config, "int8", batch_size, performance_hint)
    run.model_digest, run.model_folder = manifest["model_digest"], folder
    return run


def make_openvino_int8_runner(
    keras_model,
    calibration,
    cache_dir: str | os.PathLike,
    calibration_id: str | None = None,
    batch_size: int | None = None,
    num_threads: int | None = None,
    performance_hint: str = "THROUGHPUT",
    pinning: bool | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """An OpenVINO CPU runner of ``keras_model`` quantized to int8 with NNCF.

    Quantizes on the first use for a given backbone, weights, input size and calibration
    sample, and reuses the quantized model kept in ``cache_dir`` after that
    (:func:`quantize_openvino_int8`, whose parameters these are). The runner, called like
    that of :func:`make_openvino_runner`, has ``precision == "int8"``, ``backend ==
    "openvino"``, ``model_digest`` (record it with the features) and ``model_folder``.

    Calibration sample (what the extraction uses, :mod:`tripletsk.extraction.int8`): the
    ``CALIBRATION_SIZE`` images of ``calibration_keys`` of the whole collection, decoded and
    preprocessed as for extraction, identified by ``calibration_identity`` of their keys and
    content digests.

    Raises
    ------
    UserError
        If NNCF (or OpenVINO) is not installed; the message says how to install it.
    """
    folder, _ = quantize_openvino_int8(keras_model, calibration, cache_dir, calibration_id)
    return load_openvino_int8_runner(folder, batch_size, num_threads, performance_hint, pinning)
