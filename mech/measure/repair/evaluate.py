"""Answers of the held-out split under an edit, and the numbers every repair reports.

:class:`Prepared` holds the held-out inputs per condition and batch (made once, reused for every
edit); :func:`answers` runs one edit over them and returns, per sample, the predicted candidate under
both scorings (:mod:`mech.measure.repair.targets`). :func:`summarize` turns the predictions of one edit
(and of the unedited model) into the reported numbers, each accuracy with a 95% percentile bootstrap
interval over samples (Efron & Tibshirani 1993; the same resampling as :func:`mech.curves.ratio.imbalance`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mech.engines.unembed import answer_logits
from mech.measure.repair.edits import Edit, applied

__all__ = [
    "CONDITIONS",
    "Prepared",
    "answers",
    "bootstrap_mean",
    "distribution",
    "prepare_split",
    "summarize",
    "target_effect",
]

#: what every repair result reports under the white image (besides the complete image)
CONDITIONS = ("complete", "white_image")


@dataclass(frozen=True)
class Prepared:
    """Held-out inputs: ``batches[condition]`` is a list of ``(rows, inputs)``; ``cands[scoring]`` per sample."""

    batches: dict
    cands: dict
    n: int


def prepare_split(
    m, samples: Sequence[dict], cands: dict, batch_size: int, conditions=CONDITIONS, seed: int = 0
) -> Prepared:
    """Inputs of ``samples`` under each condition, in batches of ``batch_size`` (rows in sample order)."""
    from mech.conditions import condition_inputs

    batches = {}
    for c in conditions:
        batches[c] = []
        for i in range(0, len(samples), batch_size):
            rows = range(i, min(i + batch_size, len(samples)))
            batches[c].append((rows, condition_inputs(m, [samples[r] for r in rows], c, seed=seed)))
    return Prepared(batches, cands, len(samples))


@torch.no_grad()
def answers(m, prep: Prepared, edit: Edit | None, conditions: Sequence[str] = CONDITIONS) -> dict[str, dict]:
    """``{condition: {scoring: LongTensor [n] predicted candidate index}}`` under ``edit`` (None: unedited)."""
    out: dict[str, dict] = {}
    for c in conditions:
        preds = {s: torch.full((prep.n,), -1, dtype=torch.long) for s in prep.cands}
        for rows, inputs in prep.batches[c]:
            with applied(m, inputs, edit):
                last = answer_logits(m, inputs).float().cpu()  # the answer position only
            for s, cands in prep.cands.items():
                for j, r in enumerate(rows):
                    ids = cands[r].ids
                    preds[s][r] = int(last[j, list(ids)].argmax())
        out[c] = preds
    return out


def bootstrap_mean(x: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Mean of ``x`` (one value per sample) with a 95% percentile bootstrap interval; ``n``; None when empty."""
    x = np.asarray(x, dtype=float)
    if x.size == 0:
        return {"value": None, "ci95": [None, None], "n": 0}
    rng = np.random.default_rng(seed)
    boot = x[rng.integers(0, x.size, (n_boot, x.size))].mean(1)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return {"value": float(x.mean()), "ci95": [float(lo), float(hi)], "n": int(x.size)}


def distribution(pred: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    """Fraction of predictions per label (``pred``: indices into ``labels``)."""
    n = max(len(pred), 1)
    return {lab: float((pred == i).sum() / n) for i, lab in enumerate(labels)}


def summarize(
    pred: dict, base: dict, info: dict, primary: str, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """The reported numbers of one edit.

    Args:
        pred, base: :func:`answers` of the edit and of the unedited model.
        info: per-sample arrays: ``gold`` and ``prior`` (candidate index per scoring; prior -1 where the
            prior answer is not a candidate), ``category``, ``group`` (``prior_wrong`` / ``prior_right`` /
            ``unplanted``), ``labels`` (candidate labels per scoring, per sample).
        primary: the scoring of the accuracies.

    Returns:
        ``accuracy.{all, prior_wrong, prior_right, unplanted, by_category.{c}}`` ({value, ci95, n}),
        ``flips.{wrong_to_right, right_to_wrong}`` (count and fraction of n), ``prior_to_gold`` (of the prior-wrong
        items the unedited model answered with the prior, the fraction now answered right), ``answers_prior``
        (fraction of prior-wrong items answered with the prior), ``options`` (predicted letter distribution over the
        items with the most common option count, its ``max_dev_uniform`` and ``max_dev_gold`` (largest gap to the
        gold letters' distribution), accuracy under the options scoring), ``answer_distribution.{category}``,
        ``white_image.{accuracy, chance, consistency}``.
    """
    gold, prior = info["gold"][primary], info["prior"][primary]
    p, b = pred["complete"][primary].numpy(), base["complete"][primary].numpy()
    ok, ok0 = p == gold, b == gold
    group, cat = info["group"], info["category"]
    acc = {"all": bootstrap_mean(ok, n_boot, seed)}
    for g in ("prior_wrong", "prior_right", "unplanted"):
        acc[g] = bootstrap_mean(ok[group == g], n_boot, seed)
    acc["by_category"] = {c: bootstrap_mean(ok[cat == c], n_boot, seed) for c in sorted(set(cat.tolist()))}
    n = len(ok)
    w2r, r2w = int((~ok0 & ok).sum()), int((ok0 & ~ok).sum())
    wrong = group == "prior_wrong"
    driven = wrong & (b == prior)
    out = {
        "accuracy": acc,
        "flips": {
            "wrong_to_right": {"count": w2r, "fraction": w2r / n},
            "right_to_wrong": {"count": r2w, "fraction": r2w / n},
        },
        "prior_to_gold": bootstrap_mean((p == gold)[driven], n_boot, seed),
        "answers_prior": bootstrap_mean((p == prior)[wrong], n_boot, seed),
    }
    if "options" in pred["complete"]:
        po = pred["complete"]["options"].numpy()
        k = info["n_options"]
        same = k == np.bincount(k).argmax() if k.size else k
        letters = [chr(ord("A") + i) for i in range(int(k[same].max()) if same.any() else 0)]
        dist = distribution(po[same], letters)
        gold_dist = distribution(info["gold"]["options"][same], letters)
        out["options"] = {
            "distribution": dist,
            "n": int(same.sum()),
            "max_dev_uniform": max(abs(v - 1 / len(letters)) for v in dist.values()) if letters else None,
            "max_dev_gold": max(abs(dist[x] - gold_dist[x]) for x in letters) if letters else None,
            "gold_distribution": gold_dist,
            "accuracy": bootstrap_mean(po == info["gold"]["options"], n_boot, seed),
        }
    out["answer_distribution"] = {}
    for c in sorted(set(cat.tolist())):
        rows = np.nonzero(cat == c)[0]
        labels = info["labels"][primary][rows[0]]
        if all(info["labels"][primary][r] == labels for r in rows):  # one answer set for the category
            out["answer_distribution"][c] = distribution(p[rows], labels)
    if "white_image" in pred:
        pw = pred["white_image"][primary].numpy()
        out["white_image"] = {
            "accuracy": bootstrap_mean(pw == gold, n_boot, seed),
            "chance": float(np.mean(1.0 / info["n_candidates"][primary])),
            "consistency": bootstrap_mean(pw == p, n_boot, seed),
        }
    return out


def target_effect(summary: dict, base: dict, target: str) -> float:
    """The repair's effect: the edit's accuracy on ``target`` (``prior_wrong`` or ``all``) minus the unedited one."""
    a, b = summary["accuracy"][target]["value"], base["accuracy"][target]["value"]
    return float("nan") if a is None or b is None else a - b
