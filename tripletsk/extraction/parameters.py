"""The parameters of an extraction, declared once: name, default, documentation, command line.

:func:`~tripletsk.extraction.extract_features` (its defaults and the Parameters section of its
docstring), :class:`~tripletsk.extraction.options.ExtractOptions` (the defaults of what is not
given), :class:`~tripletsk.extraction.image_features.ImageFeatures` (its defaults),
:func:`~tripletsk.extraction.distributed.extract_with_dask` (what it passes to each shard) and
``tripletsk extract-features`` (its options and their help) all take them from :data:`PARAMETERS`;
``tests/extraction/test_parameters.py`` checks that they agree. The checks of the backend and
precision and of the image size live here too.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import MappingProxyType

from tripletsk.cache.store import DEFAULT_CACHE
from tripletsk.errors import UserError
from tripletsk.extraction.preprocessing import PREPROCESSING_MODES

__all__ = [
    "AUTO",
    "BACKENDS",
    "DEFAULTS",
    "DEFAULT_BACKBONE",
    "DEFAULT_BACKEND",
    "IMAGE_FEATURES_PARAMETERS",
    "NETWORK_PARAMETERS",
    "PARAMETERS",
    "SHARD_PARAMETERS",
    "Parameter",
    "check_backend",
    "check_image_size",
    "cli_parameters",
    "document_parameters",
]

#: The backbone unless one is given (its features are 2048 numbers per image).
DEFAULT_BACKBONE = "ResNet50"
BACKENDS = ("tensorflow", "openvino")
#: ``backend="auto"``: the fastest runner here whose features agree with TensorFlow float32
#: (:mod:`tripletsk.extraction.auto`).
AUTO = "auto"
#: What ``backend`` is unless given (extract_features, extract-features, ImageFeatures, Dask).
DEFAULT_BACKEND = AUTO
PRECISIONS = ("float32", "bfloat16", "int8")
DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class Parameter:
    """One parameter of an extraction.

    ``kind`` and ``doc`` make its entry in a numpydoc Parameters section; ``help`` (None: not
    on the command line) is the help of its ``extract-features`` option, spelled ``flags``
    (default ``--name-with-dashes``; a positional argument if the first does not start with
    ``-``), with the other ``argparse`` keywords in ``cli``.
    """

    name: str
    default: object
    kind: str
    doc: str
    help: str | None = None
    flags: tuple[str, ...] = ()
    cli: dict = field(default_factory=dict)
    shards: bool = True  # passed by extract_with_dask to every shard
    image_features: bool = False  # a parameter of ImageFeatures too

    @property
    def option_strings(self) -> tuple[str, ...]:
        return self.flags or ("--" + self.name.replace("_", "-"),)

    def add_to(self, parser, **extra) -> None:
        """Add the parameter's option to ``parser`` (an ``ArgumentParser`` or a group), with
        the ``argparse`` keywords ``extra`` (e.g. a ``type`` that parses it)."""
        if self.option_strings[0].startswith("-"):
            parser.add_argument(
                *self.option_strings, default=self.default, help=self.help, **self.cli, **extra
            )
        else:
            parser.add_argument(self.name, help=self.help, **self.cli, **extra)


_NO_DEFAULT = object()

_DECLARED = (
    Parameter(
        "images_dir", _NO_DEFAULT, "path",
        "Folder of images (``.jpg .jpeg .png .gif .bmp .webp .tif .tiff``, any case).",
        "folder of images", ("images_dir",), {"metavar": "IMAGES_DIR"}, shards=False,
    ),
    Parameter(
        "output", DEFAULT_CACHE, "path",
        "The HDF5 cache; created, or updated incrementally if it exists.",
        "feature cache (default: %(default)s)", ("-o", "--output"), shards=False,
    ),
    Parameter(
        "backbone", DEFAULT_BACKBONE, "str or path",
        "A ``keras.applications`` name (``\"MobileNetV2\"``, ``\"EfficientNetV2B0\"``, keywords as "
        "in ``\"MobileNet(alpha=0.25)\"``), built without its top, average-pooled, with its own "
        "``preprocess_input``; or a Keras model file (``.keras``, legacy full-model ``.h5``), "
        "loaded in safe mode (:mod:`tripletsk.extraction.architecture`).",
        "a keras.applications model (e.g. MobileNetV2, EfficientNetV2B0, ConvNeXtTiny, "
        "'MobileNet(alpha=0.25)'), built without its top and average-pooled, with its own "
        "preprocess_input; or a Keras model file (.keras, full-model .h5), loaded safely "
        "(default: %(default)s)",
        cli={"metavar": "NAME|FILE"}, image_features=True,
    ),
    Parameter(
        "layer", None, "str or None",
        "The layer whose output is the feature vector (a feature map is average-pooled). None: "
        "the application's own pooling; a model file's last global-pooling layer.",
        "the layer that gives the features (a feature map is average-pooled); default: the "
        "application's pooling, or a model file's last global-pooling layer",
        image_features=True,
    ),
    Parameter(
        "preprocessing", None, '"caffe", "tf", "torch", "none" or None',
        "How pixels are scaled (Keras' ``preprocess_input`` modes). Required for a model file; "
        "for an application, its own ``preprocess_input`` unless given.",
        "how pixels are scaled (Keras' preprocess_input modes); required with a model "
        "file, else the application's own",
        cli={"choices": PREPROCESSING_MODES}, image_features=True,
    ),
    Parameter(
        "weights", "imagenet", '"imagenet", "none" or path',
        "ImageNet weights (Keras download), random weights from ``seed``, or a local weights file "
        "(of the backbone's network; a legacy ``.h5`` of the whole network with its top also "
        "works). A model-file backbone carries its own weights.",
        "imagenet (Keras download), none (random, for tests) or PATH to a weights file of "
        "the backbone (default: %(default)s; a model file carries its own)",
        image_features=True,
    ),
    Parameter(
        "image_size", 224, "int",
        "Images are resized to ``image_size`` x ``image_size`` (at least 32).",
        "default: %(default)s", cli={"type": int}, image_features=True,
    ),
    Parameter(
        "batch_size", 32, "int", "Images per model call.",
        "default: %(default)s", cli={"type": int}, image_features=True,
    ),
    Parameter(
        "dtype", None, '"float32", "float16" or None',
        "Storage precision; None keeps an existing cache's, else float32.",
        "storage precision (default: float32, or the existing cache's)",
        cli={"choices": DTYPES}, image_features=True,
    ),
    Parameter(
        "recursive", True, "bool", "Search sub-folders.",
        "search sub-folders (default: yes)", cli={"action": argparse.BooleanOptionalAction},
    ),
    Parameter(
        "prune", False, "bool",
        "Drop cached entries whose file is gone (otherwise they are kept).",
        "drop cached images whose file is gone", cli={"action": "store_true"},
    ),
    Parameter(
        "seed", 0, "int", 'Seed of the random initialisation when ``weights="none"``.',
        "seed of the random weights for --weights none", cli={"type": int}, image_features=True,
    ),
    Parameter(
        "verify", False, "bool",
        "Hash every cached file's content to detect changes, instead of trusting unchanged size "
        "and modification time, and check the cached features' checksums: images whose "
        "features are damaged are extracted again (damaged rows whose file is gone are "
        "dropped).",
        "hash every cached file to detect changes (default: only files whose size or "
        "modification time changed), and re-extract the images whose cached features fail "
        "their checksum",
        cli={"action": "store_true"}, image_features=True,
    ),
    Parameter(
        "workers", None, "int or None",
        "Decoding threads (default: number of CPUs, at most 8).",
        "decoding threads", cli={"type": int}, image_features=True,
    ),
    Parameter(
        "replace", False, "bool",
        "Discard an existing cache (of another images folder, or made with other settings) and "
        "start anew.",
        "discard the existing cache (of another images folder, or other settings) and start "
        "anew",
        cli={"action": "store_true"}, shards=False,
    ),
    Parameter(
        "backend", DEFAULT_BACKEND, '"auto", "tensorflow" or "openvino"',
        'What runs the model. OpenVINO needs ``pip install "tripletsk[openvino]"``; its '
        "converted model is kept in ``.tripletsk-models/`` next to the cache, so later runs "
        "need no TensorFlow (:mod:`tripletsk.extraction.openvino_float`). ``\"auto\"``: the "
        "fastest runner on this CPU whose features agree with TensorFlow float32's (cosine >= "
        "0.99 on each of the first batch's images), timed on the first batch of a run of at "
        "least 256 images (once per cache folder; smaller first runs use TensorFlow float32 "
        "untimed); a cache made before, or an interrupted run, keeps its runner; recorded in "
        "the cache's ``backend_choice`` (:mod:`tripletsk.extraction.auto`).",
        "what runs the model; openvino needs `pip install tripletsk[openvino]`; auto: the "
        "fastest runner on this CPU whose features agree with tensorflow float32 (cosine >= "
        "0.99), timed on your first batch once per cache folder, recorded in the cache; a "
        "cache keeps the runner it was made with (default: %(default)s)",
        cli={"choices": (*BACKENDS, AUTO)}, image_features=True,
    ),
    Parameter(
        "precision", None, '"float32", "bfloat16", "int8" or None',
        'Arithmetic of the model; None: float32, or with ``backend="auto"`` whichever runner '
        "is fastest. bfloat16 is faster only on hardware with native bfloat16 (AVX512-BF16 or "
        "AMX CPUs, recent GPUs); its features differ slightly from float32 ones "
        "(``benchmarks/extraction_bf16.py``), so a cache holds one precision only. int8 "
        '(``backend="openvino"``, needs ``nncf``): the backbone quantized once, calibrated on '
        "128 of the images, kept in ``.tripletsk-models/`` next to the cache "
        "(:mod:`tripletsk.extraction.int8`).",
        "model arithmetic (default: float32, or with --backend auto whichever agrees and "
        "is fastest); bfloat16 pays off on CPUs with AVX512-BF16/AMX and on GPUs; int8 "
        "(OpenVINO, needs nncf) quantizes the backbone once on 128 of your images and keeps "
        "it in .tripletsk-models/ next to the cache",
        cli={"choices": PRECISIONS}, image_features=True,
    ),
    Parameter(
        "quiet", False, "bool", "No progress bar.",
        "no progress bar or summary", ("-q", "--quiet"), {"action": "store_true"}, shards=False,
    ),
    Parameter(
        "progress", None, "bool or None",
        "Progress bar on stderr; None shows it when stderr is a terminal and not ``quiet``.",
        shards=False,
    ),
    Parameter(
        "max_pixels", None, "int or None",
        "Decompression-bomb limit (default ``PIL.Image.MAX_IMAGE_PIXELS``).",
        image_features=True,
    ),
    Parameter(
        "shard", None, '"I/N", (I, N) or None',
        "Extract only shard I of N (1-based), a fixed share of the images chosen by a hash of "
        "each key; merge the N shard caches with :func:`tripletsk.cache.merge.merge_shards`.",
        "extract only shard I of N (1-based); merge the N files with merge-features",
        cli={"metavar": "I/N"}, shards=False,
    ),
    Parameter(
        "decode_memory", None, "int or None",
        "Bytes of decoded pixels the decoding threads may hold at once (default 1 GiB).",
        shards=False,
    ),
    Parameter(
        "int8_model", None, "Int8Model or None",
        "int8 only: an already quantized model to use for a new cache (how "
        ":func:`~tripletsk.extraction.distributed.extract_with_dask` quantizes once for all its "
        "shards).",
        shards=False,
    ),
    Parameter(
        "only", None, "collection of str or None",
        "Keys (paths relative to ``images_dir``, ``/`` separators) of the only images to "
        "consider: they are looked up instead of searching the folder, and the cache's other "
        "rows and failures are kept as they are (not with ``prune`` or ``shard``). How "
        ":class:`tripletsk.ImageFeatures` adds a few images to the cache of a large folder.",
        shards=False,
    ),
    Parameter(
        "backend_choice", None, "str or None",
        "With an explicit backend: how it was chosen, recorded as the cache's "
        "``backend_choice`` (how :func:`~tripletsk.extraction.distributed.extract_with_dask` "
        'records the choice ``"auto"`` made once for all its shards).',
        shards=False,
    ),
)  # fmt: skip

#: Every parameter of an extraction, by name (in the order of ``extract-features --help``).
PARAMETERS: MappingProxyType = MappingProxyType({p.name: p for p in _DECLARED})
#: The default of each parameter that has one.
DEFAULTS: MappingProxyType = MappingProxyType(
    {p.name: p.default for p in _DECLARED if p.default is not _NO_DEFAULT}
)
#: The parameters that choose the network whose features are made (``"auto"`` in
#: :class:`~tripletsk.extraction.image_features.ImageFeatures`: the cache's).
NETWORK_PARAMETERS = ("backbone", "layer", "preprocessing", "weights", "seed", "image_size",
                      "backend", "precision")  # fmt: skip
#: What :func:`~tripletsk.extraction.distributed.extract_with_dask` passes on to every shard.
SHARD_PARAMETERS = tuple(p.name for p in _DECLARED if p.shards)
#: The parameters :class:`~tripletsk.extraction.image_features.ImageFeatures` shares.
IMAGE_FEATURES_PARAMETERS = tuple(p.name for p in _DECLARED if p.image_features)


def cli_parameters(exclude: Iterable[str] = ()) -> list[Parameter]:
    """The parameters with an ``extract-features`` option, in their order, but ``exclude``."""
    return [p for p in _DECLARED if p.help is not None and p.name not in set(exclude)]


def document_parameters(fn: Callable) -> Callable:
    """Fill in ``fn``'s docstring from the declaration: a line ``{parameters}`` becomes the
    Parameters entries of ``fn``'s declared parameters, in the order of its signature (indented
    as that line is); ``{shard_parameters}`` in a line, the names of :data:`SHARD_PARAMETERS`."""
    import inspect
    import textwrap

    if fn.__doc__ is None:  # (python -OO)
        return fn
    out = []
    for line in fn.__doc__.splitlines():
        indent = line[: len(line) - len(line.lstrip())]
        wrap = dict(width=96, initial_indent=indent, subsequent_indent=indent)
        if line.strip() == "{parameters}":
            for name in (n for n in inspect.signature(fn).parameters if n in PARAMETERS):
                out.append(f"{indent}{name} : {_kind(PARAMETERS[name])}")
                more = indent + "    "
                out.extend(textwrap.wrap(PARAMETERS[name].doc, 96, initial_indent=more,
                                         subsequent_indent=more))  # fmt: skip
        elif "{shard_parameters}" in line:
            names = ", ".join(f"``{k}``" for k in SHARD_PARAMETERS)
            out.extend(textwrap.wrap(line.replace("{shard_parameters}", names).strip(), **wrap))
        else:
            out.append(line)
    fn.__doc__ = "\n".join(out)
    return fn


def _kind(p: Parameter) -> str:
    shown = p.default not in (None, _NO_DEFAULT)
    return f"{p.kind}, default {_spelled(p.default)}" if shown else p.kind


def _spelled(value) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def check_image_size(image_size: int) -> None:
    """Refuse an image size the applications cannot take (five stride-2 stages need 32
    pixels)."""
    if image_size < 32:
        raise UserError(f"image_size must be at least 32, got {image_size}")


def check_backend(backend: str, precision: str | None) -> tuple[str, str | None]:
    """Validated ``(backend, precision)``; precision spelled ``float32``, ``bfloat16`` or
    ``int8`` (OpenVINO only). ``precision=None``: float32, except with ``backend="auto"``,
    which then chooses the precision too (``(AUTO, None)``).

    OpenVINO bfloat16 is refused up front on a CPU without bfloat16 instructions, where
    OpenVINO would compute in float32 while the cache recorded bfloat16.
    """
    from tripletsk.extraction.runners import (
        check_precision,
        cpu_lacks_bfloat16,
        normalize_precision,
    )

    if backend not in (*BACKENDS, AUTO):
        raise UserError(f"backend must be one of {', '.join((*BACKENDS, AUTO))}, got {backend!r}")
    if precision is None and backend == AUTO:
        return AUTO, None
    try:
        precision = normalize_precision("float32" if precision is None else precision)
    except ValueError as e:  # said here without check_precision's CLI flag name
        raise UserError(str(e)) from None
    if backend == AUTO:
        from tripletsk.extraction.runners import available_runners

        if not available_runners(precision):
            raise UserError(
                f"precision {precision!r}: no runner computes in it here; int8 runs on "
                'OpenVINO with NNCF: pip install "tripletsk[openvino]"'
            )
        return AUTO, precision
    precision = check_precision(backend, precision)  # int8: OpenVINO only
    # Known up front only where the CPU's flags are readable (Linux); elsewhere the runner's
    # own report of the precision OpenVINO chose is checked when it is built.
    if (backend, precision) == ("openvino", "bfloat16") and cpu_lacks_bfloat16():
        raise openvino_runs_other_precision(precision, "float32")
    return backend, precision


def openvino_runs_other_precision(asked: str, chosen: str) -> UserError:
    """The error for OpenVINO computing in ``chosen`` where ``asked`` was asked for."""
    return UserError(
        f"precision {asked!r}: OpenVINO computes in {chosen} on this CPU (it has no "
        "AVX512-BF16 or AMX). Use precision 'float32': OpenVINO float32 ran at 1.75x "
        "TensorFlow float32 on such a CPU (benchmarks/README.md)."
    )
