"""Figures of the contribution curves and the imbalance ratio (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

UNITS = {"attention": "attention mass (fraction)", "patching": "restored logit diff (logits)",
         "dla": "direct logit attribution (logits)"}
COLORS = {"image": "tab:blue", "text": "tab:orange", "template": "tab:gray", "bos": "tab:green",
          "video": "tab:purple", "audio": "tab:brown"}


def contribution_figure(contrib: dict, path: str | Path, title: str) -> Path:
    """One panel per estimator: per-layer contribution of each group; last panel: Δ(text/image) per
    layer for every estimator (log scale), with the overall Δ and its 95% interval in the legend."""
    ests = list(contrib["curves"])
    fig, axes = plt.subplots(1, len(ests) + 1, figsize=(4.2 * (len(ests) + 1), 3.6))
    for ax, est in zip(axes, ests):
        for g, ys in contrib["curves"][est].items():
            if g in ("video", "audio") and not any(ys):
                continue
            ax.plot(range(len(ys)), ys, marker="o", ms=3, label=g, color=COLORS.get(g))
        ax.set_title(est)
        ax.set_xlabel("decoder layer")
        ax.set_ylabel(UNITS.get(est, est))
        ax.axhline(0, color="black", lw=0.5)
        ax.legend(fontsize=8)
    ax = axes[-1]
    for est in ests:
        ys = contrib["imbalance_ratio"][est]
        o = contrib["overall"][est]
        ax.plot(range(len(ys)), ys, marker="o", ms=3,
                label=f"{est}: Δ={o['delta']:.2f} [{o['ci95'][0]:.2f}, {o['ci95'][1]:.2f}]")
    ax.axhline(1, color="black", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_title(f"Δ({contrib['ratio']}) per layer")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("C(text) / C(image)")
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def compare_figure(results: dict[str, dict], path: str | Path) -> Path:
    """Overall Δ(text/image) with 95% intervals per estimator, one bar group per model."""
    models = list(results)
    ests = list(next(iter(results.values()))["overall"])
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(ests), 3.6))
    width = 0.8 / len(models)
    for k, name in enumerate(models):
        o = results[name]["overall"]
        xs = [i + k * width for i in range(len(ests))]
        d = [o[e]["delta"] for e in ests]
        err = [[d[i] - o[e]["ci95"][0] for i, e in enumerate(ests)], [o[e]["ci95"][1] - d[i] for i, e in enumerate(ests)]]
        ax.bar(xs, d, width, yerr=err, capsize=3, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(ests))], ests)
    ax.axhline(1, color="black", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_ylabel("overall Δ(text/image), 95% CI")
    ax.set_title("Modality imbalance ratio by estimator")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
