import warnings
from itertools import combinations
from math import comb

import numpy as np
import pytest
from sklearn.base import BaseEstimator
from sklearn.model_selection import GridSearchCV, cross_val_score

from tripletsk.errors import SharedImagesWarning
from tripletsk.estimator import TripletEncoder
from tripletsk.evaluation.model_selection import (
    TripletGroupKFold,
    TripletImageKFold,
    triplet_train_test_split,
)
from tripletsk.evaluation.triplet_graph import triplet_groups
from tripletsk.triplets.folders import labels_from_folders, make_triplets_from_folders


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


# ---- folds of images: one connected set of images --------------------------------------------

KEYS = [f"c{c}/{i}.png" for c in range(4) for i in range(15)]  # 4 classes x 15 images


def _folder_triplets(n=400, seed=0):
    """Random triplets from class folders, as make-triplets writes: one connected group."""
    return make_triplets_from_folders(KEYS, n, random_state=seed)


def _expected_split(triplets, fold_of_image, k):
    """Train / test / dropped rows of split ``k``, by plain loops over the triplets."""
    train, test, dropped = [], [], []
    for row, triplet in enumerate(np.asarray(triplets).tolist()):
        in_k = [fold_of_image[image] == k for image in triplet]
        (test if all(in_k) else dropped if any(in_k) else train).append(row)
    return train, test, dropped


@pytest.mark.parametrize("n_splits", [2, 3, 5])
@pytest.mark.parametrize("stratify", [None, "folders"])
@pytest.mark.parametrize("seed", range(3))
def test_image_kfold_never_shares_an_image_and_counts_the_dropped(n_splits, stratify, seed):
    t = _folder_triplets(1000, seed=seed)  # k=5 tests 1/125 of the triplets per split
    assert triplet_groups(t).max() == 0  # a single group: TripletGroupKFold cannot split it
    cv = TripletImageKFold(n_splits, stratify=stratify, random_state=seed)
    images = np.unique(t.ravel())
    folds = cv._image_folds(images, np.random.RandomState(seed))  # the deal split() makes
    fold_of_image = dict(zip(images.tolist(), folds.tolist(), strict=True))
    splits = list(cv.split(t))
    assert len(splits) == cv.get_n_splits(t) == n_splits
    tested = []
    for k, (train, test) in enumerate(splits):
        assert not _images(t, train) & _images(t, test)
        expected = _expected_split(t, fold_of_image, k)
        assert (train.tolist(), test.tolist()) == expected[:2]
        assert (cv.n_train_[k], cv.n_test_[k], cv.n_dropped_[k]) == tuple(map(len, expected))
        tested.extend(test.tolist())
    assert len(tested) == len(set(tested))  # each triplet tested at most once
    # The folds of images: equal sizes within one, and each class spread as evenly.
    sizes = np.bincount(list(fold_of_image.values()), minlength=n_splits)
    assert sizes.max() - sizes.min() <= 1
    if stratify:
        classes = labels_from_folders(images)
        for c in np.unique(classes):
            per_fold = np.bincount(
                [fold_of_image[i] for i in images[classes == c]], minlength=n_splits
            )
            assert per_fold.max() - per_fold.min() <= 1


@pytest.mark.parametrize(("n_splits", "fold_size"), [(2, 6), (3, 4), (4, 3)])
def test_image_kfold_counts_on_every_triplet_of_12_images(n_splits, fold_size):
    # Every 3-subset of 12 images, whatever the deal: test C(m, 3), train C(12 - m, 3).
    t = np.array(list(combinations(range(12), 3)))
    cv = TripletImageKFold(n_splits, random_state=1)
    for train, test in cv.split(t):
        assert len(test) == comb(fold_size, 3) and len(train) == comb(12 - fold_size, 3)
    dropped = comb(12, 3) - comb(fold_size, 3) - comb(12 - fold_size, 3)
    assert cv.n_dropped_.tolist() == [dropped] * n_splits


def test_image_kfold_is_reproducible_and_random():
    t = _folder_triplets()
    a = [test.tolist() for _, test in TripletImageKFold(3, random_state=0).split(t)]
    b = [test.tolist() for _, test in TripletImageKFold(3, random_state=0).split(t)]
    c = [test.tolist() for _, test in TripletImageKFold(3, random_state=1).split(t)]
    assert a == b and a != c


def test_image_kfold_repeats_deal_the_images_again():
    t = _folder_triplets(1000)
    once = TripletImageKFold(3, random_state=0)
    cv = TripletImageKFold(3, n_repeats=4, random_state=0)
    splits = list(cv.split(t))
    assert len(splits) == cv.get_n_splits() == 12 and len(cv.n_dropped_) == 12
    first = [test.tolist() for _, test in once.split(t)]
    assert [test.tolist() for _, test in splits[:3]] == first  # the first deal is the same
    tests = [frozenset(test.tolist()) for _, test in splits]
    assert len(set(tests)) == 12  # the other deals differ
    for train, test in splits:
        assert not _images(t, train) & _images(t, test)


def test_image_kfold_stratify_by_mapping_and_array():
    t = _folder_triplets()
    by_key = dict(zip(KEYS, labels_from_folders(KEYS).tolist(), strict=True))
    cv_map = TripletImageKFold(3, stratify=by_key, random_state=0)
    cv_folders = TripletImageKFold(3, stratify="folders", random_state=0)
    assert [s[1].tolist() for s in cv_map.split(t)] == [s[1].tolist() for s in cv_folders.split(t)]
    index = {k: i for i, k in enumerate(KEYS)}
    t_idx = np.vectorize(index.get)(t)
    classes = np.repeat(np.arange(4), 15)
    cv_array = TripletImageKFold(3, stratify=classes, random_state=0)
    for train, test in cv_array.split(t_idx):
        assert not _images(t_idx, train) & _images(t_idx, test)
        assert len(test) > 0


@pytest.mark.parametrize(
    ("cv", "triplets", "groups", "match"),
    [
        (TripletImageKFold(3), np.zeros((5, 3, 4)), None, "feature triplets"),
        (TripletImageKFold(3), [["a", "b", "c"]] * 4, [0, 0, 1, 1], "groups is not supported"),
        (TripletImageKFold(4), [["a", "b", "c"]], None, "3 distinct images, fewer than"),
        (TripletImageKFold(3, random_state=0), [["a", "b", "c"], ["d", "e", "f"]], None,
         "has no triplet on its test side"),
        (TripletImageKFold(2, stratify="folders"), [[0, 1, 2]], None, "needs triplets of image"),
        (TripletImageKFold(2, stratify="folders"), [["a", "b", "c"]], None, "class folder"),
        (TripletImageKFold(2, stratify={"a": 0}), [["a", "b", "c"]], None, "no class for 2 of"),
        (TripletImageKFold(2, stratify=[0, 1]), [[0, 1, 2]], None, "a class for every image"),
        (TripletImageKFold(2, stratify=[0, 1]), [["a", "b", "c"]], None, "integer image index"),
    ],
)  # fmt: skip
def test_image_kfold_errors(cv, triplets, groups, match):
    with pytest.raises(ValueError, match=match):
        list(cv.split(triplets, groups=groups))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"n_splits": 1}, "at least 2"), ({"n_splits": 3.0}, "must be an int"),
     ({"n_repeats": 0}, "n_repeats must be at least 1"),
     ({"stratify": "class"}, "stratify must be")],
)  # fmt: skip
def test_image_kfold_parameter_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TripletImageKFold(**kwargs)


def test_image_kfold_in_cross_val_score_and_grid_search_sees_no_test_image():
    t = _folder_triplets()
    with pytest.raises(ValueError, match="only 1 connected group"):
        cross_val_score(MemorisingScorer(), t, cv=TripletGroupKFold(3))
    assert cross_val_score(MemorisingScorer(), t, cv=3).min() > 0.5  # plain folds leak
    scores = cross_val_score(MemorisingScorer(), t, cv=TripletImageKFold(3, random_state=0))
    assert scores.tolist() == [0.0, 0.0, 0.0]
    cv = TripletImageKFold(3, stratify="folders", random_state=0)
    search = GridSearchCV(MemorisingScorer(), {"alpha": [0.1, 1.0]}, cv=cv).fit(t)
    assert search.n_splits_ == 3 and search.best_score_ == 0.0
    assert cv.n_train_.sum() + cv.n_test_.sum() + cv.n_dropped_.sum() == 3 * len(t)


# ---- the shared-images warning of TripletEncoder.score -------------------------------------


def _tiny_encoder(features, **params):
    return TripletEncoder(
        features=features, hidden_units=8, n_components=4, max_epochs=1, random_state=0, **params
    )


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory, write_feature_cache):
    """A real feature cache of KEYS: each class a cluster."""
    rng = np.random.RandomState(0)
    classes = np.repeat(np.arange(4), 15)
    features = rng.normal(size=(60, 6)) + 3 * np.eye(6)[classes]
    return write_feature_cache(tmp_path_factory.mktemp("ms") / "features.h5", KEYS, features)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_plain_cv_over_a_cache_warns_that_images_are_shared(cache_path):
    t = _folder_triplets(200)
    with pytest.warns(SharedImagesWarning, match="TripletImageKFold"):
        cross_val_score(_tiny_encoder(str(cache_path)), t, cv=2)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_image_folds_in_grid_search_and_cross_val_score_do_not_warn(cache_path):
    t = _folder_triplets(200)
    cv = TripletImageKFold(2, stratify="folders", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SharedImagesWarning)
        scores = cross_val_score(_tiny_encoder(str(cache_path)), t, cv=cv)
        search = GridSearchCV(_tiny_encoder(str(cache_path)), {"n_components": [2, 4]}, cv=cv)
        search.fit(t)
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))
    assert search.n_splits_ == 2 and 0 <= search.best_score_ <= 1
    assert search.best_params_["n_components"] in (2, 4)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("source", ["cache", "array"])
def test_score_warns_only_on_images_it_was_fitted_on(cache_path, source):
    index = {k: i for i, k in enumerate(KEYS)}
    train_keys = [k for k in KEYS if int(k.split("/")[1].split(".")[0]) < 10]
    test_keys = sorted(set(KEYS) - set(train_keys))
    train = make_triplets_from_folders(train_keys, 60, random_state=0)
    test = make_triplets_from_folders(test_keys, 30, random_state=0)
    if source == "array":
        from tripletsk.cache.store import FeatureStore

        features = FeatureStore(cache_path).lookup(KEYS)
        train, test = np.vectorize(index.get)(train), np.vectorize(index.get)(test)
    else:
        features = str(cache_path)
    model = _tiny_encoder(features).fit(train)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SharedImagesWarning)
        model.score(test)  # disjoint images: silent
    mixed = np.concatenate([test, train[:1]])  # one triplet of training images is enough
    with pytest.warns(SharedImagesWarning, match="flatters"):
        model.score(mixed)
    labels = labels_from_folders(KEYS)
    if source == "array":  # refitted on labels: no record of triplet images, silent
        model.fit(np.arange(60), labels)
    else:
        model.fit(np.array(KEYS, dtype=object), labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SharedImagesWarning)
        model.score(mixed)
