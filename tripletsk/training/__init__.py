"""Training the dense head on cached features (TensorFlow only inside a fit).

``head`` (the head's weights, its Keras model and its NumPy forward pass), ``losses`` (triplet
losses in TensorFlow), ``loop`` (the training loop), ``stopping`` (when a fit stops, the
learning rate of each epoch), ``fitting`` (the steps of a fit around the loop), ``progress``
(the bar and per-epoch lines), ``sources`` (where ids get their features), ``rows`` (feature
rows read a chunk at a time), ``shared`` (:class:`SharedFeatures`), ``shared_images`` (is a
model scored on images it was fitted on?).
"""

from tripletsk._lazy import lazy_getattr

_LAZY = {
    "SharedFeatures": "tripletsk.training.shared",
    "FeatureSource": "tripletsk.training.sources",
    "as_source": "tripletsk.training.sources",
    "triplet_loss": "tripletsk.training.losses",
    "batch_all_triplet_loss": "tripletsk.training.losses",
    "batch_hard_triplet_loss": "tripletsk.training.losses",
}

__all__ = [*_LAZY]
__getattr__ = lazy_getattr(__name__, _LAZY)
