"""The training loop of the head (private: used by ``TripletEncoder.fit``).

Epoch after epoch: the learning rate of the epoch (:mod:`tripletsk.training.optimizer`), its
batches through the compiled steps (:mod:`tripletsk.training.epochs`), the check that training
has not diverged, the weight average (:mod:`tripletsk.training.averaging`), the figures of the
epoch (history, progress bar), and the stopping rule (:mod:`tripletsk.training.stopping`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from tripletsk.errors import TrainingDivergedWarning
from tripletsk.training.averaging import WeightAverage
from tripletsk.training.compiled import compiled_head
from tripletsk.training.config import TrainingConfig
from tripletsk.training.epochs import EpochFigures, EpochRunner
from tripletsk.training.head import HeadWeights, get_head_weights
from tripletsk.training.optimizer import epoch_learning_rate
from tripletsk.training.progress import FitProgress
from tripletsk.training.rows import FeatureRows
from tripletsk.training.stopping import Stopping


@dataclass
class TrainingResult:
    weights: HeadWeights
    loss_curve: list[float] = field(default_factory=list)
    active_fraction: list[float] = field(default_factory=list)
    error_curve: list[float] = field(default_factory=list)
    validation_scores: list[float] = field(default_factory=list)
    best_validation_score: float | None = None
    n_iter: int = 0
    stopped_on_nan: bool = False

    def record(self, figures: EpochFigures, score: float | None) -> None:
        """Add the figures (and validation score) of one more epoch."""
        self.n_iter += 1
        self.loss_curve.append(figures.loss)
        self.active_fraction.append(figures.active)
        self.error_curve.append(figures.error)
        if score is not None:
            self.validation_scores.append(score)


def train_head(
    items: FeatureRows,
    initial_weights: HeadWeights,
    epoch_batches: Callable[[int, HeadWeights], Iterable[np.ndarray]],
    config: TrainingConfig,
    *,
    labels: np.ndarray | None,
    validation_score: Callable[[HeadWeights], float] | None,
    seed: int,
    on_epoch: Callable[[TrainingResult, HeadWeights, HeadWeights], None] | None = None,
) -> TrainingResult:
    """Train the head and return its best weights with the training history.

    ``items`` are the (standardised) feature rows, ``labels`` their class codes (for labelled
    batches). ``epoch_batches(epoch, current_weights)`` yields the epoch's batches: arrays of
    shape (b, 3) of item indices (triplets) or of shape (b,) (labelled batches mined online
    with ``config.strategy.loss``). With ``validation_score``, training stops once the score
    has not improved by ``tol`` for ``n_iter_no_change`` epochs and the best weights are
    returned; without it, the same rule applies to ``config.stopping`` and the last (averaged)
    weights are returned. A non-finite loss or weight stops training with a
    :class:`~tripletsk.errors.TrainingDivergedWarning` and returns the last finite weights;
    reaching ``max_epochs`` first warns with scikit-learn's ``ConvergenceWarning`` (not with
    the ``"cosine"`` schedule, whose rate then reaches 0). ``on_epoch(result, averaged, raw)``
    is called after each epoch.

    ``precision="bfloat16"`` runs the head's layers under Keras' ``mixed_bfloat16`` policy
    (float32 weights and optimizer state, bfloat16 matrix products); distances and the loss stay
    in float32.
    """
    criterion = "validation" if validation_score is not None else config.stopping
    stopping = Stopping(criterion, config.tol, config.n_iter_no_change, config.loss_scale)
    progress = FitProgress(config.max_epochs, config.verbose, hinge=config.margin is not None)
    average = WeightAverage(config.weight_averaging, initial_weights)
    result = TrainingResult(weights=initial_weights)
    best_weights = last_finite = initial_weights
    warning = None
    # The bar closes before the warning is issued, and before the head goes back to the pool.
    with compiled_head(initial_weights, config, seed) as head, closing(progress):
        runner, optimizer = EpochRunner(items, labels, head, config), head.optimizer
        for epoch in range(config.max_epochs):
            schedule, rate = config.learning_rate_schedule, config.learning_rate
            optimizer.set_learning_rate(
                epoch_learning_rate(schedule, rate, epoch, config.max_epochs)
            )
            figures = runner.run(epoch_batches(epoch, last_finite))
            if not (math.isfinite(figures.loss) and figures.weights_finite):
                warning, result.stopped_on_nan = _diverged(epoch, figures), True
                break
            last_finite = get_head_weights(head.model)
            averaged = average.update(last_finite, epoch)
            score = None if validation_score is None else validation_score(averaged)
            result.record(figures, score)
            progress.epoch(epoch + 1, figures.loss, figures.error, figures.active, score)
            if on_epoch is not None:
                on_epoch(result, averaged, last_finite)
            improved, stop = stopping.update(figures.loss, figures.error, score)
            if improved:
                best_weights = averaged
            if stop:
                break
        else:  # every epoch ran and the figure still improved within n_iter_no_change
            if config.learning_rate_schedule != "cosine":  # cosine: the rate reached 0, complete
                warning = ConvergenceWarning(stopping.not_converged(config.max_epochs))
    if warning is not None:
        # train_head <- fitting.train <- fitting.fit_head <- fit <- sklearn's wrapper <- caller
        warnings.warn(warning, stacklevel=6)
    if validation_score is not None and result.validation_scores:
        result.weights, result.best_validation_score = best_weights, stopping.best_score
    else:
        result.weights = average.weights
    return result


def _diverged(epoch: int, figures: EpochFigures) -> TrainingDivergedWarning:
    what = f"loss {figures.loss}" + ("" if figures.weights_finite else ", non-finite weights")
    return TrainingDivergedWarning(
        f"Training diverged at epoch {epoch + 1} ({what}); training stopped and "
        "the last finite weights were kept. Lower learning_rate."
    )
