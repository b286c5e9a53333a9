"""OpenVINO float extraction from the converted model kept beside the cache
(:mod:`tripletsk.extraction.openvino_float`): converted once, checked before use, no TensorFlow
in later runs, the same features as a model converted in the process."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import extract_in_new_process, make_images
from tripletsk.cache.store import FeatureStore
from tripletsk.extraction import extract_features, load_image
from tripletsk.extraction.backbone import build_keras_model, preprocess, resolve_network
from tripletsk.extraction.model_folders import MODELS_DIR
from tripletsk.extraction.openvino_float import float_model_folder, float_model_key

# Each test converts a backbone to OpenVINO IR (~20 s of CPU): end-to-end cases, in the full run.
pytestmark = pytest.mark.slow

pytest.importorskip("openvino")

# MobileNet (alpha 0.25) converts in a fraction of ResNet50's time: the backbone of the run that
# must not import TensorFlow (naming a model file loads it with Keras).
BACKBONE = "MobileNet(alpha=0.25)"
RUN = {"image_size": 32, "batch_size": 4, "progress": False, "quiet": True,
       "backend": "openvino"}  # fmt: skip
OV = {**RUN, "weights": "none", "backbone": BACKBONE}


def float_folders(out: Path) -> list[str]:
    return sorted(p for p in os.listdir(out / MODELS_DIR) if p.startswith("openvino-float-"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The other tests' backbone: a tiny Keras model file (conv, global pooling), which converts
    in a fraction of MobileNet's time; what they check (the model folder, its reuse and repair,
    the features of the kept model) does not depend on the network."""
    import keras

    path = tmp_path_factory.mktemp("tiny") / "tiny.keras"
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x)).save(path)
    run = {**RUN, "backbone": path, "preprocessing": "tf"}
    return {"run": run, "spec": resolve_network(backbone=path, preprocessing="tf")}


@pytest.fixture(scope="module")
def first(tmp_path_factory, tiny):
    d = tmp_path_factory.mktemp("ovfloat")
    images = make_images(d / "images", 6)
    extract_features(images, d / "out" / "first.h5", **tiny["run"])
    return {"images": images, "out": d / "out"}


def test_the_converted_model_is_kept_and_reused(first, tiny):
    (folder,) = float_folders(first["out"])
    key, _ = float_model_key(tiny["spec"], 32)
    assert folder == f"openvino-float-{key}"
    stamp = os.stat(first["out"] / MODELS_DIR / folder / "model.bin").st_mtime_ns
    extract_features(first["images"], first["out"] / "second.h5", **tiny["run"])
    assert float_folders(first["out"]) == [folder]
    assert os.stat(first["out"] / MODELS_DIR / folder / "model.bin").st_mtime_ns == stamp
    np.testing.assert_array_equal(FeatureStore(first["out"] / "second.h5").to_array(),
                                  FeatureStore(first["out"] / "first.h5").to_array())  # fmt: skip
    os.remove(first["out"] / "second.h5")


def test_features_equal_those_of_the_model_converted_in_process(first, tiny):
    from tripletsk.extraction.runners import make_openvino_runner

    store = FeatureStore(first["out"] / "first.h5")
    keys = store.keys[:4]
    pixels = np.stack([load_image(first["images"] / k, 32) for k in keys])
    spec = tiny["spec"]
    runner = make_openvino_runner(build_keras_model(spec, 32), "float32", batch_size=4)
    np.testing.assert_array_equal(runner(preprocess(pixels, spec.arch)), store.lookup(keys))


def test_a_run_with_the_converted_model_never_loads_tensorflow(tmp_path):
    """The converted model is all a run needs, also for a new cache (its feature width is read
    from the converted model, not from the Keras one)."""
    images = make_images(tmp_path / "images", 3)
    first, other = tmp_path / "out" / "first.h5", tmp_path / "out" / "no-tensorflow.h5"
    extract_features(images, first, **OV)
    assert extract_in_new_process(images, other, OV) == ["3", "False", "False"]
    assert FeatureStore(other).dim == 256
    np.testing.assert_array_equal(FeatureStore(other).to_array(), FeatureStore(first).to_array())


@pytest.mark.parametrize("damage", ["model.bin", "manifest.json"])
def test_a_damaged_converted_model_is_converted_again(first, tiny, damage, tmp_path):
    spec = tiny["spec"]
    models = tmp_path / MODELS_DIR
    shutil.copytree(first["out"] / MODELS_DIR, models)
    folder = os.fspath(models / float_folders(first["out"])[0])
    with open(os.path.join(folder, damage), "r+b") as f:
        f.seek(10)
        f.write(b"XXXX")
    built = []

    def build():
        built.append(1)
        return build_keras_model(spec, 32)

    again = float_model_folder(spec, 32, str(models), build)
    assert again == folder and built == [1]
    assert float_model_folder(spec, 32, str(models), build) == folder and built == [1]


def test_an_unwritable_models_folder_converts_in_memory(tiny, tmp_path):
    spec = tiny["spec"]
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert float_model_folder(spec, 32, str(blocker / MODELS_DIR),
                              lambda: build_keras_model(spec, 32)) is None  # fmt: skip
