"""Markdown tables laid out like the paper's Tables 1 and 2, and the evaluation figure."""

from __future__ import annotations

import os
from pathlib import Path

from mech.conditions import PAPER_NAMES
from mech.measure.evaluation.consistency import PAIR_LABELS, PAIRS, SUBSETS

TABLE1_ORDER = ("complete", "white_image", "image_only", "no_image", "black_image", "noise_image",
                "visual_noise", "visual_mean")
SUBSET_LABELS = {"all": "All samples", "correct": "Correct samples", "wrong": "Wrong samples"}


def _order(conditions) -> list[str]:
    return [c for c in TABLE1_ORDER if c in conditions] + [c for c in conditions if c not in TABLE1_ORDER]


def table1(result: dict, model: str | None = None) -> str:
    """Table 1: accuracy (%) per condition, and its drop from Complete in parentheses."""
    conds = _order(result["conditions"])
    head = "| Model | " + " | ".join(PAPER_NAMES.get(c, c) for c in conds) + " |"
    rule = "|---|" + "---:|" * len(conds)
    cells = []
    for c in conds:
        row = result["conditions"][c]
        acc = row["accuracy"]
        text = "–" if acc is None else f"{100 * acc:.1f}"
        if c != "complete" and row.get("drop") is not None:
            text += f" ({-100 * row['drop']:+.1f})"
        cells.append(text)
    name = model or result.get("settings", {}).get("model") or "model"
    n = result["conditions"][conds[0]]["n"]
    return "\n".join([head, rule, f"| {name} | " + " | ".join(cells) + " |", "",
                      f"Accuracy in % over n = {n} samples; in parentheses the change from Complete "
                      "(percentage points)."])


def table2(result: dict) -> str:
    """Table 2: consistent / inconsistent counts (percent) per comparison, over all / correct / wrong."""
    cons = result.get("consistency")
    if cons is None:
        return "(consistency needs the complete condition)"
    keys = [k for k, _ in PAIRS]
    head = "| Samples | | " + " | ".join(PAIR_LABELS[k] for k in keys) + " |"
    lines = [head, "|---|---|" + "---:|" * len(keys)]
    for subset in SUBSETS:
        for kind, num, pct in (("Consistent", "num", "pct"), ("Inconsistent", "inconsistent_num", "inconsistent_pct")):
            cells = []
            for k in keys:
                cell = cons[subset].get(k)
                if cell is None:
                    cells.append("–")
                else:
                    p = cell[pct]
                    cells.append(f"{cell[num]} ({'–' if p is None else f'{p:.1f}%'})")
            total = next((cons[subset][k]["total"] for k in keys if cons[subset].get(k)), 0)
            label = f"{SUBSET_LABELS[subset]} (n={total})" if kind == "Consistent" else ""
            lines.append(f"| {label} | {kind} | " + " | ".join(cells) + " |")
    lines += ["", "Text-only = Text w/ white (white image); Image-only = Image w/ B-P (basic prompt). Correct/wrong: "
              "by the complete-input prediction. All: the three predictions agree. An unparsed answer agrees with "
              "nothing."]
    return "\n".join(lines)


def markdown(result: dict, model: str | None = None) -> str:
    """The whole ``eval.md``: settings, Table 1, Table 2, skips."""
    s = result.get("settings", {})
    skipped = result.get("skipped", {})
    lines = [f"# mech eval: {model or s.get('model')} on {s.get('data')}", "",
             f"Method: {s.get('method')}" + (f" (scoring: {s.get('scoring')})" if s.get("scoring") else "")
             + f", prompt style: {s.get('style')}, seed {s.get('seed')}.", "",
             "## Table 1: accuracy per input condition", "", table1(result, model), "",
             "## Table 2: prediction consistency", "", table2(result), "",
             f"## Skipped: {skipped.get('count', 0)}", ""]
    for reason, count in sorted(skipped.get("reasons", {}).items(), key=lambda kv: -kv[1]):
        lines.append(f"- {count} × {reason}")
    return "\n".join(lines) + "\n"


def figure(result: dict, path: str | os.PathLike, chance: float | None = None, title: str | None = None) -> Path:
    """PNG: accuracy per condition (bars, drop labels, chance line) and consistency (% consistent
    per comparison, grouped by all / correct / wrong samples). Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from mech.results import atomic_write

    conds = _order(result["conditions"])
    acc = [100 * (result["conditions"][c]["accuracy"] or 0.0) for c in conds]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 1.15]})
    colors = ["#4c72b0" if c == "complete" else "#dd8452" for c in conds]
    bars = ax1.bar(range(len(conds)), acc, color=colors)
    for b, c, a in zip(bars, conds, acc):
        ax1.text(b.get_x() + b.get_width() / 2, a + 1, f"{a:.1f}", ha="center", va="bottom", fontsize=9)
    if chance is not None:
        ax1.axhline(100 * chance, color="grey", ls="--", lw=1, label=f"chance {100 * chance:.1f}%")
        ax1.legend(loc="upper right", fontsize=8)
    ax1.set_xticks(range(len(conds)), [PAPER_NAMES.get(c, c) for c in conds], rotation=25, ha="right", fontsize=9)
    ax1.set_ylabel("accuracy (%)")
    ax1.set_ylim(0, 105)
    ax1.set_title("Accuracy per input condition (Table 1)")
    cons = result.get("consistency")
    keys = [k for k, _ in PAIRS]
    width = 0.26
    for j, subset in enumerate(SUBSETS):
        vals = []
        for k in keys:
            cell = cons[subset].get(k) if cons else None
            vals.append(np.nan if cell is None or cell["pct"] is None else cell["pct"])
        xs = np.arange(len(keys)) + (j - 1) * width
        total = next((cons[subset][k]["total"] for k in keys if cons and cons[subset].get(k)), 0)
        ax2.bar(xs, vals, width, label=f"{SUBSET_LABELS[subset]} (n={total})",
                color=["#55a868", "#4c72b0", "#c44e52"][j])
        for x, v in zip(xs, vals):
            if not np.isnan(v):
                ax2.text(x, v + 1, f"{v:.0f}", ha="center", va="bottom", fontsize=7)
    ax2.set_xticks(range(len(keys)), [PAIR_LABELS[k] for k in keys], rotation=15, ha="right", fontsize=9)
    ax2.set_ylabel("consistent predictions (%)")
    ax2.set_ylim(0, 128)
    ax2.set_yticks(range(0, 101, 20))
    ax2.set_title("Prediction consistency (Table 2)")
    ax2.legend(fontsize=7.5, loc="upper center", ncol=3, frameon=False, columnspacing=0.8, handlelength=1.2)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=130, format="png"))
    finally:
        plt.close(fig)
    return path
