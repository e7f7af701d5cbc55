"""Figures: results -> :class:`matplotlib.figure.Figure` objects (and the paper's Tables 1-2 as Markdown).

Every plot function returns a figure built with the object-oriented API (no pyplot state, no
backend chosen): a notebook shows it inline (as a cell's last expression, or with
``IPython.display.display``), and :func:`save_figure` writes it as a PNG atomically::

    from mech.figures import mass_curves, save_figure
    fig = mass_curves(am)            # a Figure
    save_figure(fig, "out/attention_mass.png")

``table1`` / ``table2`` render an :func:`mech.evaluate` result as the paper's Tables 1 and 2 (Markdown
text: accuracy per condition; prediction consistency).

The names are imported on first use (PEP 562), so ``import mech.figures`` loads no plotting code. A
figure module of this package that is not named in the table below and declares ``__all__`` (a new
instrument's figure, e.g. :mod:`mech.figures.knockout`) is discovered: its ``__all__`` is read from the
source (nothing imported) and its names join the public ones.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
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


def _discovered(named: set[str]) -> dict[str, str]:
    """public name -> "module:attribute" for every figure module here outside ``named`` that declares
    ``__all__`` (a literal list, read with :mod:`ast`: nothing is imported)."""
    out = {}
    for path in sorted(Path(__file__).parent.glob("*.py")):
        module = f"{__name__}.{path.stem}"
        if path.stem.startswith("_") or module in named:
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and any(
                getattr(t, "id", None) == "__all__" for t in node.targets
            ):
                out.update({name: f"{module}:{name}" for name in ast.literal_eval(node.value)})
    return out


_PUBLIC.update(_discovered({v.partition(":")[0] for v in _PUBLIC.values()}))

__all__ = sorted(_PUBLIC)  # the table above and the discovered figure modules


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'mech.figures' has no attribute {name!r}")
    module, _, attr = _PUBLIC[name].partition(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
