"""Render :mod:`robaudit.figures` objects to small PNG images (base64) for the HTML report.

Uses matplotlib's object-oriented API on the Agg canvas: no pyplot, so no global figure
registry to leak into, no GUI backend, and nothing to close besides dropping the figure.
"""

from __future__ import annotations

import base64
import io
import textwrap
from collections.abc import Mapping

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure

from robaudit.figures import Figure, Heatmap, Histogram, ImageGrid, ImagePlot, LinePlot

SIZE = (4.0, 2.6)  # inches
DPI = 100
#: the widest line (pixels) of an axis label or caption in the 400 px wide figure: a longer
#: one wraps onto more lines instead of running off the image
LINE_PX = 340
#: Marker colours by label; other markers cycle through ``PALETTE``.
MARKER_COLOURS = {"value": "#1f2937", "min": "#16a34a", "max": "#dc2626"}
PALETTE = ("#7c3aed", "#0891b2", "#ca8a04", "#db2777")


def render_png(figure: Figure) -> str:
    """The figure as a base64-encoded PNG (no ``data:`` prefix).

    Raises ``ValueError`` for a figure that cannot be drawn (e.g. an image of the wrong
    shape); the reporter shows a note in its place.
    """
    if isinstance(figure, ImageGrid):
        return _png(_image_grid(figure))
    fig = MplFigure(figsize=SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if isinstance(figure, Histogram):
        _histogram(ax, figure)
    elif isinstance(figure, LinePlot):
        _lineplot(ax, figure)
    elif isinstance(figure, ImagePlot):
        _image(fig, ax, figure)
    elif isinstance(figure, Heatmap):
        _heatmap(fig, ax, figure)
    else:
        raise ValueError(f"unknown figure type {type(figure).__name__}")
    ax.set_title(_wrap(figure.title, 9), fontsize=9)
    ax.tick_params(labelsize=7)
    return _png(fig)


def samples_histogram(
    samples: tuple[float, ...], value: float | None, expect: Mapping[str, float], title: str,
    xlabel: str = "per-sample value",
) -> Histogram:
    """The histogram of a check's per-sample values with its value and thresholds marked."""
    markers = {k: float(v) for k, v in expect.items() if k in ("min", "max")}
    if value is not None:
        markers["value"] = float(value)
    return Histogram(title=title, values=tuple(samples), xlabel=xlabel, markers=markers)


def _wrap(text: str, fontsize: float) -> str:
    """A label broken into lines of at most ``LINE_PX`` pixels at ``fontsize`` points (0.6 em a
    character, DejaVu Sans' average and then some), so that it is never clipped."""
    width = max(8, int(LINE_PX / (0.6 * fontsize * DPI / 72)))
    return textwrap.fill(text, width) if len(text) > width else text


def _style(ax: Axes) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(alpha=0.25, linewidth=0.6)
    ax.set_axisbelow(True)


def _histogram(ax: Axes, figure: Histogram) -> None:
    values = np.asarray(figure.values, dtype=float).ravel()
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ValueError("no finite values to plot")
    ax.hist(finite, bins=max(1, int(figure.bins)), color="#93c5fd", edgecolor="#3b82f6",
            linewidth=0.5)
    others = iter(PALETTE * (1 + len(figure.markers) // len(PALETTE)))
    for label, x in figure.markers.items():
        if not np.isfinite(x):
            continue
        colour = MARKER_COLOURS.get(label) or next(others)
        style = "-" if label == "value" else "--"
        ax.axvline(x, color=colour, linestyle=style, linewidth=1.4, label=f"{label} {x:.4g}")
    if figure.markers:
        ax.legend(fontsize=7, frameon=False)
    ax.set_xlabel(_wrap(figure.xlabel, 8), fontsize=8)
    ax.set_ylabel("count", fontsize=8)
    if finite.size < values.size:
        ax.text(0.99, 0.98, f"{values.size - finite.size} non-finite not shown",
                transform=ax.transAxes, ha="right", va="top", fontsize=6, color="#6b7280")
    _style(ax)


def _lineplot(ax: Axes, figure: LinePlot) -> None:
    x = np.asarray(figure.x, dtype=float)
    if not figure.series:
        raise ValueError("a line plot without series")
    for name, ys in figure.series.items():
        y = np.asarray(ys, dtype=float)
        if y.shape != x.shape:
            raise ValueError(f"series {name!r} has {y.size} points for {x.size} x values")
        ax.plot(x, y, marker="o", markersize=2.5, linewidth=1.3, label=name)
    if figure.logx:
        ax.set_xscale("log")
    if len(figure.series) > 1:
        ax.legend(fontsize=7, frameon=False)
    ax.set_xlabel(_wrap(figure.xlabel, 8), fontsize=8)
    ax.set_ylabel(figure.ylabel, fontsize=8)
    _style(ax)


def _image(fig: MplFigure, ax: Axes, figure: ImagePlot) -> None:
    image = np.asarray(figure.image, dtype=float)
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim == 3 and image.shape[0] == 3:
        image = image.transpose(1, 2, 0)
    elif image.ndim != 2:
        raise ValueError(f"an image must be H×W, 1×H×W or 3×H×W, not {image.shape}")
    if not np.isfinite(image).all():
        raise ValueError("the image has non-finite pixels")
    low, high = float(image.min()), float(image.max())
    signed = low < 0 < high
    if image.ndim == 2:
        if signed:  # a signed perturbation: diverging colours centred on zero
            bound = max(-low, high)
            shown = ax.imshow(image, cmap="RdBu_r", vmin=-bound, vmax=bound,
                              interpolation="nearest")
        else:
            shown = ax.imshow(image, cmap="gray", vmin=low, vmax=high if high > low else low + 1,
                              interpolation="nearest")
        bar = fig.colorbar(shown, ax=ax, shrink=0.85)
        bar.ax.tick_params(labelsize=6)
    else:
        if signed:  # zero maps to mid-grey
            rgb = 0.5 + image / (2 * max(-low, high))
        else:
            rgb = (image - low) / (high - low) if high > low else np.zeros_like(image)
        ax.imshow(np.clip(rgb, 0.0, 1.0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if figure.caption:  # centred on the figure, not on the image beside its colour bar
        fig.supxlabel(_wrap(figure.caption, 7), fontsize=7)


def _png(fig: MplFigure) -> str:
    """A drawn figure as a base64-encoded PNG."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    fig.clear()
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _image_grid(figure: ImageGrid) -> MplFigure:
    """One small panel per image, rows labelled on the left, all on one grey scale (or RGB)."""
    images = np.asarray(figure.images, dtype=float)
    if images.ndim == 5 and images.shape[2] == 1:
        images = images[:, :, 0]
    if images.ndim == 5 and images.shape[2] == 3:
        images = images.transpose(0, 1, 3, 4, 2)
    elif images.ndim != 4:
        raise ValueError("an image grid is rows × columns × (H×W, 1×H×W or 3×H×W), "
                         f"not {images.shape}")
    if not np.isfinite(images).all():
        raise ValueError("the image grid has non-finite pixels")
    rows, cols = images.shape[:2]
    low, high = float(images.min()), float(images.max())
    scaled = (images - low) / (high - low) if high > low else np.zeros_like(images)
    fig = MplFigure(figsize=(min(0.95 * cols + 1.8, 10.5), 1.0 * rows + 0.45), dpi=DPI,
                    layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(np.clip(scaled[r, c], 0.0, 1.0), cmap="gray", vmin=0.0, vmax=1.0,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r < len(figure.captions) and c < len(figure.captions[r]):
                ax.set_xlabel(figure.captions[r][c], fontsize=8, labelpad=1)
        if r < len(figure.row_labels):
            axes[r][0].set_ylabel(textwrap.fill(figure.row_labels[r], 18), fontsize=8,
                                  rotation=0, ha="right", va="center")
    fig.suptitle(textwrap.fill(figure.title, 70), fontsize=9)
    return fig


def _heatmap(fig: MplFigure, ax: Axes, figure: Heatmap) -> None:
    matrix = np.asarray(figure.values, dtype=float)
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"a heat map needs a non-empty 2-d matrix, not shape {matrix.shape}")
    for labels, size, axis in ((figure.xlabels, matrix.shape[1], "x"),
                               (figure.ylabels, matrix.shape[0], "y")):
        if labels and len(labels) != size:
            raise ValueError(f"{len(labels)} {axis} labels for {size} {axis} cells")
    shown = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", interpolation="nearest",
                      aspect="auto")
    bar = fig.colorbar(shown, ax=ax, shrink=0.85)
    bar.ax.tick_params(labelsize=6)
    if figure.colorbar:
        bar.set_label(figure.colorbar, fontsize=7)
    rows, cols = matrix.shape
    ax.set_xticks(range(cols), figure.xlabels or [str(j) for j in range(cols)], fontsize=6)
    ax.set_yticks(range(rows), figure.ylabels or [str(i) for i in range(rows)], fontsize=6)
    if figure.annotate and rows * cols <= 144:
        finite = matrix[np.isfinite(matrix)]
        middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        for i in range(rows):
            for j in range(cols):
                if np.isfinite(matrix[i, j]):
                    colour = "black" if matrix[i, j] > middle else "white"
                    ax.text(j, i, f"{matrix[i, j]:.2g}", ha="center", va="center",
                            fontsize=5, color=colour)
    ax.set_xlabel(figure.xlabel, fontsize=8)
    ax.set_ylabel(figure.ylabel, fontsize=8)
