"""Export a fitted model as one standalone model: RGB pixels in, L2-normalised embedding out.

The exported model chains what ``extract-features`` and ``transform`` do: the preprocessing of
the feature cache's backbone, the frozen backbone rebuilt from the cache's provenance, the
standardisation and the dense head (inference mode: no dropout) and the final L2 normalisation.
It is made of built-in Keras layers only, so a ``.keras`` file loads with
``keras.saving.load_model`` alone (``safe_mode=True``, no tripletsk, no custom objects). Formats:
``.keras``, a TensorFlow SavedModel folder and OpenVINO IR (``.xml`` + ``.bin``); see
``docs/export.md``.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from tripletsk._tensorflow import import_keras
from tripletsk.errors import CacheMismatchError, UsageError, UserError
from tripletsk.extraction.preprocessing import PREPROCESSING_MODES
from tripletsk.outputs import (
    Output,
    OutputChangedError,
    check_planned,
    plan_output,
    publish,
    temporary_path,
    writing,
)
from tripletsk.training.head import HeadWeights, build_keras_head

__all__ = [
    "FORMATS",
    "build_export_model",
    "export_format",
    "export_model",
    "fold_standardization",
    "preprocessing_affine",
    "preprocessing_layers",
]

#: Export formats, chosen by ``format=`` or by the output's suffix (see :func:`export_format`).
FORMATS = ("keras", "savedmodel", "openvino")
_SUFFIXES = {".keras": "keras", ".xml": "openvino"}
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN, _TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def export_format(output: str | os.PathLike, format: str | None = None) -> str:
    """The format to write ``output`` in: ``format`` if given, else from the suffix.

    ``.keras`` is a Keras file, ``.xml`` OpenVINO IR, and a path without suffix (or ending in
    ``/``, or an existing folder not named ``.keras``/``.xml``) a TensorFlow SavedModel folder.

    Examples
    --------
    >>> export_format("model.keras"), export_format("model.xml"), export_format("served/")
    ('keras', 'openvino', 'savedmodel')
    >>> export_format("model.onnx")
    Traceback (most recent call last):
    ...
    tripletsk.errors.UsageError: model.onnx: unknown export suffix '.onnx'; ...
    """
    path = os.fspath(output)
    suffix = os.path.splitext(path.rstrip("/" + os.sep))[1].lower()
    if format is not None:
        if format not in FORMATS:
            raise UsageError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
        wanted = {"keras": ".keras", "openvino": ".xml"}.get(format)
        if wanted and suffix != wanted:
            raise UsageError(f"{path}: a {format} export is a file ending in {wanted}")
        return format
    slash = path.endswith(("/", os.sep))
    if suffix in _SUFFIXES and not slash:
        return _SUFFIXES[suffix]
    if slash or not suffix or os.path.isdir(path):  # a folder: an earlier export ("model.v1")
        return "savedmodel"
    raise UsageError(
        f"{path}: unknown export suffix {suffix!r}; use .keras (Keras file), .xml (OpenVINO "
        "IR) or a folder name without suffix (TensorFlow SavedModel)"
    )


def preprocessing_affine(mode: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(kernel, bias)`` of the per-pixel map ``rgb @ kernel + bias`` that is Keras'
    ``preprocess_input(x, mode=mode)``; None for ``"none"`` (pixels as they are).

    Examples
    --------
    >>> kernel, bias = preprocessing_affine("caffe")  # RGB -> BGR, minus the ImageNet mean
    >>> np.array([[10.0, 20.0, 30.0]]) @ kernel + bias
    array([[ -73.939,  -96.779, -113.68 ]])
    >>> preprocessing_affine("none") is None
    True
    """
    if mode == "caffe":
        return np.eye(3)[:, ::-1], -np.array(_CAFFE_MEAN_BGR)
    if mode == "tf":
        return np.eye(3) / 127.5, -np.ones(3)
    if mode == "torch":
        std = np.array(_TORCH_STD)
        return np.diag(1.0 / (255.0 * std)), -np.array(_TORCH_MEAN) / std
    if mode == "none":
        return None
    raise ValueError(f"preprocessing mode must be one of {PREPROCESSING_MODES}, got {mode!r}")


def preprocessing_layers(mode: str) -> list:
    """Built-in Keras layers doing ``preprocess_input(x, mode=mode)`` on float RGB pixels: one
    ``Dense(3)`` applied to each pixel (:func:`preprocessing_affine`), none for ``"none"``."""
    affine = preprocessing_affine(mode)
    if affine is None:
        return []
    keras = import_keras()
    kernel, bias = affine
    layer = keras.layers.Dense(3, name=f"preprocess_{mode}", trainable=False)
    layer.build((None, 3))
    layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return [layer]


def fold_standardization(weights: HeadWeights, mean: np.ndarray, scale: np.ndarray) -> HeadWeights:
    """The head's weights with ``(x - mean) / scale`` folded into its first layer.

    ``((x - m) / s) @ K + b == x @ (K / s[:, None]) + (b - (m / s) @ K)``, computed in float64.

    Examples
    --------
    >>> from tripletsk.training.head import forward
    >>> rng = np.random.RandomState(0)
    >>> w = [(rng.randn(5, 3).astype(np.float32), rng.randn(3).astype(np.float32))]
    >>> x, m, s = rng.randn(4, 5), rng.randn(5), np.full(5, 2.0)
    >>> bool(np.allclose(forward((x - m) / s, w), forward(x, fold_standardization(w, m, s)),
    ...                  atol=1e-6))
    True
    """
    (kernel, bias), rest = weights[0], list(weights[1:])
    kernel, bias = np.asarray(kernel, np.float64), np.asarray(bias, np.float64)
    mean, scale = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
    folded = kernel / scale[:, None], bias - (mean / scale) @ kernel
    return [tuple(a.astype(np.float32) for a in folded), *rest]


def _feature_model(store, weights=None, backbone=None) -> tuple[object, str]:
    """``(frozen Keras feature model taking preprocessed float pixels, preprocessing mode)`` of
    the cache ``store``, rebuilt from its provenance (``weights`` / ``backbone``: the weights
    file / backbone model file, if moved): any ``keras.applications`` backbone or model file,
    with the Keras mode of its ``preprocess_input``
    (:mod:`tripletsk.extraction.architecture`)."""
    from tripletsk.extraction.backbone import build_keras_model
    from tripletsk.extraction.query import weights_of_cache

    spec = weights_of_cache(store, weights, backbone)
    return build_keras_model(spec, int(store.provenance["image_size"])), spec.arch.mode


def build_export_model(encoder, store, weights=None, backbone=None):
    """The Keras model ``(n, size, size, 3)`` RGB pixels (float32 in [0, 255]; Keras converts
    uint8 arrays) -> ``(n, n_components)`` embeddings of ``encoder`` fitted on ``store``."""
    keras = import_keras()
    network, mode = _feature_model(store, weights, backbone)
    dim = int(network.output_shape[-1])
    if dim != encoder.n_features_in_:
        raise CacheMismatchError(
            f"the backbone of {store.path} gives {dim} features; the model expects "
            f"{encoder.n_features_in_}"
        )
    precision = str(store.provenance.get("compute_dtype") or "float32")
    if precision != "float32":
        warnings.warn(
            f"{store.path} holds {precision} features; the exported model computes in float32, "
            "so its embeddings agree with transform()'s only approximately",
            stacklevel=2,
        )
    size = int(store.provenance["image_size"])
    inputs = keras.Input(shape=(size, size, 3), dtype="float32", name="pixels")
    x = inputs
    for layer in preprocessing_layers(mode):
        x = layer(x)
    x = network(x, training=False)
    # The head of transform() (no dropout), whose L2 normalisation divides by max(norm, 1e-12)
    # where transform()'s NumPy divides by max(norm, 1e-6): the same for any norm above 1e-6.
    head = fold_standardization(encoder.weights_, encoder.feature_mean_, encoder.feature_scale_)
    outputs = build_keras_head(head)(x)
    outputs = keras.layers.Add(name="embedding")([outputs, _size_check(inputs, size, outputs)])
    model = keras.Model(inputs, outputs, name="tripletsk_embedding")
    model.trainable = False
    return model


def _size_check(inputs, size: int, embedding):
    """Zeros shaped like ``embedding`` that exist only for images of ``size`` x ``size``.

    Keras checks a model's input shape when it traces a call, but a traced ``predict`` is
    retraced with relaxed shapes (``(None, None, None, 3)``) for a second image size, after
    which any size runs through the backbone's global pooling and gives wrong embeddings
    silently. This branch checks the size in the graph itself, on every call, with built-in
    layers only: a ``size`` x ``size`` convolution with a zero kernel leaves one value per
    image exactly when the image is ``size`` x ``size`` (a smaller one fails the convolution),
    and the reshape to that one value fails otherwise; the error names the layer,
    ``images_must_be_<size>x<size>``. Its output is exactly zero (finite pixels), added to
    the embedding so that it stays in the graph; its cost is ``size**2 * 3`` multiplications
    per image.
    """
    keras = import_keras()
    tag = f"{size}x{size}"
    probe = keras.layers.Conv2D(
        1, size, use_bias=False, kernel_initializer="zeros", trainable=False,
        name=f"pixels_must_be_{tag}",
    )(inputs)  # fmt: skip
    probe = keras.layers.Reshape((1,), name=f"images_must_be_{tag}")(probe)
    width = int(embedding.shape[-1])
    zeros = keras.layers.Dense(
        width, use_bias=False, kernel_initializer="zeros", trainable=False, name="size_checked"
    )
    return zeros(probe)


def export_model(
    model,
    output: str | os.PathLike,
    *,
    format: str | None = None,
    features=None,
    weights=None,
    backbone=None,
    force: bool = False,
    trust_pickle: bool = False,
) -> str:
    """Write ``model`` as one model from RGB pixels to its L2-normalised embedding.

    Parameters
    ----------
    model : TripletEncoder or path
        A fitted encoder whose ``features`` is its cache, or a model file (``tripletsk fit``,
        :meth:`TripletEncoder.save`).
    output : path
        ``.keras`` (Keras file), ``.xml`` (OpenVINO IR, with its ``.bin``) or a folder name
        (TensorFlow SavedModel); see :func:`export_format`.
    format : {"keras", "savedmodel", "openvino"}, optional
        Overrides the format the suffix implies.
    features : path or FeatureStore, optional
        The feature cache, when the one the model was fitted on has moved.
    weights : path, optional
        The backbone weights file, when the one the cache was made with has moved.
    backbone : path, optional
        The backbone model file (``extract-features --backbone FILE``), when it has moved.
    force : bool, default False
        Replace an existing output (a folder only if it is a SavedModel).
    trust_pickle : bool, default False
        Open a pickle-based model file (loading it runs code stored in it).

    Returns
    -------
    str
        The path written.

    Raises
    ------
    UserError
        If the output exists, the cache or the backbone weights cannot be found, or OpenVINO
        is needed but not installed.
    """
    path = os.fspath(output)
    fmt = export_format(path, format)
    path = path.rstrip("/" + os.sep) or path
    targets = [path, os.path.splitext(path)[0] + ".bin"] if fmt == "openvino" else [path]
    _check_output(targets, fmt, force)
    # What is there now is what may be replaced: an output that appears during the slow
    # build is never replaced (tripletsk.outputs).
    planned = [plan_output(target) for target in targets]
    if fmt == "openvino":
        _import_openvino()  # before the slow part
    encoder, store = _encoder_and_store(model, features, trust_pickle)
    keras_model = build_export_model(encoder, store, weights, backbone)
    # The matching threshold (tripletsk calibrate) goes into the export before it is published.
    _WRITERS[fmt](keras_model, planned, getattr(encoder, "calibration_", None))
    return path


def _encoder_and_store(model, features, trust_pickle: bool):
    """The fitted encoder and its feature cache; an encoder given is not modified."""
    from tripletsk.cache.store import FeatureStore
    from tripletsk.modelfile import FittedModel, check_model_cache, load_model, open_model_cache

    if isinstance(model, str | os.PathLike):
        fitted = load_model(model, trust_pickle=trust_pickle)
        return fitted.model, open_model_cache(fitted, getattr(features, "path", features))
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(model)
    source = features if features is not None else model.features
    if isinstance(source, str | os.PathLike):
        source = FeatureStore(source)
    if not isinstance(source, FeatureStore):
        raise UserError(
            "the encoder's features are not a feature cache file, so the backbone that made them "
            "is unknown; pass features=CACHE, the cache it was fitted on"
        )
    check_model_cache(FittedModel(model, "the model"), source)
    return model, source


def _check_output(targets: list[str], fmt: str, force: bool) -> None:
    folder = os.path.dirname(os.path.abspath(targets[0]))
    if not os.path.isdir(folder):
        raise UsageError(f"the folder {folder} does not exist; create it")
    for target in targets:
        if not os.path.lexists(target):
            continue
        if not force:
            raise UserError(f"{target} exists; pass --force (force=True) to replace it")
        if fmt == "savedmodel":  # a folder is replaced only if it is an export too
            if not os.path.isfile(os.path.join(target, "saved_model.pb")):
                raise UserError(f"{target} is not a SavedModel folder; not replaced")
        elif not os.path.isfile(target):
            raise UserError(f"{target} is not a file; not replaced")


def _add_calibration(tmp: str, fmt: str, calibration: dict | None, ov_model=None) -> None:
    if calibration is not None:
        from tripletsk.export_metadata import write_calibration

        write_calibration(tmp, fmt, calibration, ov_model)


def _write_keras(model, outputs: list[Output], calibration: dict | None) -> None:
    with writing(outputs[0], "export", suffix=".keras") as tmp:  # Keras insists on the suffix
        model.save(tmp)
        _add_calibration(tmp, "keras", calibration)


def _write_savedmodel(model, outputs: list[Output], calibration: dict | None) -> None:
    with writing(outputs[0], "export", suffix="") as tmp:
        model.export(tmp, format="tf_saved_model", verbose=False)
        _add_calibration(tmp, "savedmodel", calibration)


def _write_openvino(model, outputs: list[Output], calibration: dict | None) -> None:
    from tripletsk.extraction.runners import _to_openvino

    ov = _import_openvino()
    ov_model = _to_openvino(model, [-1, *list(model.input_shape)[1:]])
    xml, bin_ = outputs
    tmp = temporary_path(xml, ".xml")
    tmp_bin = os.path.splitext(tmp)[0] + ".bin"
    try:
        _add_calibration(tmp, "openvino", calibration, ov_model)
        # float32 weights: save_model would halve them to float16 by default.
        ov.save_model(ov_model, tmp, compress_to_fp16=False)
        for output in outputs:  # both still as planned before either is moved in
            check_planned(output, f"{tmp} and {tmp_bin}", "export")
        publish(tmp_bin, bin_, "export")
        publish(tmp, xml, "export")
    except OutputChangedError:
        raise
    except BaseException:
        for name in (tmp, tmp_bin):
            if os.path.exists(name):
                os.remove(name)
        raise


def _import_openvino():
    from tripletsk.extraction.runners import _import_openvino as load

    try:
        return load()
    except ImportError as exc:
        raise UserError(f"exporting to OpenVINO IR (.xml) needs openvino: {exc}") from None


_WRITERS = {"keras": _write_keras, "savedmodel": _write_savedmodel, "openvino": _write_openvino}
