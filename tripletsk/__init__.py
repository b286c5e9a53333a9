"""tripletsk: learn image similarity with triplet loss on cached CNN features.

Names are imported on first use, so ``import tripletsk`` and the command line start quickly
and never load TensorFlow until a model is fitted or features are extracted.
"""

from __future__ import annotations

from tripletsk._lazy import lazy_getattr

__version__ = "0.1.0"

_LAZY = {
    "TripletEncoder": "tripletsk.estimator",
    "FeatureStore": "tripletsk.cache.store",
    "SharedFeatures": "tripletsk.training.shared",
    "extract_features": "tripletsk.extraction",
    "ImageFeatures": "tripletsk.extraction.image_features",
    "export_model": "tripletsk.export",
    "EmbeddingIndex": "tripletsk.index.embedding_index",
    "read_triplets": "tripletsk.triplets.files",
    "write_triplets": "tripletsk.triplets.files",
}

__all__ = ["__version__", *_LAZY]

__getattr__ = lazy_getattr(__name__, _LAZY)
