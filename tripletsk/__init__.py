"""tripletsk: learn image similarity with triplet loss on cached CNN features.

Names are imported on first use, so ``import tripletsk`` and the command line start quickly
and never load TensorFlow until a model is fitted or features are extracted.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "TripletEncoder": "tripletsk.estimator",
    "FeatureStore": "tripletsk.store",
    "SharedFeatures": "tripletsk.shared",
    "extract_features": "tripletsk.extraction",
    "ImageFeatures": "tripletsk.image_features",
    "export_model": "tripletsk.export",
    "EmbeddingIndex": "tripletsk.embedding_index",
    "read_triplets": "tripletsk.triplets",
    "write_triplets": "tripletsk.triplets",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tripletsk' has no attribute {name!r}")
