import numpy as np
import pytest
from sklearn.base import BaseEstimator
from sklearn.model_selection import GridSearchCV, cross_val_score

from tripletsk.model_selection import (
    TripletGroupKFold,
    triplet_groups,
    triplet_train_test_split,
)


def _random_triplets(seed, n_triplets=60, n_images=600, as_keys=True):
    """Triplets over a pool of images: some share images, most groups stay small."""
    rng = np.random.RandomState(seed)
    t = np.stack([rng.choice(n_images, 3, replace=False) for _ in range(n_triplets)])
    if as_keys:
        return np.array([[f"cls{i % 7}/img {i}.jpg" for i in row] for row in t], dtype=object)
    return t


def _images(triplets, rows):
    return set(np.asarray(triplets)[rows].ravel().tolist())


def _slow_groups(triplets):
    """Union-find over images, the obviously correct way."""
    parent = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for a, p, n in np.asarray(triplets).tolist():
        parent[find(p)] = find(a)
        parent[find(n)] = find(a)
    return [find(row[0]) for row in np.asarray(triplets).tolist()]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("as_keys", [True, False])
def test_triplet_groups_match_union_find(seed, as_keys):
    t = _random_triplets(seed, as_keys=as_keys)
    ids = triplet_groups(t)
    slow = _slow_groups(t)
    # Same partition: equal ids exactly when equal union-find roots.
    assert np.array_equal(ids[:, None] == ids[None, :], np.equal.outer(slow, slow))
    assert ids[0] == 0 and set(ids.tolist()) == set(range(ids.max() + 1))


def test_triplet_groups_extra_groups_and_features():
    t = [["a", "b", "c"], ["d", "e", "f"], ["g", "h", "i"]]
    assert triplet_groups(t).tolist() == [0, 1, 2]
    assert triplet_groups(t, groups=["x", "y", "x"]).tolist() == [0, 1, 0]
    assert triplet_groups(np.zeros((4, 3, 5))).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("triplets", "match"),
    [
        (np.zeros((4, 2)), r"shape \(n_triplets, 3\)"),
        (np.full((4, 3), 0.5), "non-integer floats"),
        (np.array([["a", 1, "b"]], dtype=object), "one type"),
    ],
)
def test_triplet_groups_errors(triplets, match):
    with pytest.raises(ValueError, match=match):
        triplet_groups(triplets)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("n_splits", [2, 3, 5])
@pytest.mark.parametrize("shuffle", [False, True])
def test_kfold_never_shares_an_image(seed, n_splits, shuffle):
    t = _random_triplets(seed)
    cv = TripletGroupKFold(n_splits, shuffle=shuffle, random_state=seed)
    tests = []
    for train, test in cv.split(t):
        assert len(test) > 0 and len(train) > 0
        assert not _images(t, train) & _images(t, test)
        assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(t)))
        tests.append(test)
    assert cv.get_n_splits(t) == n_splits == len(tests)
    assert np.array_equal(np.sort(np.concatenate(tests)), np.arange(len(t)))  # a partition


def test_kfold_balances_independent_triplets():
    t = np.arange(30).reshape(10, 3)  # no shared images: 10 groups of 1
    sizes = [len(test) for _, test in TripletGroupKFold(5).split(t)]
    assert sizes == [2, 2, 2, 2, 2]


def test_kfold_keeps_linked_triplets_together():
    t = [["a", "b", "c"], ["c", "d", "e"], ["e", "f", "g"], ["h", "i", "j"], ["k", "l", "m"]]
    folds = [test.tolist() for _, test in TripletGroupKFold(3).split(t)]
    assert [0, 1, 2] in folds  # the chain a-c-e-g is one group, in one fold
    assert sorted(map(len, folds)) == [1, 1, 3]


def test_kfold_respects_extra_groups():
    t = np.arange(12).reshape(4, 3)
    folds = [test.tolist() for _, test in TripletGroupKFold(2).split(t, groups=[0, 1, 0, 1])]
    assert sorted(folds) == [[0, 2], [1, 3]]


def test_kfold_shuffle_changes_folds_reproducibly():
    t = np.arange(60).reshape(20, 3)
    plain = [test.tolist() for _, test in TripletGroupKFold(4).split(t)]
    a = [test.tolist() for _, test in TripletGroupKFold(4, shuffle=True, random_state=0).split(t)]
    b = [test.tolist() for _, test in TripletGroupKFold(4, shuffle=True, random_state=0).split(t)]
    assert a == b
    assert a != plain


def test_kfold_too_few_groups():
    t = [["a", "b", "c"], ["a", "d", "e"], ["f", "g", "h"]]
    with pytest.raises(ValueError, match="only 2 connected group"):
        list(TripletGroupKFold(3).split(t))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_splits": 1}, ValueError, "at least 2"),
        ({"n_splits": 2.0}, ValueError, "must be an int"),
        ({"shuffle": 1}, TypeError, "True or False"),
    ],
)
def test_kfold_parameter_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        TripletGroupKFold(**kwargs)


def test_kfold_feature_triplets_are_independent():
    X = np.random.RandomState(0).normal(size=(9, 3, 4))
    sizes = [len(test) for _, test in TripletGroupKFold(3).split(X)]
    assert sizes == [3, 3, 3]


# ---- with scikit-learn model selection ------------------------------------------------------


class MemorisingScorer(BaseEstimator):
    """Dummy triplet model: remembers training images; scores the fraction of test images
    it has seen. Any leak shows up as a score above 0."""

    def __init__(self, alpha=1.0):
        self.alpha = alpha

    def fit(self, X, y=None):
        self.seen_ = set(np.asarray(X).ravel().tolist())
        return self

    def score(self, X, y=None):
        images = np.asarray(X).ravel().tolist()
        return float(np.mean([image in self.seen_ for image in images]))


def test_cross_val_score_sees_no_test_image():
    t = _random_triplets(0)
    scores = cross_val_score(MemorisingScorer(), t, cv=TripletGroupKFold(4))
    assert scores.shape == (4,)
    assert np.all(scores == 0.0)


def test_grid_search_uses_triplet_folds():
    t = _random_triplets(1, as_keys=False)
    search = GridSearchCV(MemorisingScorer(), {"alpha": [0.1, 1.0]}, cv=TripletGroupKFold(3))
    search.fit(t)
    assert search.cv_results_["split2_test_score"].tolist() == [0.0, 0.0]
    assert search.n_splits_ == 3


def test_plain_kfold_would_leak():
    # Guard for the test above: the dummy does detect leaks when folds ignore images.
    t = _random_triplets(0)
    assert cross_val_score(MemorisingScorer(), t, cv=4).max() > 0


# ---- train/test split -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("test_size", [0.25, 0.5, 10])
def test_train_test_split_never_shares_an_image(seed, test_size):
    t = _random_triplets(seed)
    train, test = triplet_train_test_split(t, test_size=test_size, random_state=seed)
    assert len(train) + len(test) == len(t)
    assert len(train) > 0 and len(test) > 0
    assert not _images(train, slice(None)) & _images(test, slice(None))
    assert sorted(map(tuple, np.concatenate([train, test]).tolist())) == sorted(
        map(tuple, t.tolist())
    )


def test_train_test_split_hits_size_with_independent_triplets():
    t = np.arange(300).reshape(100, 3)
    train, test = triplet_train_test_split(t, test_size=0.2, random_state=0)
    assert (len(train), len(test)) == (80, 20)
    again = triplet_train_test_split(t, test_size=0.2, random_state=0)
    assert np.array_equal(again[1], test)


@pytest.mark.parametrize(
    ("triplets", "test_size", "match"),
    [
        ([["a", "b", "c"], ["a", "d", "e"]], 0.5, "only 1 connected group"),
        (np.arange(12).reshape(4, 3), 0.0, "float in"),
        (np.arange(12).reshape(4, 3), 1.5, "float in"),
        (np.arange(12).reshape(4, 3), 4, "between 1 and 3"),
    ],
)
def test_train_test_split_errors(triplets, test_size, match):
    with pytest.raises(ValueError, match=match):
        triplet_train_test_split(triplets, test_size=test_size)
