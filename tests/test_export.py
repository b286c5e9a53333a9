"""``tripletsk export`` / ``export_model``: the exported model embeds pixels as
``extract-features`` + ``transform`` do, in every format, from real images and caches."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import TWO_COLOURS, colour_classes, small_backbone_file
from tripletsk.cache.store import FeatureStore
from tripletsk.cli import cli
from tripletsk.errors import (
    ConvergenceWarning,
    EmbeddingCollapseWarning,
    UsageError,
    UserError,
)
from tripletsk.estimator import TripletEncoder
from tripletsk.export import export_format, export_model, preprocessing_layers
from tripletsk.extraction.backbone import BACKBONE
from tripletsk.extraction.decode import PREPROCESSING
from tripletsk.modelfile import cache_record, save_model

SIZE = 32
HEAD = dict(hidden_units=16, n_components=4, max_epochs=2, random_state=0, verbose=0)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Images at the model's size, their cache (random weights), a fitted encoder, its .npz
    model file, the images' pixels as the extractor reads them, and transform()'s embeddings."""
    from tripletsk.extraction import extract_features, load_image

    root = tmp_path_factory.mktemp("export")
    images = colour_classes(root / "images", TWO_COLOURS, 4, size=SIZE, noise=40)
    cache = root / "features.h5"
    extract_features(images, output=cache, weights="none", image_size=SIZE, quiet=True, seed=3)
    store = FeatureStore(cache)
    keys = np.array(store.keys)
    labels = np.array([k.split("/")[0] for k in keys])
    with warnings.catch_warnings():  # two epochs need not converge
        warnings.simplefilter("ignore", ConvergenceWarning)
        encoder = TripletEncoder(features=str(cache), **HEAD).fit(keys, labels)
    model_file = root / "model.npz"
    save_model(model_file, encoder, cache_record(store))
    pixels = np.stack([load_image(images / k, SIZE) for k in keys])
    return {"root": root, "encoder": encoder, "model": model_file, "pixels": pixels,
            "expected": encoder.transform(keys)}  # fmt: skip


# --------------------------------------------------------------------------- fast checks


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch", "none"])
def test_preprocessing_layers_match_keras_preprocess_input(mode):
    from keras.applications.imagenet_utils import preprocess_input

    x = np.random.RandomState(1).randint(0, 256, (2, 5, 7, 3)).astype(np.uint8)
    out = x.astype(np.float32)
    for layer in preprocessing_layers(mode):
        out = np.asarray(layer(out))
    expected = x.astype(np.float32) if mode == "none" else preprocess_input(x.copy(), mode=mode)
    assert out.shape == expected.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("output", "fmt", "expected"),
    [
        ("m.keras", None, "keras"),
        ("M.XML", None, "openvino"),
        ("served", None, "savedmodel"),
        ("served.v1/", None, "savedmodel"),
        ("m.keras", "keras", "keras"),
        ("dir.d", "savedmodel", "savedmodel"),
    ],
)
def test_export_format_from_suffix_or_option(output, fmt, expected):
    assert export_format(output, fmt) == expected


@pytest.mark.parametrize(
    ("output", "fmt", "match"),
    [
        ("m.onnx", None, r"unknown export suffix '\.onnx'"),
        ("m.h5", "keras", r"ending in \.keras"),
        ("m", "openvino", r"ending in \.xml"),
        ("m.keras", "tflite", "format must be one of"),
    ],
)
def test_export_format_refuses_what_it_cannot_write(output, fmt, match):
    with pytest.raises(UsageError, match=match):
        export_format(output, fmt)


def _cache_from_a_weights_file(tmp_path, write_feature_cache, weights_file: Path):
    """A cache whose provenance says its features came from ``weights_file``, and an encoder."""
    provenance = {"backbone": BACKBONE, "weights": "file:blake2b=00", "image_size": SIZE,
                  "preprocessing": PREPROCESSING, "compute_dtype": "float32",
                  "backend": "tensorflow", "weights_source": str(weights_file)}  # fmt: skip
    X = np.random.RandomState(0).rand(6, 2048).astype(np.float32)
    keys = np.array([f"c{i % 2}/{i}.png" for i in range(6)])
    cache = write_feature_cache(tmp_path / "f.h5", keys, X, provenance=provenance)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return TripletEncoder(features=str(cache), **HEAD).fit(keys, np.arange(6) % 2)


def test_a_missing_weights_file_is_named(tmp_path, write_feature_cache):
    gone = tmp_path / "moved" / "resnet50.weights.h5"
    encoder = _cache_from_a_weights_file(tmp_path, write_feature_cache, gone)
    with pytest.raises(UserError, match=re.escape(f"weights file {gone}, which is not found")):
        export_model(encoder, tmp_path / "m.keras")
    with pytest.raises(UserError, match=r"weights=PATH \(Python\) or --weights PATH \(command"):
        export_model(encoder, tmp_path / "m.keras")
    assert not (tmp_path / "m.keras").exists()


def test_an_existing_output_is_refused_and_kept(tmp_path, write_feature_cache):
    encoder = _cache_from_a_weights_file(tmp_path, write_feature_cache, tmp_path / "w.h5")
    mine = tmp_path / "m.keras"
    mine.write_text("my file")
    with pytest.raises(UserError, match=r"m\.keras exists; pass --force"):
        export_model(encoder, mine)
    folder = tmp_path / "notes"
    folder.mkdir()
    with pytest.raises(UserError, match="notes is not a SavedModel folder; not replaced"):
        export_model(encoder, folder, force=True)
    (tmp_path / "dir.keras").mkdir()
    with pytest.raises(UserError, match=r"dir\.keras is not a file; not replaced"):
        export_model(encoder, tmp_path / "dir.keras", force=True)
    (tmp_path / "plain").write_text("my file without suffix")
    with pytest.raises(UserError, match="plain is not a SavedModel folder"):
        export_model(encoder, tmp_path / "plain", force=True)
    (tmp_path / "ir.bin").write_text("my bin")
    with pytest.raises(UserError, match=r"ir\.bin exists"):
        export_model(encoder, tmp_path / "ir.xml")
    assert mine.read_text() == "my file" and folder.is_dir() and (tmp_path / "plain").is_file()


def test_openvino_not_installed_says_so(tmp_path, write_feature_cache, monkeypatch):
    encoder = _cache_from_a_weights_file(tmp_path, write_feature_cache, tmp_path / "w.h5")
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    with pytest.raises(UserError, match=r"needs openvino.*pip install"):
        export_model(encoder, tmp_path / "m.xml")


def test_export_model_is_a_top_level_name():
    import tripletsk

    assert tripletsk.export_model is export_model and "export_model" in tripletsk.__all__


def test_cli_bad_suffix_is_a_usage_error(tmp_path, capsys):
    assert cli(["export", "--model", str(tmp_path / "m.npz"), "-o", "m.onnx"]) == 2
    assert "unknown export suffix" in capsys.readouterr().err


# --------------------------------------------------------------------------- exports


@pytest.mark.slow
def test_cli_keras_export_loads_without_tripletsk(fitted, tmp_path, capsys):
    # The command runs in-process (the backbone this worker built is reused); loading the
    # export needs a new process, one where tripletsk cannot be imported.
    out = tmp_path / "model.keras"
    argv = ["export", "--model", str(fitted["model"]), "-o", str(out)]
    assert cli(argv) == 0, capsys.readouterr().err
    assert f"wrote {out} (keras)" in capsys.readouterr().out
    with zipfile.ZipFile(out) as zf:
        config = zf.read("config.json").decode()
    modules = set(re.findall(r'"module": "([^"]*)"', config))
    assert modules and all(m.startswith("keras") for m in modules), modules
    assert '"Lambda"' not in config

    assert cli(argv) == 1 and "exists; pass --force" in capsys.readouterr().err

    np.save(tmp_path / "pixels.npy", fitted["pixels"])  # uint8, as the extractor reads them
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import keras
        model = keras.saving.load_model({str(out)!r}, safe_mode=True)
        pixels = np.load({str(tmp_path / "pixels.npy")!r})
        np.save({str(tmp_path / "emb.npy")!r}, model.predict(pixels, verbose=0))
        assert "tripletsk" not in sys.modules, "tripletsk was imported"
    """)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}  # no PYTHONPATH: tripletsk not importable
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    emb = np.load(tmp_path / "emb.npy")
    assert emb.dtype == np.float32 and emb.shape == fitted["expected"].shape
    assert _cosines(emb, fitted["expected"]).min() >= 0.999


@pytest.mark.slow
def test_a_bfloat16_cache_exports_with_a_warning(fitted, tmp_path, write_feature_cache):
    store = FeatureStore(fitted["encoder"].features)
    provenance = {**store.provenance, "compute_dtype": "bfloat16"}
    cache = write_feature_cache(tmp_path / "bf16.h5", store.keys, store.lookup(store.keys),
                                provenance=provenance)  # fmt: skip
    # A model fitted on the bfloat16 features (one fitted on float32 ones is refused them).
    keys = np.array(store.keys)
    labels = np.array([k.split("/")[0] for k in keys])
    with warnings.catch_warnings():  # two epochs need not converge
        warnings.simplefilter("ignore", ConvergenceWarning)
        encoder = TripletEncoder(features=str(cache), **HEAD).fit(keys, labels)
    with pytest.warns(UserWarning, match="bfloat16 features; the exported model computes in"):
        export_model(encoder, tmp_path / "m.keras", features=FeatureStore(cache))
    assert (tmp_path / "m.keras").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backbone", "preprocessing"),
    [("MobileNet(alpha=0.25)", None), ("MobileNet(alpha=0.25)", "torch"), ("file", "torch")],
)
def test_other_backbones_export_like_transform(fitted, tmp_path, backbone, preprocessing):
    """A keras.applications backbone (tf / torch preprocessing) or a model file (torch mode).

    The torch mode of an application is MobileNet's with ``preprocessing="torch"`` (DenseNet121's
    own mode, built twice and exported: 44 of CPU s): the export takes the mode the cache
    records whichever network it is (DenseNet121's mode is torch: test_architecture.py)."""
    from tripletsk._tensorflow import import_keras
    from tripletsk.extraction import extract_features

    images = fitted["root"] / "images"
    extra = {} if preprocessing is None else {"preprocessing": preprocessing}
    weights = "none"
    if backbone == "file":
        backbone = tmp_path / "mine.keras"
        small_backbone_file(backbone, SIZE)
        weights = "imagenet"  # (the file's own weights)
    cache = tmp_path / "features.h5"
    extract_features(images, cache, weights=weights, image_size=SIZE, quiet=True,
                     backbone=backbone, **extra)  # fmt: skip
    mode = json.loads(FeatureStore(cache).provenance["architecture"])["mode"]
    assert mode == (preprocessing or "tf")  # what the export must do before the network
    store = FeatureStore(cache)
    keys = np.array(store.keys)
    with warnings.catch_warnings():  # two epochs of a tiny head: not converged, maybe stuck
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", EmbeddingCollapseWarning)
        encoder = TripletEncoder(features=str(cache), **HEAD).fit(keys, [k[:2] for k in keys])
    export_model(encoder, tmp_path / "m.keras")
    model = import_keras().saving.load_model(tmp_path / "m.keras", safe_mode=True)
    emb = model.predict(fitted["pixels"], verbose=0)  # the same images, in cache order
    assert _cosines(emb, encoder.transform(keys)).min() >= 0.999
    if isinstance(backbone, Path):  # a moved model file is named, not guessed
        backbone.rename(tmp_path / "moved.keras")
        with pytest.raises(UserError, match=r"mine\.keras, which is not found"):
            export_model(encoder, tmp_path / "n.keras")
        export_model(encoder, tmp_path / "n.keras", backbone=tmp_path / "moved.keras")


# ------------------------------------------------------------- the input size, every call


def _fit_on_a_small_backbone_file(root: Path, preprocessing: str) -> dict:
    """Like ``fitted`` with a small backbone of the user's (a model file): quick to export."""
    from tripletsk.extraction import extract_features, load_image

    images = colour_classes(root / "images", TWO_COLOURS, 4, size=SIZE, noise=40)
    cache = root / "features.h5"
    extract_features(images, cache, weights="imagenet", image_size=SIZE, quiet=True,
                     backbone=small_backbone_file(root / "mine.keras", SIZE),
                     preprocessing=preprocessing)  # fmt: skip
    keys = np.array(FeatureStore(cache).keys)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", EmbeddingCollapseWarning)
        encoder = TripletEncoder(features=str(cache), **HEAD).fit(keys, [k[:2] for k in keys])
    encoder.save(root / "model.npz")
    pixels = np.stack([load_image(images / k, SIZE) for k in keys])
    return {"model": root / "model.npz", "encoder": encoder, "pixels": pixels,
            "expected": encoder.transform(keys)}  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A model fitted on a small backbone file's features (torch preprocessing)."""
    return _fit_on_a_small_backbone_file(tmp_path_factory.mktemp("tiny"), "torch")


@pytest.fixture(scope="module")
def caffe(tmp_path_factory):
    """A small backbone file with ResNet50's preprocessing (caffe: BGR, ImageNet mean): the
    SavedModel and OpenVINO exports of the default backbone's path, without converting
    ResNet50 (about a minute each; its keras export is checked above)."""
    return _fit_on_a_small_backbone_file(tmp_path_factory.mktemp("caffe"), "caffe")


@pytest.mark.slow
def test_savedmodel_export_matches_transform(caffe, tmp_path):
    from tripletsk._tensorflow import import_tensorflow

    tf = import_tensorflow()
    out = tmp_path / "served"
    out.mkdir()
    (out / "saved_model.pb").write_bytes(b"an older export")  # force replaces a SavedModel
    assert export_model(caffe["encoder"], f"{out}/", force=True) == str(out)
    served = tf.saved_model.load(str(out))
    emb = served.serve(tf.constant(caffe["pixels"], tf.float32)).numpy()
    assert emb.shape == caffe["expected"].shape
    assert _cosines(emb, caffe["expected"]).min() >= 0.999
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary left


@pytest.mark.slow
def test_openvino_export_matches_transform(caffe, tmp_path):
    ov = pytest.importorskip("openvino")
    out = tmp_path / "model.xml"
    export_model(caffe["model"], out)
    assert out.with_suffix(".bin").is_file()
    compiled = ov.Core().compile_model(str(out), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    emb = compiled(caffe["pixels"].astype(np.float32))[0]
    assert emb.dtype == np.float32 and emb.shape == caffe["expected"].shape
    assert _cosines(emb, caffe["expected"]).min() >= 0.999


def _embed_with(fmt: str, path: Path):
    """A function images -> embeddings of the export at ``path``, as its users load it."""
    if fmt == "keras":
        from tripletsk._tensorflow import import_keras

        model = import_keras().saving.load_model(path, safe_mode=True)
        return lambda images: model.predict(images, verbose=0)
    if fmt == "savedmodel":
        from tripletsk._tensorflow import import_tensorflow

        tf = import_tensorflow()
        served = tf.saved_model.load(str(path))
        return lambda images: served.serve(tf.constant(images, tf.float32)).numpy()
    ov = pytest.importorskip("openvino")
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return lambda images: compiled(images.astype(np.float32))[0]


@pytest.mark.parametrize(
    ("fmt", "name"),
    [
        ("keras", "m.keras"),
        ("savedmodel", "served"),
        pytest.param("openvino", "m.xml", marks=pytest.mark.slow),
    ],
)
def test_the_export_refuses_other_image_sizes_after_a_first_call(tiny, tmp_path, fmt, name):
    """A ``.keras`` export used to refuse 64 px only on its first call: once ``predict`` had
    run, Keras retraced with relaxed shapes and 64 px or 200 x 100 images gave wrong
    embeddings (cosine -0.47..0.17 to the right ones)."""
    export_model(tiny["model"], tmp_path / name)
    embed = _embed_with(fmt, tmp_path / name)
    pixels = tiny["pixels"]
    assert _cosines(embed(pixels), tiny["expected"]).min() >= 0.999  # unchanged by the check
    big = np.repeat(np.repeat(pixels, 2, axis=1), 2, axis=2)  # the same images at 64 px
    for images in (big, pixels[:, :, :16], np.zeros((2, 200, 100, 3), np.uint8)):
        with pytest.raises(Exception, match=f"(images|pixels)_must_be_{SIZE}x{SIZE}|shape|Shape"):
            embed(images)
    assert _cosines(embed(pixels), tiny["expected"]).min() >= 0.999


# ------------------------------------------------------ outputs that appear meanwhile


@pytest.mark.parametrize(
    ("name", "appears"),
    [("m.keras", "file"), ("served", "empty folder"), ("m.xml", "bin")],
)
def test_an_output_that_appears_during_the_export_is_kept(
    tiny, tmp_path, monkeypatch, capsys, name, appears
):
    """``export`` checked the output before its slow build, then renamed over whatever a user
    had saved there meanwhile (exit 0, no --force); an empty folder was replaced too."""
    import tripletsk.export as export_module

    build = export_module.build_export_model
    mine = tmp_path / ("m.bin" if appears == "bin" else name)

    def build_while_the_user_saves(*args, **kwargs):
        model = build(*args, **kwargs)
        if appears == "empty folder":
            mine.mkdir()
        else:
            mine.write_text("the user's file")
        return model

    monkeypatch.setattr(export_module, "build_export_model", build_while_the_user_saves)
    status = cli(["export", "--model", str(tiny["model"]), "-o", str(tmp_path / name)])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err
    assert f"{mine} appeared (it did not exist when the command started)" in err
    assert "not replaced" in err and "is kept as" in err
    if appears == "empty folder":
        assert mine.is_dir() and os.listdir(mine) == []
    else:
        assert mine.read_text() == "the user's file"
    assert not (tmp_path / name).exists() or appears != "bin"
