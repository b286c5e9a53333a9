"""The stopping rule: a fit that has learned stops by itself without a warning; one cut short
while still improving warns; what it watches (wrongly ordered triplets, or the loss; by
default the first from labels, the second on given triplets)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from tripletsk import TripletEncoder
from tripletsk.training.stopping import Stopping, resolve_stopping, resolve_tol

# No input dropout: dropping 1 of 8 features is not the cheap augmentation it is on images.
SMALL = dict(hidden_units=16, n_components=4, batch_size=64, input_dropout=0.0, random_state=0)


def _blobs(spread: float, n_per_class: int = 30, seed: int = 0):
    rng = np.random.RandomState(seed)
    y = np.repeat(np.arange(4), n_per_class)
    centres = rng.normal(size=(4, 8)) * 4.0
    return (centres[y] + spread * rng.normal(size=(len(y), 8))).astype(np.float32), y


def test_a_fit_that_has_learned_stops_early_without_a_warning():
    X, y = _blobs(spread=0.3)  # well apart: every triplet is soon ordered right
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        enc = TripletEncoder(**SMALL, max_epochs=200).fit(X, y)
    assert enc.n_iter_ < 200
    assert enc.error_curve_[-1] == 0.0
    # Stopped n_iter_no_change epochs after the last epoch that improved by more than tol.
    best, last_improvement = np.inf, 0
    for epoch, error in enumerate(enc.error_curve_):
        if error < best - 2e-3:  # tol='auto' on the error
            best, last_improvement = error, epoch
    assert enc.n_iter_ == last_improvement + 1 + enc.n_iter_no_change


def test_a_fit_cut_short_while_still_improving_warns():
    X, y = _blobs(spread=2.5)  # overlapping classes: the first epochs keep improving
    with pytest.warns(ConvergenceWarning, match="max_epochs=3 before the share of wrongly"):
        enc = TripletEncoder(**SMALL, max_epochs=3).fit(X, y)
    assert enc.n_iter_ == 3
    assert enc.error_curve_[2] < enc.error_curve_[0] - 2e-3  # it was still improving


def test_the_soft_margin_loss_keeps_falling_after_every_triplet_is_right():
    # What the default watches: wrongly ordered triplets stop changing at 0 while the soft
    # margin's loss still falls, so the loss rule runs to max_epochs and warns.
    X, y = _blobs(spread=0.3)
    params = {**SMALL, "max_epochs": 40, "tol": 1e-6, "n_iter_no_change": 3}
    error_rule = TripletEncoder(**params).fit(X, y)
    with pytest.warns(ConvergenceWarning, match="before the training loss stopped improving"):
        loss_rule = TripletEncoder(stopping="loss", **params).fit(X, y)
    assert error_rule.n_iter_ < 40 and loss_rule.n_iter_ == 40
    assert loss_rule.loss_curve_[-1] < loss_rule.loss_curve_[error_rule.n_iter_ - 1]


@pytest.mark.parametrize(
    ("stopping", "labelled", "watched"),
    [("auto", True, "error"), ("auto", False, "loss"), ("error", False, "error"),
     ("loss", True, "loss")],
)  # fmt: skip
def test_auto_watches_the_error_from_labels_and_the_loss_on_given_triplets(
    stopping, labelled, watched
):
    assert resolve_stopping(stopping, labelled) == watched


@pytest.mark.parametrize(
    ("criterion", "tol"), [("error", 2e-3), ("loss", 5e-3), ("validation", 2e-3)]
)
def test_auto_tol_is_the_step_of_the_watched_figure(criterion, tol):
    assert resolve_tol("auto", criterion) == tol and resolve_tol(0.1, criterion) == 0.1


def test_a_fit_on_given_triplets_goes_on_while_its_loss_falls():
    # A fixed set of triplets is soon all ordered right (error 0): the default rule then
    # follows the loss, as stopping="loss" does, and runs longer than the error rule would.
    X, y = _blobs(spread=0.3)
    rng = np.random.RandomState(0)
    anchors = rng.randint(len(y), size=300)
    positives = np.array([rng.choice(np.flatnonzero(y == y[a])) for a in anchors])
    negatives = np.array([rng.choice(np.flatnonzero(y != y[a])) for a in anchors])
    T = np.stack([anchors, positives, negatives], axis=1)
    params = {**SMALL, "features": X, "max_epochs": 200}
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        auto = TripletEncoder(**params).fit(T)
        error_rule = TripletEncoder(stopping="error", **params).fit(T)
    loss_rule = TripletEncoder(stopping="loss", **params).fit(T)
    assert auto.n_iter_ == loss_rule.n_iter_ > error_rule.n_iter_
    assert auto.loss_curve_ == loss_rule.loss_curve_
    assert auto.loss_curve_[-1] < auto.loss_curve_[error_rule.n_iter_ - 1]


def test_a_fit_from_labels_still_stops_on_its_error():
    X, y = _blobs(spread=0.3)
    auto = TripletEncoder(**SMALL, max_epochs=200).fit(X, y)
    error_rule = TripletEncoder(**SMALL, max_epochs=200, stopping="error").fit(X, y)
    assert auto.n_iter_ == error_rule.n_iter_ < 200
    assert auto.error_curve_ == error_rule.error_curve_


@pytest.mark.parametrize(
    ("figures", "stop_after"),
    [
        ([0.5, 0.4, 0.3, 0.2, 0.1, 0.05], None),  # improves by more than tol every epoch
        ([0.5, 0.4, 0.4, 0.4], 4),  # two epochs without improvement
        ([0.5, 0.4, 0.395, 0.39], 4),  # improvements within tol do not count
        ([0.5, 0.4, 0.45, 0.35, 0.36, 0.37], 6),  # a worse epoch does not reset the count
    ],
)
def test_stopping_counts_epochs_without_an_improvement_beyond_tol(figures, stop_after):
    rule = Stopping("error", tol=0.01, n_iter_no_change=2)
    stops = [rule.update(loss=1.0, error=e, score=None)[1] for e in figures]
    assert stops.index(True) + 1 == stop_after if stop_after else not any(stops)


def test_stopping_on_the_validation_score_keeps_the_best():
    rule = Stopping("validation", tol=0.0, n_iter_no_change=2)
    improved = [rule.update(loss=0.0, error=0.0, score=s)[0] for s in (0.7, 0.9, 0.8)]
    assert improved == [True, True, False] and rule.best_score == 0.9


def test_unknown_stopping_is_refused():
    X, y = _blobs(spread=1.0)
    with pytest.raises(ValueError, match="stopping"):
        TripletEncoder(stopping="accuracy", max_epochs=1).fit(X, y)
