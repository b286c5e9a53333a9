import itertools

import numpy as np
import pytest
from sklearn.base import BaseEstimator
from sklearn.model_selection import KFold, cross_val_score

from tripletsk.evaluation.metrics import (
    SCORERS,
    label_triplet_accuracy,
    make_recall_at_k_scorer,
    map_at_r,
    map_at_r_scorer,
    precision_at_1,
    precision_at_1_scorer,
    r_precision,
    r_precision_scorer,
    recall_at_k,
    retrieval_report,
    triplet_accuracy,
    triplet_accuracy_scorer,
)

DISTANCES = {
    "euclidean": lambda a, b: np.sqrt(np.sum((a - b) ** 2)),
    "manhattan": lambda a, b: np.sum(np.abs(a - b)),
}


def _tied_data(seed, n=30, n_classes=4):
    """Small integer points: many exact ties and duplicates, some singleton classes."""
    rng = np.random.RandomState(seed)
    X = rng.randint(0, 3, size=(n, 2)).astype(float)
    y = rng.randint(0, n_classes, size=n)
    y[-1] = 99  # a class of one: never a query
    return X, y


def _slow_retrieval(X, y, ks, metric):
    """Obviously correct: rank the others of each query by distance; at equal distances,
    samples of other labels first (ties count against the model), then by index."""
    results = {f"recall_at_{k}": [] for k in ks}
    results.update(r_precision=[], map_at_r=[])
    for i in range(len(X)):
        others = [j for j in range(len(X)) if j != i]
        ranked = sorted(others, key=lambda j: (DISTANCES[metric](X[i], X[j]), y[j] == y[i], j))
        rel = [y[j] == y[i] for j in ranked]
        r = sum(rel)
        if r == 0:
            continue
        for k in ks:
            results[f"recall_at_{k}"].append(any(rel[:k]))
        results["r_precision"].append(sum(rel[:r]) / r)
        ap = sum(sum(rel[: m + 1]) / (m + 1) for m in range(r) if rel[m]) / r
        results["map_at_r"].append(ap)
    return {name: float(np.mean(values)) for name, values in results.items()}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
@pytest.mark.parametrize("metric", ["euclidean", "manhattan"])
def test_retrieval_matches_slow_loop(seed, chunk_size, metric):
    X, y = _tied_data(seed)
    ks = [1, 2, 5]
    expected = _slow_retrieval(X, y, ks, metric)
    report = retrieval_report(X, y, ks, metric=metric, chunk_size=chunk_size)
    for name, value in expected.items():
        assert report[name] == pytest.approx(value), name
    assert report["precision_at_1"] == pytest.approx(expected["recall_at_1"])
    assert precision_at_1(X, y, metric, chunk_size) == pytest.approx(expected["recall_at_1"])
    assert r_precision(X, y, metric, chunk_size) == pytest.approx(expected["r_precision"])
    assert map_at_r(X, y, metric, chunk_size) == pytest.approx(expected["map_at_r"])
    recalls = recall_at_k(X, y, ks, metric, chunk_size)
    assert recalls == pytest.approx({k: expected[f"recall_at_{k}"] for k in ks})


@pytest.mark.parametrize(
    ("X", "y", "expected"),
    [
        # Perfectly separated classes: every figure is 1.
        ([[0], [1], [10], [11], [12]], [0, 0, 1, 1, 1], (1.0, 1.0, 1.0)),
        # Duplicates are neighbours (self is excluded by index, not by distance 0).
        ([[0], [0], [5], [5]], [0, 0, 1, 1], (1.0, 1.0, 1.0)),
        # Three identical points: ties count against the model; class 1 (R=0) is skipped.
        ([[0], [0], [0]], [0, 1, 0], (0.0, 0.0, 0.0)),
        # q0 -> [1, 3]: AP 1/2; q1 -> [3, 0] (3 ties with 0): 1/4; q2 -> [3, 1]: 1/4; q3 R=0.
        ([[0], [1], [3], [2]], [0, 0, 0, 1], (1 / 3, 0.5, 1 / 3)),
    ],
)
def test_retrieval_hand_made(X, y, expected):
    p1, rp, mapr = expected
    assert precision_at_1(X, y) == pytest.approx(p1)
    assert r_precision(X, y) == pytest.approx(rp)
    assert map_at_r(X, y) == pytest.approx(mapr)


def test_recall_at_k_scalar_and_list():
    X, y = [[0], [1], [3], [5]], [0, 0, 1, 1]
    assert recall_at_k(X, y, k=1) == 0.75
    assert recall_at_k(X, y, k=[2, 1]) == {2: 1.0, 1: 0.75}
    assert set(retrieval_report(X, y, ks=[3])) == {
        "precision_at_1", "recall_at_3", "r_precision", "map_at_r", "n_queries",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("X", "y", "kwargs", "match"),
    [
        ([[0], [1], [2]], [0, 1, 2], {"ks": [1]}, "No sample shares its label"),
        ([[0], [1], [2]], [0, 0, 1], {"ks": [3]}, "between 1 and n_samples - 1 = 2"),
        ([[0], [1], [2]], [0, 0, 1], {"ks": [0]}, "between 1 and"),
        ([[0]], [0], {}, "at least 2 samples"),
        ([[0], [1]], [0, 0, 1], {}, "inconsistent numbers of samples"),
    ],
)
def test_retrieval_errors(X, y, kwargs, match):
    with pytest.raises(ValueError, match=match):
        retrieval_report(X, y, **kwargs)


# ---- triplet accuracy (existing functions) --------------------------------------------------


def test_triplet_accuracy_tie_is_wrong():
    assert triplet_accuracy([1.0, 1.0, 2.0], [2.0, 1.0, 1.0]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="at least one triplet"):
        triplet_accuracy([], [])


@pytest.mark.parametrize("seed", range(3))
def test_label_triplet_accuracy_matches_enumeration(seed):
    X, y = _tied_data(seed, n=15)
    d = DISTANCES["euclidean"]
    correct = total = 0
    for a, p, n in itertools.permutations(range(len(y)), 3):
        if y[a] == y[p] and y[a] != y[n]:
            total += 1
            correct += d(X[a], X[p]) < d(X[a], X[n])
    assert label_triplet_accuracy(X, y, chunk_size=4) == pytest.approx(correct / total)


# ---- scorers --------------------------------------------------------------------------------


class ShiftEncoder(BaseEstimator):
    """A stand-in for TripletEncoder: transform adds a learned offset; score is fixed."""

    def __init__(self, scale=1.0):
        self.scale = scale

    def fit(self, X, y=None):
        self.offset_ = np.mean(X, axis=0)
        return self

    def transform(self, X):
        return (np.asarray(X, dtype=float) - self.offset_) * self.scale

    def score(self, X, y=None):
        return 0.25


@pytest.mark.parametrize(
    ("scorer", "metric"),
    [
        (precision_at_1_scorer, precision_at_1),
        (r_precision_scorer, r_precision),
        (map_at_r_scorer, map_at_r),
        (make_recall_at_k_scorer(2), lambda X, y: recall_at_k(X, y, 2)),
        (triplet_accuracy_scorer, label_triplet_accuracy),
    ],
)
def test_scorers_use_transform(scorer, metric):
    X, y = _tied_data(1)
    encoder = ShiftEncoder(scale=-2.0).fit(X + 1)
    assert scorer(encoder, X, y) == pytest.approx(metric(encoder.transform(X), y))


def test_triplet_accuracy_scorer_without_labels_uses_score():
    assert triplet_accuracy_scorer(ShiftEncoder(), np.zeros((3, 3)), None) == 0.25


@pytest.mark.parametrize("name", ["precision_at_1", "map_at_r", "r_precision", "recall_at_5"])
def test_scorers_need_labels(name):
    encoder = ShiftEncoder().fit(np.zeros((4, 2)))
    with pytest.raises(ValueError, match=f"The {name} scorer needs class labels"):
        SCORERS[name](encoder, np.zeros((4, 2)), None)


@pytest.mark.parametrize("k", [0, 1.5, True])
def test_make_recall_scorer_rejects_bad_k(k):
    with pytest.raises(ValueError, match="positive int"):
        make_recall_at_k_scorer(k)


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_scorers_work_in_cross_val_score(name):
    rng = np.random.RandomState(0)
    y = np.repeat(np.arange(4), 10)
    X = rng.normal(size=(40, 3)) + 5 * y[:, None]  # well separated classes
    scores = cross_val_score(
        ShiftEncoder(), X, y, cv=KFold(3, shuffle=True, random_state=0), scoring=SCORERS[name]
    )
    assert scores.shape == (3,)
    assert np.all(scores > 0.9)


class FixedEncoder(BaseEstimator):
    """A fitted stand-in with fixed embeddings and a training ``distance``."""

    def __init__(self, embeddings=None, distance="l2"):
        self.embeddings = embeddings
        self.distance = distance

    def transform(self, X):
        return self.embeddings[np.asarray(X).ravel()]


@pytest.mark.parametrize(("distance", "expected"), [("l1", 1.0), ("l2", 0.75)])
def test_scorers_measure_with_the_estimators_distance(distance, expected):
    # Sample 0's nearest is sample 2 (same class) by L1 distance, sample 1 (other) by L2.
    emb = np.array([[0.0, 0.0], [1.0, 1.0], [0.2, -1.5], [5.0, 5.0], [5.1, 5.1]])
    y = np.array([0, 1, 0, 2, 2])
    encoder = FixedEncoder(emb, distance=distance)
    assert precision_at_1_scorer(encoder, np.arange(5), y) == pytest.approx(expected)


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_scorers_of_a_cosine_encoder_measure_cosine(name, monkeypatch):
    import tripletsk.evaluation.metrics as metrics
    from tripletsk import TripletEncoder

    rng = np.random.RandomState(0)
    y = np.repeat(np.arange(3), 8)
    X = (rng.normal(size=(24, 5)) + 3 * y[:, None]).astype(np.float32)
    params = dict(hidden_units=8, n_components=3, max_epochs=2, random_state=0)
    encoder = TripletEncoder(distance="cosine", **params).fit(X, y)
    used = []
    for function in ("retrieval_report", "label_triplet_accuracy"):
        original = getattr(metrics, function)

        position = 3 if function == "retrieval_report" else 2  # of ``metric``

        def spy(*args, _original=original, _position=position, **kwargs):
            used.append(kwargs.get("metric", args[_position] if len(args) > _position else None))
            return _original(*args, **kwargs)

        monkeypatch.setattr(metrics, function, spy)
    SCORERS[name](encoder, X, y)
    assert used and set(used) == {"cosine"}


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_collapsed_embedding_scores_no_better_than_chance(shuffle):
    # Rows sorted by class, as extract-features writes them: breaking ties by index made a
    # constant embedding score P@1 = MAP@R = 0.100 here (and 0.018 shuffled).
    y = np.repeat(np.arange(10), 20)
    if shuffle:
        y = np.random.RandomState(0).permutation(y)
    report = retrieval_report(np.ones((len(y), 4)), y, ks=[1, 5])
    chance = 19 / 199  # another sample of the query's class, drawn at random
    for name in ("precision_at_1", "r_precision", "map_at_r"):
        assert report[name] <= chance, name


def test_ties_count_against_the_model():
    # The query 0 has a same-class sample and an other-class sample at the same distance.
    embeddings = np.array([[0.0], [1.0], [-1.0], [5.0]])
    y = np.array([0, 0, 1, 1])
    # Query 0 fails (by index it succeeded), 1 succeeds, 2 and 3 fail.
    assert precision_at_1(embeddings, y) == 0.25
    report = retrieval_report(embeddings, y, ks=[1, 2])
    assert report["recall_at_2"] == 0.5  # queries 0 and 1 find their class within two
    # Without the tie, query 0 succeeds.
    assert precision_at_1(np.array([[0.0], [1.0], [-1.1], [5.0]]), y) == 0.5
