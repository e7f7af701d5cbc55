"""Figure: attention mass from the answer position to image and text tokens per layer, one line
per model, with the image token-share baseline -> figures/attention_curves.png."""

from _common import save, batches, load, parse, short

import matplotlib.pyplot as plt
import torch

import mech
from mech.conditions import condition_inputs


def main():
    args = parse(__doc__, n=200)
    models, data = load(args)
    samples = [s for s in data if s["images"]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for spec, m in models.items():
        am = mech.AttentionMass.concat([mech.attention_mass(m, condition_inputs(m, b, "complete"))
                                        for b in batches(samples, 50)])
        for ax, group in zip(axes, ("image", "text")):
            k = am.groups.index(group)
            y = am.mass[..., k].mean(dim=(0, 2))
            line, = ax.plot(range(len(y)), y, marker="o", label=short(spec))
            ax.axhline(float(am.token_share[:, k].mean()), color=line.get_color(), ls=":", lw=1)
    for ax, group in zip(axes, ("image", "text")):
        ax.set_title(f"attention to {group} tokens (dotted: token share)")
        ax.set_xlabel("decoder layer")
        ax.legend()
    axes[0].set_ylabel("attention mass from the answer position")
    save(fig, args, "attention_curves")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
