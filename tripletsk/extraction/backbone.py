"""The backbone: a frozen network (ResNet50 up to ``avg_pool`` by default), its weights, and
what identifies them.

The network is an :class:`~tripletsk.extraction.architecture.Architecture` (a
``keras.applications`` name or a model file); ``resolve_weights`` turns the ``weights`` argument
into an identity recorded in the cache;
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

from tripletsk._tensorflow import import_tensorflow
from tripletsk.errors import UserError
from tripletsk.extraction.architecture import RESNET50, Architecture, resolve_architecture
from tripletsk.extraction.keras_build import (
    build_model,
    random_init_of,
)
from tripletsk.extraction.parameters import (
    DEFAULTS,
    check_backend,
    check_image_size,
    openvino_runs_other_precision,
)
from tripletsk.extraction.preprocessing import preprocess_array, preprocess_pixels

__all__ = [
    "BACKBONE",
    "FEATURE_DIM",
    "Backbone",
    "WeightsSpec",
    "build_backbone",
    "build_keras_model",
    "cached_backbone",
    "feature_dim",
    "preprocess",
    "provenance_for",
    "resolve_network",
    "resolve_weights",
]

BACKBONE = RESNET50.identity  # the default backbone's provenance
FEATURE_DIM = 2048
#: Keras' md5 of resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 (the ImageNet weights).
IMAGENET_NOTOP_MD5 = "4d473c1dd8becc155b73f8504c6f6626"


@dataclass(frozen=True)
class WeightsSpec:
    """A network to build: its architecture and the weights to give it."""

    kind: str  # "imagenet" | "file" | "none" | "in-file" (a model file's own)
    identity: str  # recorded in the cache and compared on reuse
    path: str | None = None
    seed: int = 0
    source: str = ""  # human-readable: where the weights came from
    arch: Architecture = RESNET50


def _file_digests(path: str) -> tuple[str, str]:
    md5, b2 = hashlib.md5(usedforsecurity=False), hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            md5.update(chunk)
            b2.update(chunk)
    return md5.hexdigest(), b2.hexdigest()


def resolve_weights(weights, seed: int = 0, arch: Architecture = RESNET50) -> WeightsSpec:
    """Turn ``weights`` ("imagenet", "none"/None, or a file path) into an identity for the cache.

    A local copy of Keras' ResNet50 ImageNet weights file is recognised by its hash and
    identified as ``imagenet``, so caches made online and offline are compatible. A model file
    (``arch.is_file``) carries its own weights: ``weights`` must be left at "imagenet".
    """
    is_name = isinstance(weights, str)
    if arch.is_file:
        if not (is_name and weights.lower() == "imagenet"):
            raise UserError(
                f"the backbone model file {arch.path} carries its own weights; weights "
                f"({weights!r}) apply to keras.applications backbones only"
            )
        return WeightsSpec("in-file", "in-file", None, 0, "the backbone model file", arch)
    if weights is None or (is_name and weights.lower() == "none"):
        seed = int(seed)
        ident = f"none:seed={seed}:init={random_init_of(arch)}"
        return WeightsSpec("none", ident, None, seed, "none", arch)
    if is_name and weights.lower() == "imagenet":
        return WeightsSpec("imagenet", "imagenet", None, 0, "imagenet (Keras download)", arch)
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise UserError(
            f"weights file not found: {path}; weights must be 'imagenet', 'none', or the "
            f"path of a {arch.name} weights file (.h5 / .weights.h5)"
        )
    md5, b2 = _file_digests(path)
    if md5 == IMAGENET_NOTOP_MD5 and arch == RESNET50:
        return WeightsSpec("file", "imagenet", path, 0, os.path.abspath(path), arch)
    return WeightsSpec("file", f"file:blake2b={b2}", path, 0, os.path.abspath(path), arch)


def resolve_network(
    weights=DEFAULTS["weights"],
    seed: int = DEFAULTS["seed"],
    backbone=DEFAULTS["backbone"],
    layer: str | None = DEFAULTS["layer"],
    preprocessing: str | None = DEFAULTS["preprocessing"],
) -> WeightsSpec:
    """The network of extraction arguments: :func:`resolve_architecture` with
    :func:`resolve_weights`."""
    return resolve_weights(weights, seed, resolve_architecture(backbone, layer, preprocessing))


def provenance_for(spec: WeightsSpec, image_size: int, backend: str = "tensorflow",
                   precision: str = "float32", *, int8: dict | None = None,
                   choice: str | None = None) -> dict:  # fmt: skip
    """The attributes that identify the features a model produces.

    ``compute_dtype`` takes part in the mismatch check: bfloat16, float32 and int8 features are
    never mixed in one cache. The backend is recorded but not checked, since TensorFlow and
    OpenVINO agree to float32 rounding at the same precision. ``int8`` (int8 caches only) adds
    ``int8_calibration`` and ``int8_model``, also checked: the quantized model depends on its
    calibration images (:mod:`tripletsk.extraction.int8`). ``choice`` (``backend_choice``,
    descriptive): how the runner was chosen (``backend="auto"``'s timings and reason).
    """
    return {
        **spec.arch.provenance(),
        "weights": spec.identity,
        "image_size": int(image_size),
        "compute_dtype": precision,
        "backend": backend,
        "weights_source": spec.source,
        **(int8 or {}),
        **({"backend_choice": choice} if choice else {}),
    }


def preprocess(images: np.ndarray, arch: Architecture = RESNET50) -> np.ndarray:
    """uint8 images -> what the model takes (float32, ``arch``'s ``preprocess_input``)."""
    return preprocess_array(images, arch.mode)


class Backbone:
    """A frozen network called through one compiled ``tf.function`` with a fixed batch shape.

    Calling it with a uint8 array (n, size, size, 3) returns (n, dim) float32 features. Batches
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
        ov_folder: str | None = None,
    ):
        arch = spec.arch

        self.model, self.spec = model, spec
        self.image_size, self.batch_size = int(image_size), int(batch_size)
        self.provenance = provenance_for(spec, image_size, backend, precision)
        if (backend, precision) == ("tensorflow", "float32"):
            tf = import_tensorflow()
            sig = [tf.TensorSpec([self.batch_size, self.image_size, self.image_size, 3], tf.uint8)]

            def forward(x):
                return model(preprocess_pixels(tf.cast(x, tf.float32), arch), training=False)

            compiled = tf.function(forward, input_signature=sig, jit_compile=False)
            self._fn = lambda x: compiled(x).numpy()
        else:
            self._fn = _backend_runner(
                model, arch, backend, precision, self.batch_size, int8_folder or ov_folder
            )
        # OpenVINO from a model folder runs it alone (model is None): its output says the width.
        self.dim = int(model.output_shape[-1]) if model is not None else self._fn.dim

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


def _backend_runner(model, arch: Architecture, backend: str, precision: str, batch_size: int,
                    folder: str | None = None):  # fmt: skip
    """uint8 batch -> features through :mod:`tripletsk.extraction.runners` (OpenVINO, or TF
    bfloat16); OpenVINO: the model in ``folder`` (int8: quantized; float: converted) if given, else
    ``model`` converted now."""
    from tripletsk.extraction import quantization
    from tripletsk.extraction import runners as backends

    if precision == "int8":
        run = quantization.load_openvino_int8_runner(folder, batch_size=batch_size)
    elif backend == "openvino":
        try:
            if folder is not None:
                run = backends.load_openvino_runner(folder, precision, batch_size=batch_size)
            else:
                run = backends.make_openvino_runner(model, precision, batch_size=batch_size)
        except ImportError as e:
            raise UserError(str(e)) from None
        if run.precision != precision:  # the cache would record a precision never used
            raise openvino_runs_other_precision(precision, run.precision)
    else:
        if precision == "bfloat16":
            backends.warn_if_bfloat16_is_emulated("Feature extraction")
        run = backends.make_tensorflow_runner(model, precision)

    def runner(x):
        return run(preprocess(x, arch))

    runner.dim = getattr(run, "dim", None)  # OpenVINO runners know their output width
    return runner


def build_backbone(
    weights=DEFAULTS["weights"],
    image_size: int = DEFAULTS["image_size"],
    seed: int = DEFAULTS["seed"],
    batch_size: int = DEFAULTS["batch_size"],
    backend: str = "tensorflow",
    precision: str = "float32",
    int8_folder: str | None = None,
    models_dir: str | None = None,
) -> Backbone:
    """Build the frozen backbone (``weights``' architecture) and compile its forward function.

    ``weights``: ``"imagenet"`` (Keras downloads and caches the file), ``"none"``/``None`` (random
    initialisation from ``seed``, identical in every process), or a path to a weights file.
    ``int8_folder``: with ``precision="int8"``, the quantized model to run
    (:func:`tripletsk.extraction.quantization.quantize_openvino_int8`). ``models_dir``: with
    OpenVINO at float32/bfloat16, where the converted model is kept (found there, or converted once
    and put there: :mod:`tripletsk.extraction.openvino_float`); None converts it in this process.

    Raises
    ------
    WeightsUnavailableError
        If the ImageNet weights cannot be downloaded (offline); the message says what to pass.
    """
    spec = weights if isinstance(weights, WeightsSpec) else resolve_weights(weights, seed)
    backend, precision = check_backend(backend, precision)
    if precision == "int8" and int8_folder is None:
        raise ValueError("precision int8 needs int8_folder, the quantized model")
    ov_folder = None
    if backend == "openvino" and precision != "int8" and models_dir is not None:
        from tripletsk.extraction.openvino_float import float_model_folder

        build = lambda: build_keras_model(spec, image_size)  # noqa: E731
        ov_folder = float_model_folder(spec, image_size, models_dir, build)
    # A model folder is all OpenVINO needs: no Keras model, so no TensorFlow in the process.
    needs_keras = precision != "int8" and ov_folder is None
    model = build_keras_model(spec, image_size) if needs_keras else None
    return Backbone(model, spec, image_size, batch_size, backend, precision,
                    int8_folder=int8_folder, ov_folder=ov_folder)  # fmt: skip


def build_keras_model(spec: WeightsSpec, image_size: int):
    """The frozen Keras feature model of ``spec`` at ``image_size`` (preprocessed pixels in,
    features out). The last one built is kept: a run asks for it more than once."""
    key = (spec, int(image_size))
    with _MODEL_LOCK:
        if _LAST_MODEL.get("key") != key:
            _LAST_MODEL.clear()
            check_image_size(image_size)
            _LAST_MODEL.update(key=key, model=build_model(spec, int(image_size)))
        return _LAST_MODEL["model"]


_LAST_MODEL: dict = {}
_MODEL_LOCK = threading.Lock()


def feature_dim(spec: WeightsSpec, image_size: int) -> int:
    """The length of ``spec``'s feature vectors (builds the model unless it is ResNet50)."""
    if spec.arch == RESNET50:
        return FEATURE_DIM
    return int(build_keras_model(spec, image_size).output_shape[-1])


_BACKBONES: dict = {}
_BACKBONES_LOCK = threading.Lock()


def cached_backbone(spec: WeightsSpec, image_size: int, batch_size: int,
                    backend: str = "tensorflow", precision: str = "float32",
                    int8_folder: str | None = None,
                    models_dir: str | None = None) -> Backbone:  # fmt: skip
    """Build a backbone once per (weights, image size, batch size, backend, precision, quantized
    model, models folder) in this process."""
    key = _backbone_key(spec, image_size, batch_size, backend, precision, int8_folder, models_dir)
    with _BACKBONES_LOCK:
        bb = _BACKBONES.get(key)
        if bb is None:
            bb = build_backbone(
                spec, image_size, spec.seed, batch_size, backend, precision, int8_folder,
                models_dir,
            )  # fmt: skip
            if backend == "tensorflow":  # trace now (OpenVINO compiled when it was built)
                bb(np.zeros((1, image_size, image_size, 3), np.uint8))
            _BACKBONES.clear()  # keep one model in memory
            _BACKBONES[key] = bb
        return bb


def _backbone_key(spec, image_size, batch_size, backend, precision, int8_folder, models_dir):
    if backend != "openvino" or precision == "int8":
        models_dir = None  # (only OpenVINO float models are kept there)
    return (spec, int(image_size), int(batch_size), backend, precision, int8_folder, models_dir)


def keep_backbone(bb: Backbone, models_dir: str | None = None,
                  int8_folder: str | None = None) -> None:  # fmt: skip
    """Make ``bb`` (built elsewhere, e.g. while timing runners) the backbone
    :func:`cached_backbone` returns for its settings."""
    prov = bb.provenance
    key = _backbone_key(bb.spec, bb.image_size, bb.batch_size, prov["backend"],
                        prov["compute_dtype"], int8_folder, models_dir)  # fmt: skip
    with _BACKBONES_LOCK:
        _BACKBONES.clear()
        _BACKBONES[key] = bb
