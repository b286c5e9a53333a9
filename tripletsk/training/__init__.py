"""Training the dense head on cached features (TensorFlow only inside a fit).

``head`` (the head's weights, its Keras model and its NumPy forward pass), ``losses`` (triplet
losses in TensorFlow), ``loop`` (the training loop), ``stopping`` (when a fit stops, the
learning rate of each epoch), ``fitting`` (the steps of a fit around the loop), ``progress``
(the bar and per-epoch lines), ``sources`` (where ids get their features), ``rows`` (feature
rows read a chunk at a time), ``shared`` (:class:`SharedFeatures`), ``shared_images`` (is a
model scored on images it was fitted on?).
"""

from tripletsk._lazy import lazy_getattr, public_names

_LAZY = public_names(
    {
        "tripletsk.training.shared": ["SharedFeatures"],
        "tripletsk.training.sources": ["FeatureSource", "as_source"],
        "tripletsk.training.losses": [
            "triplet_loss",
            "batch_all_triplet_loss",
            "batch_hard_triplet_loss",
        ],
    }
)

__all__ = [*_LAZY]
__getattr__ = lazy_getattr(__name__, _LAZY)
