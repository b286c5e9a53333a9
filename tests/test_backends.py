import warnings

import numpy as np
import pytest

import tripletsk.backends as backends
from tripletsk.backends import (
    bfloat16_copy,
    cpu_supports_bfloat16,
    make_openvino_runner,
    make_tensorflow_runner,
    normalize_precision,
    warn_if_bfloat16_is_emulated,
)


@pytest.fixture(scope="module")
def small_cnn():
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.GlobalAveragePooling2D(),
        ]
    )


@pytest.fixture(scope="module")
def batch():
    return np.random.RandomState(0).uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)


def _cos(a, b):
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize(
    "given, expected",
    [("float32", "float32"), ("f32", "float32"), ("FP32", "float32"), ("bf16", "bfloat16"),
     ("bfloat16", "bfloat16")],
)  # fmt: skip
def test_normalize_precision(given, expected):
    assert normalize_precision(given) == expected


def test_unknown_precision():
    with pytest.raises(ValueError, match="precision must be one of"):
        normalize_precision("float16")


def test_tensorflow_float32_runner_matches_the_model(small_cnn, batch):
    out = make_tensorflow_runner(small_cnn, "float32")(batch)
    assert out.dtype == np.float32 and out.shape == (4, 8)
    np.testing.assert_allclose(out, small_cnn(batch, training=False).numpy(), rtol=1e-6)


def test_tensorflow_bfloat16_runner_is_close_and_leaves_global_policy(small_cnn, batch):
    import keras

    ref = small_cnn(batch, training=False).numpy()
    out = make_tensorflow_runner(small_cnn, "bf16")(batch)
    assert out.dtype == np.float32
    assert _cos(out, ref).min() > 0.99
    assert keras.config.dtype_policy().name == "float32"
    copy = bfloat16_copy(small_cnn)
    assert all(w.dtype == "float32" for w in copy.weights)  # variables stay float32


@pytest.mark.parametrize("precision", ["f32", "bf16"])
def test_openvino_runner(small_cnn, batch, precision):
    pytest.importorskip("openvino")
    ref = small_cnn(batch, training=False).numpy()
    runner = make_openvino_runner(small_cnn, precision, batch_size=4)
    out = runner(batch)
    assert out.dtype == np.float32 and out.shape == ref.shape
    # OpenVINO computes bf16 only where the CPU has it; the runner says what it chose.
    native = precision == "bf16" and cpu_supports_bfloat16()
    assert runner.precision == ("bfloat16" if native else "float32")
    if precision == "f32":
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    else:
        assert _cos(out, ref).min() > 0.99


def test_emulated_bfloat16_is_warned_about(monkeypatch):
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("TensorFlow computes bfloat16 on the GPU here")
    monkeypatch.setattr(backends, "cpu_supports_bfloat16", lambda: False)
    with pytest.warns(UserWarning, match="Extraction in bfloat16: .* emulated .* float32"):
        warn_if_bfloat16_is_emulated("Extraction")
    monkeypatch.setattr(backends, "cpu_supports_bfloat16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_bfloat16_is_emulated("Extraction")
