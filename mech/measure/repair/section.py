"""The repair section of ``report.md``, written from ``repair.json``'s record (:func:`repair_lines`)."""

from __future__ import annotations

from collections.abc import Mapping
from statistics import median
from typing import Any

from mech.measure.repair.record import Estimate, RepairRecord
from mech.report_words import fmt as _fmt

__all__ = ["ROWS", "fmt", "repair_lines"]


def fmt(x) -> str:
    return _fmt(x, 3)


ROWS = (
    ("prior_wrong", "where the prior is wrong"),
    ("prior_right", "where the prior is right"),
    ("unplanted", "question types without a planted prior"),
    ("all", "all"),
)


def _ci(v: Estimate) -> str:
    if v.value is None:
        return "–"
    lo, hi = v.ci95
    return f"{fmt(v.value)} [{fmt(lo)}, {fmt(hi)}]"


def repair_lines(r: RepairRecord | Mapping[str, Any], prefix: str = "") -> list[str]:
    """Markdown lines: the edit, accuracy per group before / after / random (median) with 95% intervals,
    flips, option letters, white image, the controls and the curve, and the figure.

    Args:
        r: the :class:`~mech.measure.repair.record.RepairRecord` of ``repair.json`` (JSON content is read
            as one).
        prefix: the folder of its files, relative to ``report.md``.

    Raises:
        InputError: JSON content that is not a repair record (the message names the key).
    """
    r = RepairRecord.of(r)
    e, c = r.edit, r.controls
    rnd = r.random
    lines = [
        f"### Repair: {e.kind} {e.size} {e.granularity} ({r.label})",
        "",
        f"Units ranked by {r.selection.source} on a fit split of {r.n_fit} samples "
        f"({r.selection.n_fit} with a wrong prior); evaluated on {r.n_held_out} held-out samples "
        f"(other ids); prior: {r.prior}; scoring: {r.scoring}; positions: {e.positions}, "
        f"alpha {e.alpha}." + (f" {r.selection.note}." if r.selection.note else ""),
        "",
        "| accuracy | unedited | edited | random edits (median of " + str(len(rnd)) + ") | n |",
        "|---|---|---|---|---|",
    ]
    for g, words in ROWS:
        u, s = getattr(r.unedited.accuracy, g), getattr(r.selected.accuracy, g)
        if not u.n:
            continue
        med = median(getattr(x.accuracy, g).value for x in rnd)
        lines.append(f"| {words} | {_ci(u)} | {_ci(s)} | {fmt(med)} | {u.n} |")
    w, wu = r.selected.white_image, r.unedited.white_image
    lines += [
        f"| white image | {_ci(wu.accuracy)} | {_ci(w.accuracy)} | "
        f"{fmt(median(x.white_image.accuracy.value for x in rnd))} | "
        f"{w.accuracy.n} |",
        "",
    ]
    f = r.selected.flips
    lines.append(
        f"Flips: wrong → right {f.wrong_to_right.count}, right → wrong {f.right_to_wrong.count}. "
        f"Of the prior-driven wrong answers, {_ci(r.selected.prior_to_gold)} are now right. "
        f"White-image accuracy {fmt(w.accuracy.value)} (chance {fmt(w.chance)}); complete vs "
        f"white-image consistency {fmt(wu.consistency.value)} → {fmt(w.consistency.value)}."
    )
    o, ou = r.selected.options, r.unedited.options
    if o:
        dist = ", ".join(f"{k} {fmt(v)}" for k, v in o.distribution.items())
        lines.append(
            f"Option letters after the edit: {dist} (largest gap to uniform {fmt(o.max_dev_uniform)}, "
            f"unedited {fmt(ou.max_dev_uniform)}; to the gold letters {fmt(o.max_dev_gold)})."
        )
    ratio = "–" if c.ratio_to_median is None else f"{c.ratio_to_median:.1f}×"
    lines += [
        "",
        f"Effect on accuracy {c.target.replace('_', ' ')}: {c.selected:+.3f}; random edits of the same "
        f"size: median {c.median:+.3f}, max {c.max:+.3f} (ratio to the median {ratio}; "
        f"{'above' if c.above_max else 'not above'} every random edit).",
        "",
        "| k | effect | random (median) | random (max) |",
        "|---|---|---|---|",
    ]
    for p in r.curve:
        ran = sorted(p.random)
        lines.append(f"| {p.k} | {p.effect:+.3f} | {median(ran):+.3f} | {ran[-1]:+.3f} |")
    lines.append("")
    for fig in r.figures:
        lines += [f"![{fig}]({prefix}{fig})", ""]
    return lines
