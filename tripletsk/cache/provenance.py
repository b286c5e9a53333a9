"""The origin of the features a model was fitted on: recorded when it fits, checked at every read.

A fitted :class:`~tripletsk.estimator.TripletEncoder` whose features came from a cache keeps
that cache's provenance (backbone, layer, weights with their digest or seed, image size,
preprocessing, precision, int8 calibration and model; see
:data:`tripletsk.cache.format.PROVENANCE_KEYS`) as its fitted attribute ``feature_provenance_``.
It travels with the model whichever way it is saved: :meth:`TripletEncoder.save` writes it
to the ``.npz``, joblib and pickle keep it as any attribute, and ``tripletsk fit`` writes the
same ``.npz``. Whenever the model later reads rows from a cache (``transform``, ``score``,
``predict_triplets``, the command line, ``export``) the cache's provenance is compared with
it, here, in one function (:func:`check_features_provenance`): a cache re-extracted with
other settings at the same path is an error naming the fields that differ, never features
from another model read silently.

The comparison is the one caches use between themselves (two caches are compatible when their
``PROVENANCE_KEYS`` agree); descriptive entries (the backend that ran the backbone, where the
weights file was) are recorded but not compared, since a cache itself accepts float32
features of either backend.
"""

from __future__ import annotations

import os

from tripletsk.cache.format import provenance_differences
from tripletsk.errors import CacheMismatchError

__all__ = ["ProvenanceCheck", "check_features_provenance", "validate_recorded_provenance"]


def check_features_provenance(
    recorded: dict | None, store, model: str = "this TripletEncoder", fitted_on: str | None = None
) -> None:
    """Raise :class:`CacheMismatchError` when ``store`` holds features unlike ``recorded``.

    Parameters
    ----------
    recorded : dict or None
        The provenance the model was fitted on (``feature_provenance_``); None (fitted on an
        array or a mapping, or saved before provenance was recorded) checks nothing.
    store : FeatureStore
        The cache about to be read (anything with ``path`` and ``provenance``).
    model : str
        How to name the model in the message (its file, on the command line).
    fitted_on : str, optional
        The path of the cache it was fitted on, to name in the message.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> cache = SimpleNamespace(path="c.h5", provenance={"backbone": "resnet50",
    ...                                                  "image_size": 64})
    >>> check_features_provenance({"backbone": "resnet50", "image_size": 64}, cache)
    >>> check_features_provenance({"backbone": "resnet50", "image_size": 32}, cache)
    Traceback (most recent call last):
    ...
    tripletsk.errors.CacheMismatchError: this TripletEncoder was fitted on features made with \
other settings than c.h5 (image_size 32 vs 64: the model's vs the cache's): ...
    """
    if not recorded:
        return
    diffs = provenance_differences(recorded, getattr(store, "provenance", None) or {})
    if not diffs:
        return
    what = "; ".join(f"{key} {ours!r} vs {theirs!r}" for key, ours, theirs in diffs)
    where = f" ({fitted_on})" if fitted_on else ""
    raise CacheMismatchError(
        f"{model} was fitted on features made with other settings than {store.path} "
        f"({what}: the model's vs the cache's): the features are not comparable. Use the "
        f"cache it was fitted on{where} or one extracted with the same settings (--features "
        "CACHE, or features= in Python), or fit a new model on this cache"
    )


class ProvenanceCheck:
    """What reading rows from a cache does with its provenance: compare and remember it.

    ``expected`` is the provenance the rows must have (None: anything, as in ``fit``);
    ``found`` is set to the provenance of the cache read (None when no cache was read).
    """

    def __init__(self, expected: dict | None = None, fitted_on=None):
        self.expected = expected
        self.fitted_on = fitted_on if isinstance(fitted_on, str | os.PathLike) else None
        self.found: dict | None = None

    @classmethod
    def of(cls, encoder) -> ProvenanceCheck:
        """The check of a fitted encoder's later reads: they must match what it was fitted on."""
        return cls(getattr(encoder, "feature_provenance_", None), encoder.features)

    def read_from(self, store) -> None:
        """Check ``store`` against ``expected`` (raises on a mismatch) and remember it.

        A store without provenance (:class:`~tripletsk.training.shared.SharedFeatures`: an array the
        user vouches for, like an array given as ``features``) is neither checked nor
        recorded."""
        provenance = getattr(store, "provenance", None)
        if provenance is None:
            self.found = None
            return
        fitted_on = None if self.fitted_on is None else os.fspath(self.fitted_on)
        check_features_provenance(self.expected, store, fitted_on=fitted_on)
        self.found = dict(provenance)


def validate_recorded_provenance(value, where: str) -> dict | None:
    """``value`` if it can be a recorded provenance (None, or a dict of JSON scalars), else a
    ``ValueError`` naming ``where``. Used when a model file is read."""
    if value is None:
        return None
    scalars = (str, int, float, bool, type(None))
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, scalars) for k, v in value.items()
    ):
        raise ValueError(f"{where}: feature_provenance_ must be a mapping of names to values")
    return value
