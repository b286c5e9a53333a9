"""ImageFeatures: image paths -> backbone features through the cache, on real image files.

The network is the small MobileNet(alpha=0.25) (DIM features, random weights, 32 px): what is
tested is how paths reach the cache and what is appended, whichever the network (its build and
trace cost a third of ResNet50's)."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from tests.helpers import colour_classes, colour_image
from tripletsk import ImageFeatures, TripletEncoder
from tripletsk.cache.lock import CacheLock
from tripletsk.cache.store import FeatureStore
from tripletsk.errors import CacheLockedError, CacheMismatchError, UserError
from tripletsk.extraction import discover_images, extract_features, features_for_files
from tripletsk.extraction.discovery import listed_images

# The pipelines train a tiny head for 2 epochs: not converging is expected.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
SETTINGS = dict(backbone="MobileNet(alpha=0.25)", weights="none", image_size=32)
DIM = 256  # MobileNet(alpha=0.25)'s features
CLASSES = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
N_PER_CLASS = 6
SMALL_HEAD = dict(hidden_units=8, n_components=4, max_epochs=2, batch_size=32, random_state=0)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """An images folder of 3 classes x 6 PNGs, and an image outside it."""
    base = tmp_path_factory.mktemp("image_features")
    colour_image((128, 128, 0), 99).save(base / "outside.png")
    return colour_classes(base / "images", CLASSES, N_PER_CLASS)


def _keys(n: int = N_PER_CLASS) -> list[str]:
    return [f"{c}/{i}.png" for c in CLASSES for i in range(n)]


@pytest.fixture(scope="module")
def base_cache(images, tmp_path_factory):
    """A cache of the first 4 images of each class (2 of each class left out)."""
    path = str(tmp_path_factory.mktemp("base") / "features.h5")
    extract_features(images, path, quiet=True, only=_keys(4), **SETTINGS)
    return path


@pytest.fixture
def cache(base_cache, tmp_path):
    """A copy of the base cache that a test may change."""
    return str(shutil.copy(base_cache, tmp_path / "features.h5"))


# -- extract_features(only=...) ------------------------------------------------------------------
def test_extraction_restricted_to_listed_keys_keeps_other_rows(images, cache):
    old = FeatureStore(cache)
    old_rows = old.to_array()
    assert sorted(old.keys) == sorted(_keys(4))
    summary = extract_features(images, cache, quiet=True, only=["red/5.png"], **SETTINGS)
    assert summary.extracted == 1 and summary.missing == 0
    store = FeatureStore(cache)
    assert sorted(store.keys) == sorted([*_keys(4), "red/5.png"])
    np.testing.assert_array_equal(store.lookup(old.keys), old_rows)


def test_listed_images_agree_with_discovery(images):
    keys = ["blue/2.png", "red/0.png", "gone/x.png"]
    listed = listed_images(images, keys)
    found = {f.key: f for f in discover_images(images).files}
    assert listed.files == [found["blue/2.png"], found["red/0.png"]]  # an absent file: not listed


def test_restricted_run_keeps_the_failures_of_other_images(images, tmp_path):
    root = tmp_path / "imgs"
    shutil.copytree(images / "red", root / "red")
    (root / "bad.png").write_bytes(b"not an image")
    out = str(tmp_path / "f.h5")
    first = extract_features(root, out, quiet=True, only=["bad.png", "red/0.png"], **SETTINGS)
    assert [k for k, _ in first.failed] == ["bad.png"]
    extract_features(root, out, quiet=True, only=["red/1.png"], **SETTINGS)
    store = FeatureStore(out)
    assert [k for k, _ in store.failed] == ["bad.png"]
    assert sorted(store.keys) == ["red/0.png", "red/1.png"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"only": ["red/0.png"], "prune": True}, "cannot be combined"),
        ({"only": ["notes.txt"]}, "not image keys"),
        ({"only": ["../outside.png"]}, "not image keys"),
    ],
)
def test_restricted_run_refuses(images, tmp_path, kwargs, match):
    with pytest.raises(UserError, match=match):
        extract_features(images, tmp_path / "f.h5", quiet=True, **kwargs, **SETTINGS)


# -- transform -----------------------------------------------------------------------------------
def test_transform_shapes_and_cached_rows(images, cache):
    feats = ImageFeatures(root=images, cache=cache, **SETTINGS)
    keys = np.array(_keys(4))
    X = feats.transform(keys)
    np.testing.assert_array_equal(X, FeatureStore(cache).lookup(list(keys)))
    T = feats.transform(keys[:9].reshape(3, 3))
    assert X.shape == (12, DIM) and T.shape == (3, 3, DIM) and T.dtype == np.float32
    np.testing.assert_array_equal(T[1, 2], X[5])
    absolute = feats.transform([str(images / "red" / "1.png")])  # absolute under root: cached
    np.testing.assert_array_equal(absolute[0], X[1])


def test_root_defaults_to_the_cache_s_images_folder(images, cache):
    X = ImageFeatures(cache=cache, **SETTINGS).transform(["green/3.png"])
    np.testing.assert_array_equal(X, FeatureStore(cache).lookup(["green/3.png"]))


def test_new_image_is_appended_and_equals_a_fresh_extraction(images, cache):
    before = FeatureStore(cache)
    old_keys, old_rows = before.keys, before.to_array()
    X = ImageFeatures(root=images, cache=cache, **SETTINGS).transform(["red/0.png", "blue/5.png"])
    store = FeatureStore(cache)
    assert sorted(store.keys) == sorted([*old_keys, "blue/5.png"])
    np.testing.assert_array_equal(store.lookup(old_keys), old_rows)
    np.testing.assert_array_equal(X[1], store.lookup(["blue/5.png"])[0])
    fresh = features_for_files([images / "blue" / "5.png"], cache)
    np.testing.assert_allclose(X[1], fresh[0], rtol=1e-4, atol=1e-5)


def test_read_only_cache_is_never_written(images, cache):
    stat = os.stat(cache)
    with open(cache, "rb") as fh:
        content = fh.read()
    new = ["green/4.png", "green/5.png"]
    X = ImageFeatures(root=images, cache=cache, append=False, **SETTINGS).transform(new)
    with open(cache, "rb") as fh:
        assert fh.read() == content
    assert os.stat(cache).st_mtime_ns == stat.st_mtime_ns
    assert not os.path.exists(cache + ".parts")
    fresh = features_for_files([images / k for k in new], cache)
    np.testing.assert_allclose(X, fresh, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("append", [True, False])
def test_changed_image_is_not_served_its_old_features(images, tmp_path, append):
    root = tmp_path / "imgs"
    shutil.copytree(images / "red", root / "red")
    cache = str(tmp_path / "f.h5")
    feats = ImageFeatures(root=root, cache=cache, **SETTINGS)
    old = feats.transform(["red/0.png", "red/1.png"])
    shutil.copy(images / "blue" / "3.png", root / "red" / "0.png")  # new content, same name
    X = feats.set_params(append=append).transform(["red/0.png", "red/1.png"])
    expected = features_for_files([images / "blue" / "3.png"], cache)[0]
    np.testing.assert_allclose(X[0], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(X[1], old[1])
    cached = FeatureStore(cache).lookup(["red/0.png"])[0]
    np.testing.assert_array_equal(cached, X[0] if append else old[0])


def test_image_outside_root_is_computed_not_cached(images, cache):
    outside = str(images.parent / "outside.png")
    X = ImageFeatures(root=images, cache=cache, **SETTINGS).transform([outside, "red/2.png"])
    assert sorted(FeatureStore(cache).keys) == sorted(_keys(4))
    np.testing.assert_allclose(X[0], features_for_files([outside], cache)[0], rtol=1e-4, atol=1e-5)


def test_missing_or_unreadable_images_are_named(images, cache, tmp_path):
    feats = ImageFeatures(root=images, cache=cache, **SETTINGS)
    with pytest.raises(UserError, match=r"image file not found: red/nope\.png \(relative to root"):
        feats.transform(["red/0.png", "red/nope.png"])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"cannot read .*bad\.png"):
        feats.transform([str(bad)])
    with pytest.raises(UserError, match="image file paths"):
        feats.transform([1.5])


def test_unreadable_image_in_root_is_named(images, tmp_path):
    root = tmp_path / "imgs"
    shutil.copytree(images / "red", root / "red")
    (root / "red" / "bad.png").write_bytes(b"not a png")
    feats = ImageFeatures(root=root, cache=tmp_path / "f.h5", **SETTINGS)
    with pytest.raises(UserError, match=r"cannot read 1 image\(s\) \(.*red/bad\.png: "):
        feats.transform(["red/0.png", "red/bad.png"])


def test_settings_other_than_the_cache_s_are_refused(images, cache):
    with pytest.raises(CacheMismatchError, match="image_size: cache has 32, requested 64"):
        ImageFeatures(root=images, cache=cache, weights="none", image_size=64).transform(
            ["red/0.png"]
        )
    with pytest.raises(CacheMismatchError, match="holds the features of the images in"):
        ImageFeatures(root=images / "red", cache=cache, **SETTINGS).transform(["0.png"])


def test_parameters_left_at_their_defaults_take_the_cache_s_network(images, tmp_path):
    cache = str(tmp_path / "mobilenet.h5")
    network = {"backbone": "MobileNet(alpha=0.25)", "weights": "none", "seed": 3}
    extract_features(images, cache, quiet=True, only=_keys(4), image_size=32, **network)
    got = ImageFeatures(root=images, cache=cache).transform(["red/5.png", "red/0.png"])
    store = FeatureStore(cache)
    assert got.shape == (2, 256) and "red/5.png" in store  # appended with the cache's network
    np.testing.assert_allclose(got[1], store.lookup(["red/0.png"])[0], rtol=1e-5)
    np.testing.assert_allclose(
        got[0], features_for_files([images / "red/5.png"], cache)[0], rtol=1e-4, atol=1e-5
    )
    with pytest.raises(CacheMismatchError, match="backbone: cache has"):
        ImageFeatures(root=images, cache=cache, backbone="MobileNetV2").transform(["red/4.png"])


@pytest.mark.slow
def test_waits_for_another_writer_of_the_cache(images, cache):
    feats = ImageFeatures(root=images, cache=cache, lock_timeout=0, **SETTINGS)
    with CacheLock(cache):  # another extraction writes the cache
        with pytest.raises(CacheLockedError, match="another extraction is writing"):
            feats.transform(["red/5.png"])
        assert feats.transform(["red/0.png"]).shape == (1, DIM)  # cached rows need no lock
    lock = CacheLock(cache).acquire()
    threading.Timer(0.5, lock.release).start()
    X = feats.set_params(lock_timeout=60).transform(["red/5.png"])
    np.testing.assert_array_equal(X, FeatureStore(cache).lookup(["red/5.png"]))


def test_clone_and_pickle_are_small(images, cache):
    feats = ImageFeatures(root=images, cache=cache, **SETTINGS)
    feats.transform(["red/0.png"])
    assert clone(feats).get_params() == feats.get_params()
    assert len(pickle.dumps(feats)) < 1000
    assert vars(pickle.loads(pickle.dumps(feats))) == vars(feats)


# -- pipelines -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_pipeline_from_image_files(images, cache):
    paths = np.array(_keys(4))
    labels = np.array([k.split("/")[0] for k in paths])
    pipe = make_pipeline(
        ImageFeatures(root=images, cache=cache, **SETTINGS), TripletEncoder(**SMALL_HEAD)
    )
    pipe.fit(paths, labels)
    assert 0.0 <= pipe.score(paths, labels) <= 1.0
    triplets = np.array([["red/0.png", "red/1.png", "blue/0.png"]] * 4 + [_keys(4)[4:7]])
    pipe.fit(triplets)
    emb = pipe.transform(["red/5.png", "green/5.png"])  # new: extracted into the cache
    assert emb.shape == (2, 4) and np.isfinite(emb).all()
    assert {"red/5.png", "green/5.png"} <= set(FeatureStore(cache).keys)


@pytest.mark.slow
def test_grid_search_in_two_processes_appends_safely(images, cache):
    """Two joblib processes add the same missing images to one cache at once."""
    paths = np.array(_keys())  # 6 of 18 not cached yet
    labels = np.array([k.split("/")[0] for k in paths])
    pipe = make_pipeline(
        ImageFeatures(root=images, cache=cache, **SETTINGS), TripletEncoder(**SMALL_HEAD)
    )
    search = GridSearchCV(pipe, {"tripletencoder__margin": [0.5, 1.0]}, cv=2, n_jobs=2)
    search.fit(paths, labels)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    store = FeatureStore(cache)  # (opening refuses duplicate keys)
    assert sorted(store.keys) == sorted(_keys())
    assert store.checksummed and store.corrupt_rows().size == 0
    assert np.isfinite(store.to_array()).all()
    assert not os.path.exists(cache + ".parts")


def test_import_needs_no_tensorflow():
    code = "import sys, tripletsk\ntripletsk.ImageFeatures()\n"
    code += "assert 'tensorflow' not in sys.modules"
    repo = Path(__file__).resolve().parents[2]  # this checkout's tripletsk (python -c: cwd)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo)
