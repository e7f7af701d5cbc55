"""Figure: per-layer modality contributions from the four estimators and Δ(text/image) per model
(figures/contrib_<model>.png), and the overall Δ side by side (figures/contrib_compare.png)."""

from _common import load, parse, save, short

from mech.curves import PATCHED_GROUPS, Contributions
from mech.curves.donors import contributions_for_rows, pair_donors
from mech.figures import compare_figure, contribution_figure


def main():
    args = parse(__doc__, n=96)
    models, data = load(args)
    samples = [s for s in data if s["images"]]
    pairs = {g: pair_donors(samples, g) for g in PATCHED_GROUPS}  # resample donors, as mech contrib
    results = {}
    for spec, m in models.items():
        parts = []
        for start in range(0, len(samples), 16):
            rows = range(start, min(start + 16, len(samples)))
            parts.append(contributions_for_rows(m, samples, rows, pairs)[0])
        results[short(spec)] = Contributions.concat(parts).to_json()
        save(
            contribution_figure(results[short(spec)], f"{spec} on {args.data} (n = {len(samples)})"),
            args,
            f"contrib_{short(spec)}",
        )
    save(compare_figure(results), args, "contrib_compare")


if __name__ == "__main__":
    main()
