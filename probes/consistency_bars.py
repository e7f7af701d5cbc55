"""Figure: accuracy per input condition and prediction consistency (the paper's Tables 1-2 as
bars), one bar per model -> figures/consistency_bars.png."""

from _common import load, parse, save, short

from mech.figures.style import SERIES, finish, new_figure, style
from mech.measure.evaluation import evaluate
from mech.measure.evaluation.tables import chance_level

CONDITIONS = ("complete", "white_image", "image_only", "no_image")
PAIRS = ("complete&white_image", "complete&image_only", "white_image&image_only", "all")


def main():
    args = parse(__doc__, n=500)
    models, data = load(args)
    evals = {
        short(s): evaluate(m, data, conditions=CONDITIONS, batch_size=50, progress=False)
        for s, m in models.items()
    }
    width = 0.8 / len(evals)
    with style():
        fig = new_figure(6.0, 2.6)
        axes = fig.subplots(1, 2)
        for k, (name, ev) in enumerate(evals.items()):
            axes[0].bar(
                [i + k * width for i in range(len(CONDITIONS))],
                [100 * ev["conditions"][c]["accuracy"] for c in CONDITIONS],
                width,
                label=name,
                color=SERIES[k],
            )
            axes[1].bar(
                [i + k * width for i in range(len(PAIRS))],
                [ev["consistency"]["all"][p]["pct"] for p in PAIRS],
                width,
                label=name,
                color=SERIES[k],
            )
        chance = chance_level(next(iter(evals.values())))
        if chance is not None:
            axes[0].axhline(100 * chance, color="black", ls="--", lw=0.9, label=f"chance {chance:.3f}")
        axes[0].set_xticks([i + 0.4 - width / 2 for i in range(len(CONDITIONS))], CONDITIONS, rotation=15)
        axes[0].set_ylabel("accuracy (%)")
        axes[0].set_title("Accuracy per input condition")
        axes[1].set_xticks(
            [i + 0.4 - width / 2 for i in range(len(PAIRS))], ["C & T(white)", "C & I", "T & I", "all"]
        )
        axes[1].set_ylabel("consistent predictions (%)")
        axes[1].set_title("Prediction consistency (all samples)")
        for ax in axes:
            ax.legend()
        n = next(iter(evals.values()))["conditions"]["complete"]["n"]
        fig.suptitle(f"n = {n} samples of {args.data}")
    save(finish(fig), args, "consistency_bars")


if __name__ == "__main__":
    main()
