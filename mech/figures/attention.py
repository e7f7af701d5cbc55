"""Figures of attention mass (matplotlib, Agg backend): per-layer mass curves with the token-share
baseline, a layer × head heatmap, and the attention over an image's patch grid overlaid on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

COLORS = {"image": "tab:blue", "video": "tab:purple", "audio": "tab:cyan", "text": "tab:orange",
          "template": "tab:gray", "bos": "tab:red"}


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def mass_curves(am: Any, path: str | Path, title: str = "") -> Path:
    """Per-layer attention mass of each present group (mean over samples and heads, solid) with its
    token share (dashed: the mass under uniform attention over the key positions)."""
    lam = am.allocation().mean(0).numpy()  # [layer, group]
    share = am.token_share.mean(0).numpy()
    layers = np.arange(lam.shape[0])
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for g, name in enumerate(am.groups):
        if share[g] <= 0:
            continue
        c = COLORS.get(name)
        ax.plot(layers, lam[:, g], marker="o", ms=3, color=c, label=f"{name} (mass)")
        ax.axhline(share[g], color=c, ls="--", lw=1, alpha=0.7, label=f"{name} token share {share[g]:.2f}")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("decoder layer")
    ax.set_ylabel(f"attention mass from query ({am.query}), fraction")
    ax.set_ylim(0, 1)
    ax.set_title(title or f"Attention mass per token group (n = {am.mass.shape[0]})")
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def head_heatmap(am: Any, path: str | Path, group: str = "image", title: str = "") -> Path:
    """Layer × head heatmap of the mass on ``group`` (mean over samples)."""
    g = am.groups.index(group)
    data = am.mass[..., g].mean(0).numpy()  # [layer, head]
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * data.shape[1] + 2), max(3, 0.3 * data.shape[0] + 1.5)))
    im = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0, vmax=max(1e-6, float(data.max())), origin="lower")
    ax.set_xlabel("head")
    ax.set_ylabel("decoder layer")
    ax.set_xticks(range(data.shape[1]))
    ax.set_yticks(range(data.shape[0]))
    ax.set_title(title or f"Attention mass on {group} tokens, per head (query: {am.query})")
    fig.colorbar(im, ax=ax, label=f"mass on {group}, fraction of the query's attention")
    return _save(fig, path)


def image_overlay(am: Any, image: Any, path: str | Path, row: int = 0, layers: list[int] | None = None,
                  title: str = "") -> Path | None:
    """The attention on each image patch (head- and query-mean), upsampled onto the image, for a few
    layers and their mean. Returns None when the patch grid is unknown (``am.grid is None``) or the
    sample's image tokens do not fill exactly one grid."""
    if am.grid is None or image is None:
        return None
    rows, cols = am.grid
    n = int(am.n_image_tokens[row])
    if n != rows * cols:
        return None
    spatial = am.spatial[row, :, :n].reshape(am.n_layers, rows, cols)
    layers = layers if layers is not None else sorted(set(np.linspace(0, am.n_layers - 1, min(4, am.n_layers))
                                                          .round().astype(int).tolist()))
    panels = [(f"layer {i}", spatial[i]) for i in layers] + [("mean over layers", spatial.mean(0))]
    img = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    h, w = img.shape[:2]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.0))
    axes = np.atleast_1d(axes)
    for ax, (name, heat) in zip(axes, panels):
        up = torch.nn.functional.interpolate(heat[None, None], size=(h, w), mode="nearest")[0, 0].numpy()
        ax.imshow(img, interpolation="nearest")
        im = ax.imshow(up, cmap="inferno", alpha=0.55, interpolation="nearest", vmin=0)
        ax.set_title(f"{name}\nΣ image = {float(heat.sum()):.2f}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    fig.suptitle(title or f"Attention from the query ({am.query}) on image patches "
                 f"({rows}×{cols} grid; colour: attention weight per patch)", fontsize=9)
    return _save(fig, path)
