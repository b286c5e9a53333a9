"""The backbone: a frozen ResNet50 up to ``avg_pool``, its weights, and what identifies them.

``resolve_weights`` turns the ``weights`` argument into an identity recorded in the cache;
``provenance_for`` is everything that identifies the features a model produces (a cache never
mixes features of two provenances); ``build_backbone`` builds the model and compiles its forward
function. TensorFlow is imported only when a model is built.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass

import numpy as np

from tripletsk._tensorflow import import_keras, import_tensorflow
from tripletsk.errors import UserError, WeightsUnavailableError
from tripletsk.extraction.decode import PREPROCESSING

__all__ = [
    "BACKBONE",
    "BACKENDS",
    "FEATURE_DIM",
    "Backbone",
    "WeightsSpec",
    "build_backbone",
    "build_keras_model",
    "cached_backbone",
    "check_backend",
    "preprocess",
    "provenance_for",
    "resolve_weights",
]

BACKBONE = "keras.applications.ResNet50(include_top=False, pooling='avg')"
FEATURE_DIM = 2048
RANDOM_INIT = "numpy-glorot-uniform-v1"
#: Keras' md5 of resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 (the ImageNet weights).
IMAGENET_NOTOP_MD5 = "4d473c1dd8becc155b73f8504c6f6626"
IMAGENET_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"


@dataclass(frozen=True)
class WeightsSpec:
    kind: str  # "imagenet" | "file" | "none"
    identity: str  # recorded in the cache and compared on reuse
    path: str | None = None
    seed: int = 0
    source: str = ""  # human-readable: where the weights came from


def _file_digests(path: str) -> tuple[str, str]:
    md5, b2 = hashlib.md5(usedforsecurity=False), hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            md5.update(chunk)
            b2.update(chunk)
    return md5.hexdigest(), b2.hexdigest()


def resolve_weights(weights, seed: int = 0) -> WeightsSpec:
    """Turn ``weights`` ("imagenet", "none"/None, or a file path) into an identity for the cache.

    A local copy of Keras' ImageNet weights file is recognised by its hash and identified as
    ``imagenet``, so caches made online and offline are compatible.
    """
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        seed = int(seed)
        return WeightsSpec("none", f"none:seed={seed}:init={RANDOM_INIT}", None, seed, "none")
    if isinstance(weights, str) and weights.lower() == "imagenet":
        return WeightsSpec("imagenet", "imagenet", None, 0, "imagenet (Keras download)")
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise UserError(
            f"weights file not found: {path}; weights must be 'imagenet', 'none', or the "
            "path of a ResNet50 weights file (.h5 / .weights.h5)"
        )
    md5, b2 = _file_digests(path)
    if md5 == IMAGENET_NOTOP_MD5:
        return WeightsSpec("file", "imagenet", path, 0, os.path.abspath(path))
    return WeightsSpec("file", f"file:blake2b={b2}", path, 0, os.path.abspath(path))


BACKENDS = ("tensorflow", "openvino")


def check_backend(backend: str, precision: str) -> tuple[str, str]:
    """Validated ``(backend, precision)``; precision spelled ``float32``, ``bfloat16`` or
    ``int8`` (OpenVINO only).

    OpenVINO bfloat16 is refused up front on a CPU without bfloat16 instructions, where
    OpenVINO would compute in float32 while the cache recorded bfloat16.
    """
    from tripletsk.backends import check_precision, cpu_lacks_bfloat16, normalize_precision

    if backend not in BACKENDS:
        raise UserError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    try:
        precision = normalize_precision(precision)
    except ValueError as e:  # said here without check_precision's CLI flag name
        raise UserError(str(e)) from None
    precision = check_precision(backend, precision)  # int8: OpenVINO only
    # Known up front only where the CPU's flags are readable (Linux); elsewhere the runner's
    # own report of the precision OpenVINO chose is checked when it is built.
    if (backend, precision) == ("openvino", "bfloat16") and cpu_lacks_bfloat16():
        raise _openvino_runs_other_precision(precision, "float32")
    return backend, precision


def _openvino_runs_other_precision(asked: str, chosen: str) -> UserError:
    return UserError(
        f"precision {asked!r}: OpenVINO computes in {chosen} on this CPU (it has no "
        "AVX512-BF16 or AMX). Use precision 'float32': OpenVINO float32 ran at 1.75x "
        "TensorFlow float32 on such a CPU (benchmarks/README.md)."
    )


def provenance_for(spec: WeightsSpec, image_size: int, backend: str = "tensorflow",
                   precision: str = "float32", *, int8: dict | None = None) -> dict:  # fmt: skip
    """The attributes that identify the features a model produces.

    ``compute_dtype`` takes part in the mismatch check: bfloat16, float32 and int8 features are
    never mixed in one cache. The backend is recorded but not checked, since TensorFlow and
    OpenVINO agree to float32 rounding at the same precision. ``int8`` (int8 caches only) adds
    ``int8_calibration`` and ``int8_model``, also checked: the quantized model depends on its
    calibration images (:mod:`tripletsk.extraction.int8`).
    """
    return {
        "backbone": BACKBONE,
        "weights": spec.identity,
        "image_size": int(image_size),
        "preprocessing": PREPROCESSING,
        "compute_dtype": precision,
        "backend": backend,
        "weights_source": spec.source,
        **(int8 or {}),
    }


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 images -> what the model takes (float32, ResNet50's ``preprocess_input``)."""
    import_keras()
    from keras.applications.resnet50 import preprocess_input

    return preprocess_input(np.asarray(images, dtype=np.float32))


def _seeded_init(model, seed: int) -> None:
    """Set every weight from a NumPy generator seeded by (seed, variable path): reproducible in
    any process, independent of TensorFlow's global random state."""
    import zlib

    for v in model.weights:
        path = getattr(v, "path", v.name)
        kind = path.rsplit("/", 1)[-1].split(":")[0]
        shape = tuple(int(s) for s in v.shape)
        rng = np.random.default_rng([int(seed), zlib.crc32(path.encode("utf-8"))])
        if kind == "kernel":
            receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
            fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
            lim = np.sqrt(6.0 / (fan_in + fan_out))
            val = rng.uniform(-lim, lim, size=shape)
        elif kind in ("gamma", "moving_variance"):
            val = np.ones(shape)
        else:  # bias, beta, moving_mean
            val = np.zeros(shape)
        v.assign(val.astype(np.float32))


class Backbone:
    """A frozen ResNet50 called through one compiled ``tf.function`` with a fixed batch shape.

    Calling it with a uint8 array (n, size, size, 3) returns (n, 2048) float32 features. Batches
    are zero-padded to ``batch_size`` so there is one trace and every image's features are the
    same whatever else is in its batch.
    """

    def __init__(
        self,
        model,
        spec: WeightsSpec,
        image_size: int,
        batch_size: int,
        backend: str = "tensorflow",
        precision: str = "float32",
        *,
        int8_folder: str | None = None,
    ):
        tf = import_tensorflow()
        from keras.applications.resnet50 import preprocess_input

        self.model, self.spec = model, spec
        self.image_size, self.batch_size = int(image_size), int(batch_size)
        self.provenance = provenance_for(spec, image_size, backend, precision)
        self.dim = int(model.output_shape[-1])
        if (backend, precision) == ("tensorflow", "float32"):
            sig = [tf.TensorSpec([self.batch_size, self.image_size, self.image_size, 3], tf.uint8)]

            def forward(x):
                return model(preprocess_input(tf.cast(x, tf.float32)), training=False)

            compiled = tf.function(forward, input_signature=sig, jit_compile=False)
            self._fn = lambda x: compiled(x).numpy()
        else:
            self._fn = _backend_runner(model, backend, precision, self.batch_size, int8_folder)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.uint8)
        s, b = self.image_size, self.batch_size
        if images.ndim != 4 or images.shape[1:] != (s, s, 3):
            raise ValueError(f"expected (n, {s}, {s}, 3) uint8 images, got {images.shape}")
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), b):
            chunk = images[start : start + b]
            m = len(chunk)
            if m < b:
                chunk = np.concatenate([chunk, np.zeros((b - m, s, s, 3), np.uint8)])
            out[start : start + m] = self._fn(chunk)[:m]
        return out


def _backend_runner(
    model, backend: str, precision: str, batch_size: int, int8_folder: str | None = None
):
    """uint8 batch -> features through :mod:`tripletsk.backends` (OpenVINO, or TF bfloat16);
    int8: the quantized model in ``int8_folder``."""
    from tripletsk import backends, quantization

    if precision == "int8":
        run = quantization.load_openvino_int8_runner(int8_folder, batch_size=batch_size)
    elif backend == "openvino":
        try:
            run = backends.make_openvino_runner(model, precision, batch_size=batch_size)
        except ImportError as e:
            raise UserError(str(e)) from None
        if run.precision != precision:  # the cache would record a precision never used
            raise _openvino_runs_other_precision(precision, run.precision)
    else:
        if precision == "bfloat16":
            backends.warn_if_bfloat16_is_emulated("Feature extraction")
        run = backends.make_tensorflow_runner(model, precision)
    return lambda x: run(preprocess(x))


def build_backbone(
    weights="imagenet",
    image_size: int = 224,
    seed: int = 0,
    batch_size: int = 32,
    backend: str = "tensorflow",
    precision: str = "float32",
    int8_folder: str | None = None,
) -> Backbone:
    """Build the frozen ResNet50 backbone and compile its forward function.

    ``weights``: ``"imagenet"`` (Keras downloads and caches the file), ``"none"``/``None`` (random
    initialisation from ``seed``, identical in every process), or a path to a weights file.
    ``int8_folder``: with ``precision="int8"``, the quantized model to run
    (:func:`tripletsk.quantization.quantize_openvino_int8`).

    Raises
    ------
    WeightsUnavailableError
        If the ImageNet weights cannot be downloaded (offline); the message says what to pass.
    """
    spec = weights if isinstance(weights, WeightsSpec) else resolve_weights(weights, seed)
    backend, precision = check_backend(backend, precision)
    if precision == "int8" and int8_folder is None:
        raise ValueError("precision int8 needs int8_folder, the quantized model")
    model = build_keras_model(spec, image_size)
    return Backbone(
        model, spec, image_size, batch_size, backend, precision, int8_folder=int8_folder
    )


def build_keras_model(spec: WeightsSpec, image_size: int):
    """The frozen Keras ResNet50 (to ``avg_pool``) of ``spec`` at ``image_size``."""
    image_size = int(image_size)
    check_image_size(image_size)
    keras = import_keras()

    shape = (image_size, image_size, 3)
    if spec.kind == "imagenet":
        try:
            model = keras.applications.ResNet50(
                include_top=False, weights="imagenet", input_shape=shape, pooling="avg"
            )
        except Exception as e:
            raise WeightsUnavailableError(
                f"cannot get the ImageNet weights for ResNet50 ({type(e).__name__}: {e}). "
                f"Offline, download {IMAGENET_NOTOP_FILE} elsewhere and pass its path as the "
                f"weights (weights='path/to/{IMAGENET_NOTOP_FILE}'), or use weights='none' for "
                "random weights (for testing only)."
            ) from e
    elif spec.kind == "file":
        model = keras.applications.ResNet50(
            include_top=False, weights=None, input_shape=shape, pooling="avg"
        )
        try:
            model.load_weights(spec.path)
        except Exception as e:
            raise UserError(
                f"could not load ResNet50 weights from {spec.path} ({type(e).__name__}: {e}); "
                "the file must hold ResNet50 weights without the top, e.g. "
                f"{IMAGENET_NOTOP_FILE} or a file written by model.save_weights()"
            ) from e
    else:
        model = keras.applications.ResNet50(
            include_top=False, weights=None, input_shape=shape, pooling="avg"
        )
        _seeded_init(model, spec.seed)
    model.trainable = False
    return model


def check_image_size(image_size: int) -> None:
    """Refuse an image size ResNet50 cannot take (its five stride-2 stages need 32 pixels)."""
    if image_size < 32:
        raise UserError(f"image_size must be at least 32 for ResNet50, got {image_size}")


_BACKBONES: dict = {}
_BACKBONES_LOCK = threading.Lock()


def cached_backbone(spec: WeightsSpec, image_size: int, batch_size: int,
                    backend: str = "tensorflow", precision: str = "float32",
                    int8_folder: str | None = None) -> Backbone:  # fmt: skip
    """Build a backbone once per (weights, image size, batch size, backend, precision, quantized
    model) in this process."""
    key = (spec.identity, spec.path, int(image_size), int(batch_size), backend, precision,
           int8_folder)  # fmt: skip
    with _BACKBONES_LOCK:
        bb = _BACKBONES.get(key)
        if bb is None:
            bb = build_backbone(
                spec, image_size, spec.seed, batch_size, backend, precision, int8_folder
            )
            bb(np.zeros((1, image_size, image_size, 3), np.uint8))  # trace now
            _BACKBONES.clear()  # keep one model in memory
            _BACKBONES[key] = bb
        return bb
