"""int8 extraction (OpenVINO + NNCF) end to end, on real image files, a real MobileNet (random
weights, 32x32), real quantization and real HDF5 caches."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import assert_same_cache, extract_in_new_process, make_images, noise_images
from tripletsk.cache.merge import merge_shards
from tripletsk.cache.store import FeatureStore
from tripletsk.cli import cli
from tripletsk.errors import CacheMismatchError, UserError
from tripletsk.extraction import discover_images, extract_features, features_for_files
from tripletsk.extraction.backbone import resolve_network
from tripletsk.extraction.int8 import _decode_sample
from tripletsk.extraction.model_folders import MODELS_DIR

pytest.importorskip("openvino")
pytest.importorskip("nncf")

# The smallest backbone that quantizes like ResNet50: NNCF calibrates MobileNet (alpha 0.25)
# in a fraction of ResNet50's time, and what is tested (calibration records, model folders,
# shards, merges) does not depend on the network.
BACKBONE = "MobileNet(alpha=0.25)"
INT8 = {"weights": "none", "image_size": 32, "batch_size": 4, "progress": False,
        "backend": "openvino", "precision": "int8", "backbone": BACKBONE}  # fmt: skip
FLOAT = {**INT8, "backend": "tensorflow", "precision": "float32"}
NETWORK = resolve_network("none", backbone=BACKBONE)


def model_folders(cache: Path) -> list[str]:
    return sorted(
        p for p in os.listdir(cache.parent / MODELS_DIR) if p.startswith("openvino-int8-")
    )


def manifest(cache: Path) -> dict:
    (folder,) = model_folders(cache)
    return json.loads((cache.parent / MODELS_DIR / folder / "manifest.json").read_text())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``INT8`` with a tiny Keras model file (conv, global pooling) as the backbone: it
    quantizes in a fifth of MobileNet's time (3.6 s of CPU, not 13), for tests whose claim is
    about quantizing, not the network, and that need no run without TensorFlow (naming a model
    file loads it with Keras)."""
    import keras

    path = tmp_path_factory.mktemp("tiny") / "tiny.keras"
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x)).save(path)
    run = {k: v for k, v in INT8.items() if k != "weights"}  # (a model file has its own)
    return {**run, "backbone": path, "preprocessing": "tf"}


@pytest.fixture(scope="module")
def tiny_models(tiny, tmp_path_factory):
    """The models folder an int8 run with ``tiny`` leaves beside its cache for the images of
    ``make_images(folder, 6)`` (quantized once): tests copy it beside a cache of those images
    where the model must exist already and what they check is a later quantization."""
    d = tmp_path_factory.mktemp("tiny-int8")
    extract_features(make_images(d / "images", 6), d / "out" / "f.h5", quiet=True, **tiny)
    return d / "out" / MODELS_DIR


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """An int8 cache of 10 images (and one unreadable file), extracted once."""
    d = tmp_path_factory.mktemp("int8")
    images = make_images(d / "images", 10)
    cache = d / "out" / "features.h5"
    summary = extract_features(images, cache, quiet=True, **INT8)
    # Its models folder as made: for tests that need "this collection's model exists".
    shutil.copytree(cache.parent / MODELS_DIR, d / "models")
    return {"dir": d, "images": images, "cache": cache, "summary": summary, "models": d / "models"}


def quantized_already(first, folder: Path) -> Path:
    """``folder / "images"``: the same 10 images as ``first``'s (same names, same bytes), with a
    copy of their quantized model beside caches in ``folder`` (``folder / MODELS_DIR``), as a
    run quantizing them would leave it; quantizing is what costs (about 20 s of CPU)."""
    shutil.copytree(first["models"], folder / MODELS_DIR)
    return make_images(folder / "images", 10)


@pytest.mark.slow
def test_int8_cache_records_its_calibration_and_model(first):
    prov = FeatureStore(first["cache"]).provenance
    assert first["summary"].extracted == 10
    assert prov["compute_dtype"] == "int8"
    assert prov["backend"] == "openvino"
    assert prov["int8_calibration"].startswith("calibration:n=10:blake2b=")
    assert prov["int8_model"] == manifest(first["cache"])["model_digest"]
    keys = json.loads(FeatureStore(first["cache"]).attrs["int8_calibration_keys"])
    assert sorted(keys) == sorted(FeatureStore(first["cache"]).keys)  # the broken file skipped


@pytest.mark.slow
def test_a_new_cache_finds_the_model_without_decoding_or_building(first, monkeypatch):
    from tripletsk.extraction import int8

    def refuse(*args, **kwargs):
        raise AssertionError("the quantized model should have been found by its record")

    monkeypatch.setattr(int8, "_decode_sample", refuse)
    monkeypatch.setattr(int8, "build_keras_model", refuse)
    other = first["cache"].parent / "other.h5"
    extract_features(first["images"], other, quiet=True, **INT8)
    found, made = FeatureStore(other).provenance, FeatureStore(first["cache"]).provenance
    assert found["int8_model"] == made["int8_model"]
    assert found["int8_calibration"] == made["int8_calibration"]
    np.testing.assert_array_equal(
        FeatureStore(other).to_array(), FeatureStore(first["cache"]).to_array()
    )
    # A calibration image whose content changed is not served the old record.
    lookup = int8._Lookup(NETWORK, 32, discover_images(first["images"]).files,
                          other, 1)  # fmt: skip
    assert lookup.find() is not None
    victim = first["images"] / json.loads(FeatureStore(other).attrs["int8_calibration_keys"])[0]
    original = victim.read_bytes()
    try:
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(victim)
        files = discover_images(first["images"]).files
        assert int8._Lookup(NETWORK, 32, files, other, 1).find() is None
    finally:
        victim.write_bytes(original)
    os.remove(other)


@pytest.mark.slow
def test_a_run_with_the_model_found_never_loads_tensorflow(first, tmp_path):
    """The quantized model is all an int8 run needs: a new process extracting into a new cache
    (model found by its record, feature width read from it) imports neither TensorFlow nor
    Keras, and gets the same rows."""
    images = quantized_already(first, tmp_path)
    quiet = {**INT8, "quiet": True}
    extract_features(images, tmp_path / "first.h5", **quiet)
    other = tmp_path / "no-tensorflow.h5"
    assert extract_in_new_process(images, other, quiet) == ["10", "False", "False"]
    np.testing.assert_array_equal(
        FeatureStore(other).to_array(), FeatureStore(tmp_path / "first.h5").to_array()
    )


def test_float_caches_have_no_int8_attributes(tmp_path):
    images = make_images(tmp_path / "images", 3)
    extract_features(images, tmp_path / "f.h5", **FLOAT)
    store = FeatureStore(tmp_path / "f.h5")
    assert not [k for k in store.attrs if k.startswith("int8")]
    assert not [k for k in store.provenance if k.startswith("int8")]
    assert not (tmp_path / MODELS_DIR).exists()
    with pytest.raises(CacheMismatchError, match="compute_dtype: cache has 'float32'"):
        extract_features(images, tmp_path / "f.h5", **INT8)
    assert not (tmp_path / MODELS_DIR).exists()  # refused before quantizing


@pytest.mark.slow
def test_float_run_into_an_int8_cache_is_refused(first):
    with pytest.raises(CacheMismatchError, match="compute_dtype: cache has 'int8'"):
        extract_features(first["images"], first["cache"], **FLOAT)


@pytest.mark.slow
def test_queries_get_the_cached_features(first):
    store = FeatureStore(first["cache"])
    keys = ["a/00.png", "b/03.png", "b/09.png"]
    got = features_for_files([first["images"] / k for k in keys], like=store)
    want = store.to_array()[[store.keys.index(k) for k in keys]]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_calibration_sample_ignores_listing_order(first):
    files = discover_images(first["images"]).files
    keys, arrays, identity = _decode_sample(files, 32, None, 2)
    shuffled = list(files)
    random.Random(0).shuffle(shuffled)
    again = _decode_sample(shuffled, 32, None, 1)
    assert again[0] == keys and again[2] == identity
    np.testing.assert_array_equal(again[1], arrays)


# Before the tests that add images to the folder: another image set is another collection.
@pytest.mark.slow
def test_auto_takes_the_int8_model_by_its_recorded_agreement(first, monkeypatch):
    """A new int8 model records how its features agree with TensorFlow float32's on its
    calibration images; auto reads that instead of building TensorFlow to check."""
    from tripletsk.extraction import auto
    from tripletsk.extraction.model_folders import models_dir

    agreement = manifest(first["cache"])["agreement"]
    assert agreement["reference"] == "tensorflow/float32" and agreement["images"] == 10
    assert 0.0 < agreement["least_cosine"] <= agreement["mean_cosine"] <= 1.0 + 1e-9
    ov, i8 = "openvino/float32", "openvino/int8"
    # Next after int8: TensorFlow, built already (OpenVINO float would be converted first).
    record = {"per_image": {"tensorflow/float32": 0.02, ov: 0.03, i8: 0.01},
              "cosine": {ov: 1.0}}  # fmt: skip
    path = auto.record_path(models_dir(first["cache"]), NETWORK, 32, 4)
    with open(path, "w") as f:
        json.dump(record, f)

    def refuse(self, pending):
        raise AssertionError("the recorded timings and agreement should have been used")

    monkeypatch.setattr(auto._Trial, "run", refuse)
    out = first["cache"].parent / "auto.h5"
    extract_features(first["images"], out, quiet=True, **{**INT8, "backend": "auto",
                                                           "precision": None})  # fmt: skip
    prov = FeatureStore(out).provenance
    if agreement["least_cosine"] >= auto.MIN_COSINE:
        assert prov["compute_dtype"] == "int8", prov.get("backend_choice")
        assert prov["int8_model"] == FeatureStore(first["cache"]).provenance["int8_model"]
        keys = FeatureStore(out).keys
        np.testing.assert_array_equal(
            FeatureStore(out).lookup(keys), FeatureStore(first["cache"]).lookup(keys)
        )
    else:
        assert f"{prov['backend']}/{prov['compute_dtype']}" == "tensorflow/float32"
    os.remove(out)
    os.remove(path)


@pytest.mark.slow
def test_second_run_reuses_the_model_and_appends(first):
    cache, images = first["cache"], first["images"]
    before = manifest(cache)
    stamp = os.stat(cache.parent / MODELS_DIR / model_folders(cache)[0] / "model.bin").st_mtime_ns
    noise_images(images / "a", ["new-1.png"], seed=101)
    noise_images(images / "a", ["new-2.png"], seed=102)
    summary = extract_features(images, cache, **INT8)
    assert (summary.extracted, summary.cached) == (2, 10)
    assert manifest(cache) == before and len(model_folders(cache)) == 1
    folder = cache.parent / MODELS_DIR / model_folders(cache)[0]
    assert os.stat(folder / "model.bin").st_mtime_ns == stamp
    assert FeatureStore(cache).provenance["int8_model"] == before["model_digest"]
    assert "a/new-1.png" in FeatureStore(cache).keys


@pytest.mark.slow
def test_a_deleted_model_is_quantized_again_or_refused(tiny, tiny_models, tmp_path):
    from tripletsk.extraction import quantization

    # The tiny backbone (what is checked is the models folder, not the network), in a cache of
    # its own, its model there as a first run quantizing these images left it.
    images = make_images(tmp_path / "images", 6)
    cache = tmp_path / "out" / "features.h5"
    models = cache.parent / MODELS_DIR
    shutil.copytree(tiny_models, models)
    extract_features(images, cache, **tiny)
    digest = FeatureStore(cache).provenance["int8_model"]
    shutil.rmtree(models)
    with pytest.raises(UserError, match="quantized model is not in"):
        features_for_files([images / "a/00.png"], like=cache)
    noise_images(images / "a", ["new-3.png"], seed=103)
    summary = extract_features(images, cache, **tiny)  # same calibration images: same model
    assert summary.extracted == 1
    assert manifest(cache)["model_digest"] == digest
    shutil.rmtree(models)
    noise_images(images / "a", ["00.png"], seed=104)  # a calibration image changed
    with pytest.MonkeyPatch.context() as m:  # refused before quantizing for nothing
        m.setattr(quantization, "_quantize", lambda *a, **k: pytest.fail("quantized"))
        with pytest.raises(CacheMismatchError, match="re-extract into a new cache"):
            extract_features(images, cache, **tiny)


@pytest.mark.slow
def test_two_int8_shards_merge_into_the_single_run(first, tmp_path):
    # A shard calibrated on its share would quantize another model (a second folder).
    images = quantized_already(first, tmp_path)
    single = tmp_path / "single.h5"
    extract_features(images, single, **INT8)
    shards = [str(tmp_path / f"shard-{i}.h5") for i in (1, 2)]
    for i, p in enumerate(shards, start=1):
        extract_features(images, p, shard=f"{i}/2", **INT8)
    assert len(model_folders(single)) == 1  # one model for the run and both shards
    for p in shards:  # each shard calibrated on the whole listing, not on its share
        assert FeatureStore(p).provenance["int8_calibration"].startswith("calibration:n=10:")
        assert len(FeatureStore(p)) < 10
        for k in ("int8_calibration", "int8_model"):
            assert FeatureStore(p).provenance[k] == FeatureStore(single).provenance[k]
    merge_shards(shards, tmp_path / "merged.h5")
    assert_same_cache(str(single), str(tmp_path / "merged.h5"))


@pytest.mark.slow
def test_shards_of_other_calibrations_are_not_merged(tiny, tiny_models, tmp_path):
    images = make_images(tmp_path / "images", 6)
    one = tmp_path / "one" / "shard-1.h5"
    shutil.copytree(tiny_models, one.parent / MODELS_DIR)  # its model exists: not quantized
    extract_features(images, one, shard="1/2", **tiny)
    # The second shard sees another listing and sample.
    noise_images(images / "a", ["extra.png"], seed=7)
    two = tmp_path / "two" / "shard-2.h5"
    extract_features(images, two, shard="2/2", **tiny)
    with pytest.raises(Exception, match="int8_calibration"):
        merge_shards([str(one), str(two)], tmp_path / "merged.h5")


def test_cli_refuses_int8_with_tensorflow(tmp_path, capsys):
    images = make_images(tmp_path / "images", 2)
    argv = ["extract-features", str(images), "-o", str(tmp_path / "f.h5"), "--weights", "none",
            "--image-size", "32", "--backend", "tensorflow", "--precision", "int8"]  # fmt: skip
    assert cli(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--precision int8 needs --backend openvino" in err
    assert not (tmp_path / "f.h5").exists()


@pytest.mark.slow
def test_dask_quantizes_once_and_matches_a_single_run(first, tmp_path):
    """One model for every shard (the client's, quantized for the whole listing; here found as
    a run quantizing these images left it): shards calibrated on their share would make more."""
    pytest.importorskip("distributed")
    from tripletsk.extraction.distributed import extract_with_dask

    images = quantized_already(first, tmp_path)
    run = {k: v for k, v in INT8.items() if k != "progress"}
    extract_with_dask(images, tmp_path / "dask.h5", n_workers=1, n_shards=2, quiet=True, **run)
    assert len(model_folders(tmp_path / "dask.h5")) == 1
    extract_features(images, tmp_path / "single.h5", **INT8)  # reuses the model
    assert len(model_folders(tmp_path / "dask.h5")) == 1
    assert_same_cache(str(tmp_path / "single.h5"), str(tmp_path / "dask.h5"))


@pytest.mark.slow
def test_a_model_whose_files_were_swapped_is_not_taken_for_the_recorded_one(first, tmp_path):
    """The manifest lists each file's digest and the model's digest (what caches record).
    Files changed together with their listed digests used to pass, with the manifest's model
    digest trusted; the model digest is now recomputed from the files."""
    from tripletsk.cache.checksums import file_digest
    from tripletsk.extraction.quantization import find_quantized_model, load_openvino_int8_runner

    (name,) = model_folders(first["cache"])
    folder = tmp_path / "models" / name
    shutil.copytree(first["cache"].parent / MODELS_DIR / name, folder)
    digest = json.loads((folder / "manifest.json").read_text())["model_digest"]
    assert find_quantized_model(tmp_path / "models", digest) == str(folder)  # intact: found
    data = bytearray((folder / "model.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF  # another model's constants...
    (folder / "model.bin").write_bytes(bytes(data))
    meta = json.loads((folder / "manifest.json").read_text())
    meta["files"]["model.bin"] = file_digest(folder / "model.bin")  # ...listed consistently
    (folder / "manifest.json").write_text(json.dumps(meta))
    assert find_quantized_model(tmp_path / "models", digest) is None
    with pytest.raises(UserError, match="does not hold a complete quantized model"):
        load_openvino_int8_runner(folder)


@pytest.mark.slow
def test_quiet_hides_the_progress_bars_of_quantization(tiny, tmp_path, capfd):
    """``extract-features -q`` printed NNCF's progress bars ("Statistics collection ━━━")."""
    # (NNCF draws them for any network: without -q they are there for the tiny one too.)
    images = make_images(tmp_path / "images", 6)
    status = cli([str(a) for a in ["extract-features", images, "-o", tmp_path / "f.h5",
                                   "--image-size", "32", "--backend", "openvino", "--precision",
                                   "int8", "--backbone", tiny["backbone"],
                                   "--preprocessing", "tf", "-q"]])  # fmt: skip
    out, err = capfd.readouterr()
    assert status == 0, err
    assert "Statistics collection" not in out + err and "━" not in out + err
    assert len(model_folders(tmp_path / "f.h5")) == 1  # it did quantize
