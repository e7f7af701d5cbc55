"""Markdown tables laid out like the paper's Tables 1 and 2, and the evaluation figure.

Each function reads an :class:`~mech.measure.evaluation.record.EvalRecord`; a dict (``eval.json``'s
content or :func:`mech.evaluate`'s result) is converted at the call
(:meth:`EvalRecord.of <mech.contract.record.Record.of>`), and one that is not an ``eval.json`` raises
:class:`~mech.errors.InputError` naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mech.conditions import PAPER_NAMES
from mech.measure.evaluation.consistency import PAIR_LABELS, PAIRS, SUBSETS
from mech.measure.evaluation.record import EvalRecord

__all__ = ["SUBSET_LABELS", "TABLE1_ORDER", "chance_level", "figure", "markdown", "table1", "table2"]

TABLE1_ORDER = (
    "complete",
    "white_image",
    "image_only",
    "no_image",
    "black_image",
    "noise_image",
    "visual_noise",
    "visual_mean",
)
SUBSET_LABELS = {"all": "All samples", "correct": "Correct samples", "wrong": "Wrong samples"}


def _order(conditions) -> list[str]:
    return [c for c in TABLE1_ORDER if c in conditions] + [c for c in conditions if c not in TABLE1_ORDER]


def table1(result: EvalRecord | Mapping[str, Any], model: str | None = None) -> str:
    """Table 1: accuracy (%) per condition, and its drop from Complete in parentheses."""
    rec = EvalRecord.of(result)
    conds = _order(rec.conditions)
    head = "| Model | " + " | ".join(PAPER_NAMES.get(c, c) for c in conds) + " |"
    rule = "|---|" + "---:|" * len(conds)
    cells = []
    for c in conds:
        row = rec.conditions[c]
        acc = row.accuracy
        text = "–" if acc is None else f"{100 * acc:.1f}"
        if c != "complete" and row.drop is not None:
            text += f" ({-100 * row.drop:+.1f})"
        cells.append(text)
    name = model or rec.settings.model or "model"
    n = rec.conditions[conds[0]].n
    return "\n".join(
        [
            head,
            rule,
            f"| {name} | " + " | ".join(cells) + " |",
            "",
            f"Accuracy in % over n = {n} samples; in parentheses the change from Complete "
            "(percentage points).",
        ]
    )


def table2(result: EvalRecord | Mapping[str, Any]) -> str:
    """Table 2: consistent / inconsistent counts (percent) per comparison, over all / correct / wrong."""
    cons = EvalRecord.of(result).consistency
    if cons is None:
        return "(consistency needs the complete condition)"
    keys = [k for k, _ in PAIRS]
    head = "| Samples | | " + " | ".join(PAIR_LABELS[k] for k in keys) + " |"
    lines = [head, "|---|---|" + "---:|" * len(keys)]
    for subset in SUBSETS:
        for kind, num, pct in (
            ("Consistent", "num", "pct"),
            ("Inconsistent", "inconsistent_num", "inconsistent_pct"),
        ):
            cells = []
            for k in keys:
                cell = cons[subset].get(k)
                if cell is None:
                    cells.append("–")
                else:
                    p = getattr(cell, pct)
                    cells.append(f"{getattr(cell, num)} ({'–' if p is None else f'{p:.1f}%'})")
            total = next((cons[subset][k].total for k in keys if cons[subset].get(k)), 0)
            label = f"{SUBSET_LABELS[subset]} (n={total})" if kind == "Consistent" else ""
            lines.append(f"| {label} | {kind} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Text-only = Text w/ white (white image); Image-only = Image w/ B-P (basic prompt). Correct/wrong: "
        "by the complete-input prediction. All: the three predictions agree. An unparsed answer agrees with "
        "nothing.",
    ]
    return "\n".join(lines)


def markdown(result: EvalRecord | Mapping[str, Any], model: str | None = None) -> str:
    """The whole ``eval.md``: settings, Table 1, Table 2, skips."""
    rec = EvalRecord.of(result)
    s, skipped = rec.settings, rec.skipped
    lines = [
        f"# mech eval: {model or s.model} on {s.data}",
        "",
        f"Method: {s.method}"
        + (f" (scoring: {s.scoring})" if s.scoring else "")
        + f", prompt style: {s.style}, seed {s.seed}.",
        "",
        "## Table 1: accuracy per input condition",
        "",
        table1(rec, model),
        "",
        "## Table 2: prediction consistency",
        "",
        table2(rec),
        "",
        f"## Skipped: {skipped.count}",
        "",
    ]
    for reason, count in sorted(skipped.reasons.items(), key=lambda kv: -kv[1]):
        lines.append(f"- {count} × {reason}")
    unavailable = rec.unavailable
    if unavailable:
        lines += ["", "## Conditions this model cannot take (not measured)", ""]
        lines += [f"- {c}: {reason}" for c, reason in unavailable.items()]
    return "\n".join(lines) + "\n"


def chance_level(result: EvalRecord | Mapping[str, Any]) -> float | None:
    """Accuracy of uniform guessing: the mean over samples of 1 / (the sample's number of options),
    from the data's own option counts (``n_options``, 0 for an open question); None without
    options."""
    opts = [k for k in EvalRecord.of(result).n_options if k]
    return sum(1 / k for k in opts) / len(opts) if opts else None


def figure(result: EvalRecord | Mapping[str, Any], chance: float | None = None, title: str | None = None):
    """A :class:`matplotlib.figure.Figure`: accuracy per condition (bars, chance line) above the
    consistency (% consistent per comparison, over all / correct / wrong samples). ``chance``
    defaults to :func:`chance_level` of the data. Write it with :func:`mech.figures.save_figure`."""
    import numpy as np

    from mech.figures.style import OKABE_ITO, RC, finish, new_figure, style, wrap

    rec = EvalRecord.of(result)
    chance = chance_level(rec) if chance is None else chance
    conds = _order(rec.conditions)
    acc = [100 * (rec.conditions[c].accuracy or 0.0) for c in conds]
    n = rec.conditions[conds[0]].n if conds else 0
    with style():
        fig = new_figure(4.6, 5.2)
        ax1, ax2 = fig.subplots(2, 1)
        colors = [OKABE_ITO["blue"] if c == "complete" else OKABE_ITO["orange"] for c in conds]
        bars = ax1.bar(range(len(conds)), acc, color=colors, width=0.7)
        for b, a in zip(bars, acc):
            ax1.text(
                b.get_x() + b.get_width() / 2,
                a + 1.5,
                f"{a:.1f}",
                ha="center",
                va="bottom",
                fontsize=7,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.6},
                zorder=3,
            )
        if chance is not None:
            ax1.axhline(
                100 * chance, color="black", ls="--", lw=0.9, label=f"chance {chance:.3f} (mean 1 / #options)"
            )
            ax1.legend(loc="upper right")
        ax1.set_xticks(range(len(conds)), [PAPER_NAMES.get(c, c) for c in conds], rotation=20, ha="right")
        ax1.set_ylabel("accuracy (%)")
        ax1.set_ylim(0, 112)
        ax1.set_yticks(range(0, 101, 20))
        ax1.set_title(f"Accuracy per input condition (Table 1; n = {n})")
        cons = rec.consistency
        keys = [k for k, _ in PAIRS]
        width = 0.27
        palette = [OKABE_ITO["green"], OKABE_ITO["blue"], OKABE_ITO["vermillion"]]
        for j, subset in enumerate(SUBSETS):
            vals = []
            for k in keys:
                cell = cons[subset].get(k) if cons else None
                vals.append(np.nan if cell is None or cell.pct is None else cell.pct)
            xs = np.arange(len(keys)) + (j - 1) * width
            total = next((cons[subset][k].total for k in keys if cons and cons[subset].get(k)), 0)
            ax2.bar(
                xs,
                vals,
                width,
                label=f"{SUBSET_LABELS[subset].split()[0].lower()} (n = {total})",
                color=palette[j],
            )
            for x, v in zip(xs, vals):
                if not np.isnan(v):
                    ax2.text(x, v + 1.5, f"{v:.0f}", ha="center", va="bottom", fontsize=6)
        ax2.set_xticks(range(len(keys)), [PAIR_LABELS[k] for k in keys], rotation=12, ha="right")
        ax2.set_ylabel("consistent predictions (%)")
        ax2.set_ylim(0, 125)
        ax2.set_yticks(range(0, 101, 20))
        ax2.set_title("Prediction consistency (Table 2)")
        ax2.legend(loc="upper center", ncol=3, columnspacing=0.9, handlelength=1.0)
        if title:
            fig.suptitle(wrap(title, fig.get_figwidth() - 0.2, RC["figure.titlesize"]))
    return finish(fig)
