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
    OpenVINO only: post-training quantization with NNCF (:mod:`tripletsk.extraction.quantization`),
    calibrated on a sample of the user's own images and cached on disk, so a backbone is
    quantized once. Needs ``nncf`` (``pip install "tripletsk[openvino]"``).
    ``benchmarks/extraction_int8.py`` measures the speed,
    ``benchmarks/studies/precision/int8_quality.py`` the retrieval quality against float32 features.

OpenVINO settings, measured with ``benchmarks/extraction_int8.py --tune`` (ResNet50 at 224 px,
batch 32, 2 vCPUs; int8 images/s, medians of 3 interleaved rounds): an Intel Xeon with AMX
(family 6 model 167, load average 3-4), the same Xeon with its kernels capped by
``ONEDNN_MAX_CPU_ISA=AVX2 OV_CPU_MAX_ISA=AVX2`` (still the Xeon, not an AVX2 CPU), and a real
AMD EPYC Zen 3 (family 25 model 1, AVX2 only, load average 8-12: absolute figures low, compare
within the column):

=====================================  =================  ============  ============
settings                               Xeon AMX (native)  Xeon AVX2 cap Zen 3
=====================================  =================  ============  ============
THROUGHPUT, fixed batch (the default)  207.6              31.2          5.7
THROUGHPUT, dynamic batch              203.1              32.4          6.4
THROUGHPUT, fixed, CPU pinning off     187.3              28.6          5.5
LATENCY, fixed batch                   169.9              21.1          5.0
LATENCY, dynamic batch                 146.6              22.1          5.1
=====================================  =================  ============  ============

THROUGHPUT (2 streams of 1 core here; each batch split between them, run concurrently) beat
LATENCY (1 stream of 2 cores) by 1.1x-1.5x; a fixed batch shape was about as fast as a dynamic
one with THROUGHPUT (the Zen 3's 6.4 vs 5.7 is within its rounds' spread, 3.1x-5.3x vs
3.0x-3.6x TensorFlow float32) and faster with LATENCY; turning pinning off did not help.
Feeding uint8 images with ResNet50's preprocessing inside the OpenVINO model
(``PrePostProcessor``) was slower than NumPy preprocessing plus the float model in three runs
(0.5x-0.9x), so it is not offered.

The OpenVINO runner needs the optional ``openvino`` package (``pip install "tripletsk[openvino]"``).
A cache must never mix features computed at different precisions; the caller records the
backend and precision in the cache's provenance.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable

import numpy as np

from tripletsk._tensorflow import import_keras, import_tensorflow
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


def _installed(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def available_runners(precision: str | None = None) -> list[str]:
    """``"backend/precision"`` of the runners this machine has: TensorFlow float32 always,
    OpenVINO float32 if installed, bfloat16 where the CPU has it natively (TensorFlow's also
    when ``precision="bfloat16"`` is asked for), OpenVINO int8 with NNCF installed;
    ``precision``: only those of that precision."""
    openvino, native_bf16 = _installed("openvino"), cpu_supports_bfloat16()
    out = ["tensorflow/float32"]
    if openvino:
        out.append("openvino/float32")
    if native_bf16 or precision == "bfloat16":
        out.append("tensorflow/bfloat16")
    if openvino and native_bf16:
        out.append("openvino/bfloat16")
    if openvino and _installed("nncf"):
        out.append("openvino/int8")
    return [r for r in out if precision is None or r.endswith("/" + precision)]


def warn_if_bfloat16_is_emulated(what: str, stacklevel: int = 3) -> None:
    """Warn that ``what`` in TensorFlow bfloat16 will be slower than float32 here: the CPU has
    no bfloat16 instructions and TensorFlow sees no GPU, so bfloat16 is emulated.

    Measured on such a CPU (AVX2 Zen 3, ``benchmarks/README.md``): ResNet50 extraction in
    bfloat16 ran at 0.76x the float32 images/s, head training at 0.86x the items/s.
    """
    if cpu_supports_bfloat16():
        return
    tf = import_tensorflow()

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
    keras = import_keras()

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
    >>> from tripletsk.extraction.runners import make_tensorflow_runner
    >>> m = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.GlobalAveragePooling2D()])
    >>> make_tensorflow_runner(m)(np.ones((2, 4, 4, 3), np.float32)).shape
    (2, 3)
    """
    tf = import_tensorflow()

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
    """Convert a Keras 3 model to an OpenVINO model via a TensorFlow SavedModel export (the
    export of a fitted model: the SavedModel's signature names its input and output)."""
    ov = _import_openvino()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "saved_model")
        model.export(path, format="tf_saved_model", verbose=False)
        return ov.convert_model(path, input=[input_shape])


def _backbone_to_openvino(model):
    """Convert a frozen Keras 3 backbone (one float32 NHWC input) to an OpenVINO model with a
    dynamic batch, from its inference ``tf.function`` in memory: the same graph and weights as
    through a SavedModel export (features equal to float32 rounding), without writing and
    re-reading one (ResNet50 at 32 px, 2 vCPUs: 13 s of CPU instead of 32 s)."""
    ov = _import_openvino()
    tf = import_tensorflow()
    spec = tf.TensorSpec([None, *list(model.input_shape)[1:]], tf.float32)
    forward = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    return ov.convert_model(forward.get_concrete_function())


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
    run.dim = int(compiled.output(0).get_partial_shape()[-1].get_length())
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
    config = _openvino_config(num_threads, pinning)
    config["INFERENCE_PRECISION_HINT"] = "bf16" if precision == "bfloat16" else "f32"
    return _compile_runner(
        _backbone_to_openvino(keras_model), config, None, batch_size, performance_hint
    )


def load_openvino_runner(
    folder: str | os.PathLike,
    precision: str = "float32",
    batch_size: int | None = None,
    num_threads: int | None = None,
    performance_hint: str = "THROUGHPUT",
    pinning: bool | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """:func:`make_openvino_runner` of a model already converted to OpenVINO IR (``folder``
    holds ``model.xml`` and ``model.bin``, e.g. from
    :func:`tripletsk.extraction.openvino_float.float_model_folder`): no TensorFlow needed."""
    ov = _import_openvino()
    precision = normalize_precision(precision)
    if precision == "int8":
        raise ValueError("int8 models are loaded by tripletsk.extraction.quantization")
    ov_model = ov.Core().read_model(os.path.join(os.fspath(folder), "model.xml"))
    config = _openvino_config(num_threads, pinning)
    config["INFERENCE_PRECISION_HINT"] = "bf16" if precision == "bfloat16" else "f32"
    return _compile_runner(ov_model, config, None, batch_size, performance_hint)


make_openvino_runner.__doc__ = make_openvino_runner.__doc__.replace(
    "{parameters}", _RUNNER_PARAMETERS
)
