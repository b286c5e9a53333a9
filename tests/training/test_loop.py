"""The private training loop: the fused Adam update, last finite weights, weights per epoch."""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from tests.helpers import assert_same_weights, train_loop
from tripletsk.errors import TrainingDivergedWarning


def test_fused_adam_matches_keras_adam_step_by_step():
    import keras
    import tensorflow as tf

    from tripletsk.training.optimizer import FusedAdam

    rng = np.random.RandomState(0)
    start = rng.normal(size=(6, 5)).astype(np.float32)
    ours, theirs = keras.Variable(start), keras.Variable(start)
    fused = FusedAdam([ours], learning_rate=0.05)
    reference = keras.optimizers.Adam(learning_rate=0.05)
    for _ in range(5):
        grad = tf.constant(rng.normal(size=start.shape).astype(np.float32))
        fused.apply_gradients([grad])
        reference.apply_gradients([(grad, theirs)])
    assert not np.allclose(ours.numpy(), start)  # the updates did move the variable
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)


def test_each_epoch_sees_the_weights_trained_so_far(blobs):
    X, y = blobs
    seen = {}
    train_loop(X, y, epochs=3, record=seen)
    after_two_epochs = train_loop(X, y, epochs=2).weights
    assert_same_weights(seen[2], after_two_epochs)
    assert not np.array_equal(seen[1][0][0], seen[2][0][0])


def test_divergence_keeps_the_weights_of_the_last_finite_epoch(blobs):
    X, y = blobs
    with pytest.warns(TrainingDivergedWarning, match="diverged at epoch 3 .*last finite weights"):
        diverged = train_loop(X, y, epochs=5, poison_from=2)
    assert diverged.stopped_on_nan
    assert diverged.n_iter == len(diverged.loss_curve) == 2
    assert_same_weights(diverged.weights, train_loop(X, y, epochs=2).weights)


def test_divergence_hidden_from_the_loss_is_caught_in_the_weights(blobs):
    # Adam steps of 1e30 overflow the weights to NaN; NaN distances fail every comparison,
    # so the hinge loss still reads as a finite margin. The weights must be checked too.
    X, y = blobs
    with pytest.warns(TrainingDivergedWarning, match="non-finite weights"):
        result = train_loop(X, y, epochs=5, learning_rate=1e30)
    assert result.stopped_on_nan
    assert np.isfinite(result.loss_curve).all()
    assert all(np.isfinite(k).all() and np.isfinite(b).all() for k, b in result.weights)


def test_divergence_warning_is_a_convergence_warning_and_a_runtime_warning():
    assert issubclass(TrainingDivergedWarning, ConvergenceWarning)
    assert issubclass(TrainingDivergedWarning, RuntimeWarning)  # what it used to be


def test_max_epochs_before_convergence_warns(blobs):
    X, y = blobs
    with pytest.warns(ConvergenceWarning, match="reached max_epochs=2 before the training loss"):
        result = train_loop(X, y, epochs=2)
    assert result.n_iter == 2 and not result.stopped_on_nan


def test_stopping_for_no_improvement_does_not_warn(blobs):
    X, y = blobs
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        result = train_loop(X, y, epochs=50, tol=10.0, n_iter_no_change=2)
    assert result.n_iter == 3  # the first epoch improves on -inf, the next two do not
