import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

import tripletsk.extraction.quantization as quantization
import tripletsk.extraction.runners as backends
from tripletsk.errors import UserError
from tripletsk.extraction.int8 import calibration_identity, calibration_keys
from tripletsk.extraction.quantization import (
    find_quantized_model,
    load_openvino_int8_runner,
    make_openvino_int8_runner,
    quantize_openvino_int8,
)
from tripletsk.extraction.runners import (
    bfloat16_copy,
    check_precision,
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
     ("bfloat16", "bfloat16"), ("int8", "int8"), ("I8", "int8")],
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


@pytest.mark.parametrize("precision", ["f32", pytest.param("bf16", marks=pytest.mark.slow)])
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


# --------------------------------------------------------------------------------------------
# int8 (OpenVINO + NNCF)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibration():
    return np.random.RandomState(1).uniform(-1, 1, (12, 16, 16, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def int8_cache(small_cnn, calibration, tmp_path_factory):
    """A cache folder holding small_cnn quantized on ``calibration`` (quantized once)."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    cache = tmp_path_factory.mktemp("int8")
    folder, _ = quantize_openvino_int8(small_cnn, calibration, cache, calibration_id="cal-1")
    return cache, folder


def _tree(folder):
    """{file name: (size, mtime_ns)} of a folder's files."""
    return {e.name: (e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(folder)}


@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_int8_is_refused_except_with_openvino(backend):
    with pytest.raises(UserError, match="int8 needs --backend openvino"):
        check_precision(backend, "int8")
    assert check_precision("openvino", "i8") == "int8"


def test_tensorflow_int8_runner_is_refused(small_cnn):
    with pytest.raises(UserError, match="int8 needs --backend openvino"):
        make_tensorflow_runner(small_cnn, "int8")


def test_openvino_float_runner_points_to_the_int8_one(small_cnn):
    pytest.importorskip("openvino")
    with pytest.raises(ValueError, match="make_openvino_int8_runner"):
        make_openvino_runner(small_cnn, "int8")


def test_int8_runner_is_close_to_float32(small_cnn, batch, int8_cache, calibration):
    cache, folder = int8_cache
    ref = small_cnn(batch, training=False).numpy()
    runner = make_openvino_int8_runner(small_cnn, calibration, cache, calibration_id="cal-1")
    out = runner(batch)
    assert runner.precision == "int8" and runner.backend == "openvino"
    assert runner.model_folder == str(folder) and len(runner.model_digest) == 32
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert _cos(out, ref).min() > 0.98


@pytest.mark.parametrize("hint", ["THROUGHPUT", "LATENCY"])
@pytest.mark.parametrize("batch_size", [None, 4])
def test_int8_runner_shapes(batch, int8_cache, hint, batch_size):
    """Fixed or dynamic request shapes, one or several streams: the same features per image,
    whatever the length of the batch (the fixed shape is padded)."""
    _, folder = int8_cache
    ref = load_openvino_int8_runner(folder, performance_hint="LATENCY")(batch)
    runner = load_openvino_int8_runner(folder, batch_size, performance_hint=hint)
    assert runner.streams >= 1
    for n in (1, 3, 4):
        np.testing.assert_allclose(runner(batch[:n]), ref[:n], rtol=1e-5, atol=1e-6)


def test_int8_model_is_reused_not_requantized(small_cnn, int8_cache, calibration, monkeypatch):
    cache, folder = int8_cache
    before = _tree(folder)
    monkeypatch.setattr(quantization, "_quantize", lambda *a: pytest.fail("quantized again"))
    again, manifest = quantize_openvino_int8(
        small_cnn, lambda: pytest.fail("calibration decoded again"), cache, "cal-1"
    )
    assert again == str(folder) and _tree(folder) == before
    assert manifest["identity"]["calibration"] == "cal-1"
    assert [e.name for e in os.scandir(cache)] == [os.path.basename(folder)]  # no leftovers


def test_quantized_model_is_found_by_its_digest(int8_cache, tmp_path):
    cache, folder = int8_cache
    digest = load_openvino_int8_runner(folder).model_digest
    assert find_quantized_model(cache, digest) == str(folder)
    assert find_quantized_model(cache, "0" * 32) is None
    assert find_quantized_model(tmp_path / "missing", digest) is None


@pytest.mark.slow
def test_other_calibration_or_weights_is_another_model(small_cnn, int8_cache, calibration):
    import keras

    cache, folder = int8_cache
    other_cal, _ = quantize_openvino_int8(small_cnn, calibration[:6], cache)
    assert other_cal != str(folder)
    changed = keras.models.clone_model(small_cnn)
    changed.set_weights([w * 1.5 for w in small_cnn.get_weights()])
    other_weights, _ = quantize_openvino_int8(changed, calibration, cache, "cal-1")
    assert other_weights not in (str(folder), other_cal)


# Each case quantizes again (end to end): in the full run.
@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "no_manifest", "garbage_manifest"])
def test_damaged_cached_model_is_not_trusted(small_cnn, calibration, int8_cache, tmp_path, damage):
    # A copy of the module's quantized model (quantizing it again here would cost as much as
    # the quantization this test is about), damaged, then replaced by quantizing again.
    folder = os.fspath(tmp_path / os.path.basename(int8_cache[1]))
    shutil.copytree(int8_cache[1], folder)
    manifest = {"model_digest": load_openvino_int8_runner(folder).model_digest}  # intact
    if damage == "truncate":  # e.g. a copy interrupted half-way
        with open(os.path.join(folder, "model.bin"), "r+b") as f:
            f.truncate(os.path.getsize(f.name) // 2)
    elif damage == "no_manifest":
        os.remove(os.path.join(folder, "manifest.json"))
    else:
        with open(os.path.join(folder, "manifest.json"), "w") as f:
            f.write("[1, 2")
    with pytest.raises(UserError, match="does not hold a complete quantized model"):
        load_openvino_int8_runner(folder)
    again, manifest2 = quantize_openvino_int8(small_cnn, calibration, tmp_path, "cal-1")
    assert again == folder and manifest2["model_digest"] == manifest["model_digest"]
    assert load_openvino_int8_runner(folder).precision == "int8"
    assert sorted(e.name for e in os.scandir(tmp_path)) == [os.path.basename(folder)]


def test_missing_nncf_says_how_to_install(small_cnn, calibration, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setitem(sys.modules, "nncf", None)  # import nncf -> ImportError
    message = r'NNCF, which is not installed: pip install "tripletsk\[openvino\]"'
    with pytest.raises(UserError, match=message):
        make_openvino_int8_runner(small_cnn, calibration, tmp_path)
    assert not os.listdir(tmp_path)


def test_calibration_needs_images_of_the_model_input(small_cnn, tmp_path):
    pytest.importorskip("nncf")
    with pytest.raises(ValueError, match=r"calibration must be \(n, \*\(16, 16, 3\)\)"):
        quantize_openvino_int8(small_cnn, np.zeros((2, 8, 8, 3)), tmp_path)
    with pytest.raises(ValueError, match="pass calibration_id"):
        quantize_openvino_int8(small_cnn, lambda: np.zeros((2, 16, 16, 3)), tmp_path)


def test_calibration_keys_are_deterministic_and_order_free():
    keys = [f"dir{i % 7}/img{i}.jpg" for i in range(500)]
    chosen = calibration_keys(keys, 64)
    assert len(chosen) == 64 == len(set(chosen)) and set(chosen) <= set(keys)
    assert calibration_keys(keys[::-1], 64) == chosen
    assert len({k.split("/")[0] for k in chosen}) == 7  # from every folder, not the first
    grown = calibration_keys([*keys, "new.jpg"], 64)  # a new image changes at most one key
    assert len(set(grown) & set(chosen)) >= 63
    assert calibration_keys(keys[:10], 64) == calibration_keys(keys[:10][::-1])  # fewer than n


def test_calibration_identity_depends_on_keys_and_contents():
    a = calibration_identity([("a.jpg", "h1"), ("b.jpg", "h2")])
    assert a == calibration_identity([("b.jpg", "h2"), ("a.jpg", "h1")])
    assert a != calibration_identity([("a.jpg", "h1"), ("b.jpg", "h3")])
    assert a != calibration_identity([("a.jpg", "h1"), ("c.jpg", "h2")])
    assert a.startswith("calibration:n=2:")


# The other writer: it loads the test's model and imports what quantizing needs, says "ready",
# and starts quantizing when told, as the test quantizes the same model in its own process: both
# find no model and quantize at once (one process started, not two: each imports TensorFlow).
_QUANTIZE_IN_A_PROCESS = """
import sys, keras, nncf, openvino, numpy as np
from tripletsk.extraction.quantization import quantize_openvino_int8
model = keras.models.load_model(sys.argv[2])
cal = np.random.RandomState(1).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
print("ready", flush=True)
sys.stdin.readline()
folder, manifest = quantize_openvino_int8(model, cal, sys.argv[1], "cal-3")
print(folder, manifest["model_digest"])
"""


@pytest.mark.slow
def test_concurrent_quantizations_leave_one_complete_model(tmp_path):
    """Two processes quantizing the same model into one cache at once (e.g. two shards)."""
    pytest.importorskip("nncf")
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3),
                              keras.layers.GlobalAveragePooling2D()])  # fmt: skip
    model.save(tmp_path / "model.keras")
    cal = np.random.RandomState(1).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
    cache = tmp_path / "cache"
    env = dict(
        os.environ,
        PYTHONPATH=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    command = [sys.executable, "-c", _QUANTIZE_IN_A_PROCESS, os.fspath(cache),
               os.fspath(tmp_path / "model.keras")]  # fmt: skip
    with open(tmp_path / "stderr.txt", "w+") as err:
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=err, text=True, env=env)  # fmt: skip
        try:
            assert proc.stdout.readline().strip() == "ready", err.read()[-2000:]
            proc.stdin.write("go\n")
            proc.stdin.flush()
            folder, manifest = quantize_openvino_int8(model, cal, cache, "cal-3")
            out, _ = proc.communicate(timeout=600)
        finally:
            proc.kill()
        err.seek(0)
        assert proc.returncode == 0, err.read()[-2000:]
    # the same folder and model digest in both
    assert out.strip().splitlines()[-1] == f"{folder} {manifest['model_digest']}"
    assert os.listdir(cache) == [os.path.basename(folder)]  # no temporary leftovers
    assert load_openvino_int8_runner(folder).precision == "int8"
