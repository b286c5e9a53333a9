"""Is a model scored on triplets whose images it was fitted on? (private)

``TripletEncoder.fit(T)`` on triplets of keys or indices into a cache, shared features or an
array remembers the rows of its training images (8 bytes per image; kept in memory and in
pickles, not in ``.npz`` model files). ``score(T)`` then warns if a scored triplet holds one of
them: the score flatters the model. That is what plain ``cv=k`` does with triplets, whose
folds split triplets and so share images; leak-free splits (``TripletImageKFold``,
``TripletGroupKFold``, ``make-triplets --split``) never warn. A mapping or ``lookup`` source
has no row numbers to compare, and feature triplets carry no image identity: not checked.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping

import numpy as np

from tripletsk.cache.store import FeatureStore
from tripletsk.errors import SharedImagesWarning
from tripletsk.training import sources
from tripletsk.training.shared import SharedFeatures


def _rows_are_images(features) -> bool:
    """Whether a source's row numbers name images (a cache or an array), as in ``as_source``."""
    if features is None or isinstance(features, str | os.PathLike | FeatureStore | SharedFeatures):
        return True
    return not (isinstance(features, Mapping) or hasattr(features, "lookup"))


def fitted_images(features, T, items) -> tuple | None:
    """What a fit on triplets ``T`` (rows ``items``) remembers: ``(features, sorted rows)``."""
    if np.ndim(T) != 2 or not _rows_are_images(features):
        return None
    return features, np.unique(items.rows)


def warn_if_shared(estimator, T) -> None:
    """Warn if the triplets ``T`` hold an image that ``estimator`` was fitted on."""
    fitted = getattr(estimator, "_fitted_images", None)
    # Other features than at fit time: other row numbers, nothing to compare.
    if fitted is None or fitted[0] is not estimator.features or np.ndim(T) != 2:
        return
    rows, seen = sources.triplet_rows(estimator.features, T)[0].rows, fitted[1]
    at = np.minimum(np.searchsorted(seen, rows), len(seen) - 1)
    if np.any(seen[at] == rows):
        # One message (no counts), so a grid search shows it once, not once per fit.
        warnings.warn(
            "Scoring triplets that hold images this model was fitted on: the score flatters "
            "it. Plain cv=k splits the triplets, not the images, so its folds share images; "
            "use cv=tripletsk.evaluation.TripletImageKFold() (or TripletGroupKFold), or "
            "test triplets over held-out images (tripletsk make-triplets --split).",
            SharedImagesWarning,
            stacklevel=3,  # the caller of score
        )
