"""Attention knockout curves: the change of the answer probability per window, one line per edge.
Returns a :class:`matplotlib.figure.Figure`; write it with :func:`mech.figures.save_figure`."""

from __future__ import annotations

import math
from collections.abc import Mapping

import matplotlib.ticker
from matplotlib.figure import Figure

from mech.figures.style import GROUP_COLORS, RC, SERIES, finish, new_figure, style, wrap

__all__ = ["knockout_curves"]


def _color(edge: str, i: int) -> str:
    """The source group's colour for a single edge ``"image->last"``; a series colour otherwise."""
    source = edge.split("->")[0]
    return GROUP_COLORS.get(source, SERIES[i % len(SERIES)]) if "+" not in edge else SERIES[i % len(SERIES)]


def knockout_curves(ko, title: str = "") -> Figure:
    """``change`` ``[window, edge]`` of an attention knockout as one line per edge over the windows'
    anchor layers (percent change of the answer probability, ``100 · (p_knocked − p_clean) / p_clean``,
    Zhang et al. 2025), with the zero line; a window where no sample is kept (NaN) is left out of its line.

    Args:
        ko: a :class:`mech.measure.knockout.KnockoutResult`, the
            :class:`~mech.measure.knockout.record.KnockoutRecord` of ``knockout.json``, or JSON content
            (``knockout.json``'s, or ``KnockoutResult.to_json()``), read as a ``KnockoutRecord``.
        title: the figure's title.

    Raises:
        InputError: JSON content that is not a knockout record (the message names the key).
    """
    from mech.measure.knockout.record import KnockoutRecord

    if isinstance(ko, Mapping):
        ko = KnockoutRecord.from_json(ko)
    if isinstance(ko, KnockoutRecord):
        layers, edges, windows = ko.layers, ko.edges, ko.windows
        change = {e: [math.nan if v is None else v for v in ko.change[e]] for e in edges}
        anchor, n_kept = ko.anchor, ko.n_kept
    else:
        layers, edges, windows = ko.layers, ko.edges, ko.windows
        change = {e: ko.change[:, i].tolist() for i, e in enumerate(edges)}
        anchor, n_kept = ko.anchor, ko.n_kept
    with style():
        fig = new_figure(3.6, 2.6)
        ax = fig.add_subplot()
        ax.axhline(0.0, color="black", linewidth=0.6)
        for i, e in enumerate(edges):
            ax.plot(layers, change[e], marker="o", label=e, color=_color(e, i))
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        width = max((hi - lo for lo, hi in windows), default=0)
        ax.set_xlabel(f"window {'centre' if anchor == 'center' else 'start'} layer (up to {width} layers)")
        ax.set_ylabel(f"Δ p(answer), % (n = {n_kept})")
        ax.legend(loc="best")
        if title:
            fig.suptitle(wrap(title, fig.get_figwidth() - 0.2, RC["figure.titlesize"]))
    return finish(fig)
