"""Fixtures shared by the test modules: real image folders and small real feature caches written
with the library's own writer, so every test reads the files users get. The builders behind them
are plain functions in tests/helpers.py."""

from __future__ import annotations

import os

# Under pytest-xdist every worker is a process of its own: one TensorFlow / oneDNN thread each,
# so that two workers on two cores do not contend (set before anything imports TensorFlow;
# processes that tests start inherit it).
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(_name, "1")

import pytest

from tests import helpers


@pytest.fixture(scope="session", autouse=True)
def keep_the_backbones_built():
    """The library keeps one backbone in memory (for users' memory); a worker of the suite keeps
    every random-weights Keras model and TensorFlow float32 backbone it builds, so that a test
    does not build and trace ResNet50 again because another test used other settings in between.
    A model or backbone depends only on its key (random weights are seeded), so a test gets what
    it would have built."""
    from tripletsk.extraction import backbone
    from tripletsk.training import compiled

    build_model, models = backbone.build_model, {}

    def kept_build_model(spec, image_size):
        if spec.kind != "none" or spec.arch.is_file:
            return build_model(spec, image_size)
        key = (spec, image_size)
        if key not in models:
            models[key] = build_model(spec, image_size)
        return models[key]

    with pytest.MonkeyPatch.context() as m:
        m.setattr(backbone, "build_model", kept_build_model)
        m.setattr(backbone, "_BACKBONES", helpers.KeptBackbones())
        # Likewise every compiled training graph (the library keeps the 4 most recent): the
        # suite's tiny heads cycle through ~60 graphs per worker, and a graph traced again costs
        # ~1-2 s. What a fit computes does not depend on the pool (tests/training/test_compiled.py).
        m.setattr(compiled, "MAX_IDLE_GRAPHS", 10**6)
        yield


@pytest.fixture(scope="session")
def write_feature_cache():
    """`tests.helpers.write_feature_cache`: a real cache of given features."""
    return helpers.write_feature_cache
