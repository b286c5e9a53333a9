"""Compiled heads kept between fits: a fit with a pooled head computes what a new one would."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tripletsk import TripletEncoder
from tripletsk.training import compiled
from tripletsk.training.config import TrainingConfig
from tripletsk.training.head import init_head_weights

SMALL = dict(hidden_units=16, n_components=4, max_epochs=3, batch_size=32)


def _embed(X, y, **params):
    return TripletEncoder(**{**SMALL, **params}).fit(X, y).transform(X)


@pytest.mark.parametrize(
    "params",
    [
        # Two fits' settings per case (each case traces two graphs, the cost of this test):
        # the dropout masks start again from the seed; a hinge: few triplets active at 0.05.
        dict(dropout=0.3, input_dropout=0.2, margin=0.05, weight_decay=1e-3),
        # batch-hard mining with weight decay; the cosine schedule starts again.
        dict(
            mining="batch_hard",
            weight_decay=1e-3,
            learning_rate_schedule="cosine",
            learning_rate=3e-3,
        ),
    ],
)
def test_a_pooled_head_trains_bit_for_bit_as_a_new_one(blobs, params):
    X, y = blobs
    # Another fit on the same graph moves every state, the margin and weight decay included.
    other = {"learning_rate": 0.05}
    other.update({k: 20 * params[k] for k in ("margin", "weight_decay") if k in params})
    compiled._idle.clear()
    moved_new = _embed(X, y, random_state=2, **{**params, **other})
    compiled._idle.clear()
    new = _embed(X, y, random_state=1, **params)
    (head,) = compiled._idle.values()
    moved = _embed(X, y, random_state=2, **{**params, **other})
    pooled = _embed(X, y, random_state=1, **params)
    assert list(compiled._idle.values()) == [head]  # the same head served all three fits
    np.testing.assert_array_equal(pooled, new)
    np.testing.assert_array_equal(moved, moved_new)


def test_the_soft_margin_scale_is_a_graph_of_its_own_and_ignored_with_a_margin(blobs):
    X, y = blobs
    compiled._idle.clear()
    sharp_new = _embed(X, y, random_state=0, soft_margin_scale=4.0)
    compiled._idle.clear()
    soft = _embed(X, y, random_state=0, soft_margin_scale=1.0)
    sharp = _embed(X, y, random_state=0, soft_margin_scale=4.0)  # after a scale-1 fit
    assert len(compiled._idle) == 2
    np.testing.assert_array_equal(sharp, sharp_new)
    assert not np.array_equal(sharp, soft)
    params = TripletEncoder(margin=0.2).get_params()
    weights = init_head_weights(12, (16,), 4, np.random.RandomState(0))
    keys = {
        compiled.graph_key(weights, TrainingConfig.from_params(
            {**params, "soft_margin_scale": scale}, n_features=12, labelled=True))
        for scale in (1.0, 4.0)
    }  # fmt: skip
    assert len(keys) == 1  # with a hinge margin the scale changes nothing


def test_fits_running_together_each_get_their_own_head(blobs):
    X, y = blobs
    seeds = [0, 1]  # two fits at once are enough to share a head by mistake; each builds a graph
    alone = [_embed(X, y, random_state=s, dropout=0.2) for s in seeds]
    with ThreadPoolExecutor(len(seeds)) as pool:
        together = list(pool.map(lambda s: _embed(X, y, random_state=s, dropout=0.2), seeds))
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_failed_fit_does_not_give_its_head_back(blobs, monkeypatch):
    X, y = blobs
    compiled._idle.clear()
    want = _embed(X, y, random_state=0)  # its head goes to the pool; the failing fit takes it

    def fail(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr("tripletsk.training.loop.epoch_learning_rate", fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        _embed(X, y, random_state=0)
    assert not compiled._idle
    monkeypatch.undo()
    np.testing.assert_array_equal(_embed(X, y, random_state=0), want)


def test_idle_heads_are_kept_for_the_most_recent_graphs_only(blobs, monkeypatch):
    X, _ = blobs
    monkeypatch.setattr(compiled, "MAX_IDLE_GRAPHS", 4)  # the library's (tests keep every graph)
    compiled._idle.clear()
    widths = range(4, 4 + compiled.MAX_IDLE_GRAPHS + 2)
    params = TripletEncoder(**SMALL).get_params()
    config = TrainingConfig.from_params(params, n_features=X.shape[1], labelled=True)
    for width in widths:
        # A head taken and given back as a fit does (the fits above: it is given back), without
        # the training, whose first step would trace a new graph each time.
        init = init_head_weights(X.shape[1], (width,), 4, np.random.RandomState(0))
        with compiled.compiled_head(init, config, seed=0):
            pass
    kept = [key[0][0][1] for key in compiled._idle]  # the first layer's width
    assert kept == list(widths)[-compiled.MAX_IDLE_GRAPHS :]


def test_a_pooled_optimizer_keeps_whether_it_decays():
    import tensorflow as tf

    from tripletsk.training.optimizer import FusedAdam

    optimizer = FusedAdam([tf.Variable(tf.ones((2, 2)))], 1e-3)
    with pytest.raises(ValueError, match="not whether there is any"):
        optimizer.reset(1e-3, weight_decay=1e-2)
