"""``fit`` refuses a costly head whose size buys nothing, warns about other costly heads, and
leaves small heads alone, before it builds any weights."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import tripletsk.training.fitting as fitting_module
from tripletsk.estimator import TripletEncoder


class Built(Exception):
    """Raised where the head's weights would be allocated: the checks come before."""


@pytest.fixture
def no_building(monkeypatch):
    def build(*args, **kwargs):
        raise Built

    monkeypatch.setattr(fitting_module, "init_head_weights", build)


def _data():
    rng = np.random.RandomState(0)
    return rng.normal(size=(40, 16)), np.repeat([0, 1], 20)


def test_an_embedding_wider_than_the_layer_before_it_is_refused_when_costly(no_building):
    """``n_components=100000`` on a 2048-unit layer (the default then) trained 81 s and took
    6.6 GB without a word; its embedding spans 2048 dimensions at most."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning first: one clear error
        with pytest.raises(
            ValueError,
            match=r"n_components=100000 is more than the 2,048 "
            r"units of the last hidden layer: .*Use n_components <= 2,048\.",
        ):
            TripletEncoder(hidden_units=2048, n_components=100000).fit(*_data())  # fmt: skip


def test_a_linear_head_is_measured_against_its_features(no_building):
    with pytest.raises(ValueError, match="n_components=20000000 is more than the 16 input feat"):
        TripletEncoder(hidden_units=(), n_components=20_000_000).fit(*_data())


def test_a_costly_head_that_may_be_useful_warns(no_building):
    match = r"a head of 63,\d+,\d+ parameters \(16 -> 2,048 -> 30,000 -> 64\), at least 1\.\d GiB"
    with pytest.warns(UserWarning, match=match), pytest.raises(Built):
        TripletEncoder(hidden_units=(2048, 30000)).fit(*_data())


@pytest.mark.parametrize("params", [dict(hidden_units=8), dict(hidden_units=(), n_components=3),
                                    dict(n_components=4096)])  # fmt: skip
def test_small_heads_pass_without_a_word(no_building, params):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(Built):
            TripletEncoder(**params).fit(*_data())
