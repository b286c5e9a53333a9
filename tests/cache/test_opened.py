"""open_cache: a cache path's FeatureStore, opened once per version of the file."""

import os

import numpy as np

from tripletsk.cache.opened import open_cache

X = np.arange(12, dtype=np.float32).reshape(4, 3)
KEYS = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]


def test_open_cache_reopens_a_replaced_file(tmp_path, write_feature_cache):
    cache = write_feature_cache(tmp_path / "features.h5", KEYS, X)
    first = open_cache(cache)
    assert open_cache(os.fspath(cache)) is first  # opened once per version of the file
    replaced = write_feature_cache(tmp_path / "new.h5", KEYS, X + 100)
    os.replace(replaced, cache)
    again = open_cache(cache)
    assert again is not first
    np.testing.assert_array_equal(again.lookup(["a.jpg"]), X[:1] + 100)
