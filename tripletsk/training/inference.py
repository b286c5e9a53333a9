"""What a fitted ``TripletEncoder`` answers: embeddings, triplet decisions, scores (a mixin).

:class:`EmbeddingMixin` embeds rows of features, or indices and keys into the estimator's
``features``, a chunk at a time with the fitted head in NumPy (no TensorFlow), and scores
triplets or labels with those embeddings.
"""

from __future__ import annotations

import numpy as np
from sklearn.utils.validation import check_is_fitted, validate_data

from tripletsk.cache.provenance import ProvenanceCheck
from tripletsk.distances import sklearn_metric, triplet_distances
from tripletsk.errors import NonFiniteFeaturesError
from tripletsk.evaluation.metrics import label_triplet_accuracy
from tripletsk.training import sources
from tripletsk.training.rows import FeatureRows, embed
from tripletsk.training.shared_images import warn_if_shared


class EmbeddingMixin:
    """``transform``, ``decision_function``, ``predict_triplets`` and ``score`` of an estimator
    fitted with ``feature_mean_``, ``feature_scale_``, ``weights_``, ``n_features_in_`` and
    parameters ``features`` and ``distance`` (:class:`~tripletsk.TripletEncoder`)."""

    def _check_width(self, n_features: int) -> None:
        if n_features != self.n_features_in_:
            raise ValueError(
                f"X has {n_features} features, but TripletEncoder is expecting "
                f"{self.n_features_in_} features as input."
            )

    def _embed(self, items: FeatureRows) -> np.ndarray:
        """Embeddings of ``items``, standardised and embedded a chunk at a time."""
        return embed(items.standardized(self.feature_mean_, self.feature_scale_), self.weights_)

    def transform(self, X) -> np.ndarray:
        """Embed samples: rows of features, or indices / keys into ``features``.

        Parameters
        ----------
        X : array-like of shape (n, d), or (n,) indices or keys

        Returns
        -------
        embeddings : ndarray of shape (n, n_components)
            L2-normalised embeddings.
        """
        check_is_fitted(self)
        if self.features is not None and np.ndim(X) == 1:  # indices or keys into features
            ids = np.asarray(X)
            items, inverse = sources.feature_rows(self.features, ids, ProvenanceCheck.of(self))
            self._check_width(items.n_features)
            try:
                return self._embed(items)[inverse]
            except NonFiniteFeaturesError as exc:
                raise sources.non_finite_ids_error(exc, ids, inverse) from None
        X = validate_data(self, X, dtype=np.float32, reset=False)
        return self._embed(FeatureRows.from_array(X))

    def decision_function(self, T) -> np.ndarray:
        """``d(anchor, negative) - d(anchor, positive)`` for each triplet: positive when right.

        ``T``: (n, 3, d) feature triplets, or (n, 3) indices or keys into ``features``;
        returns a float array of shape (n,).
        """
        check_is_fitted(self)
        items, triplets = sources.triplet_rows(self.features, T, ProvenanceCheck.of(self))
        self._check_width(items.n_features)
        d_ap, d_an = triplet_distances(self._embed(items), triplets, self.distance)
        return d_an - d_ap

    def predict_triplets(self, T) -> np.ndarray:
        """1 where the anchor is closer to the positive than to the negative, else 0 (ties: 0).

        ``T`` as for :meth:`decision_function`; returns an int array of shape (n,).
        """
        return (self.decision_function(T) > 0).astype(int)

    def score(self, X, y=None) -> float:
        """Triplet accuracy (a float): ``score(T)`` on triplets, ``score(X, y)`` on labels.

        ``score(T)``: the mean of :meth:`predict_triplets`; warns (``SharedImagesWarning``) if
        ``T`` holds images the model was fitted on. ``score(X, y)``: exact, over every valid
        (anchor, positive, negative) triplet of the labels ``y``, by ranking distances.
        """
        if y is None:
            warn_if_shared(self, X)  # SharedImagesWarning: scored images were fitted on
            return float(np.mean(self.predict_triplets(X)))
        metric = sklearn_metric(self.distance)
        return label_triplet_accuracy(self.transform(X), np.asarray(y), metric)
