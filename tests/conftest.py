"""Fixtures shared by the test modules: small real feature caches written with the library's
own writer, so every test reads the same file format users get."""

from __future__ import annotations

import os

# Under pytest-xdist every worker is a process of its own: one TensorFlow / oneDNN thread each,
# so that two workers on two cores do not contend (set before anything imports TensorFlow;
# processes that tests start inherit it).
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(_name, "1")

import numpy as np
import pytest

from tripletsk.cache.format import FINGERPRINT_DTYPE, FORMAT_NAME, FORMAT_VERSION
from tripletsk.cache.writer import write_cache

#: Provenance of caches that hold arbitrary vectors rather than a backbone's features.
PLAIN_PROVENANCE = {"model": "test", "layer": "test", "weights": "none", "image_size": 8,
                    "preprocessing": "none", "compute_dtype": "float32", "backend": "none",
                    "weights_source": "none", "versions": "{}"}  # fmt: skip


def _write_feature_cache(path, keys, features, *, provenance=None, failed=(), block=None):
    """Write ``features`` (n, d) under ``keys`` to a real cache at ``path``; return ``path``."""
    features = np.asarray(features, dtype=np.float32)
    block = block or max(1, len(features))
    fingerprints = np.zeros(len(keys), dtype=FINGERPRINT_DTYPE)
    fingerprints["size"] = np.arange(len(keys))
    write_cache(
        path,
        keys=list(keys),
        fingerprints=fingerprints,
        feature_blocks=(features[i : i + block] for i in range(0, len(features), block)),
        dim=features.shape[1],
        dtype="float32",
        failed=list(failed),
        attrs={
            **(provenance or PLAIN_PROVENANCE),
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
        },
    )
    return path


@pytest.fixture(scope="session")
def write_feature_cache():
    """``write_feature_cache(path, keys, features, provenance=, failed=, block=)``."""
    return _write_feature_cache
