"""Declarative plots that metrics return; the HTML reporter renders them.

Metrics describe *what* to plot (plain numbers), never *how*: they stay free of matplotlib,
and every figure is also JSON-serialisable data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Histogram:
    """A histogram of ``values``; ``markers`` draws labelled vertical lines (e.g. a threshold)."""

    title: str
    values: tuple[float, ...]
    xlabel: str = ""
    markers: dict[str, float] = field(default_factory=dict)
    bins: int = 30


@dataclass(frozen=True)
class LinePlot:
    """Curves ``series[name]`` against ``x`` (the paper's curve figures)."""

    title: str
    x: tuple[float, ...]
    series: dict[str, tuple[float, ...]]
    xlabel: str = ""
    ylabel: str = ""
    logx: bool = False


@dataclass(frozen=True)
class ImagePlot:
    """An image (H×W or C×H×W, any range: it is scaled for display), e.g. a perturbation."""

    title: str
    image: np.ndarray
    caption: str = ""


@dataclass(frozen=True)
class ImageGrid:
    """Rows of images, e.g. the inputs that most excite a unit (Szegedy et al. 2014, Figures
    1–4). ``images`` is rows × columns × (H×W, 1×H×W or 3×H×W), any range (the whole grid is
    scaled together for display); ``row_labels`` names each row, ``captions`` each image."""

    title: str
    images: np.ndarray
    row_labels: tuple[str, ...] = ()
    captions: tuple[tuple[str, ...], ...] = ()



@dataclass(frozen=True)
class Heatmap:
    """A matrix of numbers shown as colours, ``values[i][j]`` at row i, column j (e.g. a
    class × class table); ``annotate`` writes each number in its cell."""

    title: str
    values: tuple[tuple[float, ...], ...]
    xlabels: tuple[str, ...] = ()
    ylabels: tuple[str, ...] = ()
    xlabel: str = ""
    ylabel: str = ""
    colorbar: str = ""
    annotate: bool = True


Figure = Histogram | LinePlot | ImagePlot | ImageGrid | Heatmap
