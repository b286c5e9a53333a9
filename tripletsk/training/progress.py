"""The progress of a fit (private): one tqdm bar on a terminal, per-epoch lines with verbose.

The bar (epochs; loss and training triplet accuracy in its postfix) goes to stderr and is
drawn only when stderr is a terminal (tqdm's ``disable=None``), so logs, pipes and test
output stay clean; it is removed when the fit ends. ``verbose >= 1`` adds one line per epoch
on stdout; ``verbose < 0`` shows nothing.
"""

from __future__ import annotations

import sys


class FitProgress:
    """Report each epoch of a fit of at most ``max_epochs`` epochs."""

    def __init__(self, max_epochs: int, verbose: int, hinge: bool):
        from tqdm import tqdm

        self.lines = verbose > 0
        self.hinge = hinge
        self.bar = tqdm(
            total=max_epochs,
            desc="fit",
            unit="epoch",
            file=sys.stderr,
            disable=True if verbose < 0 else None,  # None: only on a terminal
            leave=False,
            dynamic_ncols=True,
        )

    def epoch(self, n: int, loss: float, error: float, active: float, validation=None) -> None:
        """Epoch ``n`` (from 1) ended with this mean loss, share of wrongly ordered training
        triplets and of triplets with a positive hinge loss, and validation accuracy."""
        postfix = {"loss": f"{loss:.4f}", "triplet acc": f"{1.0 - error:.3f}"}
        line = f"epoch {n}: loss {loss:.4f}, wrongly ordered {error:.4f}"
        if self.hinge:  # the soft margin is never 0: "active" means something only here
            line += f", active {active:.3f}"
        if validation is not None:
            postfix["validation acc"] = f"{validation:.3f}"
            line += f", validation accuracy {validation:.4f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)
        if self.lines:
            self.bar.write(line, file=sys.stdout)
            sys.stdout.flush()

    def close(self) -> None:
        self.bar.close()
