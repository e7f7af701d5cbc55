"""Figures: results -> :class:`matplotlib.figure.Figure` objects (and the paper's Tables 1-2 as Markdown).

Every plot function returns a figure built with the object-oriented API (no pyplot state, no
backend chosen): a notebook shows it inline (as a cell's last expression, or with
``IPython.display.display``), and :func:`save_figure` writes it as a PNG atomically::

    from mech.figures import mass_curves, save_figure
    fig = mass_curves(am)            # a Figure
    save_figure(fig, "out/attention_mass.png")

``table1`` / ``table2`` render an :func:`mech.evaluate` result as the paper's Tables 1 and 2 (Markdown
text: accuracy per condition; prediction consistency).

The names are imported on first use (PEP 562), so ``import mech.figures`` loads no plotting code.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> "module:attribute"
_PUBLIC = {
    "save_figure": "mech.figures.style:save_figure",
    "mass_curves": "mech.figures.attention:mass_curves",
    "head_heatmap": "mech.figures.attention:head_heatmap",
    "image_overlay": "mech.figures.attention:image_overlay",
    "patching_heatmap": "mech.figures.patching:heatmap",
    "contribution_figure": "mech.figures.contributions:contribution_figure",
    "compare_figure": "mech.figures.contributions:compare_figure",
    "eval_figure": "mech.measure.evaluation.tables:figure",
    "table1": "mech.measure.evaluation.tables:table1",
    "table2": "mech.measure.evaluation.tables:table2",
}

__all__ = [
    "compare_figure",
    "contribution_figure",
    "eval_figure",
    "head_heatmap",
    "image_overlay",
    "mass_curves",
    "patching_heatmap",
    "save_figure",
    "table1",
    "table2",
]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'mech.figures' has no attribute {name!r}")
    module, _, attr = _PUBLIC[name].partition(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
