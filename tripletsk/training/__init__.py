"""Training the dense head on cached features (TensorFlow only inside a fit).

``config`` (the frozen :class:`TrainingConfig` of one fit), ``strategies`` (the mining words in
one table), ``fitting`` (the steps of a fit around the loop), ``plan`` (the batches of each
epoch), ``loop`` (the training loop), ``epochs`` (an epoch's batches through the compiled
``steps``, fed from ``windows`` of rows; ``compiled`` keeps the traced steps between fits),
``optimizer`` (fused Adam, the learning rate schedule), ``averaging`` (weight averaging),
``stopping`` (when a fit stops), ``progress`` (the bar and per-epoch lines), ``head`` (the
head's weights, its Keras model and its NumPy forward pass), ``losses`` (triplet losses in
TensorFlow), ``inference`` (what a fitted encoder answers), ``sources`` (where ids get their
features), ``rows`` (feature rows read a chunk at a time), ``shared``
(:class:`SharedFeatures`), ``shared_images`` (is a model scored on images it was fitted on?).
"""

from tripletsk._lazy import lazy_getattr, public_names

_LAZY = public_names(
    {
        "tripletsk.training.config": ["TrainingConfig"],
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
