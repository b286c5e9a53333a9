"""Exceptions shared by the library and the command line.

Every error caused by the user's input (a missing folder, a cache made with other settings, an
unknown image name) derives from :class:`UserError`; the command line prints such errors as one line
on stderr and exits with status 1, without a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; its message says how."""


class CacheNotFoundError(UserError, FileNotFoundError):
    """The feature cache file does not exist."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CacheFormatError(UserError, ValueError):
    """The file is not a readable tripletsk feature cache."""


class CacheMismatchError(UserError, ValueError):
    """The cache was made with another backbone, weights, image size or preprocessing."""


class CacheLockedError(UserError, RuntimeError):
    """Another extraction is writing the same cache."""


class CacheChangedError(UserError, RuntimeError):
    """The cache was rewritten since it was opened: its rows now belong to another version."""


class ShardError(UserError, ValueError):
    """Shard caches that do not fit together: missing, overlapping, or from other listings."""


class UnknownKeyError(UserError, KeyError, ValueError):
    """Some requested image keys are not in the cache."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class WeightsUnavailableError(UserError, RuntimeError):
    """The backbone weights cannot be obtained (e.g. ImageNet weights offline)."""


class TripletDataError(UserError, ValueError):
    """Unusable triplet data, such as image keys that carry no class folder."""


class TripletFileError(TripletDataError):
    """A triplet file that cannot be used; the message names the file and, if any, the line."""


class UsageError(UserError):
    """A bad command-line option value found after parsing; reported like argparse's errors."""


class ModelFileError(UserError, ValueError):
    """A model file that is damaged, hostile or not a tripletsk model."""


class NonFiniteFeaturesError(UserError, ValueError):
    """Feature rows hold NaN or infinite values; ``items`` are their positions in the request."""

    def __init__(self, message: str, items=()):
        super().__init__(message)
        self.items = items


class IndexFormatError(UserError, ValueError):
    """An embedding index that is damaged, truncated, hostile or not an index at all."""


class StaleIndexError(UserError, ValueError):
    """An embedding index that no longer matches its model or its feature cache."""


class ImageDecodeError(ValueError):
    """A file could not be read as an image; the message is the reason stored in the cache."""


# Warnings


class EmbeddingCollapseWarning(UserWarning):
    """The learned embedding maps (nearly) every input to the same point."""


class SharedImagesWarning(UserWarning):
    """Triplets were scored over images the model was fitted on (e.g. plain ``cv=k``)."""


def __getattr__(name: str):
    # TrainingDivergedWarning is a scikit-learn ConvergenceWarning (re-exported here too), and
    # importing scikit-learn costs ~2 s of CPU: both are made on first use, so that commands
    # that need no scikit-learn start without it.
    if name not in ("ConvergenceWarning", "TrainingDivergedWarning"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from sklearn.exceptions import ConvergenceWarning

    if name == "ConvergenceWarning":
        return ConvergenceWarning

    class TrainingDivergedWarning(ConvergenceWarning, RuntimeWarning):
        """Training stopped on a non-finite loss or weight; the last finite weights were kept."""

    TrainingDivergedWarning.__module__ = __name__
    TrainingDivergedWarning.__qualname__ = name  # pickles and prints as if defined above
    globals()[name] = TrainingDivergedWarning
    return TrainingDivergedWarning
