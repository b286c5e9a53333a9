"""Calibrated matching: "is the nearest indexed image a match?" answered at a chosen precision.

A query is matched to its nearest indexed image when their distance is at most a threshold.
On labelled validation queries (each query's nearest image is *correct* when it has the
query's label), lowering the threshold trades matches for precision. :func:`calibrate` picks
the largest threshold whose precision on the validation queries reaches the target, with the
precision / recall curve and bootstrap confidence intervals; the result is stored with the model
(``encoder.calibration_``: the ``.npz`` file, ``tripletsk export`` outputs) and used by
:meth:`tripletsk.evaluation.search.EmbeddingIndex.match` and ``tripletsk match``.

*Precision* at a threshold is the share of correct matches among the queries matched;
*recall* the share of all queries matched correctly; the *match rate* the share matched.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.utils import check_random_state, column_or_1d

from tripletsk.errors import ModelFileError, UserError

__all__ = [
    "Calibration",
    "calibrate",
    "calibrate_index",
    "check_calibration",
    "precision_recall_curve",
]

_CURVE_POINTS = 201


def precision_recall_curve(distances, correct):
    """Precision, recall and match rate of matching at each distinct distance.

    Parameters
    ----------
    distances : array-like of shape (n_queries,)
        Each query's distance to its nearest indexed image.
    correct : array-like of bool, shape (n_queries,)
        Whether that image is a right answer (e.g. has the query's label).

    Returns
    -------
    thresholds, precision, recall, match_rate : ndarrays
        Matching the queries at distance ``<= thresholds[i]`` gives ``precision[i]`` etc.

    Examples
    --------
    >>> t, p, r, m = precision_recall_curve([0.1, 0.2, 0.3, 0.4], [1, 1, 0, 1])
    >>> t.tolist(), p.round(2).tolist(), r.tolist()
    ([0.1, 0.2, 0.3, 0.4], [1.0, 1.0, 0.67, 0.75], [0.25, 0.5, 0.5, 0.75])
    """
    d = column_or_1d(distances).astype(np.float64)
    c = column_or_1d(correct).astype(bool)
    if len(d) != len(c) or not len(d):
        raise ValueError("need one correctness flag per distance, and at least one query")
    if not np.isfinite(d).all():
        raise ValueError("distances hold NaN or infinite values")
    values, inverse = np.unique(d, return_inverse=True)
    accepted = np.cumsum(np.bincount(inverse, minlength=len(values)))
    right = np.cumsum(np.bincount(inverse, weights=c, minlength=len(values)))
    return values, right / accepted, right / len(d), accepted / len(d)


def _threshold_for(distances, correct, target: float) -> float | None:
    """The largest distance whose precision reaches ``target``, or None."""
    t, p, _, _ = precision_recall_curve(distances, correct)
    ok = np.flatnonzero(p >= target)
    return float(t[ok[-1]]) if len(ok) else None


@dataclass(frozen=True)
class Calibration:
    """A matching threshold chosen for a target precision, with its evidence.

    Attributes
    ----------
    threshold : float
        Match a query when its nearest image is at distance ``<= threshold``.
    target_precision : float
    precision, recall, match_rate : float
        On the calibration queries at ``threshold``.
    n_queries : int
    distance : str
        The distance the threshold is measured in.
    interval : dict
        ``confidence`` and ``[low, high]`` bootstrap intervals of the ``threshold`` chosen on
        resampled queries and of the ``precision`` and ``recall`` at ``threshold``.
    curve : dict
        ``threshold``, ``precision``, ``recall``: up to 201 points of the curve.
    """

    threshold: float
    target_precision: float
    precision: float
    recall: float
    match_rate: float
    n_queries: int
    distance: str = "l2"
    interval: dict = field(default_factory=dict)
    curve: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready dict (what model files and exports store)."""
        return asdict(self)


def calibrate(
    distances,
    correct,
    target_precision: float,
    *,
    distance: str = "l2",
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    random_state=0,
) -> Calibration:
    """Choose the matching threshold that reaches ``target_precision`` on validation queries.

    The threshold is the largest distance at which the precision of the matched validation
    queries is at least the target (so as many queries as possible are matched). Use queries
    kept apart from those you report on: the precision on other queries scatters around the
    target by the bootstrap interval.

    Raises
    ------
    UserError
        If no threshold reaches the target (the best precision is named).

    Examples
    --------
    Right matches at distances uniform on [0, 1], wrong ones on [0.5, 1.5]: precision
    ``t / (2t - 0.5)`` reaches 0.9 up to t = 0.5625.

    >>> rng = np.random.RandomState(0)
    >>> d = np.concatenate([rng.uniform(0, 1, 500), rng.uniform(0.5, 1.5, 500)])
    >>> right = np.arange(1000) < 500
    >>> c = calibrate(d, right, 0.9, n_bootstrap=200)
    >>> round(c.threshold, 2), c.precision >= 0.9
    (0.57, True)
    """
    if not 0 < target_precision <= 1:
        raise ValueError(f"target_precision must be in (0, 1]; got {target_precision!r}")
    d = column_or_1d(distances).astype(np.float64)
    c = column_or_1d(correct).astype(bool)
    t, p, r, m = precision_recall_curve(d, c)
    chosen = _threshold_for(d, c, target_precision)
    if chosen is None:
        raise UserError(
            f"no threshold reaches precision {target_precision} on these {len(d)} queries (the "
            f"best is {p.max():.3f}, at distance {t[int(np.argmax(p))]:.4g}); lower the target"
        )
    i = int(np.searchsorted(t, chosen))
    interval = _bootstrap(d, c, target_precision, chosen, n_bootstrap, confidence, random_state)
    pick = np.unique(np.linspace(0, len(t) - 1, min(len(t), _CURVE_POINTS)).astype(int))
    return Calibration(
        threshold=chosen,
        target_precision=float(target_precision),
        precision=float(p[i]),
        recall=float(r[i]),
        match_rate=float(m[i]),
        n_queries=len(d),
        distance=distance,
        interval=interval,
        curve={
            "threshold": t[pick].tolist(),
            "precision": p[pick].tolist(),
            "recall": r[pick].tolist(),
        },
    )


def _bootstrap(d, c, target, chosen, n_bootstrap, confidence, random_state) -> dict:
    """Percentile intervals over queries resampled with replacement."""
    rng = check_random_state(random_state)
    thresholds, precisions, recalls = [], [], []
    for _ in range(int(n_bootstrap)):
        s = rng.randint(0, len(d), len(d))
        ds, cs = d[s], c[s]
        t = _threshold_for(ds, cs, target)
        thresholds.append(np.nan if t is None else t)
        hit = ds <= chosen
        precisions.append(cs[hit].mean() if hit.any() else np.nan)
        recalls.append((cs & hit).mean())
    q = [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100]

    def bounds(v):
        v = np.asarray(v, dtype=np.float64)
        v = v[np.isfinite(v)]
        return [float(x) for x in np.percentile(v, q)] if len(v) else [math.nan, math.nan]

    return {
        "confidence": float(confidence),
        "n_bootstrap": int(n_bootstrap),
        "threshold": bounds(thresholds),
        "precision": bounds(precisions),
        "recall": bounds(recalls),
    }


def calibrate_index(
    index,
    queries,
    query_labels,
    target_precision: float,
    *,
    labels=None,
    exclude_rows=None,
    method: str = "exact",
    **kwargs,
) -> Calibration:
    """Calibrate matching against ``index`` with labelled validation query embeddings.

    ``labels`` gives the label of each indexed row (default: the first folder of its key,
    :func:`tripletsk.triplets.folders.labels_from_folders`); a query's nearest row is correct when
    it has the query's label. ``exclude_rows`` leaves each query's own row out (queries that are
    indexed themselves). Other keyword arguments go to :func:`calibrate`.
    """
    if labels is None:
        from tripletsk.triplets.folders import labels_from_folders

        labels = labels_from_folders(index.keys)
    labels = np.asarray(labels, dtype=object)
    found = index.search(queries, 1, method=method, exclude_rows=exclude_rows)
    nearest = labels[found.indices[:, 0]]
    correct = nearest == np.asarray(query_labels, dtype=object)
    return calibrate(
        found.distances[:, 0], correct, target_precision, distance=index.distance, **kwargs
    )


def check_calibration(value, where: str) -> dict:
    """``value`` if it is a valid stored calibration (from a model file), else
    :class:`~tripletsk.errors.ModelFileError` naming ``where``."""

    def number(x, low=0.0, high=math.inf) -> bool:
        return (
            isinstance(x, int | float)
            and not isinstance(x, bool)
            and math.isfinite(x)
            and low <= x <= high
        )

    ok = (
        isinstance(value, dict)
        and number(value.get("threshold"))
        and number(value.get("target_precision"), 0.0, 1.0)
        and all(number(value.get(k), 0.0, 1.0) for k in ("precision", "recall", "match_rate"))
        and isinstance(value.get("n_queries"), int)
        and isinstance(value.get("distance"), str)
        and isinstance(value.get("interval", {}), dict)
        and isinstance(value.get("curve", {}), dict)
    )
    if not ok:
        raise ModelFileError(
            f"{where}: its matching calibration is not valid (threshold, precision, recall "
            "must be finite numbers); recalibrate with `tripletsk calibrate`"
        )
    return value
