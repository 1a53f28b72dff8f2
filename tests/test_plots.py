"""Tests for the figures: what each draws, and the errors for bad input."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from helpers import plots
from helpers.classes import CLASSES


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_class_counts_bar_heights():
    counts = pd.Series([5, 1, 20], index=["mel", "df", "nv"])

    fig = plots.plot_class_counts(counts)

    heights = [patch.get_height() for patch in fig.axes[0].patches]
    assert heights == [5, 1, 20]
    assert fig.axes[0].get_yscale() == "log"


def test_class_counts_unknown_code():
    with pytest.raises(ValueError, match="unknown class codes"):
        plots.plot_class_counts(pd.Series([1], index=["melanoma"]))


def test_image_grid_shape():
    images = np.zeros((2, 3, 8, 8, 3), dtype=np.uint8)

    fig = plots.plot_image_grid(images, ["mel", "nv"])

    assert len(fig.axes) == 6
    assert fig.axes[0].get_ylabel() == "mel"
    assert fig.axes[3].get_ylabel() == "nv"


def test_image_grid_bad_input():
    with pytest.raises(ValueError, match="shape"):
        plots.plot_image_grid(np.zeros((2, 8, 8, 3), dtype=np.uint8), ["a", "b"])
    with pytest.raises(ValueError, match="row labels"):
        plots.plot_image_grid(np.zeros((2, 1, 8, 8, 3), dtype=np.uint8), ["a"])


def test_class_mix_fractions():
    table = pd.DataFrame(
        [[1, 3, 0, 0, 0, 0, 0, 4], [0, 0, 0, 0, 2, 2, 0, 4]],
        index=["a", "b"],
        columns=[*CLASSES, "total"],
    )

    fig = plots.plot_class_mix(table)

    widths = [patch.get_width() for patch in fig.axes[0].patches]
    # Bars are drawn class by class, two hospitals each: akiec, bcc, ...
    assert widths[:4] == [0.25, 0.0, 0.75, 0.0]
    assert sum(widths) == pytest.approx(2.0)


def test_class_mix_empty_row():
    table = pd.DataFrame([[0] * 7], index=["empty"], columns=list(CLASSES))
    with pytest.raises(ValueError, match="no images"):
        plots.plot_class_mix(table)


def test_curves_lines():
    fig = plots.plot_curves({"pooled": [0.1, 0.2, 0.3], "fedavg": [0.1, 0.15]})

    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["pooled", "fedavg"]
    assert list(lines[0].get_xdata()) == [1, 2, 3]
    assert list(lines[1].get_ydata()) == [0.1, 0.15]


def test_curves_reference_line():
    fig = plots.plot_curves({"fedavg": [0.1, 0.2]}, references={"pooled": 0.5})

    lines = fig.axes[0].get_lines()
    assert lines[1].get_label() == "pooled"
    assert list(lines[1].get_ydata()) == [0.5, 0.5]


def test_curves_empty():
    with pytest.raises(ValueError, match="empty"):
        plots.plot_curves({})


def test_grouped_bars_count():
    table = pd.DataFrame({"local": [0.2, 0.3], "fedavg": [0.4, 0.5]}, index=["a", "b"])

    fig = plots.plot_grouped_bars(table)

    heights = [patch.get_height() for patch in fig.axes[0].patches]
    assert heights == [0.2, 0.3, 0.4, 0.5]


def test_grouped_bars_empty():
    with pytest.raises(ValueError, match="empty"):
        plots.plot_grouped_bars(pd.DataFrame())
