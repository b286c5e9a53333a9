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

PRECISIONS = ("float32", "bfloat16")
_ALIASES = {"float32": "float32", "f32": "float32", "fp32": "float32",
            "bfloat16": "bfloat16", "bf16": "bfloat16"}  # fmt: skip


def normalize_precision(precision: str) -> str:
    """``"f32"``/``"fp32"``/``"float32"`` -> ``"float32"``; ``"bf16"``/``"bfloat16"`` ->
    ``"bfloat16"``."""
    try:
        return _ALIASES[str(precision).lower()]
    except KeyError:
        raise ValueError(
            f"precision must be one of {sorted(_ALIASES)}; got {precision!r}."
        ) from None


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

    precision = normalize_precision(precision)
    net = model if precision == "float32" else bfloat16_copy(model)

    @tf.function(reduce_retracing=True)
    def forward(x):
        return tf.cast(net(x, training=False), tf.float32)

    def run(batch: np.ndarray) -> np.ndarray:
        return forward(tf.convert_to_tensor(np.asarray(batch, dtype=np.float32))).numpy()

    run.precision, run.backend = precision, "tensorflow"
    return run


def _to_openvino(model, input_shape):
    """Convert a Keras 3 model to an OpenVINO model via a TensorFlow SavedModel export."""
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "saved_model")
        model.export(path, format="tf_saved_model", verbose=False)
        return ov.convert_model(path, input=[input_shape])


def make_openvino_runner(
    keras_model, precision: str = "bf16", batch_size: int | None = None, num_threads=None
) -> Callable[[np.ndarray], np.ndarray]:
    """An OpenVINO CPU runner of ``keras_model`` with ``INFERENCE_PRECISION_HINT`` set.

    Parameters
    ----------
    keras_model : keras.Model
        Single float32 NHWC input, e.g. the frozen ResNet50 up to ``avg_pool``.
    precision : {"bf16", "f32"} (or "bfloat16", "float32"), default="bf16"
        OpenVINO's inference precision hint on the CPU. On a CPU without native bfloat16,
        OpenVINO runs f32 instead: the runner's ``precision`` attribute is the precision
        OpenVINO actually chose, which callers must check before recording it.
    batch_size : int or None
        Fix the batch dimension (one compiled shape, slightly faster); None keeps it dynamic.
    num_threads : int or None
        ``INFERENCE_NUM_THREADS``; None lets OpenVINO use every core.

    Raises
    ------
    ImportError
        If OpenVINO is not installed; the message says how to install it.
    """
    try:
        import openvino as ov
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            'The OpenVINO backend needs the openvino package: pip install "tripletsk[openvino]"'
        ) from exc
    precision = normalize_precision(precision)
    shape = list(keras_model.input_shape)
    shape[0] = -1 if batch_size is None else int(batch_size)
    ov_model = _to_openvino(keras_model, shape)
    config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bfloat16" else "f32",
              "PERFORMANCE_HINT": "LATENCY"}  # fmt: skip
    if num_threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(num_threads)
    compiled = ov.Core().compile_model(ov_model, "CPU", config)
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def run(batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        result = request.infer([batch])[output]
        return np.array(result, dtype=np.float32, copy=True)

    # What OpenVINO will compute in, which is not always what was asked for.
    chosen = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    run.precision, run.backend = normalize_precision(chosen), "openvino"
    run.compiled_model = compiled
    return run
