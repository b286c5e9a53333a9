"""The mining words of ``TripletEncoder(mining=...)`` in one table: what each one makes a fit do.

Each word says which fit takes it (``fit(T)`` on triplets or ``fit(X, y)`` on labels), what the
epoch plan (:mod:`tripletsk.training.plan`) yields, which hard examples it adds, and which
loss trains on the batches (:mod:`tripletsk.training.losses`). ``"auto"`` stands for
``"given"`` with triplets and ``"semi_hard"`` with labels (docs/decisions.md says why);
``"given"`` is what ``"auto"`` means for triplets, not a word of the parameter. The
``hard_examples``, ``hardest_known`` and P x K batches named here are those of
:mod:`tripletsk.triplets.mining`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Strategy:
    """What one mining word does.

    ``takes``: ``"triplets"`` (``fit(T)``) or ``"labels"`` (``fit(X, y)``). ``batches``:
    ``"triplets"`` (the given triplets, shuffled), ``"random"`` (one random label triplet per
    anchor) or ``"pk"`` (P x K batches of samples, triplets mined online). ``extra``: hard
    examples added each epoch: ``"known"`` (each anchor's hardest known triplet),
    ``"offline"`` (each batch anchor's hard positives and negatives among all samples) or
    ``None``. ``loss``: the online loss of ``"pk"`` batches (a key of ``BATCH_LOSSES``), or
    ``None`` for the triplet loss of (b, 3) batches.
    """

    takes: str
    batches: str
    extra: str | None = None
    loss: str | None = None


STRATEGIES = {
    "given": Strategy("triplets", "triplets"),
    "hard": Strategy("triplets", "triplets", extra="known"),
    "random": Strategy("labels", "random"),
    "batch_all": Strategy("labels", "pk", loss="batch_all"),
    "batch_hard": Strategy("labels", "pk", loss="batch_hard"),
    "semi_hard": Strategy("labels", "pk", loss="semi_hard"),
    # Offline hard examples added to each batch, then batch-hard mining online.
    "hybrid": Strategy("labels", "pk", extra="offline", loss="batch_hard"),
}

#: What ``"auto"`` means, by what the fit takes.
AUTO = {"triplets": "given", "labels": "semi_hard"}

#: The words ``TripletEncoder(mining=...)`` accepts.
MINING_WORDS = frozenset({"auto", *STRATEGIES} - {"given"})


def resolve_mining(word: str, labelled: bool) -> str:
    """The table's word for ``mining=word`` in a fit on labels (``labelled``) or triplets.

    Raises ``ValueError`` when the word belongs to the other kind of fit.

    Examples
    --------
    >>> from tripletsk.training.strategies import resolve_mining
    >>> resolve_mining("auto", labelled=False), resolve_mining("auto", labelled=True)
    ('given', 'semi_hard')
    """
    takes = "labels" if labelled else "triplets"
    word = AUTO[takes] if word == "auto" else word
    if STRATEGIES[word].takes == takes:
        return word
    if labelled:
        raise ValueError(
            f"mining={word!r} mines within given triplets, for fit(T); with labels use "
            "'batch_hard' or 'hybrid'."
        )
    for_triplets = [w for w in STRATEGIES if w in MINING_WORDS and STRATEGIES[w].takes == takes]
    on_triplets = " or ".join(repr(w) for w in for_triplets)
    raise ValueError(
        f"mining={word!r} mines triplets from labels: call fit(X, y). "
        f"fit(T) with triplets takes mining='auto' (as given) or {on_triplets}."
    )
