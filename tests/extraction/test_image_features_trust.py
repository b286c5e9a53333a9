"""ImageFeatures trusts a cache only as far as it should: the provenance recorded at fit is
checked at every transform, parameters a user sets are never overridden by a cache, another
run's unfinished work is kept, and other files' failures never fail an append.

The network is the small MobileNet(alpha=0.25) (DIM features, random weights, 32 px): what is
tested is what the cache records and how it is trusted, whichever the network (its build and
trace cost a third of ResNet50's)."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.pipeline import make_pipeline

import tripletsk.extraction.run as extraction_run
from tests.helpers import colour_classes, colour_image
from tripletsk import ImageFeatures, TripletEncoder
from tripletsk.cache.store import FeatureStore
from tripletsk.cli import cli
from tripletsk.errors import CacheMismatchError, UserError
from tripletsk.extraction import extract_features, features_for_files

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
BACKBONE, DIM = "MobileNet(alpha=0.25)", 256
SETTINGS = dict(backbone=BACKBONE, weights="none", image_size=32)
COLORS = {"red": (200, 30, 30), "blue": (30, 30, 200)}


@pytest.fixture
def root(tmp_path):
    """2 classes x 6 PNGs."""
    return colour_classes(tmp_path / "images", COLORS, 6)


def _keys(n: int = 6) -> list[str]:
    return [f"{c}/{i}.png" for c in COLORS for i in range(n)]


# -- provenance recorded at fit, checked at every transform --------------------------------------
@pytest.mark.slow
def test_a_fitted_pipeline_refuses_a_cache_made_again_with_other_settings(root, tmp_path):
    cache = str(tmp_path / "f.h5")
    extract_features(root, cache, quiet=True, seed=0, **SETTINGS)
    paths, labels = np.array(_keys()), np.array([k.split("/")[0] for k in _keys()])
    pipe = make_pipeline(
        ImageFeatures(root=root, cache=cache),
        TripletEncoder(hidden_units=(), n_components=2, max_epochs=2, random_state=0),
    )
    pipe.fit(paths, labels)
    before = pipe.transform(paths)
    # Made again in place with another seed and image size (as `--replace` does).
    extract_features(
        root,
        cache,
        quiet=True,
        replace=True,
        backbone=BACKBONE,
        weights="none",
        seed=1,
        image_size=48,
    )
    with pytest.raises(CacheMismatchError, match=r"changed since this ImageFeatures was fitted"):
        pipe.transform(paths)
    with pytest.raises(CacheMismatchError, match=r"weights: fitted on 'none:seed=0.*image_size"):
        pipe.score(paths, labels)
    pipe.fit(paths, labels)  # fitted again: on the new cache
    assert pipe.transform(paths).shape == before.shape


def test_an_unfitted_transformer_takes_the_cache_as_it_is(root, tmp_path):
    cache = str(tmp_path / "f.h5")
    extract_features(root, cache, quiet=True, only=_keys(2), **SETTINGS)
    feats = ImageFeatures(root=root, cache=cache)
    np.testing.assert_array_equal(
        feats.transform(["red/0.png"]), FeatureStore(cache).lookup(["red/0.png"])
    )
    assert not hasattr(feats, "provenance_")


def test_fit_records_the_provenance_and_network(root, tmp_path):
    cache = str(tmp_path / "f.h5")
    extract_features(root, cache, quiet=True, only=_keys(2), seed=3, **SETTINGS)
    feats = ImageFeatures(root=root, cache=cache).fit(["red/0.png"])
    assert feats.provenance_["image_size"] == 32
    assert feats.provenance_["weights"].startswith("none:seed=3")
    assert feats.network_["seed"] == 3 and feats.network_["image_size"] == 32
    assert "MobileNet" in str(feats.network_["backbone"])
    assert feats.get_params()["seed"] == "auto"  # parameters untouched by fit
    assert feats.get_feature_names_out().tolist()[:2] == ["imagefeatures0", "imagefeatures1"]
    assert len(feats.get_feature_names_out()) == DIM


# -- parameters a user sets are honoured or refused ----------------------------------------------
@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"weights": "imagenet", "image_size": 224}, r"weights: cache has 'none:seed=0.*size"),
        ({"image_size": 224}, r"image_size: cache has 32, requested 224"),
        ({"seed": 0, "weights": "none", "image_size": 48}, r"image_size: cache has 32"),
        ({"backbone": "ResNet50", "layer": "conv5_block3_out"}, r"layer: cache has None"),
    ],
)
def test_parameters_set_to_the_old_default_values_are_honoured(root, tmp_path, params, match):
    cache = str(tmp_path / "f.h5")
    extract_features(root, cache, quiet=True, only=_keys(2), **SETTINGS)
    feats = ImageFeatures(root=root, cache=cache, **params)
    with pytest.raises(CacheMismatchError, match=match):
        feats.transform(["red/0.png"])
    with pytest.raises(CacheMismatchError, match=match):
        feats.fit(["red/0.png"])


def test_clone_and_get_params_keep_what_was_set():
    feats = ImageFeatures(weights="imagenet", image_size=224, seed=0)
    params = clone(feats).get_params()
    assert (params["weights"], params["image_size"], params["seed"]) == ("imagenet", 224, 0)
    assert ImageFeatures().get_params()["image_size"] == "auto"


# -- another run's unfinished work is kept --------------------------------------------------------
def test_an_append_keeps_the_finished_batches_of_an_interrupted_run(root, tmp_path, monkeypatch):
    cache = str(tmp_path / "f.h5")
    extract_features(root, cache, quiet=True, only=_keys(2), **SETTINGS)

    def killed(*args, **kwargs):  # the command-line run dies before writing the cache
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(extraction_run, "_write", killed)
        with pytest.raises(KeyboardInterrupt):
            extract_features(root, cache, quiet=True, batch_size=2, **SETTINGS)
    parts = sorted(os.listdir(cache + ".parts"))
    assert len([p for p in parts if p.endswith(".npz")]) == 4  # 8 images not cached, 2 a batch

    colour_image((0, 200, 0), 7).save(root / "red" / "new.png")
    X = ImageFeatures(root=root, cache=cache).transform(["red/new.png", "red/3.png"])
    assert X.shape == (2, DIM)
    assert "red/new.png" in FeatureStore(cache)
    assert os.path.isdir(cache + ".parts")  # the other run's batches are still there

    summary = extract_features(root, cache, quiet=True, **SETTINGS)  # the run, again
    assert summary.resumed == 7  # its 8 finished images but red/3.png, which is cached now
    assert summary.extracted == 7 and sorted(FeatureStore(cache).keys) == sorted(
        [*_keys(), "red/new.png"]
    )
    assert not os.path.exists(cache + ".parts")


# -- other files' failures never fail an append ---------------------------------------------------
def test_a_failure_of_another_file_never_fails_an_append(root, tmp_path):
    (root / "broken.png").write_bytes(b"not an image")
    cache = str(tmp_path / "f.h5")
    extract_features(root, cache, quiet=True, only=["broken.png", "red/0.png"], **SETTINGS)
    assert [k for k, _ in FeatureStore(cache).failed] == ["broken.png"]
    X = ImageFeatures(root=root, cache=cache).transform(["red/1.png", "blue/1.png"])
    assert X.shape == (2, DIM) and np.isfinite(X).all()
    store = FeatureStore(cache)
    assert {"red/1.png", "blue/1.png"} <= set(store.keys)
    assert [k for k, _ in store.failed] == ["broken.png"]  # still recorded
    with pytest.raises(UserError, match=r"cannot read 1 image\(s\) \(.*broken\.png: "):
        ImageFeatures(root=root, cache=cache).transform(["red/2.png", "broken.png"])


def test_a_failure_recorded_by_an_append_fails_only_the_calls_that_need_that_file(root, tmp_path):
    cache = str(tmp_path / "f.h5")
    extract_features(root, cache, quiet=True, only=_keys(2), **SETTINGS)
    shutil.copy(root / "red" / "0.png", root / "red" / "copy.png")
    (root / "red" / "1.png").write_bytes(b"broken now")
    feats = ImageFeatures(root=root, cache=cache)
    with pytest.raises(UserError, match=r"cannot read 1 image\(s\) \(.*red/1\.png: "):
        feats.transform(["red/copy.png", "red/1.png"])
    assert feats.transform(["red/copy.png", "red/2.png"]).shape == (2, DIM)  # red/2: new
    assert [k for k, _ in FeatureStore(cache).failed] == ["red/1.png"]


# -- a Dask run's refusal of another folder's cache names a way out it takes -------------------
@pytest.mark.slow  # (imports Dask)
def test_a_dask_run_on_another_folder_is_told_to_delete_the_cache_not_to_replace(
    root, tmp_path, capsys
):
    pytest.importorskip("distributed", reason="needs dask.distributed (tripletsk[dask])")
    from tripletsk.extraction.distributed import extract_with_dask

    cache = tmp_path / "f.h5"
    extract_features(root / "red", cache, quiet=True, **SETTINGS)
    with pytest.raises(CacheMismatchError, match=r"holds the features") as err:
        extract_with_dask(root / "blue", cache, n_workers=1, **SETTINGS)  # (before a cluster)
    assert f"delete {cache}" in str(err.value) and "replace" not in str(err.value)
    # The command line, in this process (it refuses before starting a cluster).
    status = cli(["extract-features", str(root / "blue"), "-o", str(cache), "--dask-workers", "1",
                  "--backbone", BACKBONE, "--weights", "none", "--image-size", "32"])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 1
    line = err.strip().splitlines()[-1]
    assert "holds the features" in line and f"delete {cache}" in line, err
    assert "--replace" not in line


# -- an image rewritten in place with its size and modification time kept -----------------------
def _rewrite_in_place(path, other) -> None:
    """Give ``path`` the content of the (smaller) image file ``other``, padded to the same size
    (PNG readers stop at the image's end), and its old modification time back."""
    st = os.stat(path)
    data = other.read_bytes()
    assert len(data) < st.st_size
    path.write_bytes(data + b"\0" * (st.st_size - len(data)))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (st.st_size, st.st_mtime_ns)


@pytest.mark.parametrize("hashed_long_after", [True, False])
def test_an_image_changed_in_place_with_size_and_time_kept(root, tmp_path, hashed_long_after):
    flat = tmp_path / "flat.png"
    Image.new("RGB", (32, 32), (0, 250, 0)).save(flat)
    if hashed_long_after:  # the usual case: files older than the time stamps' granularity
        an_hour_ago = 1e9 * (time.time() - 3600)
        for f in root.rglob("*.png"):
            os.utime(f, ns=(int(an_hour_ago), int(an_hour_ago)))
    cache = str(tmp_path / "f.h5")
    extract_features(root, cache, quiet=True, only=_keys(2), **SETTINGS)
    old = FeatureStore(cache).lookup(["red/0.png"])
    _rewrite_in_place(root / "red" / "0.png", flat)
    new = features_for_files([flat], cache)
    got = ImageFeatures(root=root, cache=cache).transform(["red/0.png"])
    if hashed_long_after:  # size and time are trusted, as by extract-features: served stale
        np.testing.assert_array_equal(got, old)
    else:  # hashed within 3 s of its modification: hashed again, so extracted again
        np.testing.assert_allclose(got, new, rtol=1e-4, atol=1e-5)
    got = ImageFeatures(root=root, cache=cache, verify=True).transform(["red/0.png"])
    np.testing.assert_allclose(got, new, rtol=1e-4, atol=1e-5)  # verify: always by content
    np.testing.assert_array_equal(FeatureStore(cache).lookup(["red/0.png"]), got)


# -- feature names and tables ---------------------------------------------------------------------
@pytest.fixture
def fitted_pipe(root, tmp_path):
    cache = str(tmp_path / "f.h5")
    extract_features(root, cache, quiet=True, **SETTINGS)
    paths, labels = np.array(_keys()), np.array([k.split("/")[0] for k in _keys()])
    head = TripletEncoder(hidden_units=(), n_components=3, max_epochs=2, random_state=0)
    return make_pipeline(ImageFeatures(root=root, cache=cache), head).fit(paths, labels), paths


def test_feature_names_of_both_transformers(fitted_pipe):
    pipe, _ = fitted_pipe
    assert pipe.get_feature_names_out().tolist() == [f"tripletencoder{i}" for i in range(3)]
    names = pipe[0].get_feature_names_out()
    assert len(names) == DIM and (names[0], names[-1]) == (
        "imagefeatures0",
        f"imagefeatures{DIM - 1}",
    )


def test_pandas_output_of_both_transformers(fitted_pipe):
    pd = pytest.importorskip("pandas")
    pipe, paths = fitted_pipe
    plain = pipe.transform(paths)
    table = pipe.set_output(transform="pandas").transform(paths)
    assert isinstance(table, pd.DataFrame) and table.columns[2] == "tripletencoder2"
    np.testing.assert_allclose(table.to_numpy(), plain)
    features = pipe[0].transform(paths[:2])
    assert isinstance(features, pd.DataFrame) and features.shape == (2, DIM)
    assert features.columns[0] == "imagefeatures0"
    with pytest.raises(ValueError, match=r"1-d array of paths, not shape \(1, 3\)"):
        pipe[0].transform(paths[:3].reshape(1, 3))
