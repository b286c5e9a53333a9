"""The settings of one extraction run, checked once and passed to each step."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from functools import cached_property

from tripletsk.errors import UserError
from tripletsk.extraction.architecture import RESNET50
from tripletsk.extraction.backbone import WeightsSpec, feature_dim, provenance_for, resolve_network
from tripletsk.extraction.parameters import (
    AUTO,
    DEFAULTS,
    DTYPES,
    check_backend,
    check_image_size,
)

__all__ = ["DEFAULT_DECODE_MEMORY", "ExtractOptions"]

#: Bytes of decoded pixels the decoding threads may hold at once, by default.
DEFAULT_DECODE_MEMORY = 1 << 30
#: The arguments :meth:`ExtractOptions.from_arguments` takes, and their defaults.
_DEFAULTS = {k: v for k, v in DEFAULTS.items() if k not in ("output", "int8_model")}


@dataclass(frozen=True)
class ExtractOptions:
    """Validated arguments of :func:`~tripletsk.extraction.extract_features`."""

    root: str
    output: str
    spec: WeightsSpec
    image_size: int
    batch_size: int
    backend: str = "tensorflow"  # "auto" until the run resolves it (auto.py)
    precision: str | None = "float32"  # None: auto chooses it too
    dtype: str | None = None  # requested storage precision; None keeps the cache's
    recursive: bool = DEFAULTS["recursive"]
    prune: bool = DEFAULTS["prune"]
    verify: bool = DEFAULTS["verify"]
    workers: int = 1  # decoding threads
    max_pixels: int | None = DEFAULTS["max_pixels"]
    show: bool = False  # progress bars
    quiet: bool = DEFAULTS["quiet"]  # no messages
    shard: object = DEFAULTS["shard"]  # "I/N", (I, N) or None
    replace: bool = DEFAULTS["replace"]  # discard an existing cache
    only: tuple | None = None  # keys of the only images to consider (not searched); None: all
    decode_memory: int = DEFAULT_DECODE_MEMORY
    int8: dict | None = None  # int8 only: what the cache records of the quantized model
    int8_folder: str | None = None  # int8 only: the quantized model
    choice: str | None = None  # how the runner was chosen (backend_choice)

    @classmethod
    def from_arguments(cls, images_dir, output, **arguments) -> ExtractOptions:
        """Check the arguments of :func:`~tripletsk.extraction.extract_features` (by its
        parameter names; those not given at their :data:`~tripletsk.extraction.parameters.
        DEFAULTS`) and resolve them; a :class:`UserError` says which is wrong and why."""
        unknown = sorted(set(arguments) - set(_DEFAULTS))
        if unknown:
            raise TypeError(f"unexpected extraction arguments {unknown}")
        a = {**_DEFAULTS, **arguments}
        root, output = os.fspath(images_dir), os.fspath(output)
        image_size, batch_size = int(a["image_size"]), int(a["batch_size"])
        if not os.path.exists(root):
            raise UserError(f"images folder does not exist: {root}")
        if not os.path.isdir(root):
            raise UserError(f"not a folder: {root} (pass the folder that holds the images)")
        check_image_size(image_size)
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {batch_size}")
        dtype = a["dtype"]
        if dtype is not None and dtype not in DTYPES:
            raise UserError(f"dtype must be {' or '.join(DTYPES)}, got {dtype!r}")
        if os.path.isdir(output):
            raise UserError(f"the output must be a file path, not a folder: {output}")
        spec = resolve_network(*(a[k] for k in ("weights", "seed", "backbone", "layer",
                                                "preprocessing")))  # fmt: skip
        backend, precision = check_backend(a["backend"], a["precision"])
        quiet, progress = a["quiet"], a["progress"]
        show = (not quiet and sys.stderr.isatty()) if progress is None else bool(progress)
        workers = int(a["workers"]) if a["workers"] else min(8, os.cpu_count() or 1)
        decode_memory = a["decode_memory"]
        if decode_memory is None:
            decode_memory = DEFAULT_DECODE_MEMORY
        if int(decode_memory) < 1:
            raise UserError(f"decode_memory must be a positive number of bytes: {decode_memory}")
        only = None if a["only"] is None else tuple(a["only"])
        return cls(
            root, output, spec, image_size, batch_size, backend, precision, dtype,
            a["recursive"], a["prune"], a["verify"], workers, a["max_pixels"], show, bool(quiet),
            a["shard"], a["replace"], only, int(decode_memory), choice=a["backend_choice"],
        )  # fmt: skip

    @cached_property
    def dim(self) -> int:
        """The length of the feature vectors: ResNet50's is known; an OpenVINO run reads it from
        the converted or quantized model kept beside the cache, if there is one; else the Keras
        model is built (which imports TensorFlow)."""
        if self.backend == "openvino" and self.spec.arch != RESNET50:
            folder = self.int8_folder
            if self.precision != "int8":
                from tripletsk.extraction.model_folders import models_dir
                from tripletsk.extraction.openvino_float import converted_model_folder

                folder = converted_model_folder(self.spec, self.image_size, models_dir(self.output))
            if folder is not None:
                from tripletsk.extraction.model_folders import ir_output_width

                width = ir_output_width(folder)
                if width:
                    return width
        return feature_dim(self.spec, self.image_size)

    @property
    def provenance(self) -> dict:
        if self.backend == AUTO:
            raise RuntimeError("backend='auto' is resolved by the run before its provenance")
        return provenance_for(self.spec, self.image_size, self.backend, self.precision,
                              int8=self.int8, choice=self.choice)  # fmt: skip
