"""Feature extraction: find images, decode them, run a frozen ResNet50, cache the features.

The expensive one-time step. ``extract_features(images_dir)`` (``tripletsk extract-features``)
passes every image once through ResNet50 up to its ``avg_pool`` layer (2048 numbers) and stores the
features in an HDF5 cache (see :mod:`tripletsk.store`). Runs are incremental (only new or changed
images are extracted), resumable after any interruption (SIGKILL included), and unreadable files
are skipped and reported with a reason.

Decoding (Pillow, in a thread pool, in parallel with the model): EXIF orientation applied, any mode
converted to RGB (alpha composited on white, 16-bit scaled to 8-bit, CMYK converted, first frame of
animations), resized to ``image_size`` x ``image_size`` with bilinear filtering (aspect ratio not
kept), then ResNet50's own ``preprocess_input`` (caffe mode) inside the compiled model function.

TensorFlow is imported only when a model is built.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import io
import json
import os
import re
import stat
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from tripletsk.errors import (
    CacheMismatchError,
    ImageDecodeError,
    UserError,
    WeightsUnavailableError,
)
from tripletsk.store import (
    DEFAULT_CACHE,
    FINGERPRINT_DTYPE,
    FORMAT_NAME,
    FORMAT_VERSION,
    CacheLock,
    FeatureStore,
    PartsJournal,
    check_provenance,
    library_versions,
    load_part_features,
    now_iso,
    read_feature_rows,
    read_header,
    remove_stale_temp_files,
    write_cache,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "Backbone",
    "ExtractionSummary",
    "add_extract_arguments",
    "build_backbone",
    "discover_images",
    "extract_features",
    "features_for_files",
    "load_image",
    "run_extract",
]

#: File extensions searched for (compared case-insensitively).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
BACKBONE = "keras.applications.ResNet50(include_top=False, pooling='avg')"
FEATURE_DIM = 2048
#: Identifies the decoding + preprocessing; bump the version when pixels could change.
PREPROCESSING = (
    "tripletsk-v1: pillow decode, jpeg draft>=size, exif transpose, rgb (alpha on white, "
    "16-bit/257), resize bilinear to size x size; resnet50.preprocess_input (caffe)"
)
RANDOM_INIT = "numpy-glorot-uniform-v1"
#: Keras' md5 of resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 (the ImageNet weights).
IMAGENET_NOTOP_MD5 = "4d473c1dd8becc155b73f8504c6f6626"
IMAGENET_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
#: A file whose mtime is this close to (or after) the moment it was hashed is re-hashed next run,
#: because a later change within the file system's timestamp granularity could keep its mtime.
RACY_NS = 3_000_000_000
_BIG_FILE = 256 * 1024 * 1024  # files larger than this are hashed by streaming, then decoded


# --------------------------------------------------------------------------------------------
# Finding images
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageFile:
    key: str  # path relative to the root, '/' separators
    path: str  # path to open
    size: int
    mtime_ns: int


@dataclass
class Discovery:
    files: list  # [ImageFile], sorted by key
    failed: list  # [(key, reason)] files found but unusable (broken link, not a regular file...)
    ignored: int  # files without an image extension
    skipped_dirs: list  # [(relative dir, reason)]


def _reason_from_oserror(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "symbolic link loop"
    if e.errno == errno.ENOENT:
        return "broken symbolic link or file vanished"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (file not readable)"
    return f"cannot read file: {e.strerror or e}"


def _safe_key(key: str) -> tuple[str, bool]:
    try:
        key.encode("utf-8")
        return key, True
    except UnicodeEncodeError:
        return key.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), False


def discover_images(images_dir: str | os.PathLike, recursive: bool = True) -> Discovery:
    """List image files under ``images_dir`` by extension (case-insensitive), sorted by key.

    Symbolic links to files are followed; symbolic links to directories are followed too, but each
    real directory is visited once, so link loops end. Names starting with ``.`` (hidden files and
    folders, e.g. macOS ``._x.jpg`` resource files) are skipped.
    """
    root = os.fspath(images_dir)
    files, failed, skipped_dirs = [], [], []
    ignored = 0
    seen_dirs = set()
    try:
        st = os.stat(root)
        seen_dirs.add((st.st_dev, st.st_ino))
    except OSError:
        pass

    def onerror(e: OSError) -> None:
        rel = os.path.relpath(e.filename, root).replace(os.sep, "/") if e.filename else "?"
        skipped_dirs.append((rel + "/", _reason_from_oserror(e)))

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            full = os.path.join(dirpath, d)
            try:
                dst = os.stat(full)
            except OSError as e:
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                skipped_dirs.append((rel + "/", _reason_from_oserror(e)))
                continue
            ident = (dst.st_dev, dst.st_ino)
            if ident in seen_dirs:  # a link loop, or a second link to a folder already seen
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                skipped_dirs.append((rel + "/", "directory already visited (symbolic link loop)"))
                continue
            seen_dirs.add(ident)
            keep.append(d)
        dirnames[:] = keep if recursive else []
        for name in filenames:
            if name.startswith("."):
                continue
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                ignored += 1
                continue
            full = os.path.join(dirpath, name)
            key, ok = _safe_key(os.path.relpath(full, root).replace(os.sep, "/"))
            if not ok:
                failed.append((key, "file name is not valid UTF-8; rename the file"))
                continue
            try:
                st = os.stat(full)
            except OSError as e:
                failed.append((key, _reason_from_oserror(e)))
                continue
            if not stat.S_ISREG(st.st_mode):
                failed.append((key, "not a regular file"))
                continue
            files.append(ImageFile(key, full, st.st_size, st.st_mtime_ns))
    files.sort(key=lambda f: f.key)
    failed.sort()
    return Discovery(files, failed, ignored, skipped_dirs)


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def _to_rgb(im):
    """Convert a Pillow image of any mode to 8-bit RGB (alpha composited onto white)."""
    from PIL import Image

    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im)
        if mode == "F":
            a = np.nan_to_num(a.astype(np.float64))
            scale = 255.0 if a.max(initial=0.0) <= 1.0 else 1.0
            a8 = np.clip(a * scale, 0, 255).round().astype(np.uint8)
        else:  # 16-bit samples (also "I", how Pillow opens some 16-bit files): 0..65535 -> 0..255
            a8 = ((np.clip(a.astype(np.int64), 0, 65535) + 128) // 257).astype(np.uint8)
        return Image.fromarray(a8, mode="L").convert("RGB")
    if mode == "P":
        if "transparency" in im.info:
            im = im.convert("RGBA")
            mode = "RGBA"
        else:
            return im.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, RGBX, ...


def _decode(data: bytes | str, image_size: int, max_pixels: int | None) -> np.ndarray:
    """Decode bytes (or a path) to a (size, size, 3) uint8 array; ImageDecodeError with a reason."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if max_pixels is None:
        max_pixels = Image.MAX_IMAGE_PIXELS
    src = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with Image.open(src) as im:
            n_pixels = im.width * im.height
            if max_pixels and n_pixels > max_pixels:
                raise ImageDecodeError(
                    f"decompression bomb: {im.width}x{im.height} = {n_pixels} pixels exceeds "
                    f"the limit of {max_pixels}"
                )
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)  # animations: first frame
            if im.format == "JPEG":
                im.draft(None, (image_size, image_size))  # DCT downscaling, keeps >= size
            im.load()
            try:
                img = ImageOps.exif_transpose(im)
            except Exception:  # broken EXIF: use the pixels as stored
                img = im
            rgb = _to_rgb(img)
            if rgb.size != (image_size, image_size):
                rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
            arr = np.asarray(rgb, dtype=np.uint8)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(f"decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image: cannot identify the image format") from None
    except MemoryError:
        raise ImageDecodeError("image too large to decode (out of memory)") from None
    except OSError as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg:
            raise ImageDecodeError(f"truncated or corrupt image ({msg})") from None
        raise ImageDecodeError(f"corrupt image ({msg})") from None
    except Exception as e:
        raise ImageDecodeError(f"cannot decode image ({type(e).__name__}: {e})") from None
    if arr.shape != (image_size, image_size, 3):
        raise ImageDecodeError(f"unexpected decoded shape {arr.shape}")
    return arr


def load_image(
    path: str | os.PathLike | bytes, image_size: int = 224, *, max_pixels: int | None = None
) -> np.ndarray:
    """Read one image as the extractor does: a (image_size, image_size, 3) uint8 RGB array.

    EXIF orientation is applied; any mode is converted to RGB (transparency composited on white,
    16-bit samples scaled to 8 bits, CMYK converted, first frame of animations); the image is
    resized to a square with bilinear filtering (aspect ratio not kept). ``max_pixels`` (default
    ``PIL.Image.MAX_IMAGE_PIXELS``) guards against decompression bombs.

    Raises
    ------
    ImageDecodeError
        With the reason, if the file is not a readable image.
    """
    if isinstance(path, bytes):
        data = path
    else:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as e:
            raise ImageDecodeError(_reason_from_oserror(e)) from None
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    with warnings.catch_warnings():
        from PIL import Image

        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return _decode(data, int(image_size), max_pixels)


@dataclass
class _Result:
    file: ImageFile
    array: np.ndarray | None
    fingerprint: tuple  # (size, mtime_ns, blake2b hex, hashed_ns)
    reason: str | None


def _open_regular(path: str):
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ImageDecodeError("not a regular file")
    return os.fdopen(fd, "rb"), st


def _hash_stream(fh) -> str:
    h = hashlib.blake2b(digest_size=16)
    for chunk in iter(lambda: fh.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def _fingerprint_file(f: ImageFile) -> tuple:
    """(size, mtime_ns, blake2b, hashed_ns) of a file, by content (OSError if unreadable)."""
    t = time.time_ns()
    fh, st = _open_regular(f.path)
    with fh:
        digest = _hash_stream(fh)
    return (st.st_size, st.st_mtime_ns, digest, t)


def _process_file(f: ImageFile, image_size: int, max_pixels: int | None) -> _Result:
    """Read, hash and decode one file (runs in a worker thread)."""
    t = time.time_ns()
    fp = (f.size, f.mtime_ns, "", t)
    try:
        fh, st = _open_regular(f.path)
        with fh:
            fp = (st.st_size, st.st_mtime_ns, "", t)
            if st.st_size > _BIG_FILE:
                digest, data = _hash_stream(fh), f.path
            else:
                data = fh.read()
                digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        fp = (st.st_size, st.st_mtime_ns, digest, t)
        if st.st_size == 0:
            raise ImageDecodeError("empty file (0 bytes)")
        arr = _decode(data, image_size, max_pixels)
        return _Result(f, arr, fp, None)
    except ImageDecodeError as e:
        return _Result(f, None, fp, str(e))
    except OSError as e:
        return _Result(f, None, fp, _reason_from_oserror(e))
    except Exception as e:  # never let one file stop the run
        return _Result(f, None, fp, f"cannot decode image ({type(e).__name__}: {e})")


# --------------------------------------------------------------------------------------------
# Backbone
# --------------------------------------------------------------------------------------------


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
            f"weights file not found: {path}; pass --weights imagenet, --weights none, or the "
            "path of a ResNet50 weights file (.h5 / .weights.h5)"
        )
    md5, b2 = _file_digests(path)
    if md5 == IMAGENET_NOTOP_MD5:
        return WeightsSpec("file", "imagenet", path, 0, os.path.abspath(path))
    return WeightsSpec("file", f"file:blake2b={b2}", path, 0, os.path.abspath(path))


BACKENDS = ("tensorflow", "openvino")


def check_backend(backend: str, precision: str) -> tuple[str, str]:
    """Validated ``(backend, precision)``; precision spelled ``float32`` or ``bfloat16``.

    OpenVINO bfloat16 is refused up front on a CPU without bfloat16 instructions, where
    OpenVINO would compute in float32 while the cache recorded bfloat16.
    """
    from tripletsk.backends import cpu_lacks_bfloat16, normalize_precision

    if backend not in BACKENDS:
        raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    try:
        precision = normalize_precision(precision)
    except ValueError as e:
        raise UserError(f"--precision: {e}") from None
    # Known up front only where the CPU's flags are readable (Linux); elsewhere the runner's
    # own report of the precision OpenVINO chose is checked when it is built.
    if (backend, precision) == ("openvino", "bfloat16") and cpu_lacks_bfloat16():
        raise _openvino_runs_other_precision(precision, "float32")
    return backend, precision


def _openvino_runs_other_precision(asked: str, chosen: str) -> UserError:
    return UserError(
        f"--precision {asked}: OpenVINO computes in {chosen} on this CPU (it has no "
        "AVX512-BF16 or AMX). Use --precision float32: OpenVINO float32 ran at 1.75x "
        "TensorFlow float32 on such a CPU (benchmarks/README.md)."
    )


def provenance_for(
    spec: WeightsSpec, image_size: int, backend: str = "tensorflow", precision: str = "float32"
) -> dict:
    """The attributes that identify the features a model produces.

    ``compute_dtype`` takes part in the mismatch check: bfloat16 and float32 features are never
    mixed in one cache. The backend is recorded but not checked, since TensorFlow and OpenVINO
    agree to float32 rounding at the same precision.
    """
    return {
        "backbone": BACKBONE,
        "weights": spec.identity,
        "image_size": int(image_size),
        "preprocessing": PREPROCESSING,
        "compute_dtype": precision,
        "backend": backend,
        "weights_source": spec.source,
    }


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
    ):
        import tensorflow as tf
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
            self._fn = _backend_runner(model, backend, precision, self.batch_size)

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


def _backend_runner(model, backend: str, precision: str, batch_size: int):
    """uint8 batch -> features through :mod:`tripletsk.backends` (OpenVINO, or TF bfloat16)."""
    from keras.applications.resnet50 import preprocess_input

    from tripletsk import backends

    if backend == "openvino":
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
    return lambda x: run(preprocess_input(np.asarray(x, dtype=np.float32)))


def _quiet_tf() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_backbone(
    weights="imagenet",
    image_size: int = 224,
    seed: int = 0,
    batch_size: int = 32,
    backend: str = "tensorflow",
    precision: str = "float32",
) -> Backbone:
    """Build the frozen ResNet50 backbone and compile its forward function.

    ``weights``: ``"imagenet"`` (Keras downloads and caches the file), ``"none"``/``None`` (random
    initialisation from ``seed``, identical in every process), or a path to a weights file.

    Raises
    ------
    WeightsUnavailableError
        If the ImageNet weights cannot be downloaded (offline); the message says what to pass.
    """
    spec = weights if isinstance(weights, WeightsSpec) else resolve_weights(weights, seed)
    image_size = int(image_size)
    if image_size < 32:
        raise UserError(f"image size must be at least 32 for ResNet50, got {image_size}")
    _quiet_tf()
    import keras

    shape = (image_size, image_size, 3)
    if spec.kind == "imagenet":
        try:
            model = keras.applications.ResNet50(
                include_top=False, weights="imagenet", input_shape=shape, pooling="avg"
            )
        except Exception as e:
            raise WeightsUnavailableError(
                f"cannot get the ImageNet weights for ResNet50 ({type(e).__name__}: {e}). "
                "Offline, download resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 "
                "elsewhere and pass it with --weights path/to/"
                "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 (Python: weights=path), "
                "or use --weights none for random weights (for testing only)."
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
    return Backbone(model, spec, image_size, batch_size, *check_backend(backend, precision))


# --------------------------------------------------------------------------------------------
# The extraction run
# --------------------------------------------------------------------------------------------


@dataclass
class ExtractionSummary:
    """What a run did. ``extracted`` counts new images, ``changed`` re-extracted changed ones."""

    output: str
    extracted: int = 0
    cached: int = 0
    changed: int = 0
    failed: list = field(default_factory=list)  # [(key, reason)], all current failures
    pruned: int = 0
    missing: int = 0  # cached images whose file is gone, kept (see prune)
    resumed: int = 0  # of extracted + changed, finished by an earlier interrupted run
    ignored: int = 0  # files without an image extension
    skipped_dirs: list = field(default_factory=list)
    n_images: int = 0  # rows in the cache after the run
    failed_list: str | None = None  # path of the text file listing failures
    interrupted: bool = False
    written: bool = False  # whether the cache file was (re)written
    seconds: float = 0.0
    setup_seconds: float = 0.0  # from the start until the model was ready
    #: seconds spent: "model" (forward passes), "wait_decode" (model idle, waiting for decoded
    #: images), "wait_write" (waiting for the previous part file), "write_cache" (final write)
    timings: dict = field(default_factory=dict)

    def format(self) -> str:
        lines = [f"features: {self.output} ({self.n_images} images)"]
        ext = f"  extracted: {self.extracted}"
        if self.resumed:
            ext += f" ({self.resumed} finished by an interrupted run and resumed)"
        lines.append(ext)
        lines.append(f"  already cached: {self.cached}")
        lines.append(f"  changed and re-extracted: {self.changed}")
        fail = f"  failed: {len(self.failed)}"
        if self.failed:
            where = f"; full list in {self.failed_list}" if self.failed_list else ""
            fail += f" (skipped, reasons stored in the cache's 'failed' list{where})"
        lines.append(fail)
        for key, reason in self.failed[:10]:
            lines.append(f"    {key}: {reason}")
        if len(self.failed) > 10:
            lines.append(f"    ... and {len(self.failed) - 10} more")
        if self.missing:
            lines.append(f"  files gone, features kept: {self.missing} (use --prune to drop them)")
        if self.pruned:
            lines.append(f"  pruned (file gone): {self.pruned}")
        if self.ignored:
            lines.append(f"  ignored (not an image extension): {self.ignored}")
        for d, reason in self.skipped_dirs[:10]:
            lines.append(f"  skipped folder {d}: {reason}")
        if self.seconds:
            done = self.extracted + self.changed - self.resumed
            rate = ""
            if done and self.seconds > self.setup_seconds:
                rate = f", {done / (self.seconds - self.setup_seconds):.1f} images/s after setup"
            lines.append(f"  time: {self.seconds:.1f} s{rate}")
        if self.interrupted:
            lines.append("  interrupted: finished images are saved; run again to continue")
        return "\n".join(lines)


def _trust_stat(fp, size: int, mtime_ns: int) -> bool:
    """True if a stored fingerprint's size/mtime match and its hash is not 'racy'."""
    return (
        int(fp["size"]) == size
        and int(fp["mtime_ns"]) == mtime_ns
        and abs(int(fp["hashed_ns"]) - mtime_ns) > RACY_NS  # (future mtimes are fine too)
    )


def _progress(total: int, desc: str, show: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="img",
        file=sys.stderr,
        disable=not show,
        dynamic_ncols=True,
        smoothing=0.05,
        leave=True,
    )


def extract_features(
    images_dir: str | os.PathLike,
    output: str | os.PathLike = DEFAULT_CACHE,
    weights="imagenet",
    image_size: int = 224,
    batch_size: int = 32,
    dtype: str | None = None,
    recursive: bool = True,
    prune: bool = False,
    seed: int = 0,
    progress: bool | None = None,
    quiet: bool = False,
    *,
    verify: bool = False,
    workers: int | None = None,
    max_pixels: int | None = None,
    shard: str | tuple[int, int] | None = None,
    backend: str = "tensorflow",
    precision: str = "float32",
) -> ExtractionSummary:
    """Extract ResNet50 ``avg_pool`` features of every image under ``images_dir`` into a cache.

    Parameters
    ----------
    images_dir : path
        Folder of images (``.jpg .jpeg .png .gif .bmp .webp .tif .tiff``, any case).
    output : path, default "cache/features.h5"
        The HDF5 cache; created, or updated incrementally if it exists.
    weights : "imagenet", "none" or path, default "imagenet"
        ImageNet weights (Keras download), random weights from ``seed``, or a local weights file.
    image_size : int, default 224
        Images are resized to ``image_size`` x ``image_size`` (at least 32).
    batch_size : int, default 32
    dtype : "float32", "float16" or None
        Storage precision; None keeps an existing cache's, else float32.
    recursive : bool, default True
        Search sub-folders.
    prune : bool, default False
        Drop cached entries whose file is gone (otherwise they are kept).
    seed : int, default 0
        Seed of the random initialisation when ``weights="none"``.
    progress : bool or None
        Progress bar on stderr; None shows it when stderr is a terminal and not ``quiet``.
    quiet : bool, default False
        No progress bar.
    verify : bool, default False
        Hash every cached file's content to detect changes, instead of trusting unchanged size
        and modification time.
    workers : int or None
        Decoding threads (default: number of CPUs, at most 8).
    max_pixels : int or None
        Decompression-bomb limit (default ``PIL.Image.MAX_IMAGE_PIXELS``).
    shard : "I/N", (I, N) or None
        Extract only shard I of N (1-based), a fixed share of the images chosen by a hash of each
        key; merge the N shard caches with :func:`tripletsk.shards.merge_shards`.
    backend : "tensorflow" or "openvino", default "tensorflow"
        What runs the model. OpenVINO needs ``pip install "tripletsk[openvino]"``.
    precision : "float32" or "bfloat16", default "float32"
        Arithmetic of the model. bfloat16 is faster only on hardware with native bfloat16
        (AVX512-BF16 or AMX CPUs, recent GPUs); its features differ slightly from float32 ones
        (``benchmarks/extraction_bf16.py``), so a cache holds one precision only.

    Returns
    -------
    ExtractionSummary

    Raises
    ------
    UserError
        The folder does not exist or holds no images, bad arguments, or (subclasses)
        :class:`CacheMismatchError` for a cache made with other settings,
        :class:`CacheLockedError` when another extraction writes the same cache,
        :class:`WeightsUnavailableError` when ImageNet weights cannot be downloaded.
    """
    t0 = time.perf_counter()
    root = os.fspath(images_dir)
    output = os.fspath(output)
    image_size, batch_size = int(image_size), int(batch_size)
    if not os.path.exists(root):
        raise UserError(f"images folder does not exist: {root}")
    if not os.path.isdir(root):
        raise UserError(f"not a folder: {root} (pass the folder that holds the images)")
    if image_size < 32:
        raise UserError(f"--image-size must be at least 32 for ResNet50, got {image_size}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if dtype is not None and dtype not in ("float32", "float16"):
        raise UserError(f"--dtype must be float32 or float16, got {dtype!r}")
    if os.path.isdir(output):
        raise UserError(f"--output must be a file path, not a folder: {output}")
    spec = resolve_weights(weights, seed)
    prov = provenance_for(spec, image_size, *check_backend(backend, precision))
    show = (not quiet and sys.stderr.isatty()) if progress is None else bool(progress)
    workers = int(workers) if workers else min(8, os.cpu_count() or 1)

    found = discover_images(root, recursive=recursive)
    if not found.files and not found.failed:
        how = "recursively " if recursive else ""
        raise UserError(
            f"no images found in {root} (searched {how}for {' '.join(IMAGE_EXTENSIONS)}, any case)"
        )
    shard_attrs = None
    if shard is not None:
        from tripletsk.shards import select_shard

        found, shard_attrs = select_shard(found, shard)

    out_dir = os.path.dirname(os.path.abspath(output))
    try:
        os.makedirs(out_dir, exist_ok=True)
        os.close(os.open(output + ".lock", os.O_RDWR | os.O_CREAT, 0o644))
    except OSError as err:
        raise UserError(f"cannot write the cache {output}: {err.strerror or err}") from None
    summary = ExtractionSummary(output=output, ignored=found.ignored)
    summary.skipped_dirs = list(found.skipped_dirs)
    from PIL import Image

    with CacheLock(output), warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        remove_stale_temp_files(output)
        old = read_header(output) if os.path.exists(output) else None
        if old is not None:
            check_provenance(old.provenance, prov, output)
            if shard_attrs is not None or "shard" in old.attrs:
                from tripletsk.shards import check_shard_output

                check_shard_output(old.attrs, shard_attrs, output)
            if dtype is not None and dtype != old.dtype:
                raise CacheMismatchError(
                    f"{output} stores {old.dtype} features; pass --dtype {old.dtype} (or omit "
                    "--dtype), or choose another --output"
                )
        store_dtype = dtype or (old.dtype if old is not None else "float32")
        journal = PartsJournal(
            output,
            {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "provenance": prov,
                "dim": FEATURE_DIM,
                "image_root": os.path.abspath(root),
            },
        )
        parts = journal.open()
        try:
            _run(
                found=found, old=old, journal=journal, parts=parts, spec=spec, summary=summary,
                output=output, store_dtype=store_dtype, prov=prov, root=root,
                image_size=image_size, batch_size=batch_size, workers=workers,
                max_pixels=max_pixels, verify=verify, prune=prune, show=show, t0=t0,
                shard_attrs=shard_attrs,
            )  # fmt: skip
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
                raise
            raise UserError(
                f"cannot write the cache {output}: {err.strerror or err}. Finished batches are "
                f"kept in {journal.dir}; fix the problem and run the same command again."
            ) from err
    summary.seconds = time.perf_counter() - t0
    if summary.interrupted:
        raise KeyboardInterrupt
    return summary


def _run(
    *, found, old, journal, parts, spec, summary, output, store_dtype, prov, root,
    image_size, batch_size, workers, max_pixels, verify, prune, show, t0, shard_attrs=None,
) -> None:  # fmt: skip
    """Classify the files (cached / resumed / to check / to extract), extract, write the cache."""
    # Latest parts entry per key (parts are newer than the cache).
    part_ok: dict[str, tuple[int, int]] = {}  # key -> (part index, row)
    part_fail: dict[str, tuple[str, int, int]] = {}  # key -> (reason, size, mtime)
    for pi, p in enumerate(parts):
        for r, k in enumerate(p.keys):
            part_ok[k] = (pi, r)
            part_fail.pop(k, None)
        for k, reason, size, mtime in p.failed:
            part_fail[k] = (reason, size, mtime)
            part_ok.pop(k, None)
    old_index = {k: i for i, k in enumerate(old.keys)} if old is not None else {}
    # Parts already merged into the cache (a run killed between writing the cache and deleting
    # its parts): the cache holds the same file version, so the cache entry is used.
    for k in [k for k in part_ok if k in old_index]:
        pi, r = part_ok[k]
        a, b = parts[pi].fingerprints[r], old.fingerprints[old_index[k]]
        if a["blake2b"] == b["blake2b"] and a["size"] == b["size"]:
            del part_ok[k]

    use_part: dict[str, tuple[int, int]] = {}
    keep_old: dict[str, np.void] = {}  # key -> fingerprint (maybe refreshed)
    failed_now: dict[str, str] = dict(found.failed)
    to_check: list[ImageFile] = []
    pending: list[ImageFile] = []
    for f in found.files:
        if f.key in part_ok:
            pi, r = part_ok[f.key]
            if not verify and _trust_stat(parts[pi].fingerprints[r], f.size, f.mtime_ns):
                use_part[f.key] = (pi, r)
                continue
        elif f.key in part_fail:
            reason, size, mtime = part_fail[f.key]
            if size == f.size and mtime == f.mtime_ns:
                failed_now[f.key] = reason
                continue
        if f.key in old_index and f.key not in part_ok:
            fp = old.fingerprints[old_index[f.key]]
            if not verify and _trust_stat(fp, f.size, f.mtime_ns):
                keep_old[f.key] = fp
                continue
        if f.key in old_index or f.key in part_ok:
            to_check.append(f)
        else:
            pending.append(f)

    # Content check of files whose size/mtime changed (or all, with verify): same hash -> keep.
    if to_check:
        with (
            ThreadPoolExecutor(workers) as ex,
            _progress(len(to_check), "checking", show and len(to_check) > 200) as bar,
        ):
            for f, res in zip(to_check, ex.map(_safe_fingerprint, to_check), strict=True):
                bar.update(1)
                if res is None:  # unreadable now: extraction will report why
                    pending.append(f)
                    continue
                size, mtime, digest, hashed = res
                new_fp = np.array([(size, mtime, digest.encode(), hashed)], FINGERPRINT_DTYPE)[0]
                if f.key in part_ok:
                    pi, r = part_ok[f.key]
                    if parts[pi].fingerprints[r]["blake2b"].decode() == digest:
                        parts[pi].fingerprints[r] = new_fp
                        use_part[f.key] = (pi, r)
                        continue
                elif f.key in old_index:
                    fp = old.fingerprints[old_index[f.key]]
                    if fp["blake2b"].decode() == digest:
                        keep_old[f.key] = new_fp
                        continue
                pending.append(f)
        pending.sort(key=lambda f: f.key)

    summary.resumed = len(use_part)
    interrupted = False
    if pending:
        interrupted = _extract_pending(
            pending, journal, spec, image_size, batch_size, workers, max_pixels, show, summary, t0,
            backend=prov["backend"], precision=prov["compute_dtype"],
        )  # fmt: skip
        for k, (pi, r) in _latest_entries(journal.parts, {f.key for f in pending}).items():
            if pi is None:
                failed_now[k] = r
            else:
                use_part[k] = (pi, r)
    summary.interrupted = interrupted

    # Assemble the new cache: kept old rows (old order), then new rows (order of parts).
    present = {f.key for f in found.files}
    old_rows, old_fps, old_keys = [], [], []
    if old is not None:
        for i, k in enumerate(old.keys):
            if k in keep_old:
                old_rows.append(i)
                old_fps.append(keep_old[k])
                old_keys.append(k)
            elif k not in present and k not in failed_now and k not in use_part:
                if prune:
                    summary.pruned += 1
                else:
                    summary.missing += 1
                    old_rows.append(i)
                    old_fps.append(old.fingerprints[i])
                    old_keys.append(k)
    chosen = {v: k for k, v in use_part.items()}
    new_sel: list[tuple[int, list[int]]] = []
    new_keys, new_fps = [], []
    for pi, p in enumerate(journal.parts):
        rows = [r for r in range(len(p.keys)) if (pi, r) in chosen]
        if rows:
            new_sel.append((pi, rows))
            new_keys.extend(p.keys[r] for r in rows)
            new_fps.extend(p.fingerprints[r] for r in rows)
    summary.cached = sum(1 for k in keep_old)
    summary.changed = sum(1 for k in new_keys if k in old_index)
    summary.extracted = len(new_keys) - summary.changed
    failed = sorted(failed_now.items())
    summary.failed = failed
    keys = old_keys + new_keys
    summary.n_images = len(keys)
    fps = np.array(old_fps + new_fps, dtype=FINGERPRINT_DTYPE).reshape(-1)

    old_failed = sorted(old.failed) if old is not None else None
    if shard_attrs is not None:  # a shard records whether it holds its whole share
        shard_attrs = {**shard_attrs, "shard_complete": int(not interrupted)}
    fp_changed = old is not None and any(
        not np.array_equal(old.fingerprints[i], fp) for i, fp in zip(old_rows, old_fps, strict=True)
    )
    need_write = (
        old is None
        or bool(new_keys)
        or len(old_rows) != len(old.keys)
        or fp_changed
        or failed != old_failed
        or os.path.abspath(root) != old.attrs.get("image_root")
        or any(old.attrs.get(k) != v for k, v in (shard_attrs or {}).items())
    )
    if need_write:
        now = now_iso()
        attrs = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            **{k: v for k, v in prov.items()},
            "dim": FEATURE_DIM,
            "dtype": store_dtype,
            "versions": json.dumps(library_versions(), sort_keys=True),
            "created": old.attrs.get("created", now) if old is not None else now,
            "updated": now,
            "image_root": os.path.abspath(root),
            "generation": os.urandom(8).hex(),
            **(shard_attrs or {}),
        }

        def blocks():
            if old_rows:
                yield from read_feature_rows(output, np.asarray(old_rows))
            for pi, rows in new_sel:
                yield load_part_features(journal.parts[pi].path)[rows]

        t = time.perf_counter()
        write_cache(
            output,
            keys=keys,
            fingerprints=fps,
            feature_blocks=blocks(),
            dim=FEATURE_DIM,
            dtype=store_dtype,
            failed=failed,
            attrs=attrs,
        )
        summary.written = True
        summary.timings["write_cache"] = time.perf_counter() - t
    journal.remove()
    summary.failed_list = _write_failed_list(output, failed)


def _safe_fingerprint(f: ImageFile):
    try:
        return _fingerprint_file(f)
    except (OSError, ImageDecodeError):
        return None


def _latest_entries(parts, keys: set) -> dict:
    """key -> (part index, row) or (None, reason) for the last record of each key in ``keys``."""
    out = {}
    for pi, p in enumerate(parts):
        for r, k in enumerate(p.keys):
            if k in keys:
                out[k] = (pi, r)
        for k, reason, _, _ in p.failed:
            if k in keys:
                out[k] = (None, reason)
    return out


def _write_failed_list(output: str, failed: list) -> str | None:
    path = output + ".failed.tsv"
    if not failed:
        with contextlib.suppress(OSError):
            os.remove(path)
        return None
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("key\treason\n")
        for k, r in failed:
            fh.write(f"{k}\t{r}\n".replace("\r", " "))
    os.replace(tmp, path)
    return path


def _extract_pending(
    pending, journal, spec, image_size, batch_size, workers, max_pixels, show, summary, t0,
    backend="tensorflow", precision="float32",
) -> bool:  # fmt: skip
    """Decode (threads) and run the model batch by batch, writing one journal part per batch.
    Returns True if interrupted by KeyboardInterrupt."""
    batches = [pending[i : i + batch_size] for i in range(0, len(pending), batch_size)]
    prefetch = max(3, workers)  # batches decoded ahead of the model
    interrupted = False
    pool = ThreadPoolExecutor(
        workers, thread_name_prefix="tripletsk-decode", initializer=_background_thread
    )
    writer = ThreadPoolExecutor(1, thread_name_prefix="tripletsk-write")
    inflight: deque = deque()
    next_batch = iter(batches)

    def submit_next() -> None:
        b = next(next_batch, None)
        if b is not None:
            inflight.append([pool.submit(_process_file, f, image_size, max_pixels) for f in b])

    write_future = None
    bar = None
    try:
        for _ in range(prefetch):
            submit_next()
        backbone = None  # built when first needed (a run of only unreadable files needs none)
        bar = _progress(len(pending), "extracting", show)
        tm = summary.timings
        tm.update(model=0.0, wait_decode=0.0, wait_write=0.0)
        while inflight:
            futures = inflight.popleft()
            submit_next()
            t = time.perf_counter()
            results = [fu.result() for fu in futures]
            ok = [r for r in results if r.array is not None]
            if ok:
                if backbone is None:  # the decoding of the next batches runs meanwhile
                    backbone = _cached_backbone(spec, image_size, batch_size, backend, precision)
                    summary.setup_seconds = time.perf_counter() - t0
                    t = time.perf_counter()
                tm["wait_decode"] += time.perf_counter() - t
                t = time.perf_counter()
                feats = backbone(np.stack([r.array for r in ok]))
                tm["model"] += time.perf_counter() - t
            else:
                feats = np.zeros((0, FEATURE_DIM), np.float32)
            fps = np.array(
                [(s, m, d.encode(), h) for s, m, d, h in (r.fingerprint for r in ok)],
                dtype=FINGERPRINT_DTYPE,
            ).reshape(-1)
            failed = [
                (r.file.key, r.reason, int(r.fingerprint[0]), int(r.fingerprint[1]))
                for r in results
                if r.array is None
            ]
            if write_future is not None:
                t = time.perf_counter()
                write_future.result()
                tm["wait_write"] += time.perf_counter() - t
            write_future = writer.submit(
                journal.write, [r.file.key for r in ok], feats, fps, failed
            )
            bar.update(len(results))
        if write_future is not None:
            write_future.result()
    except KeyboardInterrupt:
        interrupted = True
        if write_future is not None:
            with contextlib.suppress(Exception):
                write_future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True)
        if bar is not None:
            bar.close()
    return interrupted


def _background_thread() -> None:
    """Lower this decoding thread's priority (Linux: per thread), so the model's threads, which
    synchronise at every layer, are not held up; decoding then fills the model's idle moments."""
    nice = int(os.environ.get("TRIPLETSK_DECODE_NICE", "10"))
    if nice and sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)


_BACKBONES: dict = {}
_BACKBONES_LOCK = threading.Lock()


def _cached_backbone(
    spec: WeightsSpec,
    image_size: int,
    batch_size: int,
    backend: str = "tensorflow",
    precision: str = "float32",
) -> Backbone:
    """Build a backbone once per (weights, image size, batch size, backend) in this process."""
    key = (spec.identity, spec.path, int(image_size), int(batch_size), backend, precision)
    with _BACKBONES_LOCK:
        bb = _BACKBONES.get(key)
        if bb is None:
            bb = build_backbone(spec, image_size, spec.seed, batch_size, backend, precision)
            bb(np.zeros((1, image_size, image_size, 3), np.uint8))  # trace now
            _BACKBONES.clear()  # keep one model in memory
            _BACKBONES[key] = bb
        return bb


def _dtype(prov: dict) -> str:
    return str(prov.get("compute_dtype") or "float32")


def features_for_files(
    paths: Sequence[str | os.PathLike],
    like: FeatureStore | str | os.PathLike = DEFAULT_CACHE,
    *,
    weights=None,
    batch_size: int = 32,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Features of image files computed exactly as for the cache ``like`` (same backbone, weights,
    image size, preprocessing), e.g. for a search query that is not in the cache.

    ``weights`` is needed only if the cache was made from a local weights file that has moved.

    Raises
    ------
    UserError
        If a file cannot be read as an image, or the cache's model cannot be rebuilt.
    """
    store = like if isinstance(like, FeatureStore) else FeatureStore(like)
    prov = store.provenance
    if prov.get("preprocessing") != PREPROCESSING or prov.get("backbone") != BACKBONE:
        raise CacheMismatchError(
            f"{store.path} was made with another backbone or preprocessing "
            f"({prov.get('backbone')!r}, {prov.get('preprocessing')!r}) than this tripletsk "
            "version uses; extract features again with this version"
        )
    ident = str(prov.get("weights"))
    image_size = int(prov["image_size"])
    if weights is not None:
        spec = resolve_weights(weights, 0)
        if spec.kind == "none":
            m = re.match(r"none:seed=(-?\d+)", ident)
            spec = resolve_weights("none", int(m.group(1)) if m else 0)
        check_provenance(prov, provenance_for(spec, image_size, precision=_dtype(prov)), store.path)
    elif ident.startswith("none:"):
        m = re.match(r"none:seed=(-?\d+):init=(.*)$", ident)
        if not m or m.group(2) != RANDOM_INIT:
            raise CacheMismatchError(f"{store.path}: unknown random initialisation {ident!r}")
        spec = resolve_weights("none", int(m.group(1)))
    elif ident == "imagenet":
        src = str(prov.get("weights_source") or "")
        spec = resolve_weights(src if os.path.isfile(src) else "imagenet")
    else:
        src = str(prov.get("weights_source") or "")
        if not os.path.isfile(src):
            raise UserError(
                f"{store.path} was made with the weights file {src or '?'}, which is not found; "
                "pass weights=PATH (the same file)"
            )
        spec = resolve_weights(src)
        check_provenance(prov, provenance_for(spec, image_size, precision=_dtype(prov)), store.path)
    arrays = []
    for p in paths:
        try:
            arrays.append(load_image(p, image_size, max_pixels=max_pixels))
        except ImageDecodeError as e:
            raise UserError(f"cannot read {os.fspath(p)} as an image: {e}") from None
    if not arrays:
        return np.zeros((0, store.dim), np.float32)
    backend = str(prov.get("backend") or "tensorflow")
    precision = _dtype(prov)
    backbone = _cached_backbone(spec, image_size, int(batch_size), backend, precision)
    return backbone(np.stack(arrays))


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def add_extract_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``extract-features`` arguments to ``parser``."""
    parser.add_argument("images_dir", metavar="IMAGES_DIR", help="folder of images")
    parser.add_argument(
        "-o", "--output", default=DEFAULT_CACHE, help="feature cache (default: %(default)s)"
    )
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="imagenet (Keras download), none (random, for tests) or PATH to a weights file "
        "(default: %(default)s)",
    )
    parser.add_argument("--image-size", type=int, default=224, help="default: %(default)s")
    parser.add_argument("--batch-size", type=int, default=32, help="default: %(default)s")
    parser.add_argument(
        "--dtype",
        choices=("float32", "float16"),
        default=None,
        help="storage precision (default: float32, or the existing cache's)",
    )
    parser.add_argument(
        "--recursive",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="search sub-folders (default: yes)",
    )
    parser.add_argument(
        "--prune", action="store_true", help="drop cached images whose file is gone"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random weights for --weights none"
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="hash every cached file to detect changes (default: only files whose size or "
        "modification time changed)",
    )
    parser.add_argument("--workers", type=int, default=None, help="decoding threads")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="tensorflow",
        help="what runs the model; openvino needs `pip install tripletsk[openvino]` "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--precision",
        choices=("float32", "bfloat16"),
        default="float32",
        help="model arithmetic; bfloat16 pays off on CPUs with AVX512-BF16/AMX and on GPUs "
        "(default: %(default)s)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    return parser


def extraction_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of :func:`extract_features` that the parsed options set."""
    return {
        "weights": args.weights,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "recursive": args.recursive,
        "prune": args.prune,
        "seed": args.seed,
        "quiet": args.quiet,
        "verify": getattr(args, "verify", False),
        "workers": getattr(args, "workers", None),
        "backend": getattr(args, "backend", "tensorflow"),
        "precision": getattr(args, "precision", "float32"),
    }


def run_extract(args: argparse.Namespace) -> int:
    """Run ``extract-features`` from parsed arguments; print the summary; return the exit code.

    User mistakes raise :class:`~tripletsk.errors.UserError` (the CLI prints it as one line).
    """
    try:
        s = extract_features(
            args.images_dir,
            output=args.output,
            shard=getattr(args, "shard", None),
            **extraction_options(args),
        )
    except KeyboardInterrupt:
        print(
            f"interrupted: finished images are saved in {args.output}; run the same command "
            "again to continue",
            file=sys.stderr,
        )
        return 130
    if not args.quiet:
        print(s.format())
    elif s.failed:
        print(
            f"{len(s.failed)} file(s) could not be read as images; see {s.failed_list}",
            file=sys.stderr,
        )
    return 0
