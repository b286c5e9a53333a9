"""Feature sources: every kind of ``features=`` gives the rows of given ids, or a clear error."""

import os
import warnings

import numpy as np
import pytest

from tripletsk.cache.store import FeatureStore
from tripletsk.training.rows import FeatureRows
from tripletsk.training.shared import SharedFeatures
from tripletsk.training.sources import (
    ArraySource,
    LookupSource,
    StoreSource,
    as_source,
    check_labels,
    feature_rows,
    labelled_rows,
    triplet_rows,
)

X = np.arange(12, dtype=np.float32).reshape(4, 3)
KEYS = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]


@pytest.fixture
def cache(tmp_path, write_feature_cache):
    return write_feature_cache(tmp_path / "features.h5", KEYS, X)


def _sources(cache_path):
    """Every kind of ``features=`` for X, with the ids that address rows 2, 0, 2."""
    return {
        "array": (X, np.array([2, 0, 2])),
        "shared": (SharedFeatures(X), np.array([2, 0, 2])),
        "shared keys": (SharedFeatures(X, keys=KEYS), np.array(["c.jpg", "a.jpg", "c.jpg"])),
        "mapping": (dict(zip(KEYS, X, strict=True)), np.array(["c.jpg", "a.jpg", "c.jpg"])),
        "cache path": (cache_path, np.array(["c.jpg", "a.jpg", "c.jpg"])),
        "store": (FeatureStore(cache_path), np.array(["c.jpg", "a.jpg", "c.jpg"])),
    }


@pytest.mark.parametrize(
    "kind", ["array", "shared", "shared keys", "mapping", "cache path", "store"]
)
def test_every_source_gives_the_rows_of_ids(cache, kind):
    features, ids = _sources(cache)[kind]
    rows, inverse = feature_rows(features, ids)
    assert isinstance(rows, FeatureRows) and len(rows) == 2  # distinct items only
    np.testing.assert_array_equal(rows.take()[inverse], X[[2, 0, 2]])


@pytest.mark.parametrize(
    ("features", "kind"),
    [
        (X, ArraySource),
        (SharedFeatures(X), StoreSource),
        ({"a": [1.0]}, LookupSource),
    ],
)
def test_as_source_picks_the_kind(features, kind):
    assert isinstance(as_source(features), kind)


def test_array_rows_are_not_copied():
    rows, _ = feature_rows(X, np.array([3, 1]))
    assert rows.rows.tolist() == [1, 3]  # row numbers into X, read when taken


def test_float_indices_that_are_integers_are_accepted():
    rows, inverse = feature_rows(X, np.array([1.0, 3.0]))
    np.testing.assert_array_equal(rows.take()[inverse], X[[1, 3]])


@pytest.mark.parametrize(
    ("features", "ids", "match"),
    [
        (X, np.array([0, 4]), "1 indices are outside the 4 rows of features"),
        (X, np.array(["a.jpg"]), "features is an array, so items must be integer row indices"),
        (X, np.array([0.5]), "items must be integer indices or string keys"),
        (X[0], np.array([0]), "features must be a 2-d array"),
        (np.array([["x"]]), np.array([0]), "features must be numeric"),
        ({"a.jpg": [1.0]}, np.array(["zz"]), "1 keys are not in features"),
        (None, np.array([0]), "Integer indices need features="),
    ],
)
def test_bad_ids_or_features_are_named(features, ids, match):
    with pytest.raises(ValueError, match=match):
        feature_rows(features, ids)


def test_unknown_cache_key_is_a_value_error(cache):
    with pytest.raises(ValueError, match=r"zz\.jpg"):
        feature_rows(cache, np.array(["zz.jpg"]))


def test_keys_without_features_need_the_default_cache(tmp_path, monkeypatch, write_feature_cache):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"default one .* does not exist"):
        feature_rows(None, np.array(["a.jpg"]))
    os.mkdir("cache")
    write_feature_cache(tmp_path / "cache" / "features.h5", KEYS, X)
    rows, inverse = feature_rows(None, np.array(["d.jpg"]))
    np.testing.assert_array_equal(rows.take()[inverse], X[[3]])


def test_triplet_rows_of_vectors_and_of_ids():
    T = X[[[0, 1, 2], [2, 1, 0]]]  # (2, 3, d) feature vectors
    rows, triplets = triplet_rows(None, T)
    assert len(rows) == 3  # one row per distinct vector
    np.testing.assert_array_equal(rows.take()[triplets], T)
    rows, triplets = triplet_rows(X, np.array([[3, 1, 0]]))
    np.testing.assert_array_equal(rows.take()[triplets], X[[[3, 1, 0]]])
    mapping = dict(zip(KEYS, X, strict=True))
    rows, triplets = triplet_rows(mapping, np.array([["d.jpg", "b.jpg", "a.jpg"]], dtype=object))
    np.testing.assert_array_equal(rows.take()[triplets], X[[[3, 1, 0]]])


@pytest.mark.parametrize(
    ("T", "match"),
    [
        ("train.txt", "to read a triplet file use"),
        (np.zeros((0, 3)), "empty array of triplets"),
        (np.zeros((2, 3)), "TripletEncoder requires y to be passed"),
        (np.zeros((2, 4, 1)), "Triplets must have shape"),
    ],
)
def test_triplet_rows_errors(T, match):
    with pytest.raises(ValueError, match=match):
        triplet_rows(None, T)


def test_labelled_rows_repeat_items_and_check_labels():
    rows, y = labelled_rows(X, np.array([0, 0, 1]), np.array([5, 5, 6]), validate=None)
    assert y.tolist() == [5, 5, 6]
    np.testing.assert_array_equal(rows.take(), X[[0, 0, 1]])
    with pytest.raises(ValueError, match="X has 3 items but y has 2 labels"):
        labelled_rows(X, np.array([0, 0, 1]), np.array([5, 5]), validate=None)
    with pytest.raises(ValueError, match="needs at least 2 classes"):
        labelled_rows(X, np.array([0, 1]), np.array([5, 5]), validate=None)


def test_labelled_vectors_go_through_validate():
    seen = []

    def validate(X_, y_):
        seen.append(X_.shape)
        return np.asarray(X_, dtype=np.float32), np.asarray(y_)

    rows, _ = labelled_rows(None, X, np.array([0, 0, 1, 1]), validate)
    assert seen == [(4, 3)] and len(rows) == 4


def test_many_small_identities_are_labels_not_regression_targets():
    """Two photos of each of a few people and one of many others: over 50% unique labels, which
    scikit-learn's target check would call a regression problem."""
    y = np.concatenate([np.repeat([0, 1, 2], 2), np.arange(3, 40)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_labels(y) is y
    with pytest.raises(ValueError, match="at least 2 samples"):
        check_labels(np.arange(40))
