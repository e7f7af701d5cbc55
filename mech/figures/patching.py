"""Heatmaps of normalized patching effects (layer × position group)."""

from __future__ import annotations

from pathlib import Path

import torch


def heatmap(effect: torch.Tensor, groups, layers, path: str | Path, title: str = "") -> Path:
    """Write a PNG of ``effect`` ``[layer, group]`` (rows = layers, bottom = layer 0); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    e = effect.detach().float().cpu()
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(groups), 1.0 + 0.35 * len(layers)))
    lim = max(1.0, float(e.nan_to_num(0).abs().max()))
    im = ax.imshow(e.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower", aspect="auto")
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set_yticks(range(len(layers)), [str(l) for l in layers])
    ax.set_xlabel("position group")
    ax.set_ylabel("layer")
    for i in range(e.shape[0]):
        for j in range(e.shape[1]):
            v = float(e[i, j])
            ax.text(j, i, "–" if v != v else f"{v:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label="normalized effect")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path
