"""The training config: the estimator's hyperparameters of one fit, frozen, read below ``fit``.

``TripletEncoder.fit`` builds one :class:`TrainingConfig` from its parameters and what it
learned of the data (the width of the features, labels or triplets); the steps of the fit
(:mod:`tripletsk.training.fitting`), the epoch plan (:mod:`tripletsk.training.plan`) and the
training loop (:mod:`tripletsk.training.loop`) read every hyperparameter from it. The meaning
of each field is documented once, on :class:`~tripletsk.TripletEncoder`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from tripletsk.training.head import normalize_hidden_units
from tripletsk.training.stopping import resolve_stopping
from tripletsk.training.strategies import STRATEGIES, Strategy, resolve_mining


@dataclass(frozen=True)
class TrainingConfig:
    """The hyperparameters of one fit (as ``TripletEncoder``'s parameters) and its data facts.

    ``n_features`` is the width of the feature rows; ``labelled`` whether the fit learns from
    labels (``fit(X, y)``) rather than triplets. ``hidden_units`` is resolved to a tuple of
    widths, ``mining`` to a word of :data:`~tripletsk.training.strategies.STRATEGIES`,
    and ``stopping`` to ``"error"`` or ``"loss"`` (``"auto"`` replaced; ``tol="auto"`` is
    resolved by :class:`~tripletsk.training.stopping.Stopping`, which knows the watched figure).
    ``features`` and ``random_state`` are not here: the fit passes rows and a random generator.

    Examples
    --------
    >>> from tripletsk import TripletEncoder
    >>> from tripletsk.training.config import TrainingConfig
    >>> params = TripletEncoder(hidden_units="auto").get_params()
    >>> config = TrainingConfig.from_params(params, n_features=2048, labelled=True)
    >>> config.hidden_units, config.mining, config.strategy.loss, config.stopping
    ((512,), 'semi_hard', 'semi_hard', 'error')
    """

    n_features: int
    labelled: bool
    hidden_units: tuple[int, ...]
    n_components: int
    dropout: float
    input_dropout: float
    distance: str
    margin: float | None
    soft_margin_scale: float
    mining: str
    samples_per_class: int | str
    hard_per_anchor: int
    refresh_every: int
    learning_rate: float
    learning_rate_schedule: str
    weight_decay: float
    weight_averaging: float
    batch_size: int
    max_epochs: int
    tol: float | str
    stopping: str
    early_stopping: bool
    validation_fraction: float
    n_iter_no_change: int
    standardize: bool
    verbose: int
    precision: str
    stream: bool

    @classmethod
    def from_params(cls, params: Mapping, *, n_features: int, labelled: bool) -> TrainingConfig:
        """The config of a fit with the estimator's ``params`` (``get_params()``) on rows of
        ``n_features``, from labels or triplets (``labelled``)."""
        check_params(params, labelled)
        facts = {"n_features": n_features, "labelled": labelled}
        values = {f.name: params[f.name] for f in fields(cls) if f.name not in facts}
        values["hidden_units"] = normalize_hidden_units(params["hidden_units"], n_features)
        values["mining"] = resolve_mining(params["mining"], labelled)
        values["stopping"] = resolve_stopping(params["stopping"], labelled)
        return cls(**facts, **values)

    @property
    def strategy(self) -> Strategy:
        """What ``mining`` makes the epoch plan and the loss do."""
        return STRATEGIES[self.mining]

    @property
    def loss_scale(self) -> float:
        """The soft margin's scale s (its loss is about s times smaller), or 1 with a hinge
        margin, which has none: what the loss, the stopping step and the stuck check use."""
        return self.soft_margin_scale if self.margin is None else 1.0

    @property
    def holdout_fraction(self) -> float | None:
        """The share of the training data held out for early stopping, or ``None``."""
        return self.validation_fraction if self.early_stopping else None


def check_params(params: Mapping, labelled: bool) -> None:
    """The checks of the parameters that need no data, done before any row is read: positive
    hidden widths, a mining word for this kind of fit."""
    if any(h < 1 for h in normalize_hidden_units(params["hidden_units"], n_features=1)):
        raise ValueError(f"hidden_units must be positive integers; got {params['hidden_units']}.")
    resolve_mining(params["mining"], labelled)
