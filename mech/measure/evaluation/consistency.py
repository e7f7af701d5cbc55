"""Accuracy per condition and prediction consistency across conditions (the paper's Tables 1-2).

Zheng et al. 2025 (arXiv:2505.18657), §4 case study: Table 1 gives accuracy under each input
condition and its drop from the complete input; Table 2 counts, over all samples and separately
over the samples the model answers correctly / wrongly *with the complete input*, how often the
predicted answer is the same under two conditions (Complete & Text-only, Complete & Image-only,
Text-only & Image-only) and under all three ("All"). "Text-only" is the white-image condition
("Text w/ white"), "Image-only" the basic-prompt condition ("Image w/ B-P").

A prediction is an option letter (or normalised text for open questions) or ``None`` (a response
that could not be parsed). ``None`` is consistent with nothing, not even another ``None``: two
failures to answer are not the same answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mech.errors import InputError

__all__ = ["PAIRS", "PAIR_LABELS", "SUBSETS", "accuracy_table", "consistency_table"]

#: (key, conditions) of the paper's Table 2 comparisons; "all" = all three agree
PAIRS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("complete&white_image", ("complete", "white_image")),
    ("complete&image_only", ("complete", "image_only")),
    ("white_image&image_only", ("white_image", "image_only")),
    ("all", ("complete", "white_image", "image_only")),
)
SUBSETS = ("all", "correct", "wrong")
#: labels of the paper's Table 2
PAIR_LABELS = {
    "complete&white_image": "Complete & Text-only",
    "complete&image_only": "Complete & Image-only",
    "white_image&image_only": "Text-only & Image-only",
    "all": "All",
}


def _agree(preds: Sequence[Any]) -> bool:
    first = preds[0]
    return first is not None and all(p == first for p in preds[1:])


def consistency_table(
    predictions: Mapping[str, Sequence[Any]],
    complete_correct: Sequence[bool],
    pairs: Sequence[tuple[str, Sequence[str]]] = PAIRS,
) -> dict[str, dict[str, dict | None]]:
    """Consistent and inconsistent counts per comparison and subset (the paper's Table 2).

    Args:
        predictions: condition -> per-sample predictions, all aligned on the same sample order.
        complete_correct: per sample, whether the complete-input prediction is correct; splits
            the samples into ``correct`` and ``wrong``.
        pairs: ``(key, conditions)``; a comparison counts a sample consistent when all its
            conditions give the same non-None prediction.

    Returns:
        ``{subset: {key: {"num", "pct", "inconsistent_num", "inconsistent_pct", "total"}}}`` for
        subsets ``all``, ``correct``, ``wrong``; ``num`` = consistent samples, ``pct`` = 100 ×
        num / total (percent; None when the subset is empty). A comparison whose conditions were
        not evaluated is None.

    Raises:
        InputError: predictions of different lengths, or not matching ``complete_correct``.
    """
    n = len(complete_correct)
    for cond, p in predictions.items():
        if len(p) != n:
            raise InputError(
                f"{len(p)} predictions for condition {cond!r} but {n} samples; align the "
                "predictions of every condition on the same samples."
            )
    members = {
        "all": list(range(n)),
        "correct": [i for i in range(n) if complete_correct[i]],
        "wrong": [i for i in range(n) if not complete_correct[i]],
    }
    table: dict[str, dict[str, dict | None]] = {}
    for subset in SUBSETS:
        rows = members[subset]
        table[subset] = {}
        for key, conds in pairs:
            if any(c not in predictions for c in conds):
                table[subset][key] = None
                continue
            num = sum(_agree([predictions[c][i] for c in conds]) for i in rows)
            total = len(rows)
            table[subset][key] = {
                "num": num,
                "pct": 100.0 * num / total if total else None,
                "inconsistent_num": total - num,
                "inconsistent_pct": 100.0 * (total - num) / total if total else None,
                "total": total,
            }
    return table


def accuracy_table(correct: Mapping[str, Sequence[bool]], reference: str = "complete") -> dict[str, dict]:
    """Per condition ``{"accuracy", "n", "correct", "drop"}`` (the paper's Table 1).

    ``accuracy`` is a fraction in [0, 1]; ``drop`` = accuracy(``reference``) − accuracy, in the
    same unit (None without the reference condition).
    """
    out = {}
    for cond, flags in correct.items():
        n = len(flags)
        out[cond] = {"accuracy": sum(flags) / n if n else None, "n": n, "correct": int(sum(flags))}
    ref = out.get(reference, {}).get("accuracy")
    for cond in out:
        acc = out[cond]["accuracy"]
        out[cond]["drop"] = None if ref is None or acc is None else ref - acc
    return out
