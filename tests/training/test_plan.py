"""The epoch plan: the batches a fit trains on, epoch after epoch, for each mining word."""

import warnings

import numpy as np
import pytest

from tripletsk import TripletEncoder
from tripletsk.training import plan
from tripletsk.training.config import TrainingConfig
from tripletsk.training.plan import epoch_batches
from tripletsk.training.rows import FeatureRows
from tripletsk.triplets.mining import sample_label_triplets

SMALL = dict(hidden_units=16, n_components=4, max_epochs=3, batch_size=32, random_state=0)


def _config(n_features, labelled, **params):
    params = {**TripletEncoder().get_params(), **params}
    return TrainingConfig.from_params(params, n_features=n_features, labelled=labelled)


def test_hybrid_refreshes_hard_examples_with_the_head(blobs, monkeypatch):
    calls = []
    original = plan.hard_examples

    def spy(features, labels, per_anchor):
        calls.append(features.shape[1])
        return original(features, labels, per_anchor)

    monkeypatch.setattr(plan, "hard_examples", spy)
    X, y = blobs
    params = {**SMALL, "mining": "hybrid", "max_epochs": 6, "refresh_every": 2}
    enc = TripletEncoder(**params).fit(X, y)
    # Once on the 16 frozen features, then on the 4-d embeddings at epochs 2 and 4.
    assert calls == [16, 4, 4] and enc.n_iter_ == 6


def _plan(mining_name, X, y=None, T=None, **params):
    n = len(T) if y is None else len(y)
    config = _config(X.shape[1], y is not None, mining=mining_name, **{"batch_size": 8, **params})
    rng = np.random.RandomState(0)
    return epoch_batches(FeatureRows.from_array(X), T, y, np.arange(n), config, rng)


def test_epoch_of_given_triplets_visits_each_once(blobs):
    X, y = blobs
    T = sample_label_triplets(y, 30, random_state=0)
    batches = list(_plan("given", X, T=T)(0, None))
    assert [len(b) for b in batches] == [8, 8, 8, 6]
    assert sorted(map(tuple, np.concatenate(batches).tolist())) == sorted(map(tuple, T.tolist()))


def test_epoch_of_hard_mining_adds_the_hardest_known(blobs):
    from tripletsk.training.head import init_head_weights

    X, y = blobs
    T = sample_label_triplets(y, 30, random_state=0)
    weights = init_head_weights(X.shape[1], (8,), 3, np.random.RandomState(0))
    epoch = np.concatenate(list(_plan("hard", X, T=T)(0, weights)))
    assert len(epoch) == len(T) + len(np.unique(T[:, 0]))


@pytest.mark.parametrize("name", ["batch_hard", "hybrid"])
def test_epoch_of_pk_batches_covers_the_samples(blobs, name):
    X, y = blobs
    batches = list(_plan(name, X, y=y, samples_per_class=4)(0, None))
    assert set(np.concatenate(batches).tolist()) == set(range(len(y)))
    if name == "batch_hard":
        assert sum(len(b) for b in batches) == len(y)  # each sample once
    else:  # hybrid adds offline hard examples beyond the P x K deal
        assert sum(len(b) for b in batches) > len(y)


def _batch_sizes(samples_per_class, batch_size=256, n_classes=10):
    labels = np.repeat(np.arange(n_classes), 375)
    rows = FeatureRows.from_array(np.zeros((len(labels), 2), np.float32))
    config = _config(2, True, mining="batch_hard", batch_size=batch_size,
                     samples_per_class=samples_per_class)  # fmt: skip
    batches = epoch_batches(
        rows, None, labels, np.arange(len(labels)), config, np.random.RandomState(0)
    )
    return [len(batch) for batch in batches(0, None)]


def test_auto_batches_hold_batch_size_samples_with_few_classes():
    # With K = 4, 10 classes filled batches of 40 samples where 256 were asked for.
    sizes = _batch_sizes("auto")
    assert np.median(sizes) == 250  # 10 classes x 25
    assert max(sizes) <= 256


def test_a_samples_per_class_that_cannot_fill_the_batch_warns():
    with pytest.warns(UserWarning, match=r"asks for 64 classes per batch, but there are 10"):
        sizes = _batch_sizes(4)
    assert max(sizes) == 40
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _batch_sizes(4, n_classes=100)  # enough classes: no warning
