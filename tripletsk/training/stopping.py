"""When a fit stops (private: used by the training loop).

A fit watches one figure per epoch: with early stopping the held-out triplet accuracy (higher
is better); otherwise, by ``stopping``, the share of wrongly ordered triplets in the epoch's
training batches (``"error"``) or the mean training loss (``"loss"``), lower is better. An
epoch improves when the figure beats the best so far by more than ``tol``; after
``n_iter_no_change`` epochs without an improvement the figure has reached a plateau and the
fit stops (the ``"cosine"`` schedule lowers the rate to 0 at ``max_epochs`` instead).

``"auto"`` watches the error when mining from labels and the loss on given triplets: labels
give each epoch new triplets, so their error keeps measuring what the head gets wrong, while
a fixed set of triplets is soon ordered right by memorising it (error 0) and the head goes
on improving on unseen triplets as its loss falls (validation on digits and on small triplet
sets, docs/findings/defaults_study.md). ``tol="auto"`` is 2e-3 for the error and 5e-3 for
the loss, divided by the soft margin's scale s (its loss is about s times smaller).
"""

from __future__ import annotations

import math

CRITERIA = ("error", "loss")


# tol="auto": the error's step was chosen on Fashion validation (issue 21), the loss's on
# digits validation and small triplet sets (docs/findings/defaults_study.md, 2026-12-06).
AUTO_TOL = {"error": 2e-3, "loss": 5e-3, "validation": 2e-3}


def resolve_tol(tol: float | str, criterion: str, loss_scale: float = 1.0) -> float:
    """``tol``, with ``"auto"`` replaced by the step of the watched figure (``AUTO_TOL``; for
    the loss, divided by ``loss_scale``, the soft margin's scale).

    >>> resolve_tol("auto", "loss"), resolve_tol("auto", "loss", 4.0), resolve_tol(1e-4, "loss")
    (0.005, 0.00125, 0.0001)
    """
    if tol != "auto":
        return tol
    return AUTO_TOL[criterion] / (loss_scale if criterion == "loss" else 1.0)


def resolve_stopping(stopping: str, labelled: bool) -> str:
    """The figure a fit watches: ``stopping``, with ``"auto"`` replaced by ``"error"`` for a
    fit from labels and ``"loss"`` for a fit on given triplets.

    >>> resolve_stopping("auto", labelled=True), resolve_stopping("auto", labelled=False)
    ('error', 'loss')
    """
    if stopping == "auto":
        return "error" if labelled else "loss"
    return stopping


class Stopping:
    """The stopping rule of one fit; :meth:`update` after each epoch says whether to stop."""

    def __init__(
        self, criterion: str, tol: float | str, n_iter_no_change: int, loss_scale: float = 1.0
    ):
        if criterion not in (*CRITERIA, "validation"):
            raise ValueError(f"stopping must be one of {CRITERIA}; got {criterion!r}.")
        self.criterion = criterion
        self.tol = resolve_tol(tol, criterion, loss_scale)
        self.n_iter_no_change = n_iter_no_change
        self.best = math.inf  # of the figure made "lower is better"
        self.no_change = 0

    def update(self, loss: float, error: float, score: float | None) -> tuple[bool, bool]:
        """``(improved, stop)`` after an epoch with this loss, error and validation score."""
        value = {"validation": -(score or 0.0), "error": error, "loss": loss}[self.criterion]
        if value < self.best - self.tol:
            self.best, self.no_change = value, 0
            return True, False
        self.no_change += 1
        return False, self.no_change >= self.n_iter_no_change

    @property
    def best_score(self) -> float:
        """The best validation score (with early stopping)."""
        return -self.best

    def not_converged(self, max_epochs: int) -> str:
        """The ConvergenceWarning's message when ``max_epochs`` came first."""
        what = {
            "validation": "validation score",
            "error": "share of wrongly ordered training triplets",
            "loss": "training loss",
        }[self.criterion]
        return (
            f"Training reached max_epochs={max_epochs} before the {what} stopped improving "
            f"(by more than tol={self.tol} within n_iter_no_change={self.n_iter_no_change} "
            "epochs); increase max_epochs."
        )
