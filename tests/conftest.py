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


@pytest.fixture(scope="session")
def write_feature_cache():
    """`tests.helpers.write_feature_cache`: a real cache of given features."""
    return helpers.write_feature_cache
