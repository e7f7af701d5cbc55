"""Heatmaps of normalized patching effects (layer × position group). Returns a
:class:`matplotlib.figure.Figure`; write it with :func:`mech.figures.save_figure`."""

from __future__ import annotations

import matplotlib.colors
import numpy as np
import torch
from matplotlib.figure import Figure

from mech.figures.style import DIVERGING, RC, finish, new_figure, style, text_color, wrap

__all__ = ["heatmap"]


def heatmap(
    effect: torch.Tensor,
    groups,
    layers,
    title: str = "",
    label: str = "normalized effect",
    lim: float | None = None,
) -> Figure:
    """``effect`` ``[layer, group]`` as a heatmap (rows = layers, layer 0 at the bottom) on a
    diverging colour-blind-safe map centred at 0, from ``-lim`` to ``lim`` (default: symmetric, at
    least ±1; pass one ``lim`` to figures that are compared), each cell annotated in black or white
    by the cell's luminance; NaN cells (a group with no patched position) are grey and marked "–"."""
    e = effect.detach().float().cpu().numpy()
    n_layers, n_groups = e.shape
    if lim is None:
        lim = max(1.0, float(np.nanmax(np.abs(e))) if np.isfinite(e).any() else 1.0)
    cmap = matplotlib.colormaps[DIVERGING].with_extremes(bad="#d9d9d9")
    norm = matplotlib.colors.Normalize(vmin=-lim, vmax=lim)
    cell_font = 7 if n_layers <= 16 else 5.5
    with style():
        fig = new_figure(min(7.0, 1.7 + 0.75 * n_groups), min(10.0, 1.3 + 0.24 * n_layers))
        ax = fig.add_subplot()
        im = ax.imshow(
            np.ma.masked_invalid(e),
            cmap=cmap,
            norm=norm,
            origin="lower",
            aspect="auto",
            interpolation="nearest",
        )
        ax.set_xticks(range(n_groups), list(groups))
        step = max(1, -(-n_layers // 16))
        ax.set_yticks(range(0, n_layers, step), [str(layers[i]) for i in range(0, n_layers, step)])
        ax.set_xlabel("position group")
        ax.set_ylabel("decoder layer")
        for i in range(n_layers):
            for j in range(n_groups):
                v = float(e[i, j])
                if v != v:
                    ax.text(j, i, "–", ha="center", va="center", fontsize=cell_font, color="black")
                else:
                    ax.text(
                        j,
                        i,
                        f"{v:.2f}".replace("-0.00", "0.00"),
                        ha="center",
                        va="center",
                        fontsize=cell_font,
                        color=text_color(cmap(norm(v))),
                    )
        fig.colorbar(im, ax=ax, label=label, shrink=0.9)
        if title:
            fig.suptitle(wrap(title, fig.get_figwidth() - 0.2, RC["figure.titlesize"]))
    return finish(fig)
