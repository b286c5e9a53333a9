"""Pictures of a fitted model: loss curves, distance histograms and neighbour sheets.

Needs matplotlib (``pip install tripletsk[plot]``), imported only when a figure is drawn, with
the non-interactive Agg backend: figures are written to files, never shown in a window.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np

from tripletsk.errors import UserError
from tripletsk.outputs import writing

__all__ = [
    "plot_distance_histograms",
    "plot_loss_curves",
    "plot_neighbour_sheet",
    "plot_precision_recall",
]


def _pyplot():
    """matplotlib.pyplot on the Agg backend, or a UserError that says how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise UserError(
            "plots need matplotlib: pip install tripletsk[plot] (or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg")  # files only: works without a display, e.g. on CI
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> None:
    """Write ``fig`` whole under a temporary name, then move it to ``path`` without replacing
    a file that appeared there meanwhile (:mod:`tripletsk.outputs`)."""
    plt = _pyplot()
    fmt = os.path.splitext(os.fspath(path))[1][1:].lower() or plt.rcParams["savefig.format"]
    try:
        with writing(path, "plot") as tmp:
            fig.savefig(tmp, format=fmt, dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)


def plot_loss_curves(model, path: str | os.PathLike) -> None:
    """Training loss per epoch; beside it, the share of wrongly ordered triplets.

    The right panel shows what the loss is for: the fraction of training triplets whose
    anchor is not closer to the positive than to the negative (``error_curve_``; among all
    the valid triplets of each batch when mining from labels), with early stopping the same
    on the held-out data (one minus ``validation_scores_``), and, for the hinge loss only
    (``margin`` set), the fraction of triplets still inside the margin (``active_fraction_``,
    loss > 0: the soft margin's loss is never 0).

    Parameters
    ----------
    model : fitted TripletEncoder
        Uses ``loss_curve_``, ``error_curve_``, ``active_fraction_``, ``margin`` and, with
        early stopping, ``validation_scores_``.
    path : str or path-like
        Image file to write (the format follows the extension, e.g. ``.png``).
    """
    plt = _pyplot()
    epochs = np.arange(1, len(model.loss_curve_) + 1)
    fig, (ax_loss, ax_wrong) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, model.loss_curve_, marker=".", label="training loss")
    ax_loss.set(xlabel="epoch", ylabel="mean triplet loss", title="Training loss")
    errors = getattr(model, "error_curve_", None)  # None: a model saved before it existed
    if errors:
        ax_wrong.plot(epochs[: len(errors)], errors, marker=".", label="training triplets")
    scores = getattr(model, "validation_scores_", None)
    if scores:
        wrong = 1.0 - np.asarray(scores, dtype=float)
        ax_wrong.plot(epochs[: len(scores)], wrong, marker=".", label="held-out triplets")
    if getattr(model, "margin", None) is not None:
        ax_wrong.plot(epochs, model.active_fraction_, marker=".", ls="--",
                      label=f"inside the margin {model.margin} (loss > 0)")  # fmt: skip
    ax_wrong.set(xlabel="epoch", ylabel="fraction of triplets", ylim=(0, None),
                 title="Wrongly ordered triplets: d(a, p) >= d(a, n)")  # fmt: skip
    if ax_wrong.lines:
        ax_wrong.legend(loc="best")
    else:  # a model saved before error_curve_ existed, fitted with the soft margin
        ax_wrong.text(0.5, 0.5, "not recorded", ha="center", va="center")
    _save(fig, path)


def plot_distance_histograms(
    before: tuple[np.ndarray, np.ndarray],
    after: tuple[np.ndarray, np.ndarray],
    path: str | os.PathLike,
    *,
    after_label: str = "learned embedding",
) -> None:
    """Histograms of anchor-positive vs anchor-negative distances, before and after training.

    Parameters
    ----------
    before, after : (d_ap, d_an) pairs of arrays of shape (n_triplets,)
        Distances on the standardised input features and in the learned embedding.
    path : str or path-like
        Image file to write.
    after_label : str, default="learned embedding"
        Title of the right panel.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    titles = ("standardised input features", after_label)
    for ax, (d_ap, d_an), title in zip(axes, (before, after), titles, strict=True):
        d_ap, d_an = np.asarray(d_ap, dtype=float), np.asarray(d_an, dtype=float)
        bins = np.histogram_bin_edges(np.r_[d_ap, d_an], bins=30)
        ax.hist(d_ap, bins=bins, alpha=0.6, label="anchor-positive")
        ax.hist(d_an, bins=bins, alpha=0.6, label="anchor-negative")
        accuracy = float(np.mean(d_ap < d_an))
        ax.set(xlabel="distance", ylabel="triplets", title=f"{title}\naccuracy {accuracy:.3f}")
        ax.legend(loc="best")
    _save(fig, path)


def _read_image(path: str) -> np.ndarray | None:
    """The image at ``path`` as RGB, or None (with a warning) when it cannot be read.

    A sheet is a picture of search results: an image deleted or damaged since it was cached
    is drawn as a placeholder rather than losing the whole sheet.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        warnings.warn(
            f"{path}: cannot read the image ({reason}); drawn as a placeholder", stacklevel=3
        )
        return None


def _show_image(ax, path: str) -> None:
    image = _read_image(path)
    if image is None:
        ax.add_patch(_placeholder())
        ax.text(0.5, 0.5, "image\nnot found", ha="center", va="center", fontsize=8)
    else:
        ax.imshow(image)


def _placeholder():
    from matplotlib.patches import Rectangle

    return Rectangle((0, 0), 1, 1, facecolor="0.85", edgecolor="0.5", hatch="//")


def plot_neighbour_sheet(
    rows: Sequence[tuple[str, str, Sequence[tuple[str, float]]]],
    path: str | os.PathLike,
    images_dir: str | os.PathLike,
) -> None:
    """One row per query: the query image, then its neighbours with their distances.

    Parameters
    ----------
    rows : sequence of (query_title, query_image_path, neighbours)
        ``neighbours`` is a list of ``(key, distance)``, nearest first.
    path : str or path-like
        Image file to write.
    images_dir : str or path-like
        Folder the neighbour keys are relative to (the cache's image root).
    """
    plt = _pyplot()
    n_cols = 1 + max(len(neighbours) for _, _, neighbours in rows)
    fig, axes = plt.subplots(
        len(rows), n_cols, figsize=(1.8 * n_cols, 2.1 * len(rows)), squeeze=False
    )
    for ax in axes.ravel():
        ax.axis("off")
    for r, (title, query_path, neighbours) in enumerate(rows):
        _show_image(axes[r, 0], query_path)
        axes[r, 0].set_title(f"query\n{_short(title)}", fontsize=8, fontweight="bold")
        for c, (key, distance) in enumerate(neighbours, start=1):
            _show_image(axes[r, c], os.path.join(images_dir, key))
            axes[r, c].set_title(f"{_short(key)}\nd = {distance:.3f}", fontsize=8)
    _save(fig, path)


def _short(text: str, width: int = 22) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def plot_precision_recall(calibration, path: str | os.PathLike) -> None:
    """Precision and recall of matching against the distance threshold, the chosen one marked.

    Parameters
    ----------
    calibration : tripletsk.evaluation.matching.Calibration
    path : str or path-like
        Image file to write.
    """
    plt = _pyplot()
    c = calibration.curve
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(c["threshold"], c["precision"], label="precision")
    ax.plot(c["threshold"], c["recall"], label="recall (correct matches / queries)")
    ax.axhline(calibration.target_precision, color="grey", lw=0.8, ls=":")
    ax.axvline(calibration.threshold, color="k", lw=0.8, ls="--",
               label=f"threshold {calibration.threshold:.3f}")  # fmt: skip
    ax.set_xlabel(f"distance threshold ({calibration.distance})")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right")
    ax.set_title(f"matching on {calibration.n_queries} validation queries")
    _save(fig, path)
