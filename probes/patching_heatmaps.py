"""Figure: denoising activation patching (complete -> white image) of resid_pre, restored logit
difference per layer and token group, one panel per model -> figures/patching_heatmaps.png."""

import torch
from _common import load, parse, save, short

import mech
from mech.conditions import condition_inputs
from mech.figures.style import DIVERGING, finish, new_figure, style
from mech.prepare.targets import answer_tokens


def main():
    args = parse(__doc__, n=64)
    models, data = load(args)
    samples = [s for s in data if s["images"]]
    restored, results = {}, {}
    for spec, m in models.items():
        clean = condition_inputs(m, samples, "complete")
        corrupted = condition_inputs(m, samples, "white_image")
        last = m.logits(clean)[torch.arange(len(samples)), clean.groups.last()].float()
        answer, cf = answer_tokens(m, samples, last)
        r = mech.activation_patching(
            m,
            clean,
            corrupted,
            sites="resid_pre",
            positions=("image", "text", "last"),
            answer=answer,
            counterfactual=cf,
            normalize=False,
        )
        restored[spec] = (r.patched["resid_pre"] - r.corrupted_metric).mean(-1)  # [layer, group]
        results[spec] = r
    lim = max(float(x.abs().max()) for x in restored.values())  # one colour scale for every panel
    with style():
        fig = new_figure(2.4 * len(models) + 0.8, 2.6)
        axes = fig.subplots(1, len(models), squeeze=False)[0]
        for ax, (spec, r) in zip(axes, results.items()):
            im = ax.imshow(
                restored[spec].T, aspect="auto", cmap=DIVERGING, vmin=-lim, vmax=lim, interpolation="nearest"
            )
            ax.set_yticks(range(len(r.groups)), r.groups)
            ax.set_xlabel("decoder layer")
            ax.set_title(
                f"{short(spec)}: clean {float(r.clean_metric.mean()):.2f}, "
                f"white {float(r.corrupted_metric.mean()):.2f}"
            )
        fig.colorbar(im, ax=list(axes), label="restored logit diff (logits)", shrink=0.9)
        fig.suptitle(f"Patching resid_pre from the complete into the white-image run (n = {len(samples)})")
    save(finish(fig), args, "patching_heatmaps")


if __name__ == "__main__":
    main()
