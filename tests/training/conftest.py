"""Fixtures of the training tests."""

import numpy as np
import pytest


@pytest.fixture
def blobs():
    """Four labelled clusters of 30 points in 16 dimensions: ``(X, y)``."""
    rng = np.random.RandomState(0)
    y = np.repeat(np.arange(4), 30)
    X = rng.normal(size=(4, 16))[y] + 0.5 * rng.normal(size=(len(y), 16))
    return X.astype(np.float32), y
