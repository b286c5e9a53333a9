"""Pair verification: pairs from labels, distances, threshold choice and its report."""

import itertools

import numpy as np
import pytest

from tripletsk.evaluation.pairs import (
    choose_threshold,
    make_pairs,
    pair_distances,
    pair_verification_report,
)


def test_make_pairs_all():
    y = np.array([0, 0, 1, 1, 2])
    pairs, same = make_pairs(y)
    assert len(pairs) == 10
    assert {tuple(p) for p in pairs.tolist()} == set(itertools.combinations(range(5), 2))
    assert np.array_equal(same, y[pairs[:, 0]] == y[pairs[:, 1]])


@pytest.mark.parametrize("n_pairs", [2, 9, 100])
def test_make_pairs_balanced(n_pairs):
    y = np.array([0] * 20 + [1] * 2 + [2])  # very unbalanced classes
    pairs, same = make_pairs(y, n_pairs, random_state=0)
    assert pairs.shape == (n_pairs, 2)
    assert same.sum() == n_pairs // 2
    assert np.array_equal(same, y[pairs[:, 0]] == y[pairs[:, 1]])
    assert np.all(pairs[:, 0] != pairs[:, 1])
    again = make_pairs(y, n_pairs, random_state=0)
    assert np.array_equal(again[0], pairs)


def test_make_pairs_errors():
    with pytest.raises(ValueError, match="at least 2"):
        make_pairs([0, 0, 1], n_pairs=1)
    with pytest.raises(ValueError, match="at least 2 classes"):
        make_pairs([0, 0, 0], n_pairs=4)


def test_pair_distances():
    d = pair_distances([[0, 0], [3, 4], [3, 0]], [[0, 1], [1, 2], [2, 2]])
    assert d.tolist() == [5.0, 4.0, 0.0]
    with pytest.raises(ValueError, match=r"shape \(n_pairs, 2\)"):
        pair_distances([[0], [1]], [[0, 1, 1]])


def _slow_best_score(distances, same, criterion):
    """Best score over every way to split the sorted distances."""
    best = 0.0
    for t in [-np.inf, *distances]:
        predicted = distances <= t
        tpr = np.mean(predicted[same])
        tnr = np.mean(~predicted[~same])
        acc = np.mean(predicted == same)
        best = max(best, acc if criterion == "accuracy" else (tpr + tnr) / 2)
    return best


def _score(distances, same, t, criterion):
    r = pair_verification_report(distances, same, t)
    return r[criterion]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("criterion", ["accuracy", "balanced_accuracy"])
def test_choose_threshold_is_optimal(seed, criterion):
    rng = np.random.RandomState(seed)
    same = rng.rand(40) < 0.2
    distances = np.round(rng.rand(40) + 0.5 * ~same, 1)  # rounding makes ties
    t = choose_threshold(distances, same, criterion)
    assert _score(distances, same, t, criterion) == pytest.approx(
        _slow_best_score(distances, same, criterion)
    )


@pytest.mark.parametrize(
    ("distances", "same", "expected"),
    [
        ([0.1, 0.2, 0.9, 1.0], [True, True, False, False], 0.55),
        ([1.0, 2.0], [False, True], 1.0 - 1e-16),  # best: answer "different" always
        ([1.0, 1.0, 2.0], [True, True, False], 1.5),
    ],
)
def test_choose_threshold_hand_made(distances, same, expected):
    assert choose_threshold(distances, same) == pytest.approx(expected)


def test_choose_threshold_accuracy_differs_from_balanced():
    # One "same" pair among many "different": accuracy prefers never to answer "same".
    distances = [0.5, 0.1, 0.2, 0.3, 0.6, 0.7]
    same = [True, False, False, False, False, False]
    balanced = pair_verification_report(distances, same, choose_threshold(distances, same))
    assert balanced["balanced_accuracy"] == pytest.approx(0.7)
    assert balanced["accuracy"] == pytest.approx(3 / 6)
    accurate = pair_verification_report(
        distances, same, choose_threshold(distances, same, "accuracy")
    )
    assert accurate["accuracy"] == pytest.approx(5 / 6)
    assert accurate["balanced_accuracy"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("distances", "same", "criterion", "match"),
    [
        ([0.1, 0.2], [True, True], "accuracy", "both same-label and different-label"),
        ([0.1, 0.2], [True, False], "f1", "criterion must be"),
        ([], [], "accuracy", "at least one pair"),
        ([0.1], [True, False], "accuracy", "inconsistent numbers of samples"),
    ],
)
def test_choose_threshold_errors(distances, same, criterion, match):
    with pytest.raises(ValueError, match=match):
        choose_threshold(distances, same, criterion)


def test_pair_report_shows_base_rate():
    distances = np.arange(10.0)
    same = np.zeros(10, dtype=bool)
    same[0] = True
    r = pair_verification_report(distances, same, threshold=-1.0)  # always "different"
    assert r["accuracy"] == pytest.approx(0.9)
    assert r["majority_accuracy"] == pytest.approx(0.9)
    assert r["balanced_accuracy"] == pytest.approx(0.5)
    assert r["base_rate"] == pytest.approx(0.1)
    assert r["n_pairs"] == 10
    r = pair_verification_report(distances, same, threshold=0.5)
    assert r["accuracy"] == 1.0 and r["balanced_accuracy"] == 1.0
