"""The repair figure: effect against k (the selected edit and its same-size random edits), and the
accuracies before and after per group with 95% bootstrap intervals, from ``repair.json``'s record."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure

from mech.figures.style import OKABE_ITO, finish, new_figure, style, wrap

if TYPE_CHECKING:
    from mech.measure.repair.record import RepairRecord

__all__ = ["GROUPS", "repair_figure"]

GROUPS = ("prior_wrong", "prior_right", "unplanted", "all")


def repair_figure(result: RepairRecord | Mapping[str, Any], title: str | None = None) -> Figure:
    """Left: effect on the target accuracy against k (selected: line; random edits: grey points, their
    median dashed). Right: accuracy per group, unedited / selected / median random, with intervals; the
    white-image accuracy and chance beside them.

    Args:
        result: the :class:`~mech.measure.repair.record.RepairRecord` of ``repair.json``, or JSON content
            (``repair.json``'s, or :meth:`mech.measure.repair.result.RepairResult.to_json`), read as one.
        title: the figure's title (default: the model, the edit and the held-out n).

    Raises:
        InputError: JSON content that is not a repair record (the message names the key).
    """
    import numpy as np

    from mech.measure.repair.record import RepairRecord

    result = RepairRecord.of(result)
    with style():
        fig = new_figure(7.0, 3.1)
        ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
        ks = [c.k for c in result.curve]
        ax1.plot(
            ks,
            [c.effect for c in result.curve],
            "o-",
            color=OKABE_ITO["vermillion"],
            label=f"selected ({result.selection.source})",
        )
        for c in result.curve:
            ax1.scatter([c.k] * len(c.random), list(c.random), s=6, color=OKABE_ITO["grey"], zorder=1)
        ax1.plot(
            ks,
            [float(np.median(c.random)) for c in result.curve],
            "--",
            color=OKABE_ITO["grey"],
            label="random, same size (median)",
        )
        ax1.axhline(0, color="black", lw=0.5)
        ax1.set_xscale("log")
        ax1.set_xticks(ks, [str(k) for k in ks])
        ax1.minorticks_off()
        ax1.set_xlabel(f"k ({result.edit.granularity} edited)")
        ax1.set_ylabel(f"Δ accuracy ({result.target.replace('_', ' ')})")
        ax1.legend(loc="upper left", frameon=False)
        groups = [g for g in GROUPS if getattr(result.unedited.accuracy, g).n]
        rnd = result.random
        series = [
            ("unedited", result.unedited, OKABE_ITO["grey"]),
            ("selected", result.selected, OKABE_ITO["vermillion"]),
        ]
        width = 0.8 / (len(series) + 1)
        x = np.arange(len(groups) + 1)
        for j, (name, s, col) in enumerate(series):
            vals = [getattr(s.accuracy, g).value for g in groups] + [s.white_image.accuracy.value]
            ci = [getattr(s.accuracy, g).ci95 for g in groups] + [s.white_image.accuracy.ci95]
            err = np.array([[v - lo, hi - v] for v, (lo, hi) in zip(vals, ci)]).T
            ax2.bar(x + j * width, vals, width, yerr=err, color=col, label=name, capsize=1.5)
        med = [float(np.median([getattr(r.accuracy, g).value for r in rnd])) for g in groups]
        med += [float(np.median([r.white_image.accuracy.value for r in rnd]))]
        ax2.bar(
            x + len(series) * width,
            med,
            width,
            color=OKABE_ITO["blue"],
            label=f"random (median of {len(rnd)})",
        )
        chance = result.unedited.white_image.chance
        ax2.plot([len(groups) - 0.2, len(groups) + 0.8], [chance, chance], ":", color="black", label="chance")
        ax2.set_xticks(x + width, [g.replace("_", " ") for g in groups] + ["white image"])
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("accuracy (held-out)")
        ax2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=4, frameon=False, fontsize=6)
        e = result.edit
        strength = "" if e.alpha == 1 else f", alpha {e.alpha:g}"
        fig.suptitle(
            wrap(
                title
                or f"{result.model}: {e.kind} {e.size} {e.granularity}{strength} "
                f"({result.label}), held-out n = {result.n_held_out}",
                6.8,
            )
        )
        return finish(fig)
