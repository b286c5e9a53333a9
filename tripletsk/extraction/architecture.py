"""Which network makes the features: a ``keras.applications`` model, or a user's model file.

``resolve_architecture("MobileNetV2")``, ``resolve_architecture("MobileNet(alpha=0.25)")`` or
``resolve_architecture("my_model.keras", preprocessing="tf")`` gives an :class:`Architecture`:
what is built, which layer gives the features, and how pixels are scaled first. Its
:meth:`~Architecture.provenance` is what a cache records of it (never mixed across two).

* A ``keras.applications`` name is built without its top and average-pooled (or cut at
  ``layer``), with that application's own ``preprocess_input``.
* A model file (``.keras``, or a legacy full-model ``.h5``) is loaded with Keras' safe mode (no
  code runs: Lambda layers and custom objects are refused) and cut at ``layer``, by default its
  last global-pooling layer. Its ``preprocessing`` (Keras' modes) must be given: nothing in the
  file says how its training scaled pixels.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import re
import threading
from dataclasses import dataclass

from tripletsk._tensorflow import import_keras
from tripletsk.cache.checksums import file_digest
from tripletsk.errors import UserError
from tripletsk.extraction.parameters import DEFAULT_BACKBONE
from tripletsk.extraction.preprocessing import PREPROCESSING_MODES, probe_mode

__all__ = [
    "DECODING",
    "RESNET50",
    "Architecture",
    "architecture_of",
    "load_model_file",
    "resolve_architecture",
]

#: How files become pixels (:mod:`tripletsk.extraction.decode`); bump when pixels could change.
DECODING = (
    "tripletsk-v1: pillow decode, jpeg draft>=size, exif transpose, rgb (alpha on white, "
    "16-bit/257), resize bilinear to size x size"
)
MODEL_FILE_SUFFIXES = (".keras", ".h5", ".hdf5")
# Set by tripletsk: a backbone is built without its top, at the cache's image size.
_RESERVED = ("include_top", "weights", "input_tensor", "input_shape", "pooling", "classes",
             "classifier_activation", "name")  # fmt: skip
_GLOBAL_POOLING = ("GlobalAveragePooling2D", "GlobalMaxPooling2D")


@dataclass(frozen=True)
class Architecture:
    """A backbone network: a ``keras.applications`` name or a model file, and its features.

    Attributes
    ----------
    name : str
        The ``keras.applications`` name (``""`` for a model file).
    kwargs : tuple of (str, value)
        Constructor keywords of the application, e.g. ``(("alpha", 0.25),)``.
    path, digest : str or None
        The model file and its BLAKE2b digest (what identifies it).
    layer : str or None
        The layer whose output is the feature vector (average-pooled if it is a feature map);
        None: the application's own average pooling.
    mode : {"caffe", "tf", "torch", "none"}
        How pixels are scaled (Keras' ``preprocess_input`` modes).
    module : str or None
        The ``keras.applications`` module whose ``preprocess_input`` is used, if any.
    """

    name: str
    kwargs: tuple = ()
    path: str | None = None
    digest: str | None = None
    layer: str | None = None
    mode: str = "caffe"
    module: str | None = None

    @property
    def is_file(self) -> bool:
        return self.path is not None

    @property
    def identity(self) -> str:
        """The cache's ``backbone`` attribute."""
        if self.is_file:
            return f"file:blake2b={self.digest}"
        args = "".join(f"{k}={v!r}, " for k, v in self.kwargs)
        return f"keras.applications.{self.name}({args}include_top=False, pooling='avg')"

    @property
    def preprocessing(self) -> str:
        """The cache's ``preprocessing`` attribute: decoding, then pixel scaling."""
        if self.module:
            how = f"{self.module}.preprocess_input ({self.mode})"
        elif self.mode == "none":
            how = "no preprocess_input (RGB 0-255 as float32)"
        else:
            how = f"imagenet_utils.preprocess_input(mode={self.mode!r})"
        return f"{DECODING}; {how}"

    def provenance(self) -> dict:
        """What a cache records of the architecture (``layer`` only when one was chosen)."""
        prov = {
            "backbone": self.identity,
            "preprocessing": self.preprocessing,
            "architecture": json.dumps(self.to_json(), sort_keys=True),
        }
        if self.layer is not None:
            prov["layer"] = self.layer
        if self.is_file:
            prov["backbone_source"] = os.path.abspath(self.path)
        return prov

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "kwargs": dict(self.kwargs),
            "digest": self.digest,
            "layer": self.layer,
            "mode": self.mode,
            "module": self.module,
        }

    def describe(self) -> str:
        """A short human-readable name, e.g. ``MobileNet(alpha=0.25)`` or ``model.keras``."""
        if self.is_file:
            base = os.path.basename(self.path)
        else:
            args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs)
            base = f"{self.name}({args})" if args else self.name
        return f"{base} at {self.layer!r}" if self.layer else base


#: The default backbone (its provenance strings are those of every cache made before there
#: was a choice).
RESNET50 = Architecture(DEFAULT_BACKBONE, mode="caffe", module="resnet50")


def resolve_architecture(backbone=DEFAULT_BACKBONE, layer: str | None = None,
                         preprocessing: str | None = None) -> Architecture:  # fmt: skip
    """Check ``backbone`` (a ``keras.applications`` name or a model file) and resolve it.

    ``preprocessing``: one of :data:`PREPROCESSING_MODES`; required for a model file, and
    overrides an application's own ``preprocess_input``. A model file is loaded (safely) here,
    to find its feature layer.

    Raises
    ------
    UserError
        An unknown name, a missing or unloadable file, a layer that is not in the model, a
        missing or unknown preprocessing.

    Examples
    --------
    >>> resolve_architecture("ResNet50").identity
    "keras.applications.ResNet50(include_top=False, pooling='avg')"
    >>> resolve_architecture("ResNet50", preprocessing="fancy")
    Traceback (most recent call last):
    ...
    tripletsk.errors.UserError: preprocessing must be one of caffe, tf, torch, none; got 'fancy'
    """
    if isinstance(backbone, Architecture):
        return backbone
    if preprocessing is not None and preprocessing not in PREPROCESSING_MODES:
        raise UserError(
            f"preprocessing must be one of {', '.join(PREPROCESSING_MODES)}; got {preprocessing!r}"
        )
    text = os.fspath(backbone) if backbone is not None else DEFAULT_BACKBONE
    if os.path.exists(text) or text.lower().endswith(MODEL_FILE_SUFFIXES):
        return _resolve_file(text, layer, preprocessing)
    name, kwargs = _parse_name(text)
    if name == RESNET50.name and not kwargs:  # the default needs no Keras import
        arch = RESNET50
    elif name in KNOWN_APPLICATIONS:  # nor do the others Keras 3 has
        module, mode = KNOWN_APPLICATIONS[name]
        arch = Architecture(name, kwargs, mode=mode, module=module)
    else:
        module = _application_module(name)
        arch = Architecture(name, kwargs, mode=probe_mode(module), module=module)
    if preprocessing is not None and preprocessing != arch.mode:
        arch = Architecture(arch.name, arch.kwargs, mode=preprocessing)
    if layer is not None:
        arch = Architecture(arch.name, arch.kwargs, None, None, layer, arch.mode, arch.module)
    return arch


#: ``keras.applications`` of Keras 3: name -> (its module, the mode of its ``preprocess_input``),
#: so that naming one needs no Keras import (a run whose OpenVINO model exists never imports
#: TensorFlow). A name not listed is looked up in Keras; tests compare the table with Keras.
KNOWN_APPLICATIONS = {
    **{f"ConvNeXt{s}": ("convnext", "none") for s in ("Base", "Large", "Small", "Tiny", "XLarge")},
    **{f"DenseNet{n}": ("densenet", "torch") for n in (121, 169, 201)},
    **{f"EfficientNetB{i}": ("efficientnet", "none") for i in range(8)},
    **{f"EfficientNetV2{s}": ("efficientnet_v2", "none")
       for s in ("B0", "B1", "B2", "B3", "L", "M", "S")},
    "InceptionResNetV2": ("inception_resnet_v2", "tf"),
    "InceptionV3": ("inception_v3", "tf"),
    "MobileNet": ("mobilenet", "tf"),
    "MobileNetV2": ("mobilenet_v2", "tf"),
    "MobileNetV3Large": ("mobilenet_v3", "none"),
    "MobileNetV3Small": ("mobilenet_v3", "none"),
    "NASNetLarge": ("nasnet", "tf"),
    "NASNetMobile": ("nasnet", "tf"),
    **{f"ResNet{n}": ("resnet", "caffe") for n in (50, 101, 152)},
    **{f"ResNet{n}V2": ("resnet_v2", "tf") for n in (50, 101, 152)},
    "VGG16": ("vgg16", "caffe"),
    "VGG19": ("vgg19", "caffe"),
    "Xception": ("xception", "tf"),
}  # fmt: skip


def _parse_name(text: str) -> tuple[str, tuple]:
    """``"MobileNet(alpha=0.25)"`` -> ``("MobileNet", (("alpha", 0.25),))``: literals only."""
    m = re.fullmatch(r"\s*([A-Za-z_]\w*)\s*(?:\((.*)\))?\s*", text, flags=re.S)
    if not m:
        raise _unknown(text)
    name, inner = m.group(1), m.group(2)
    if not inner or not inner.strip():
        return name, ()
    try:
        call = ast.parse(f"f({inner})", mode="eval").body
        if call.args:
            raise ValueError("positional arguments")
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
        if None in kwargs:
            raise ValueError("**")
    except (SyntaxError, ValueError) as e:
        raise UserError(
            f"backbone {text!r}: arguments must be keyword=literal, e.g. MobileNet(alpha=0.25) "
            f"({e})"
        ) from None
    reserved = sorted(set(kwargs) & set(_RESERVED))
    if reserved:
        raise UserError(
            f"backbone {text!r}: {', '.join(reserved)} is set by tripletsk (no top, average "
            "pooling, the cache's image size and weights)"
        )
    return name, tuple(sorted(kwargs.items()))


def _application_module(name: str) -> str:
    """The ``keras.applications`` module of application ``name`` (holds its preprocess_input)."""
    keras = import_keras()
    names = sorted(n for n in dir(keras.applications) if n[:1].isupper())
    fn = getattr(keras.applications, name, None) if name in names else None
    if fn is None:
        raise _unknown(name, difflib.get_close_matches(name, names, n=3, cutoff=0.5))
    module = fn.__module__.rsplit(".", 1)[-1]
    if not hasattr(getattr(keras.applications, module, None), "preprocess_input"):
        raise UserError(f"backbone {name}: keras.applications.{module} has no preprocess_input")
    return module


def _unknown(text: str, close=()) -> UserError:
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return UserError(
        f"unknown backbone {text!r}{hint}: give a keras.applications name (ResNet50, "
        "MobileNetV2, EfficientNetV2B0, ConvNeXtTiny, ..., optionally with keywords as in "
        "MobileNet(alpha=0.25)) or the path of a .keras / .h5 model file"
    )


# ---------------------------------------------------------------------------------------------
# Model files


def _resolve_file(path: str, layer: str | None, preprocessing: str | None) -> Architecture:
    if not os.path.isfile(path):
        raise UserError(f"backbone model file not found: {path}")
    if preprocessing is None:
        raise UserError(
            f"backbone {path}: say how the model's training scaled pixels with preprocessing "
            f"(--preprocessing {{{','.join(PREPROCESSING_MODES)}}}: Keras' preprocess_input "
            "modes; caffe: BGR minus ImageNet means, tf: [-1, 1], torch: [0, 1] then ImageNet "
            "mean/std, none: 0-255)"
        )
    digest = file_digest(path)
    arch = Architecture("", (), path, digest, layer, preprocessing, None)
    model = load_model_file(arch)
    chosen = feature_layer(model, layer, path)
    return Architecture("", (), path, digest, chosen, preprocessing, None)


_FILE_MODELS: dict = {}
_FILE_MODELS_LOCK = threading.Lock()


def load_model_file(arch: Architecture):
    """The Keras model of a model-file architecture, loaded once per process (safe mode)."""
    with _FILE_MODELS_LOCK:
        model = _FILE_MODELS.get(arch.digest)
        if model is None:
            model = _load(arch.path)
            _FILE_MODELS.clear()  # keep one
            _FILE_MODELS[arch.digest] = model
        return model


def _load(path: str):
    keras = import_keras()
    if path.lower().endswith((".h5", ".hdf5")):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                has_config = "model_config" in f.attrs
        except OSError as e:
            raise UserError(f"backbone {path} is not an HDF5 Keras model ({e})") from None
        if not has_config:
            raise UserError(
                f"backbone {path} holds weights only (no model config). Use the architecture "
                "it belongs to with these weights: --backbone NAME --weights FILE (e.g. "
                f"--backbone 'MobileNet(alpha=0.25)' --weights {path})"
            )
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # Keras raises many kinds for a bad file
        raise UserError(
            f"cannot load the backbone model file {path} ({type(e).__name__}: {e}). It must be "
            "a Keras model saved with model.save() (.keras, or a legacy full-model .h5) using "
            "built-in layers only: Lambda layers and custom objects are refused, since loading "
            "them would run code from the file"
        ) from None
    model.trainable = False
    return model


def feature_layer(model, layer: str | None, where: str) -> str:
    """``layer`` checked to be in ``model``, or the model's last global-pooling layer."""
    names = [lay.name for lay in model.layers]
    if layer is not None:
        if layer not in names:
            raise UserError(
                f"backbone {where} has no layer {layer!r}; its last layers are "
                f"{', '.join(names[-8:])}"
            )
        return layer
    pooling = [lay.name for lay in model.layers if type(lay).__name__ in _GLOBAL_POOLING]
    if not pooling:
        candidates = [f"{lay.name} {_shape(lay)}" for lay in model.layers[-8:]]
        raise UserError(
            f"backbone {where} has no global pooling layer to take features from; choose one "
            f"with --layer NAME (layer=...). Its last layers: {', '.join(candidates)}"
        )
    return pooling[-1]


def _shape(layer) -> str:
    try:
        return str(tuple(layer.output.shape))
    except Exception:  # a layer used in several places has no single output
        return "(?)"


def architecture_of(prov: dict, path: str = "the cache") -> Architecture:
    """The architecture a cache recorded (``prov``: its provenance).

    Caches made before there was a choice of backbone record none: their backbone is ResNet50.
    A model file is looked for at its recorded place (:func:`resolve_architecture` with another
    path, if it moved).
    """
    from tripletsk.errors import CacheMismatchError

    raw = prov.get("architecture")
    if not raw:
        if prov.get("backbone") == RESNET50.identity and (
            prov.get("preprocessing") == RESNET50.preprocessing
        ):
            return RESNET50
        raise CacheMismatchError(
            f"{path} was made with a backbone or preprocessing this tripletsk version does not "
            f"know ({prov.get('backbone')!r}, {prov.get('preprocessing')!r}); extract features "
            "again with this version"
        )
    try:
        d = json.loads(raw)
        kwargs = tuple(sorted(d.get("kwargs", {}).items()))
        source = prov.get("backbone_source") if d.get("digest") else None
        arch = Architecture(
            d["name"], kwargs, source, d.get("digest"), d.get("layer"), d["mode"], d.get("module")
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CacheMismatchError(f"{path}: unreadable architecture attribute ({e})") from None
    if arch.identity != prov.get("backbone") or arch.preprocessing != prov.get("preprocessing"):
        raise CacheMismatchError(
            f"{path}: its architecture attribute disagrees with its backbone/preprocessing"
        )
    return arch


def with_model_file(arch: Architecture, path, where: str) -> Architecture:
    """``arch`` (a model file's) with its file found at ``path`` (None: the recorded place),
    checked to be the same file by its digest."""
    path = os.fspath(path) if path is not None else arch.path
    if not path or not os.path.isfile(path):
        raise UserError(
            f"{where} was made with the backbone model file {arch.path or '?'}, which is not "
            "found; pass backbone=PATH (Python) or --backbone PATH (command line), the same file"
        )
    if file_digest(path) != arch.digest:
        raise UserError(
            f"{path} is not the backbone model file {where} was made with (another content)"
        )
    return Architecture("", (), path, arch.digest, arch.layer, arch.mode, None)
