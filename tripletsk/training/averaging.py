"""Weight averaging: the bias-corrected moving average of the head's weights over epochs.

With decay d > 0, after epoch t the weights of epoch i count ``(1 - d) * d**(t - i) / (1 - d**t)``
(bias-corrected as Adam's moments are), so a short fit is an average of its own recent epochs,
not mostly of its first. The average is what a fit scores, keeps and returns, while training
(and mining) go on with the raw weights.
"""

from __future__ import annotations

from tripletsk.training.head import HeadWeights


class WeightAverage:
    """The running average of one fit's weights, :meth:`update` after each epoch."""

    def __init__(self, decay: float, initial: HeadWeights):
        self.decay = decay
        self.weights = initial

    def update(self, weights: HeadWeights, epoch: int) -> HeadWeights:
        """The average after ``epoch`` (from 0) trained ``weights``; ``weights`` if decay is 0."""
        if self.decay:  # the bias-corrected average as a running update
            step = (1.0 - self.decay) / (1.0 - self.decay ** (epoch + 1))
            self.weights = average_weights(self.weights, weights, 1.0 - step)
        else:
            self.weights = weights
        return self.weights


def average_weights(average: HeadWeights, weights: HeadWeights, decay: float) -> HeadWeights:
    """One step of an exponential moving average of head weights: ``decay`` of ``average``
    plus ``1 - decay`` of ``weights``, layer by layer."""
    return [
        (decay * ka + (1.0 - decay) * kw, decay * ba + (1.0 - decay) * bw)
        for (ka, ba), (kw, bw) in zip(average, weights, strict=True)
    ]
