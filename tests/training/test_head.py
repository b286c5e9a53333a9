"""The head: initialisation, NumPy forward pass, and Keras round trip."""

import itertools

import numpy as np
import pytest

from tripletsk.training.head import (
    auto_hidden_units,
    build_keras_head,
    forward,
    get_head_weights,
    init_head_weights,
    l2_normalize,
    normalize_hidden_units,
)


@pytest.mark.parametrize(
    ("given", "expected"), [(512, (512,)), ((64, 32), (64, 32)), ([8], (8,)), ((), ()), (None, ())]
)
def test_normalize_hidden_units(given, expected):
    assert normalize_hidden_units(given) == expected


@pytest.mark.parametrize(
    ("n_features", "units"),
    [(8, 1024), (784, 1024), (1024, 1024), (1025, 512), (2048, 512), (4096, 256), (10**6, 128)],
)
def test_auto_width_keeps_the_first_layer_at_most_2_to_the_20_weights(n_features, units):
    assert auto_hidden_units(n_features) == units
    assert normalize_hidden_units("auto", n_features) == (units,)
    assert units * n_features <= 2**20 or units == 128


def test_auto_width_needs_the_number_of_features():
    with pytest.raises(ValueError, match="needs 'auto' and n_features"):
        normalize_hidden_units("auto")
    with pytest.raises(ValueError, match="needs 'auto'"):
        normalize_hidden_units("wide", 10)


@pytest.mark.parametrize("hidden", [(), (16,), (16, 8)])
def test_init_shapes_and_he_uniform_range(hidden):
    weights = init_head_weights(20, hidden, 4, np.random.RandomState(0))
    sizes = [20, *hidden, 4]
    assert [k.shape for k, _ in weights] == list(itertools.pairwise(sizes))
    for kernel, bias in weights:
        assert np.abs(kernel).max() <= np.sqrt(6 / kernel.shape[0])
        assert not bias.any()


def test_init_is_determined_by_the_seed():
    a = init_head_weights(10, (5,), 3, np.random.RandomState(1))
    b = init_head_weights(10, (5,), 3, np.random.RandomState(1))
    c = init_head_weights(10, (5,), 3, np.random.RandomState(2))
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0][0], c[0][0])


@pytest.mark.parametrize("hidden", [(), (16,), (16, 8)])
def test_numpy_forward_matches_keras_model(hidden):
    rng = np.random.RandomState(0)
    weights = init_head_weights(12, hidden, 4, rng)
    x = rng.normal(size=(7, 12)).astype(np.float32)
    model = build_keras_head(weights, dropout=0.5, seed=0)
    np.testing.assert_allclose(forward(x, weights), model(x, training=False), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(forward(x, weights), axis=1), 1.0, rtol=1e-5)
    for (k1, b1), (k2, b2) in zip(weights, get_head_weights(model), strict=True):
        np.testing.assert_array_equal(k1, k2)
        np.testing.assert_array_equal(b1, b2)


def test_l2_normalize_leaves_zero_rows_finite():
    out = l2_normalize(np.array([[0.0, 0.0], [3.0, 4.0]]))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[1], [0.6, 0.8])
