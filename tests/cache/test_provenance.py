"""A model is tied to the provenance of the features it was fitted on, however it was saved.

A cache re-extracted with other settings at the same path (``extract-features --replace``)
must make every later use of the model fail with one error naming what differs, whether the
model was saved with ``TripletEncoder.save``, ``tripletsk fit``, joblib or pickle, or is still
in memory, and whether it is used from Python, ``predict``/``score`` or ``export``.
"""

from __future__ import annotations

import copy
import json
import pickle
import warnings

import joblib
import numpy as np
import pytest

from tripletsk.cli import cli
from tripletsk.errors import CacheMismatchError, ConvergenceWarning, ModelFileError
from tripletsk.estimator import TripletEncoder
from tripletsk.export import export_model
from tripletsk.triplets.files import write_triplets

# What `tripletsk info` shows of a real cache (random ResNet50 weights, 32 px).
PROVENANCE = {
    "backbone": "keras.applications.ResNet50(include_top=False, pooling='avg')",
    "weights": "none:seed=0:init=numpy-glorot-uniform-v1",
    "image_size": 32,
    "preprocessing": "tripletsk-v1: resnet50.preprocess_input (caffe)",
    "compute_dtype": "float32",
    "backend": "tensorflow",
    "weights_source": "none",
    "versions": "{}",
}
# Settings a re-extraction can change, and the field the error must name.
CHANGES = [
    ("image_size", 64),
    ("weights", "none:seed=7:init=numpy-glorot-uniform-v1"),
    ("preprocessing", "tripletsk-v1: mobilenet.preprocess_input (tf)"),
    ("compute_dtype", "bfloat16"),
    ("backbone", "keras.applications.MobileNetV2(include_top=False, pooling='avg')"),
]
KEYS = [f"{c}/{i}.png" for c in "abc" for i in range(8)]
HEAD = dict(hidden_units=8, n_components=3, max_epochs=2, random_state=0)


def _features(seed: int) -> np.ndarray:
    rng = np.random.RandomState(seed)
    centres = np.repeat(rng.normal(0, 3, (3, 16)), 8, axis=0)
    return (centres + rng.normal(0, 1, (24, 16))).astype(np.float32)


def _triplets() -> np.ndarray:
    rng = np.random.RandomState(1)
    rows = []
    for _ in range(40):
        c, d = rng.choice(3, 2, replace=False)
        a, p = rng.choice(8, 2, replace=False)
        rows.append([KEYS[8 * c + a], KEYS[8 * c + p], KEYS[8 * d + rng.randint(8)]])
    return np.array(rows, dtype=object)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, write_feature_cache):
    """An encoder fitted once on a cache made with ``PROVENANCE``."""
    cache = tmp_path_factory.mktemp("fitted") / "features.h5"
    write_feature_cache(cache, KEYS, _features(0), provenance=PROVENANCE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return TripletEncoder(features=str(cache), **HEAD).fit(_triplets())


def _model_on(fitted, cache) -> TripletEncoder:
    """The fitted encoder, as if fitted on ``cache`` (a cache alike the fixture's)."""
    return copy.deepcopy(fitted).set_params(features=str(cache))


def _save(encoder, path, how):
    """``encoder`` saved ``how``, and a function loading it back."""
    if how == "save":
        encoder.save(path)
        return lambda: TripletEncoder.load(path)
    if how == "joblib":
        joblib.dump(encoder, path)
        return lambda: joblib.load(path)
    if how == "pickle":
        path.write_bytes(pickle.dumps(encoder))
        return lambda: pickle.loads(path.read_bytes())
    return lambda: encoder  # the fitted object itself, still in memory


@pytest.mark.parametrize("how", ["save", "joblib", "pickle", "in memory"])
@pytest.mark.parametrize(("field", "value"), CHANGES)
def test_a_cache_re_extracted_with_other_settings_is_refused(
    tmp_path, write_feature_cache, fitted, how, field, value
):
    cache = write_feature_cache(tmp_path / "features.h5", KEYS, _features(0), provenance=PROVENANCE)
    load = _save(_model_on(fitted, cache), tmp_path / "model.bin", how)
    before = load().score(_triplets())
    # `extract-features --replace` with other settings: same path, same images, new features.
    cache.unlink()
    write_feature_cache(cache, KEYS, _features(5), provenance={**PROVENANCE, field: value})
    model = load()
    for use in (lambda: model.score(_triplets()), lambda: model.transform(KEYS[:2])):
        with pytest.raises(
            CacheMismatchError,
            match=rf"fitted on features made with other "
            rf"settings than .*features\.h5 \({field} .* vs .*fit a new model",
        ):
            use()
    assert 0 <= before <= 1


@pytest.mark.parametrize("how", ["save", "joblib"])
def test_a_cache_re_extracted_with_the_same_settings_still_serves(
    tmp_path, write_feature_cache, fitted, how
):
    cache = write_feature_cache(tmp_path / "features.h5", KEYS, _features(0), provenance=PROVENANCE)
    encoder = _model_on(fitted, cache)
    load = _save(encoder, tmp_path / "model.bin", how)
    cache.unlink()  # re-extracted alike (e.g. after adding images): nothing to refuse
    write_feature_cache(cache, KEYS, _features(0), provenance=dict(PROVENANCE))
    np.testing.assert_allclose(load().transform(KEYS), encoder.transform(KEYS), rtol=1e-6)
    assert load().feature_provenance_["image_size"] == 32


def test_a_model_fitted_on_an_array_records_nothing(write_feature_cache, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        encoder = TripletEncoder(features=_features(0), **HEAD).fit(
            np.array([[0, 1, 9], [2, 9, 17]])
        )
    assert encoder.feature_provenance_ is None
    encoder.save(tmp_path / "m.npz")
    assert TripletEncoder.load(tmp_path / "m.npz").feature_provenance_ is None


@pytest.mark.parametrize("command", ["score", "predict", "export"])
def test_command_line_refuses_a_python_saved_model_on_a_changed_cache(
    tmp_path, write_feature_cache, fitted, capsys, command
):
    """``enc.save(...)`` records only the cache path in its parameters; ``score`` used to
    answer from the re-extracted cache with exit 0, and ``export`` to build from it."""
    cache = write_feature_cache(tmp_path / "features.h5", KEYS, _features(0), provenance=PROVENANCE)
    _model_on(fitted, cache).save(tmp_path / "model.npz")
    write_triplets(tmp_path / "test.txt", _triplets())
    cache.unlink()
    write_feature_cache(cache, KEYS, _features(5), provenance={**PROVENANCE, "image_size": 64})
    argv = [command, "--model", tmp_path / "model.npz"]
    argv += (
        ["-o", tmp_path / "m.keras"]
        if command == "export"
        else ["--triplets", tmp_path / "test.txt"]
    )
    status = cli([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert status == 1 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "model.npz was fitted on features made with other settings" in err
    assert "image_size 32 vs 64" in err
    assert not (tmp_path / "m.keras").exists()


def test_export_of_an_encoder_refuses_a_changed_cache(tmp_path, write_feature_cache, fitted):
    cache = write_feature_cache(tmp_path / "features.h5", KEYS, _features(0), provenance=PROVENANCE)
    encoder = _model_on(fitted, cache)
    cache.unlink()
    write_feature_cache(cache, KEYS, _features(5), provenance={**PROVENANCE, "weights": "imagenet"})
    with pytest.raises(CacheMismatchError, match=r"weights 'none:seed=0.*' vs 'imagenet'"):
        export_model(encoder, tmp_path / "m.keras")


def test_a_damaged_provenance_in_a_model_file_is_refused(tmp_path, write_feature_cache, fitted):
    cache = write_feature_cache(tmp_path / "features.h5", KEYS, _features(0), provenance=PROVENANCE)
    _model_on(fitted, cache).save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(str(arrays["meta"]))
    meta["feature_provenance_"] = ["not", "a", "mapping"]
    arrays["meta"] = np.array(json.dumps(meta))
    with open(tmp_path / "bad.npz", "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ModelFileError, match=r"bad\.npz: feature_provenance_ must be a mapping"):
        TripletEncoder.load(tmp_path / "bad.npz")
