"""The shared look of mech's figures, and the one way to write them.

Every plot function builds a :class:`matplotlib.figure.Figure` with :func:`new_figure` (the
object-oriented API: no pyplot state, no backend chosen, so a notebook shows the figure inline and a
script saves it) and returns it; :func:`save_figure` writes it. Figures are sized for a paper: a
single panel is about one column wide (3.5 in) with 7-9 pt text, so it stays readable when placed at
single-column width. Colours are colour-blind safe: Okabe-Ito for token groups and categories,
viridis / inferno for sequential data, RdBu (centred at 0) for signed data.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

__all__ = [
    "DIVERGING",
    "DPI",
    "GROUP_COLORS",
    "OKABE_ITO",
    "RC",
    "SCREEN_DPI",
    "SEQUENTIAL",
    "SERIES",
    "finish",
    "new_figure",
    "save_figure",
    "style",
    "text_color",
    "wrap",
]

#: Okabe & Ito (2008), the colour-blind-safe qualitative palette
OKABE_ITO = {
    "blue": "#0072B2",
    "orange": "#E69F00",
    "green": "#009E73",
    "vermillion": "#D55E00",
    "sky": "#56B4E9",
    "purple": "#CC79A7",
    "yellow": "#F0E442",
    "black": "#000000",
    "grey": "#888888",
}
GROUP_COLORS = {
    "image": OKABE_ITO["blue"],
    "text": OKABE_ITO["orange"],
    "template": OKABE_ITO["grey"],
    "bos": OKABE_ITO["vermillion"],
    "video": OKABE_ITO["purple"],
    "audio": OKABE_ITO["sky"],
    "last": OKABE_ITO["green"],
}
#: one colour per model / series, in order
SERIES = (
    OKABE_ITO["blue"],
    OKABE_ITO["orange"],
    OKABE_ITO["green"],
    OKABE_ITO["vermillion"],
    OKABE_ITO["purple"],
    OKABE_ITO["sky"],
    OKABE_ITO["black"],
)
SEQUENTIAL = "viridis"
DIVERGING = "RdBu_r"
DPI = 300
#: the figure's own dpi: its size when a notebook shows it inline (saving uses ``DPI``)
SCREEN_DPI = 150

#: text sizes (pt) for figures of about one column (3.5 in) per panel
RC = {
    "font.size": 8,
    "axes.titlesize": 8.5,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "figure.titlesize": 9,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.3,
    "lines.markersize": 3.5,
    "legend.frameon": False,
    "image.cmap": SEQUENTIAL,
}


@contextmanager
def style() -> Iterator[None]:
    """mech's text sizes and line widths while a figure is built (restored afterwards)."""
    with matplotlib.rc_context(RC):
        yield


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` × ``height`` inches with constrained layout (titles, labels and colour
    bars are laid out so that none is clipped or overlaps). Build it inside :func:`style`."""
    return Figure(figsize=(width, height), dpi=SCREEN_DPI, layout="constrained")


def finish(fig: Figure) -> Figure:
    """Fix the tick-label sizes on every axes (ticks are created lazily at draw time, after
    :func:`style` has ended) and return ``fig``."""
    for ax in fig.axes:
        ax.tick_params(labelsize=RC["xtick.labelsize"], width=0.6, length=2.5)
    return fig


def wrap(text: str, width_in: float, fontsize: float | None = None) -> str:
    """``text`` broken into lines that fit ``width_in`` inches at ``fontsize`` pt (default: the title
    size); existing line breaks are kept."""
    size = fontsize or RC["axes.titlesize"]
    chars = max(12, int(width_in * 72 / (0.52 * size)))
    return "\n".join(textwrap.fill(line, chars, break_on_hyphens=False) for line in text.split("\n"))


def text_color(rgba) -> str:
    """Black or white, whichever reads better on a cell of colour ``rgba`` (WCAG relative luminance)."""

    def lin(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(float(c)) for c in rgba[:3])
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.179 else "white"


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically (:func:`mech.results.atomic_write`: a reader never
    sees half a file); returns ``path``. The figure is left open, so it can still be shown."""
    from mech.results import atomic_write

    return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
