"""Building a backbone's Keras model: a ``keras.applications`` network with its weights (ImageNet,
a weights file, or a seeded random initialisation identical in every process), or a user's model
file, cut at the feature layer. TensorFlow is imported only here, when a model is built.
"""

from __future__ import annotations

import numpy as np

from tripletsk._tensorflow import import_keras
from tripletsk.errors import UserError, WeightsUnavailableError
from tripletsk.extraction.architecture import RESNET50, Architecture, load_model_file

__all__ = ["IMAGENET_NOTOP_FILE", "RANDOM_INIT", "RANDOM_INIT_HE", "build_model", "random_init_of"]

RANDOM_INIT = "numpy-glorot-uniform-v1"  # ResNet50's (its residual sums keep activations alive)
#: Other applications': variance-preserving, so that activations neither vanish nor explode
#: through deep plain stacks (with Glorot, random MobileNet features were ~1e-13).
RANDOM_INIT_HE = "numpy-he-uniform-v1"
#: Keras' ResNet50 ImageNet weights file (without the top), named in the offline error.
IMAGENET_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"


def random_init_of(arch: Architecture) -> str:
    """The random initialisation of ``arch`` for ``weights="none"``."""
    return RANDOM_INIT if arch == RESNET50 else RANDOM_INIT_HE


def _seeded_init(model, seed: int, init: str = RANDOM_INIT) -> None:
    """Set every weight from a NumPy generator seeded by (seed, variable path): reproducible in
    any process, independent of TensorFlow's global random state. ``init``: Glorot-uniform
    kernels (:data:`RANDOM_INIT`) or He-uniform ones (:data:`RANDOM_INIT_HE`)."""
    import zlib

    depthwise = {id(w) for lay in model.layers if type(lay).__name__ == "DepthwiseConv2D"
                 for w in lay.weights}  # fmt: skip
    for v in model.weights:
        path = getattr(v, "path", v.name)
        kind = path.rsplit("/", 1)[-1].split(":")[0]
        kind = _INIT_KIND.get(kind, kind)
        shape = tuple(int(s) for s in v.shape)
        rng = np.random.default_rng([int(seed), zlib.crc32(path.encode("utf-8"))])
        if kind == "kernel":
            receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
            fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
            if init == RANDOM_INIT:
                lim = np.sqrt(6.0 / (fan_in + fan_out))
            else:  # a depthwise kernel (h, w, channels, multiplier) sees h * w inputs
                lim = np.sqrt(6.0 / (receptive if id(v) in depthwise else fan_in))
            val = rng.uniform(-lim, lim, size=shape)
        elif kind in ("gamma", "moving_variance", "variance"):
            val = np.ones(shape)
        else:  # bias, beta, moving_mean
            val = np.zeros(shape)
        v.assign(val.astype(np.float32))


#: Variables of other applications initialised as ResNet50's kinds (MobileNet's depthwise and
#: pointwise kernels as kernels). Any other kind starts at zero.
_INIT_KIND = {"depthwise_kernel": "kernel", "pointwise_kernel": "kernel"}


def build_model(spec, image_size: int):
    """The frozen Keras feature model of ``spec`` (a
    :class:`~tripletsk.extraction.backbone.WeightsSpec`) at ``image_size``."""
    arch = spec.arch
    keras = import_keras()
    shape = (image_size, image_size, 3)
    if arch.is_file:
        return _cut(load_model_file(arch), arch.layer, shape, keras)
    build = getattr(keras.applications, arch.name)
    kwargs = {**dict(arch.kwargs), "include_top": False, "input_shape": shape}
    if arch.layer is None:
        kwargs["pooling"] = "avg"
    if spec.kind == "imagenet":
        try:
            model = build(weights="imagenet", **kwargs)
        except Exception as e:
            raise WeightsUnavailableError(_imagenet_unavailable(arch, e)) from e
    else:
        model = build(weights=None, **kwargs)
        if spec.kind == "file":
            _load_weights(model, spec)
        else:
            _seeded_init(model, spec.seed, random_init_of(arch))
    if arch.layer is not None:
        model = _cut(model, arch.layer, None, keras)
    model.trainable = False
    return model


def _imagenet_unavailable(arch: Architecture, e: Exception) -> str:
    offline = (
        f"Offline, download {IMAGENET_NOTOP_FILE} elsewhere and pass its path as the weights "
        f"(weights='path/to/{IMAGENET_NOTOP_FILE}')"
        if arch == RESNET50
        else f"Offline, pass the path of a {arch.name} weights file as the weights"
    )
    return (
        f"cannot get the ImageNet weights for {arch.describe()} ({type(e).__name__}: {e}). "
        f"{offline}, or use weights='none' for random weights (for testing only)."
    )


def _load_weights(model, spec) -> None:
    """Load a weights file into ``model``: saved from the same network, or (legacy ``.h5``)
    from the whole network with its top, matched by layer name, every layer accounted for."""
    name = spec.arch.describe()
    try:
        model.load_weights(spec.path)
        return
    except Exception as e:
        first = e
    if spec.path.lower().endswith((".h5", ".hdf5")):
        missing = _layers_missing_from(model, spec.path)
        if missing is not None and not missing:
            try:
                model.load_weights(spec.path, by_name=True)
                return
            except Exception as e:
                first = e
        elif missing:
            first = ValueError(f"no weights for its layers {', '.join(missing[:5])}")
    raise UserError(
        f"could not load {name} weights from {spec.path} ({type(first).__name__}: {first}); the "
        f"file must hold {name} weights, e.g. a file written by model.save_weights() or "
        "Keras' ImageNet weights file of that network"
    )


def _layers_missing_from(model, path: str) -> list | None:
    """Layers of ``model`` with weights that the legacy ``.h5`` weights file lacks (None: not
    such a file)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            names = {n.decode() if isinstance(n, bytes) else str(n)
                     for n in group.attrs.get("layer_names", [])}  # fmt: skip
    except (OSError, KeyError):
        return None
    if not names:
        return None
    return [lay.name for lay in model.layers if lay.weights and lay.name not in names]


def _cut(model, layer: str, shape, keras):
    """``model`` up to ``layer`` (a feature map is average-pooled), taking ``shape`` images
    (None: the model's own input)."""
    out = model.get_layer(layer).output
    if len(out.shape) == 4:
        out = keras.layers.GlobalAveragePooling2D(name="tripletsk_pool")(out)
    elif len(out.shape) != 2:
        raise UserError(
            f"layer {layer!r} gives outputs of shape {tuple(out.shape)}: choose a layer whose "
            "output is a feature vector or a feature map"
        )
    cut = keras.Model(model.inputs, out)
    if shape is not None:
        want = tuple(model.input_shape[1:])
        if any(w is not None and w != s for w, s in zip(want, shape, strict=False)):
            raise UserError(
                f"the backbone model takes images of shape {want}; pass image_size "
                f"{want[0]} (got {shape[0]})"
            )
        inputs = keras.Input(shape)
        cut = keras.Model(inputs, cut(inputs))
    cut.trainable = False
    return cut
