"""Inference backends for the frozen backbone: TensorFlow (float32 / bfloat16) and OpenVINO.

Each ``make_*_runner`` turns a Keras model into a callable ``runner(batch) -> features``:
``batch`` is a float32 NHWC array of what the model takes as input (for tripletsk's
ResNet50, images after ``preprocess_input``), the result a float32 (n, d) NumPy array. Runners
are built once and then called per batch; the first call of a new batch shape compiles.

``precision``:

``"float32"``
    Reference arithmetic.
``"bfloat16"`` / ``"bf16"``
    bfloat16 matrix products and convolutions (8-bit mantissa), float32 accumulation where the
    backend does so. Worth it only where the hardware computes in bfloat16 natively (x86 CPUs
    with AVX512-BF16 or AMX, recent GPUs); elsewhere it is emulated and slower. Features
    differ slightly from float32 ones: ``benchmarks/extraction_bf16.py`` measures the speed
    and the cosine similarity to float32 features on real images.
``"int8"``
    OpenVINO only: post-training quantization with NNCF (``make_openvino_int8_runner``),
    calibrated on a sample of the user's own images and cached on disk, so a backbone is
    quantized once. Needs ``nncf`` (``pip install "tripletsk[openvino]"``).
    ``benchmarks/extraction_int8.py`` measures the speed, ``benchmarks/int8_quality.py`` the
    retrieval quality against float32 features.

OpenVINO settings, measured with ``benchmarks/extraction_int8.py --tune`` (ResNet50 at 224 px,
batch 32, 2 vCPUs of a shared Xeon with AMX, load average 3-4; int8 images/s, medians of 3
interleaved rounds; "AVX2" = oneDNN and OpenVINO kernels capped with ``ONEDNN_MAX_CPU_ISA=AVX2
OV_CPU_MAX_ISA=AVX2``, like an AVX2-only CPU):

=====================================  =================  ==========
settings                               AMX (native)       AVX2 cap
=====================================  =================  ==========
THROUGHPUT, fixed batch (the default)  207.6              31.2
THROUGHPUT, dynamic batch              203.1              32.4
THROUGHPUT, fixed, CPU pinning off     187.3              28.6
LATENCY, fixed batch                   169.9              21.1
LATENCY, dynamic batch                 146.6              22.1
=====================================  =================  ==========

THROUGHPUT (2 streams of 1 core here; each batch split between them, run concurrently) beat
LATENCY (1 stream of 2 cores) by 1.2x-1.5x; a fixed batch shape was as fast as a dynamic one
with THROUGHPUT and faster with LATENCY; turning pinning off did not help. Feeding uint8
images with ResNet50's preprocessing inside the OpenVINO model (``PrePostProcessor``) was
slower than NumPy preprocessing plus the float model in three runs (0.5x-0.9x), so it is not
offered.

The OpenVINO runner needs the optional ``openvino`` package (``pip install "tripletsk[openvino]"``).
A cache must never mix features computed at different precisions; the caller records the
backend and precision in the cache's provenance.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from tripletsk.errors import UserError

PRECISIONS = ("float32", "bfloat16", "int8")
_ALIASES = {"float32": "float32", "f32": "float32", "fp32": "float32",
            "bfloat16": "bfloat16", "bf16": "bfloat16", "int8": "int8", "i8": "int8"}  # fmt: skip
_INSTALL_OPENVINO = 'pip install "tripletsk[openvino]"'


def normalize_precision(precision: str) -> str:
    """``"f32"``/``"fp32"``/``"float32"`` -> ``"float32"``; ``"bf16"``/``"bfloat16"`` ->
    ``"bfloat16"``; ``"int8"``/``"i8"`` -> ``"int8"``."""
    try:
        return _ALIASES[str(precision).lower()]
    except KeyError:
        raise ValueError(
            f"precision must be one of {sorted(_ALIASES)}; got {precision!r}."
        ) from None


def check_precision(backend: str, precision: str) -> str:
    """The normalized ``precision``, refused where ``backend`` cannot compute in it.

    Raises
    ------
    UserError
        For an unknown precision, or int8 with any backend but OpenVINO.
    """
    try:
        precision = normalize_precision(precision)
    except ValueError as e:
        raise UserError(f"--precision: {e}") from None
    if precision == "int8" and backend != "openvino":
        raise UserError(
            f"--precision int8 needs --backend openvino (got --backend {backend}): int8 is "
            f"OpenVINO post-training quantization with NNCF ({_INSTALL_OPENVINO})."
        )
    return precision


def _cpu_has_bfloat16() -> bool | None:
    """Whether the CPU multiplies bfloat16 natively (x86 AVX512-BF16 or AMX-BF16), or None
    where its flags cannot be read (they are read from Linux's ``/proc/cpuinfo``)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_supports_bfloat16() -> bool:
    """True when the CPU is known to multiply bfloat16 natively (AVX512-BF16 or AMX-BF16)."""
    return bool(_cpu_has_bfloat16())


def cpu_lacks_bfloat16() -> bool:
    """True when the CPU is known to have no native bfloat16 (False where flags are unknown)."""
    return _cpu_has_bfloat16() is False


def warn_if_bfloat16_is_emulated(what: str, stacklevel: int = 3) -> None:
    """Warn that ``what`` in TensorFlow bfloat16 will be slower than float32 here: the CPU has
    no bfloat16 instructions and TensorFlow sees no GPU, so bfloat16 is emulated.

    Measured on such a CPU (AVX2 Zen 3, ``benchmarks/README.md``): ResNet50 extraction in
    bfloat16 ran at 0.76x the float32 images/s, head training at 0.86x the items/s.
    """
    if cpu_supports_bfloat16():
        return
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return
    warnings.warn(
        f"{what} in bfloat16: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX) and "
        "there is no GPU, so bfloat16 is emulated and slower than float32 (measured on such a "
        "CPU: extraction 0.76x, head training 0.86x). Use float32 here.",
        UserWarning,
        stacklevel=stacklevel,
    )


def bfloat16_copy(model):
    """A copy of a Keras model whose layers use the ``mixed_bfloat16`` policy, same weights.

    The global Keras dtype policy is not changed. Outputs are cast back to float32.
    """
    import keras

    def clone_layer(layer):
        config = layer.get_config()
        if not isinstance(layer, keras.layers.InputLayer):
            config["dtype"] = "mixed_bfloat16"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone_layer)
    copy.set_weights(model.get_weights())
    return copy


def make_tensorflow_runner(model, precision: str = "float32") -> Callable[[np.ndarray], np.ndarray]:
    """A compiled TensorFlow function running ``model`` (inference mode) at ``precision``.

    Examples
    --------
    >>> import keras, numpy as np
    >>> from tripletsk.backends import make_tensorflow_runner
    >>> m = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.GlobalAveragePooling2D()])
    >>> make_tensorflow_runner(m)(np.ones((2, 4, 4, 3), np.float32)).shape
    (2, 3)
    """
    import tensorflow as tf

    precision = check_precision("tensorflow", precision)
    net = model if precision == "float32" else bfloat16_copy(model)

    @tf.function(reduce_retracing=True)
    def forward(x):
        return tf.cast(net(x, training=False), tf.float32)

    def run(batch: np.ndarray) -> np.ndarray:
        return forward(tf.convert_to_tensor(np.asarray(batch, dtype=np.float32))).numpy()

    run.precision, run.backend = precision, "tensorflow"
    return run


def _import_openvino():
    try:
        import openvino as ov
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"The OpenVINO backend needs the openvino package: {_INSTALL_OPENVINO}"
        ) from exc
    return ov


def _import_nncf():
    try:
        import nncf
    except ImportError:
        raise UserError(
            "--precision int8 quantizes the backbone with NNCF, which is not installed: "
            f"{_INSTALL_OPENVINO} (or pip install nncf)."
        ) from None
    return nncf


def _to_openvino(model, input_shape):
    """Convert a Keras 3 model to an OpenVINO model via a TensorFlow SavedModel export."""
    ov = _import_openvino()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "saved_model")
        model.export(path, format="tf_saved_model", verbose=False)
        return ov.convert_model(path, input=[input_shape])


def _compile_runner(
    ov_model,
    config: dict,
    precision: str | None,
    batch_size: int | None = None,
    performance_hint: str = "THROUGHPUT",
) -> Callable[[np.ndarray], np.ndarray]:
    """Compile ``ov_model`` (dynamic batch) for the CPU and wrap it as a runner.

    THROUGHPUT (the default) runs several streams, each an infer request with its share of
    the cores; a batch is split between them and run concurrently (the module docstring says
    what was measured). Not thread-safe: one runner per thread.
    ``batch_size`` fixes each request's batch to ``ceil(batch_size / streams)`` (the runner
    pads); it needs a second compilation once the number of streams is known.
    """
    ov = _import_openvino()
    config = {**config, "PERFORMANCE_HINT": performance_hint}
    core = ov.Core()
    compiled = core.compile_model(ov_model, "CPU", config)
    n = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    per_request = None
    if batch_size is not None:
        per_request = -(-int(batch_size) // n)
        shape = ov_model.input(0).get_partial_shape()
        shape[0] = per_request
        ov_model.reshape({ov_model.input(0): shape})
        config["NUM_STREAMS"] = n
        compiled = core.compile_model(ov_model, "CPU", config)
    requests = [compiled.create_infer_request() for _ in range(n)]

    def run(batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        size = per_request or -(-len(batch) // n)
        chunks = [batch[i : i + size] for i in range(0, len(batch), size)]
        lengths = [len(c) for c in chunks]
        if per_request is not None:  # the compiled shape is fixed: pad the last chunk
            pad = per_request - lengths[-1]
            if pad:
                padding = np.zeros((pad, *batch.shape[1:]), np.float32)
                chunks[-1] = np.concatenate([chunks[-1], padding])
        out = []
        for start in range(0, len(chunks), n):  # more chunks than requests: several rounds
            active = list(zip(requests, chunks[start : start + n], strict=False))
            for request, chunk in active:
                request.start_async([chunk])
            for request, _ in active:
                request.wait()
                out.append(np.array(request.get_output_tensor(0).data, dtype=np.float32))
        return np.concatenate([o[:m] for o, m in zip(out, lengths, strict=True)])

    if precision is None:  # what OpenVINO computes in, not always what was asked for
        precision = normalize_precision(
            compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        )
    run.precision, run.backend, run.compiled_model = precision, "openvino", compiled
    run.streams = n
    return run


def _openvino_config(num_threads: int | None, pinning: bool | None) -> dict:
    config = {}
    if num_threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(num_threads)
    if pinning is not None:
        config["ENABLE_CPU_PINNING"] = bool(pinning)
    return config


_RUNNER_PARAMETERS = """batch_size : int or None
        Fix the batch dimension of each infer request (``ceil(batch_size / streams)``, the
        runner pads); None keeps it dynamic.
    num_threads : int or None
        ``INFERENCE_NUM_THREADS``; None lets OpenVINO use every core.
    performance_hint : {"THROUGHPUT", "LATENCY"}, default="THROUGHPUT"
        THROUGHPUT: several streams, each batch split between them and run concurrently;
        LATENCY: one stream on every core. The runner's ``streams`` says how many.
    pinning : bool or None
        ``ENABLE_CPU_PINNING``; None keeps OpenVINO's default (pinned on Linux)."""


def make_openvino_runner(
    keras_model,
    precision: str = "bf16",
    batch_size: int | None = None,
    num_threads: int | None = None,
    performance_hint: str = "THROUGHPUT",
    pinning: bool | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """An OpenVINO CPU runner of ``keras_model`` with ``INFERENCE_PRECISION_HINT`` set.

    Parameters
    ----------
    keras_model : keras.Model
        Single float32 NHWC input, e.g. the frozen ResNet50 up to ``avg_pool``.
    precision : {"bf16", "f32"} (or "bfloat16", "float32"), default="bf16"
        OpenVINO's inference precision hint on the CPU. On a CPU without native bfloat16,
        OpenVINO runs f32 instead: the runner's ``precision`` attribute is the precision
        OpenVINO actually chose, which callers must check before recording it. For int8 see
        :func:`make_openvino_int8_runner`.
    {parameters}

    Raises
    ------
    ImportError
        If OpenVINO is not installed; the message says how to install it.
    """
    _import_openvino()
    precision = normalize_precision(precision)
    if precision == "int8":
        raise ValueError("OpenVINO int8 needs calibration images: use make_openvino_int8_runner")
    shape = [-1, *list(keras_model.input_shape)[1:]]
    config = _openvino_config(num_threads, pinning)
    config["INFERENCE_PRECISION_HINT"] = "bf16" if precision == "bfloat16" else "f32"
    return _compile_runner(
        _to_openvino(keras_model, shape), config, None, batch_size, performance_hint
    )


make_openvino_runner.__doc__ = make_openvino_runner.__doc__.replace(
    "{parameters}", _RUNNER_PARAMETERS
)


# --------------------------------------------------------------------------------------------
# int8: NNCF post-training quantization, cached on disk
# --------------------------------------------------------------------------------------------

#: Bump when the quantization recipe or the cache layout changes: old cached models are unused.
INT8_FORMAT = 1
#: How many of the user's images calibrate the quantization (see :func:`calibration_keys`).
#: ResNet50 at 224 px, 64 photos: 32, 128 and 300 calibration images gave the same agreement
#: with TF fp32 (centred cosine mean 0.9919 / 0.9920 / 0.9918) and took 16 / 24 / 37 s to
#: quantize on 2 vCPUs; 128 keeps some margin for real weights and collections (NNCF: 300).
CALIBRATION_SIZE = 128
_MANIFEST = "manifest.json"
_IR_FILES = ("model.xml", "model.bin")


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


def _file_digest(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _ir_digest(folder: str) -> str:
    """A digest of the quantized model itself: its constants (``model.bin``: weights, scales)
    and its graph (``model.xml``) without node and tensor names, which OpenVINO and Keras number
    per process (the input is ``keras_tensor_<n>`` for the n-th model built), and runtime info,
    which names temporary files: quantizing the same model on the same images again gives the
    same digest."""
    h = hashlib.blake2b(digest_size=16)
    with open(os.path.join(folder, "model.xml"), encoding="utf-8") as f:
        xml = re.sub(r"<rt_info>.*?</rt_info>", "", f.read(), flags=re.DOTALL)
        h.update(re.sub(r' names?="[^"]*"', "", xml).encode())
    h.update(_file_digest(os.path.join(folder, "model.bin")).encode())
    return h.hexdigest()


def _read_manifest(folder: str, key: str) -> dict | None:
    """The manifest of a complete cached model whose files are intact, else None."""
    try:
        with open(os.path.join(folder, _MANIFEST)) as f:
            manifest = json.load(f)
        if manifest.get("key") != key:
            return None
        files = manifest["files"]
        if sorted(files) != sorted(_IR_FILES):
            return None
        for name, digest in files.items():
            if _file_digest(os.path.join(folder, name)) != digest:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return manifest


def _quantize(keras_model, calibration: np.ndarray, settings: dict):
    """NNCF post-training quantization of ``keras_model`` (dynamic batch) on ``calibration``."""
    import logging

    nncf = _import_nncf()
    nncf.set_log_level(logging.ERROR)
    shape = [-1, *list(keras_model.input_shape)[1:]]
    ov_model = _to_openvino(keras_model, shape)
    # One image per item: NNCF collects statistics per item, and batches of several images
    # would be reduced differently (it warns that batch-wise statistics can be inaccurate).
    items = [calibration[i : i + 1] for i in range(len(calibration))]
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
        The identity of the calibration sample (:func:`calibration_identity`); None computes a
        digest of ``calibration``'s values (then ``calibration`` must be an array).

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
    manifest = _read_manifest(folder, key)
    if manifest is not None:
        return folder, manifest

    data = calibration() if callable(calibration) else calibration
    data = np.asarray(data, dtype=np.float32)
    expected = tuple(keras_model.input_shape[1:])
    if data.ndim != 4 or data.shape[1:] != expected or len(data) == 0:
        raise ValueError(f"calibration must be (n, *{expected}) images, got {data.shape}")
    quantized = _quantize(keras_model, data, identity)

    ov = _import_openvino()
    os.makedirs(cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".openvino-int8-{key}.", dir=cache_dir)
    try:
        ov.save_model(quantized, os.path.join(tmp, "model.xml"), compress_to_fp16=False)
        files = {name: _file_digest(os.path.join(tmp, name)) for name in _IR_FILES}
        manifest = {"key": key, "identity": identity, "files": files,
                    "model_digest": _ir_digest(tmp)}  # fmt: skip
        with open(os.path.join(tmp, _MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
        _install(tmp, folder, key)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    found = _read_manifest(folder, key)  # ours, or an equivalent one a concurrent run put first
    if found is None:
        raise OSError(f"could not store the quantized model in {folder}")
    return folder, found


def _install(tmp: str, folder: str, key: str) -> None:
    """Rename the complete ``tmp`` folder to ``folder``, replacing a damaged one; if another
    process has put a valid model there meanwhile, keep that one."""
    for _ in range(3):
        try:
            os.rename(tmp, folder)
            return
        except OSError:
            if _read_manifest(folder, key) is not None:
                return
            # Damaged or partial (e.g. copied by hand): move it aside, then remove it.
            trash = tempfile.mkdtemp(prefix=f".damaged-{key}.", dir=os.path.dirname(folder))
            try:
                os.rename(folder, os.path.join(trash, "model"))
            except FileNotFoundError:
                pass
            shutil.rmtree(trash, ignore_errors=True)
    os.rename(tmp, folder)


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
        manifest = _read_manifest(entry.path, entry.name[len("openvino-int8-") :])
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
        with open(os.path.join(folder, _MANIFEST)) as f:
            key = json.load(f).get("key")
    except (OSError, ValueError, AttributeError):
        key = None
    manifest = _read_manifest(folder, key) if key else None
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

    Calibration sample (what the extraction uses): the :data:`CALIBRATION_SIZE` images of
    :func:`calibration_keys` of the whole collection, decoded and preprocessed as for
    extraction, identified by :func:`calibration_identity` of their keys and content digests.

    Raises
    ------
    UserError
        If NNCF (or OpenVINO) is not installed; the message says how to install it.
    """
    folder, _ = quantize_openvino_int8(keras_model, calibration, cache_dir, calibration_id)
    return load_openvino_int8_runner(folder, batch_size, num_threads, performance_hint, pinning)
