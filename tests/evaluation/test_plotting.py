"""Each figure is written as a real PNG file; bad input gives a clear error."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tripletsk.evaluation import plotting


class Fitted:
    """The fitted attributes plot_loss_curves reads."""

    def __init__(self, validation, margin=None, errors=(0.3, 0.1, 0.05)):
        self.margin = margin
        self.loss_curve_ = [0.5, 0.3, 0.2]
        self.active_fraction_ = [0.9, 0.6, 0.4]
        self.error_curve_ = list(errors) if errors is not None else None
        self.validation_scores_ = [0.7, 0.8, 0.85] if validation else None


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


@pytest.mark.parametrize("validation", [False, True])
def test_loss_curves(tmp_path, validation):
    plotting.plot_loss_curves(Fitted(validation), tmp_path / "loss.png")
    width, height = _png_size(tmp_path / "loss.png")
    assert width > height > 100


def _drawn_panels(monkeypatch, model, path) -> dict:
    """Draw the loss curves; return {panel title: {line label: y values}}."""
    drawn = {}
    save = plotting._save

    def spy(fig, target):
        for ax in fig.axes:
            lines = {line.get_label(): list(line.get_ydata()) for line in ax.lines}
            drawn[ax.get_title()] = lines
        save(fig, target)

    monkeypatch.setattr(plotting, "_save", spy)
    plotting.plot_loss_curves(model, path)
    return drawn


def test_loss_curves_show_wrongly_ordered_triplets_not_a_flat_active_fraction(
    tmp_path, monkeypatch
):
    drawn = _drawn_panels(monkeypatch, Fitted(validation=True), tmp_path / "loss.png")
    wrong = drawn["Wrongly ordered triplets: d(a, p) >= d(a, n)"]
    assert wrong["training triplets"] == [0.3, 0.1, 0.05]
    np.testing.assert_allclose(wrong["held-out triplets"], [0.3, 0.2, 0.15])
    # The soft margin's loss is never 0: no "active" line under it.
    assert not any("margin" in label for label in wrong)
    assert drawn["Training loss"]["training loss"] == [0.5, 0.3, 0.2]


def test_loss_curves_keep_the_active_fraction_for_the_hinge(tmp_path, monkeypatch):
    drawn = _drawn_panels(monkeypatch, Fitted(False, margin=0.5), tmp_path / "loss.png")
    wrong = drawn["Wrongly ordered triplets: d(a, p) >= d(a, n)"]
    assert wrong["inside the margin 0.5 (loss > 0)"] == [0.9, 0.6, 0.4]
    assert wrong["training triplets"] == [0.3, 0.1, 0.05]


def test_loss_curves_of_a_model_saved_before_the_error_curve(tmp_path, monkeypatch):
    drawn = _drawn_panels(monkeypatch, Fitted(False, errors=None), tmp_path / "loss.png")
    assert drawn["Wrongly ordered triplets: d(a, p) >= d(a, n)"] == {}
    assert _png_size(tmp_path / "loss.png")[0] > 100


def test_distance_histograms(tmp_path):
    rng = np.random.RandomState(0)
    before = (rng.uniform(0, 2, 50), rng.uniform(1, 3, 50))
    plotting.plot_distance_histograms(before, (before[0] / 2, before[1]), tmp_path / "h.png")
    assert _png_size(tmp_path / "h.png")[0] > 100


def test_neighbour_sheet_grows_with_queries_and_neighbours(tmp_path):
    for name, value in [("a.png", 0), ("b.png", 128), ("c.png", 255)]:
        Image.new("L", (16, 16), value).save(tmp_path / name)
    one = [("a.png", str(tmp_path / "a.png"), [("b.png", 0.1)])]
    two = [*one, ("c.png", str(tmp_path / "c.png"), [("a.png", 0.5), ("b.png", 0.7)])]
    plotting.plot_neighbour_sheet(one, tmp_path / "one.png", tmp_path)
    plotting.plot_neighbour_sheet(two, tmp_path / "two.png", tmp_path)
    (w1, h1), (w2, h2) = _png_size(tmp_path / "one.png"), _png_size(tmp_path / "two.png")
    assert w2 > w1 and h2 > h1


def test_neighbour_sheet_draws_a_placeholder_for_a_missing_image(tmp_path):
    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    rows = [("a.png", str(tmp_path / "a.png"), [("gone.png", 0.1)])]
    with pytest.warns(UserWarning, match=r"gone\.png: cannot read the image .* placeholder"):
        plotting.plot_neighbour_sheet(rows, tmp_path / "s.png", tmp_path)
    assert Image.open(tmp_path / "s.png").format == "PNG"
