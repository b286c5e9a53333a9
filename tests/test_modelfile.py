"""Model files: both formats round-trip the encoder and the CLI's records; mismatches are named."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

from tripletsk.errors import CacheMismatchError, CacheNotFoundError, UserError
from tripletsk.estimator import TripletEncoder
from tripletsk.modelfile import (
    FittedModel,
    check_model_cache,
    load_model,
    model_info,
    open_model_cache,
    save_model,
)

PROVENANCE = {
    "backbone": "resnet50",
    "weights": "none:seed=0",
    "image_size": 32,
    "preprocessing": "v1",
    "compute_dtype": "float32",
}
CACHE = {"path": "cache/features.h5", "provenance": PROVENANCE, "dim": 6}


@pytest.fixture(scope="module")
def encoder():
    rng = np.random.RandomState(0)
    X, y = rng.normal(size=(30, 6)).astype(np.float32), np.repeat([0, 1, 2], 10)
    return TripletEncoder(hidden_units=8, n_components=3, max_epochs=2, random_state=0).fit(X, y), X


class FakeStore:
    """What check_model_cache reads from a FeatureStore."""

    def __init__(self, dim=6, **provenance):
        self.path, self.dim, self.provenance = "other.h5", dim, {**PROVENANCE, **provenance}


@pytest.mark.parametrize("name", ["m.joblib", "m.npz", "m.pkl"])
def test_round_trip_keeps_model_and_records(tmp_path, encoder, name):
    model, X = encoder
    save_model(tmp_path / name, model, CACHE, {"mode": "triplets", "n_triplets": 5})
    fitted = load_model(tmp_path / name, trust_pickle=not name.endswith(".npz"))
    np.testing.assert_allclose(fitted.model.transform(X), model.transform(X), rtol=1e-6)
    assert fitted.cache == CACHE and fitted.training == {"mode": "triplets", "n_triplets": 5}
    assert list(tmp_path.iterdir()) == [tmp_path / name]  # no temporary file left


def test_npz_holds_only_arrays_and_json(tmp_path, encoder):
    save_model(tmp_path / "m.npz", encoder[0], CACHE)
    with zipfile.ZipFile(tmp_path / "m.npz") as zf:
        assert "tripletsk_cli.npy" in zf.namelist()
    with np.load(tmp_path / "m.npz", allow_pickle=False) as data:  # loads without pickle
        assert json.loads(str(data["tripletsk_cli"]))["cache"] == CACHE
    assert TripletEncoder.load(tmp_path / "m.npz").n_features_in_ == 6


@pytest.mark.parametrize(
    ("name", "content", "error", "match"),
    [
        ("m.txt", None, UserError, "unknown model file extension '.txt'"),
        ("gone.joblib", None, FileNotFoundError, "model file not found"),
        ("m.joblib", b"not a pickle", UserError, "not a readable joblib model file"),
        ("m.npz", b"not a zip", UserError, "not a readable .npz model file"),
    ],
)
def test_load_errors(tmp_path, name, content, error, match):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(error, match=match):
        load_model(tmp_path / name, trust_pickle=True)


def test_joblib_of_something_else(tmp_path):
    import joblib

    joblib.dump({"weights": [1, 2]}, tmp_path / "m.joblib")
    with pytest.raises(UserError, match="does not hold a fitted tripletsk model"):
        load_model(tmp_path / "m.joblib", trust_pickle=True)


class MakesDirectory:
    """Unpickles by calling ``os.makedirs(path)``: stands for any code a pickle file can run."""

    def __init__(self, path):
        self.path = os.fspath(path)

    def __reduce__(self):
        return (os.makedirs, (self.path, 0o777, True))  # (exist_ok: may be loaded twice)


@pytest.mark.parametrize("name", ["m.joblib", "m.pkl"])
def test_pickle_model_is_refused_without_running_it(tmp_path, encoder, name):
    marker = tmp_path / "created-by-unpickling"
    save_model(tmp_path / name, encoder[0], CACHE, {"mode": "labels", "x": MakesDirectory(marker)})
    with pytest.raises(UserError, match=r"pickle file .*runs code.*--trust-pickle") as err:
        load_model(tmp_path / name)
    assert str(tmp_path / name) in str(err.value) and "\n" not in str(err.value)
    info = model_info(tmp_path / name)
    assert info["kind"] == "model" and "not opened: loading runs code" in info["format"]
    assert "parameters" not in info
    assert not marker.exists()  # nothing in the file was executed

    fitted = load_model(tmp_path / name, trust_pickle=True)  # the user vouches for the file
    assert marker.is_dir() and fitted.training["mode"] == "labels"
    np.testing.assert_allclose(fitted.model.transform(encoder[1]), encoder[0].transform(encoder[1]))
    assert model_info(tmp_path / name, trust_pickle=True)["n_features_in"] == 6


def test_npz_model_info_needs_no_trust(tmp_path, encoder):
    save_model(tmp_path / "m.npz", encoder[0], CACHE, {"mode": "triplets"})
    info = model_info(tmp_path / "m.npz")
    assert info["n_features_in"] == 6 and info["n_components"] == 3
    assert info["cache"] == CACHE and info["training"] == {"mode": "triplets"}
    assert info["format"].startswith("npz")
    with pytest.raises(FileNotFoundError, match="model file not found"):
        model_info(tmp_path / "gone.joblib")


@pytest.mark.parametrize(
    ("store", "match"),
    [
        (FakeStore(dim=2048), "expects 6 features per image but other.h5 holds 2048"),
        (FakeStore(image_size=64), "image_size 32 vs 64"),
        (FakeStore(weights="imagenet"), "weights 'none:seed=0' vs 'imagenet'"),
    ],
)
def test_mismatch_says_what_differs(encoder, store, match):
    fitted = FittedModel(encoder[0], "m.joblib", CACHE)
    with pytest.raises(CacheMismatchError, match=match):
        check_model_cache(fitted, store)


def test_compatible_cache_and_unknown_provenance_pass(encoder):
    check_model_cache(FittedModel(encoder[0], "m.joblib", CACHE), FakeStore())
    check_model_cache(FittedModel(encoder[0], "m.joblib"), FakeStore(weights="x"))


def test_missing_cache_names_the_training_one(tmp_path, encoder, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fitted = FittedModel(encoder[0], "m.joblib", CACHE)
    with pytest.raises(CacheNotFoundError, match=r"fitted on cache/features.h5\); pass --features"):
        open_model_cache(fitted)
