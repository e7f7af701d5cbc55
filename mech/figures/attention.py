"""Figures of attention mass: per-layer mass curves with the token-share baseline, a layer × head
heatmap, and the attention over one sample's image patch grid. Each returns a
:class:`matplotlib.figure.Figure`; write it with :func:`mech.figures.save_figure`."""

from __future__ import annotations

from typing import Any

import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure

from mech.figures.style import GROUP_COLORS, RC, finish, new_figure, style, wrap

__all__ = ["MAX_PANELS", "QUERY_WORDS", "head_heatmap", "image_overlay", "mass_curves", "overlay_layers"]

#: what the query rows of ``attention_mass(query=...)`` are, in words
QUERY_WORDS = {
    "last": "the answer position",
    "answer": "the answer tokens",
    "text": "the text tokens",
    "mask": "the chosen rows",
}
#: at most this many single layers in :func:`image_overlay` (more layers: evenly spaced ones)
MAX_PANELS = 7


def _query(am: Any) -> str:
    return QUERY_WORDS.get(am.query, am.query)


def mass_curves(am: Any, title: str = "") -> Figure:
    """Per-layer attention mass of each group the inputs have (mean over samples and heads, solid),
    with its token share (dashed: the mass under uniform attention over the key positions).
    Groups without tokens (e.g. video and audio for an image model) are left out."""
    lam = am.allocation().mean(0).numpy()  # [layer, group]
    share = am.token_share.mean(0).numpy()
    layers = np.arange(lam.shape[0])
    with style():
        fig = new_figure(3.5, 3.0)
        ax = fig.add_subplot()
        for g, name in enumerate(am.groups):
            if share[g] <= 0:
                continue
            c = GROUP_COLORS.get(name)
            ax.plot(layers, lam[:, g], marker="o", color=c, label=name)
            ax.axhline(share[g], color=c, ls="--", lw=0.9, alpha=0.8)
        ax.plot([], [], color="black", label="mass")  # line-style key
        ax.plot([], [], color="black", ls="--", lw=0.9, label="token share")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("decoder layer")
        ax.set_ylabel("fraction of the query's attention")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3, lw=0.5)
        ax.set_title(wrap(title or f"Attention mass from {_query(am)} (n = {am.mass.shape[0]})", 3.3))
        fig.legend(
            *ax.get_legend_handles_labels(),
            loc="outside lower center",
            ncol=4,
            handlelength=1.8,
            columnspacing=1.0,
        )
    return finish(fig)


def head_heatmap(am: Any, group: str = "image", title: str = "") -> Figure:
    """Layer × head heatmap of the mass on ``group`` (mean over samples), layer 0 at the bottom."""
    g = am.groups.index(group)
    data = am.mass[..., g].mean(0).numpy()  # [layer, head]
    n_layers, n_heads = data.shape
    with style():
        fig = new_figure(min(7.0, max(3.3, 0.28 * n_heads + 1.6)), min(9.0, max(2.6, 0.2 * n_layers + 1.4)))
        ax = fig.add_subplot()
        im = ax.imshow(
            data,
            aspect="auto",
            cmap="viridis",
            vmin=0,
            vmax=max(1e-6, float(data.max())),
            origin="lower",
            interpolation="nearest",
        )
        ax.set_xlabel("head")
        ax.set_ylabel("decoder layer")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, nbins=12))
        ax.set_title(
            wrap(
                title
                or f"Attention mass on {group} tokens per head\n"
                f"(from {_query(am)}; mean over n = {am.mass.shape[0]})",
                fig.get_figwidth() - 0.3,
            )
        )
        fig.colorbar(im, ax=ax, label=f"mass on {group}", shrink=0.9)
    return finish(fig)


def overlay_layers(n_layers: int) -> list[int]:
    """The layers :func:`image_overlay` shows by default: all of them up to ``MAX_PANELS``, else
    ``MAX_PANELS`` evenly spaced ones from the first to the last."""
    if n_layers <= MAX_PANELS:
        return list(range(n_layers))
    return sorted(set(np.linspace(0, n_layers - 1, MAX_PANELS).round().astype(int).tolist()))


def image_overlay(
    am: Any,
    image: Any,
    row: int = 0,
    layers: list[int] | None = None,
    title: str = "",
    sample: str | None = None,
) -> Figure | None:
    """The attention of row ``row`` (sample id ``sample``) on each image patch (head- and
    query-mean), drawn over the image in grey, for each layer (or ``layers``; default
    :func:`overlay_layers`) and the mean over layers, with one colour scale for all panels. The first
    panel is the input image. Returns None when the patch grid is unknown (``am.grid is None``) or
    the sample's image tokens do not fill exactly one grid."""
    if am.grid is None or image is None:
        return None
    rows, cols = am.grid
    n = int(am.n_image_tokens[row])
    if n != rows * cols:
        return None
    spatial = am.spatial[row, :, :n].reshape(am.n_layers, rows, cols).float().numpy()
    chosen = layers if layers is not None else overlay_layers(am.n_layers)
    panels = [(f"layer {i}", spatial[i]) for i in chosen] + [("mean over layers", spatial.mean(0))]
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    h, w = rgb.shape[:2]
    vmax = max(1e-6, max(float(p.max()) for _, p in panels))
    ncols = min(4, len(panels) + 1)
    nrows = -(-(len(panels) + 1) // ncols)
    which = (
        "all layers"
        if layers is None and len(chosen) == am.n_layers
        else ("evenly spaced layers" if layers is None else "chosen layers")
    )
    with style():
        fig = new_figure(1.1 * ncols + 0.8, 1.3 * nrows + 0.7)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        axes[0].imshow(rgb, interpolation="nearest")
        axes[0].set_title("input" + (f"\n{sample}" if sample else ""), fontsize=7)
        for ax, (name, heat) in zip(axes[1:], panels):
            ax.imshow(grey, cmap="gray", vmin=-0.2, vmax=1, interpolation="nearest")
            im = ax.imshow(
                heat,
                cmap="inferno",
                alpha=0.7,
                vmin=0,
                vmax=vmax,
                interpolation="nearest",
                extent=(-0.5, w - 0.5, h - 0.5, -0.5),
            )
            ax.set_title(f"{name}\nΣ image = {float(heat.sum()):.2f}", fontsize=7)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in axes[len(panels) + 1 :]:
            ax.set_axis_off()
        fig.colorbar(im, ax=list(axes), shrink=0.8, label="attention per patch (fraction)")
        who = f"sample {sample}" if sample else f"row {row}"
        fig.suptitle(
            wrap(
                title
                or f"Attention from {_query(am)} to the image patches of {who}\n"
                f"({rows}×{cols} grid, {which}; one colour scale)",
                fig.get_figwidth() - 0.2,
                RC["figure.titlesize"],
            )
        )
    return finish(fig)
