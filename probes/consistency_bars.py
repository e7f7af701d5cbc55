"""Figure: accuracy per input condition and prediction consistency (the paper's Tables 1-2 as
bars), one bar per model -> figures/consistency_bars.png."""

from _common import save, load, parse, short

import matplotlib.pyplot as plt

from mech.measure.evaluation import evaluate

CONDITIONS = ("complete", "white_image", "image_only", "no_image")
PAIRS = ("complete&white_image", "complete&image_only", "white_image&image_only", "all")


def main():
    args = parse(__doc__, n=500)
    models, data = load(args)
    evals = {short(s): evaluate(m, data, conditions=CONDITIONS, batch_size=50, progress=False)
             for s, m in models.items()}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    width = 0.8 / len(evals)
    for k, (name, ev) in enumerate(evals.items()):
        axes[0].bar([i + k * width for i in range(len(CONDITIONS))],
                    [100 * ev["conditions"][c]["accuracy"] for c in CONDITIONS], width, label=name)
        axes[1].bar([i + k * width for i in range(len(PAIRS))],
                    [ev["consistency"]["all"][p]["pct"] for p in PAIRS], width, label=name)
    axes[0].set_xticks([i + 0.4 - width / 2 for i in range(len(CONDITIONS))], CONDITIONS, fontsize=8)
    axes[0].set_ylabel("accuracy (%)")
    axes[0].set_title("Accuracy per input condition")
    axes[1].set_xticks([i + 0.4 - width / 2 for i in range(len(PAIRS))], ["C & T(white)", "C & I", "T & I", "all"])
    axes[1].set_ylabel("consistent predictions (%)")
    axes[1].set_title("Prediction consistency (all samples)")
    for ax in axes:
        ax.legend(fontsize=8)
    save(fig, args, "consistency_bars")


if __name__ == "__main__":
    main()
