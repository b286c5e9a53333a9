import copy
import pickle

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV

from tripletsk.estimator import TripletEncoder
from tripletsk.evaluation.model_selection import TripletImageKFold
from tripletsk.training.shared import SharedFeatures
from tripletsk.triplets.mining import sample_label_triplets


def _features(n=12, d=4, seed=0):
    return np.random.RandomState(seed).standard_normal((n, d)).astype(np.float32)


def test_clone_and_deepcopy_share_the_array():
    X = _features()
    shared = SharedFeatures(X)
    assert copy.deepcopy(shared) is shared
    assert copy.copy(shared) is shared
    enc = TripletEncoder(features=shared, hidden_units=8)
    assert clone(enc).features is shared
    # A plain array, by contrast, is copied by clone.
    assert clone(TripletEncoder(features=X)).features is not X


def test_no_copy_of_the_callers_array_and_read_only():
    X = _features()
    shared = SharedFeatures(X)
    assert np.shares_memory(shared.array, X)
    assert not shared.array.flags.writeable
    assert X.flags.writeable  # the caller's array is untouched
    with pytest.raises(ValueError):
        shared.array[0, 0] = 1.0


def test_float64_input_is_converted_once():
    X = _features().astype(np.float64)
    shared = SharedFeatures(X)
    assert shared.array.dtype == np.float32
    np.testing.assert_array_equal(shared.array, X.astype(np.float32))


def test_lookup_by_index_and_key():
    X = _features()
    keys = [f"img_{i}.jpg" for i in range(len(X))]
    shared = SharedFeatures(X, keys=keys)
    assert len(shared) == 12 and shared.dim == 4 and shared.shape == (12, 4)
    np.testing.assert_array_equal(shared.lookup(np.array([3, 0, 3])), X[[3, 0, 3]])
    np.testing.assert_array_equal(shared.lookup(np.array(["img_5.jpg", "img_1.jpg"])), X[[5, 1]])
    np.testing.assert_array_equal(
        shared.lookup(np.array([["img_2.jpg"], ["img_7.jpg"]], dtype=object)), X[[[2], [7]]]
    )
    assert shared.keys.tolist() == keys


def test_lookup_errors():
    shared = SharedFeatures(_features(), keys=[f"k{i}" for i in range(12)])
    with pytest.raises(KeyError, match="1 keys are not in features"):
        shared.lookup(np.array(["k1", "nope"]))
    with pytest.raises(ValueError, match="outside the 12 rows"):
        shared.lookup(np.array([0, 12]))
    with pytest.raises(ValueError, match="outside"):
        shared.lookup(np.array([-1]))
    with pytest.raises(TypeError, match="integers or string keys"):
        shared.lookup(np.array([0.5]))
    with pytest.raises(KeyError, match="no keys"):
        SharedFeatures(_features()).lookup(np.array(["a"]))


@pytest.mark.parametrize(
    "array, keys, match",
    [
        (np.zeros(5), None, "2-d"),
        (np.zeros((3, 2)), ["a", "b"], "one key per row"),
        (np.zeros((2, 2)), ["a", "a"], "distinct"),
    ],
)
def test_construction_errors(array, keys, match):
    with pytest.raises(ValueError, match=match):
        SharedFeatures(array, keys=keys)


@pytest.mark.parametrize("dump", [pickle.dumps, None])
def test_pickle_round_trip(dump, tmp_path):
    X = _features()
    shared = SharedFeatures(X, keys=[str(i) for i in range(12)])
    if dump is None:  # joblib, as used for n_jobs > 1
        joblib.dump(shared, tmp_path / "f.joblib")
        back = joblib.load(tmp_path / "f.joblib", mmap_mode="r")
    else:
        back = pickle.loads(dump(shared))
    assert isinstance(back, SharedFeatures)
    np.testing.assert_array_equal(back.array, X)
    assert back.keys.tolist() == shared.keys.tolist()
    np.testing.assert_array_equal(back.lookup(np.array(["3"])), X[[3]])


def test_repr_is_short():
    assert repr(SharedFeatures(np.zeros((1000, 8)))) == "SharedFeatures(shape=(1000, 8))"
    assert "keyed" in repr(SharedFeatures(np.zeros((1, 2)), keys=["a"]))


def test_encoder_with_shared_features_matches_plain_array():
    X = _features(60, 6, seed=1)
    T = np.random.RandomState(0).randint(0, 60, size=(40, 3))
    params = dict(hidden_units=8, n_components=3, max_epochs=3, random_state=0)
    a = TripletEncoder(features=X, **params).fit(T)
    b = TripletEncoder(features=SharedFeatures(X), **params).fit(T)
    np.testing.assert_array_equal(a.transform(np.arange(60)), b.transform(np.arange(60)))
    np.testing.assert_array_equal(a.predict_triplets(T), b.predict_triplets(T))


# n_jobs=2 starts worker processes, each importing TensorFlow: an end-to-end case (slow).
@pytest.mark.parametrize("n_jobs", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_grid_search_with_shared_features(n_jobs):
    X, y = load_digits(return_X_y=True)
    X, y = X[:300], y[:300]
    shared = SharedFeatures(X, keys=[f"d/{i}.png" for i in range(len(X))])
    T = sample_label_triplets(y, n_triplets=300, random_state=0)
    T_keys = shared.keys[T]
    enc = TripletEncoder(features=shared, hidden_units=16, n_components=4, max_epochs=3,
                         random_state=0)  # fmt: skip
    search = GridSearchCV(
        enc,
        {"margin": [0.5, 1.0]},
        cv=TripletImageKFold(2, random_state=0),  # folds of images: no image on both sides
        n_jobs=n_jobs,
    )
    search.fit(T_keys)
    assert search.best_estimator_.features is shared or n_jobs > 1
    assert 0.5 <= search.best_score_ <= 1.0
    assert search.best_estimator_.predict_triplets(T_keys[:5]).shape == (5,)
