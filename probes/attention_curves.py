"""Figure: attention mass from the answer position to image and text tokens per layer, one line
per model, with the image token-share baseline -> figures/attention_curves.png."""

import torch
from _common import batches, load, parse, save, short

import mech
from mech.conditions import condition_inputs
from mech.figures.style import SERIES, finish, new_figure, style


def main():
    args = parse(__doc__, n=200)
    models, data = load(args)
    samples = [s for s in data if s["images"]]
    with style():
        fig = new_figure(5.0, 2.6)
        axes = fig.subplots(1, 2, sharey=True)
        for k, (spec, m) in enumerate(models.items()):
            am = mech.AttentionMass.concat(
                [mech.attention_mass(m, condition_inputs(m, b, "complete")) for b in batches(samples, 50)]
            )
            for ax, group in zip(axes, ("image", "text")):
                g = am.groups.index(group)
                y = am.mass[..., g].mean(dim=(0, 2))
                ax.plot(range(len(y)), y, marker="o", color=SERIES[k], label=short(spec))
                ax.axhline(float(am.token_share[:, g].mean()), color=SERIES[k], ls=":", lw=1)
        for ax, group in zip(axes, ("image", "text")):
            ax.set_title(f"to {group} tokens")
            ax.set_xlabel("decoder layer")
            ax.grid(alpha=0.3, lw=0.5)
        axes[0].set_ylabel("attention mass (fraction)")
        axes[0].legend()
        fig.suptitle(
            f"Attention mass from the answer position (dotted: token share)\n"
            f"mean over heads and n = {len(samples)} samples of {args.data}"
        )
    save(finish(fig), args, "attention_curves")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
