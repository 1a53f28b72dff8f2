"""Figures the notebooks show. Each function returns its matplotlib Figure.

nbval cannot compare images, so every notebook also prints the numbers behind each
figure. These functions only draw: they compute nothing a reader has not seen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from helpers.classes import CLASSES

# One colour per diagnosis, the same in every figure of the series.
CLASS_COLOURS = dict(
    zip(CLASSES, plt.get_cmap("tab10").colors[: len(CLASSES)], strict=True)
)


def plot_class_counts(
    counts: pd.Series, *, title: str = "Images per diagnosis"
) -> Figure:
    """Draw a bar chart of image counts per diagnosis on a log scale.

    Args:
        counts: count per class code, indexed by the codes in CLASSES.
        title: figure title.
    """
    _check_class_index(counts.index, "counts")

    fig, ax = plt.subplots(figsize=(6, 3))
    colours = [CLASS_COLOURS[code] for code in counts.index]
    ax.bar(counts.index, counts.to_numpy(), color=colours)
    ax.set_yscale("log")
    ax.set_ylabel("images (log scale)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_image_grid(
    images: np.ndarray, row_labels: Sequence[str], *, title: str = ""
) -> Figure:
    """Draw a grid of images, one row per label.

    Args:
        images: uint8 array of shape (rows, columns, height, width, 3).
        row_labels: one label per row, shown on the left.
        title: figure title.
    """
    if images.ndim != 5 or images.shape[-1] != 3:
        raise ValueError(
            "images must have shape (rows, columns, height, width, 3), got "
            f"{images.shape}; stack one row of images per label."
        )
    if len(row_labels) != images.shape[0]:
        raise ValueError(
            f"got {len(row_labels)} row labels for {images.shape[0]} rows of images."
        )

    rows, columns = images.shape[:2]
    fig, axes = plt.subplots(
        rows, columns, figsize=(1.1 * columns, 1.1 * rows), squeeze=False
    )
    for row in range(rows):
        for column in range(columns):
            ax = axes[row, column]
            ax.imshow(images[row, column])
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(row_labels[row], rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_class_mix(table: pd.DataFrame, *, title: str = "Class mix") -> Figure:
    """Draw each row of a label table as a horizontal bar of class fractions.

    Args:
        table: one row per hospital or site, one column per class code, and an
            optional "total" column, as `helpers.splits.label_table` returns.
        title: figure title.
    """
    counts = table[[code for code in CLASSES if code in table.columns]]
    totals = counts.sum(axis=1)
    if (totals == 0).any():
        empty = list(totals.index[totals == 0])
        raise ValueError(f"rows {empty} have no images; drop them before plotting.")
    fractions = counts.div(totals, axis=0)

    fig, ax = plt.subplots(figsize=(7, 0.5 * len(fractions) + 1.2))
    left = np.zeros(len(fractions))
    for code in fractions.columns:
        ax.barh(
            fractions.index.astype(str),
            fractions[code],
            left=left,
            color=CLASS_COLOURS[code],
            label=code,
        )
        left += fractions[code].to_numpy()
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("fraction of images")
    ax.set_title(title)
    ax.legend(
        ncol=len(fractions.columns), loc="upper center", bbox_to_anchor=(0.5, -0.3)
    )
    fig.tight_layout()
    return fig


def plot_curves(
    curves: Mapping[str, Sequence[float]],
    *,
    references: Mapping[str, float] | None = None,
    xlabel: str = "round",
    ylabel: str = "balanced accuracy",
    title: str = "",
) -> Figure:
    """Draw one line per named curve, x counted from 1.

    Args:
        curves: name -> values per round (or per epoch).
        references: name -> value drawn as a dashed horizontal line, for
            example the pooled model's score.
        xlabel: x-axis label.
        ylabel: y-axis label.
        title: figure title.
    """
    if not curves:
        raise ValueError("curves is empty; pass at least one named sequence.")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in curves.items():
        values = np.asarray(values, dtype=float)
        ax.plot(np.arange(1, len(values) + 1), values, label=name)
    for name, value in (references or {}).items():
        ax.axhline(value, linestyle="--", color="grey", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_grouped_bars(
    table: pd.DataFrame, *, ylabel: str = "balanced accuracy", title: str = ""
) -> Figure:
    """Draw a grouped bar chart: one group per row, one bar per column.

    Args:
        table: numeric DataFrame, for example one row per hospital and one column
            per training setting.
        ylabel: y-axis label.
        title: figure title.
    """
    if table.empty:
        raise ValueError("table is empty; nothing to draw.")

    n_rows, n_columns = table.shape
    width = 0.8 / n_columns
    positions = np.arange(n_rows)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * n_rows), 3.5))
    for offset, column in enumerate(table.columns):
        ax.bar(positions + offset * width, table[column], width=width, label=column)
    ax.set_xticks(positions + width * (n_columns - 1) / 2)
    ax.set_xticklabels(table.index.astype(str), rotation=15, ha="right")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def _check_class_index(index: pd.Index, name: str) -> None:
    unknown = [code for code in index if code not in CLASSES]
    if unknown:
        raise ValueError(
            f"{name} has unknown class codes {unknown}; expected codes from {CLASSES}."
        )
