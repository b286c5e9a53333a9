"""Distance names, their scikit-learn spellings, and the NumPy paired distance."""

import numpy as np
import pytest
from sklearn.metrics import pairwise_distances
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tripletsk import TripletEncoder
from tripletsk.distances import (
    DISTANCES,
    SKLEARN_METRIC,
    metric_of,
    paired_distance,
    sklearn_metric,
)


@pytest.mark.parametrize("distance", DISTANCES)
def test_paired_distance_matches_sklearn_metric(distance):
    rng = np.random.RandomState(0)
    a, b = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    expected = np.diag(pairwise_distances(a, b, metric=sklearn_metric(distance)))
    np.testing.assert_allclose(paired_distance(a, b, distance), expected, rtol=1e-10)


def test_paired_distance_twins_the_tensorflow_one():
    from tripletsk.training import losses

    rng = np.random.RandomState(1)
    a, b = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32)
    for distance in DISTANCES:
        tf_value = losses.paired_distance(a, b, distance).numpy()
        np.testing.assert_allclose(paired_distance(a, b, distance), tf_value, rtol=1e-5)
    assert losses.DISTANCES == DISTANCES


@pytest.mark.parametrize("function", [sklearn_metric, lambda d: paired_distance([[0]], [[1]], d)])
def test_unknown_distance_is_named(function):
    with pytest.raises(ValueError, match=r"distance must be one of .* got 'l3'"):
        function("l3")


@pytest.mark.parametrize("distance", DISTANCES)
def test_metric_of_an_encoder_and_a_pipeline(distance):
    encoder = TripletEncoder(distance=distance)
    assert metric_of(encoder) == SKLEARN_METRIC[distance]
    assert metric_of(make_pipeline(StandardScaler(), encoder)) == SKLEARN_METRIC[distance]


def test_metric_of_other_estimators_is_euclidean():
    assert metric_of(StandardScaler()) == "euclidean"
