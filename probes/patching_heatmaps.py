"""Figure: denoising activation patching (complete -> white image) of resid_pre, restored logit
difference per layer and token group, one panel per model -> figures/patching_heatmaps.png."""

from _common import save, load, parse, short

import matplotlib.pyplot as plt
import torch

import mech
from mech.conditions import condition_inputs
from mech.prepare.targets import answer_tokens


def main():
    args = parse(__doc__, n=64)
    models, data = load(args)
    samples = [s for s in data if s["images"]]
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 3.4), squeeze=False)
    for ax, (spec, m) in zip(axes[0], models.items()):
        clean = condition_inputs(m, samples, "complete")
        corrupted = condition_inputs(m, samples, "white_image")
        last = m.logits(clean)[torch.arange(len(samples)), clean.groups.last()].float()
        answer, cf = answer_tokens(m, samples, last)
        r = mech.activation_patching(m, clean, corrupted, site="resid_pre", positions=("image", "text", "last"),
                                     answer=answer, counterfactual=cf, normalize=False)
        restored = (r.patched["resid_pre"] - r.corrupted_metric).mean(-1)  # [layer, group]
        lim = float(restored.abs().max())
        im = ax.imshow(restored.T, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_yticks(range(len(r.groups)), r.groups)
        ax.set_xlabel("decoder layer")
        ax.set_title(f"{short(spec)}: clean {float(r.clean_metric.mean()):.2f}, "
                     f"white {float(r.corrupted_metric.mean()):.2f}", fontsize=9)
        fig.colorbar(im, ax=ax, label="restored logit diff (logits)")
    fig.suptitle("Activation patching of resid_pre from the complete into the white-image run", fontsize=10)
    save(fig, args, "patching_heatmaps")


if __name__ == "__main__":
    main()
