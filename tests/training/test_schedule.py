"""Learning-rate schedule, decoupled weight decay and input dropout of the training loop."""

import math

import numpy as np
import pytest

from tests.helpers import assert_same_weights, train_loop
from tripletsk import TripletEncoder


@pytest.mark.parametrize(
    ("schedule", "epoch", "expected"),
    [("constant", 0, 0.01), ("constant", 99, 0.01), ("cosine", 0, 0.01),
     ("cosine", 50, 0.005), ("cosine", 75, 0.01 * 0.5 * (1 + math.cos(0.75 * math.pi)))],
)  # fmt: skip
def test_epoch_learning_rate(schedule, epoch, expected):
    from tripletsk.training.optimizer import epoch_learning_rate

    assert epoch_learning_rate(schedule, 0.01, epoch, 100) == pytest.approx(expected)


def test_unknown_schedule_is_refused():
    from tripletsk.training.optimizer import epoch_learning_rate

    with pytest.raises(ValueError, match="learning_rate_schedule must be"):
        epoch_learning_rate("step", 0.01, 0, 100)


def test_cosine_starts_at_the_learning_rate_then_departs_from_constant(blobs):
    X, y = blobs
    one = train_loop(X, y, epochs=1, learning_rate_schedule="cosine").weights
    assert_same_weights(one, train_loop(X, y, epochs=1).weights)
    cosine = train_loop(X, y, epochs=3, learning_rate_schedule="cosine").weights
    assert not np.allclose(cosine[0][0], train_loop(X, y, epochs=3).weights[0][0])


def test_weight_decay_shrinks_kernels_not_biases():
    import tensorflow as tf

    from tripletsk.training.optimizer import FusedAdam

    kernel = tf.Variable(np.ones((3, 2), np.float32))
    bias = tf.Variable(np.ones(2, np.float32))
    optimizer = FusedAdam([kernel, bias], learning_rate=0.1, weight_decay=0.5)
    optimizer.apply_gradients([tf.zeros((3, 2)), tf.zeros(2)])  # Adam's own step is 0 here
    np.testing.assert_allclose(kernel.numpy(), 1 - 0.1 * 0.5)
    np.testing.assert_array_equal(bias.numpy(), 1.0)


def test_encoder_refuses_an_unknown_schedule():
    X = np.random.RandomState(0).normal(size=(20, 4))
    y = np.repeat([0, 1], 10)
    with pytest.raises(ValueError, match="learning_rate_schedule"):
        TripletEncoder(learning_rate_schedule="step", max_epochs=1).fit(X, y)


def test_cosine_reaching_max_epochs_is_not_a_convergence_warning(blobs):
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    X, y = blobs
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        result = train_loop(X, y, epochs=2, learning_rate_schedule="cosine")
    assert result.n_iter == 2
    with pytest.warns(ConvergenceWarning, match="max_epochs=2"):
        train_loop(X, y, epochs=2)


def test_input_dropout_drops_inputs_in_training_only():
    from tripletsk.training.head import build_keras_head, forward, init_head_weights

    rng = np.random.RandomState(0)
    weights = init_head_weights(12, (16,), 4, rng)
    x = rng.normal(size=(64, 12)).astype(np.float32)
    model = build_keras_head(weights, seed=0, input_dropout=0.5)
    assert model.get_layer("input_dropout").rate == 0.5
    np.testing.assert_allclose(model(x, training=False), forward(x, weights), atol=1e-5)
    assert not np.allclose(model(x, training=True), forward(x, weights), atol=1e-3)


def test_average_weights_is_one_ema_step():
    from tripletsk.training.averaging import average_weights

    average = [(np.zeros((2, 2), np.float32), np.zeros(2, np.float32))]
    weights = [(np.ones((2, 2), np.float32), np.full(2, 2.0, np.float32))]
    ((kernel, bias),) = average_weights(average, weights, 0.75)
    np.testing.assert_allclose(kernel, 0.25)
    np.testing.assert_allclose(bias, 0.5)


def test_weight_averaging_returns_the_bias_corrected_ema_of_the_epochs(blobs):
    X, y = blobs
    seen = {}
    train_loop(X, y, epochs=3, record=seen)  # seen[e]: the weights after epoch e (e >= 1)
    after_three = train_loop(X, y, epochs=3).weights
    averaged = train_loop(X, y, epochs=3, weight_averaging=0.5).weights
    # After 3 epochs, epoch i weighs (1 - d) d**(3 - i) / (1 - d**3): 1/7, 2/7, 4/7 for d = 0.5
    # (not mostly the first epoch, as an average started at it would be).
    epochs = [seen[1], seen[2], after_three]
    for layer, (kernel, bias) in enumerate(averaged):
        for part, got in enumerate((kernel, bias)):
            want = sum(w * e[layer][part] for w, e in zip((1, 2, 4), epochs, strict=True)) / 7
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(averaged[0][0], after_three[0][0])
    one = train_loop(X, y, epochs=1, weight_averaging=0.97).weights  # one epoch: its own weights
    assert_same_weights(one, train_loop(X, y, epochs=1).weights)


def test_encoder_refuses_weight_averaging_of_one():
    X = np.random.RandomState(0).normal(size=(20, 4))
    y = np.repeat([0, 1], 10)
    with pytest.raises(ValueError, match="weight_averaging"):
        TripletEncoder(weight_averaging=1.0, max_epochs=1).fit(X, y)
