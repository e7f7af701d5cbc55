"""Figure: held-out accuracy of linear probes for the colour of the left-most shape, per layer,
read at the image tokens and at the answer position -> figures/linear_probes.png."""

from _common import load, parse, save, short

from mech.figures.style import SERIES, finish, new_figure, style
from mech.measure.probing import linear_probe


def colour(sample):
    return sample["attributes"]["objects"][0]["color"]


def main():
    args = parse(__doc__, n=400)
    models, data = load(args)
    samples = [s for s in data if s["images"]]
    with style():
        fig = new_figure(3.5, 3.2)
        ax = fig.add_subplot()
        for k, (spec, m) in enumerate(models.items()):
            r = linear_probe(m, samples, colour)
            for i, readout in enumerate(r.readouts):
                ax.plot(
                    r.accuracy[:, i],
                    marker="o",
                    ls="-" if readout == "image" else "--",
                    color=SERIES[k],
                    label=f"{short(spec)} @ {readout}",
                )
        ax.axhline(r.majority, color="gray", lw=0.8, label="majority baseline")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("decoder layer (resid_post)")
        ax.set_ylabel("held-out probe accuracy")
        ax.set_title(
            f"Is the left shape's colour linearly decodable?\n(n = {r.n_train} train / {r.n_test} test)"
        )
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2)
    save(finish(fig), args, "linear_probes")


if __name__ == "__main__":
    main()
