"""``contrib.json``'s summaries beyond the curves: the decomposition's split by component
(``decomposition``) and every estimator per question type (``by_category``).

Question type (:func:`category_of`): a sample's ``category`` field where the data set gives one
(jsonl), else its ``template`` (``organism:shapes``), else its ``subject`` (MMMU-Pro), else ``"all"``.

A removal-based estimator (``patching``, ``decomposition``) cannot see a group whose removal changes
no input: a donor with the same content (the pairing of :mod:`mech.curves.donors` takes one only when
no other sample differs), or a model that embeds every input of the group alike, gives C = 0 by
construction. Each category entry of those estimators carries ``identical_donor`` (group -> share of
its samples whose donor's embeddings of the group equal their own) and ``blind`` (the groups where that
share is 1), so a report can flag the category rather than print a meaningless Δ. ``overall`` carries
``coverage`` (:func:`coverage`): the samples with an estimate and the reason for every other one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mech.curves.ratio import Pool, imbalance, pool_layers, ratio
from mech.errors import InputError

__all__ = [
    "CATEGORY_KEYS",
    "REMOVAL_ESTIMATORS",
    "by_category",
    "category_of",
    "coverage",
    "decomposition_json",
    "estimated",
    "group_imbalance",
    "identical_donor",
]

CATEGORY_KEYS = ("category", "template", "subject")
#: estimators whose contributions come from removing a group's content
REMOVAL_ESTIMATORS = ("patching", "decomposition")


def category_of(sample: Mapping) -> str:
    """The question type of a sample dict: the first of ``category``, ``template``, ``subject`` that is
    set, else ``"all"``."""
    for key in CATEGORY_KEYS:
        value = sample.get(key)
        if value not in (None, ""):
            return str(value)
    return "all"


def _mean(x: torch.Tensor) -> float | None:
    x = x.double()
    return None if x.numel() == 0 else float(x.mean())


def estimated(x: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """``[sample]`` bool: both groups estimated at every layer (as :func:`mech.curves.ratio.imbalance`)."""
    return ~(torch.isnan(x[..., i]).any(1) | torch.isnan(x[..., j]).any(1))


def group_imbalance(
    x: torch.Tensor,
    groups: tuple[str, ...],
    pool: Pool,
    numerator: str,
    denominator: str,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """:meth:`mech.curves.ratio.Imbalance.to_json` of ``x`` ``[sample, layer, group]``; with fewer than 2
    estimated samples the same fields, ``ci95`` ``[None, None]`` (and ``delta`` None without any)."""
    try:
        return imbalance(
            x, groups, pool=pool, numerator=numerator, denominator=denominator, n_boot=n_boot, seed=seed
        ).to_json()
    except InputError:
        i, j = groups.index(numerator), groups.index(denominator)
        x = x[estimated(x, i, j)].double()
        if x.shape[0] == 0:
            return {
                "dominant": None,
                "underutilized": None,
                "delta": None,
                "ci95": [None, None],
                "contribution": {g: None for g in groups},
                "n": 0,
            }
        c = pool_layers(x, pool).mean(0)
        big = bool(c[i].abs() >= c[j].abs())
        return {
            "dominant": numerator if big else denominator,
            "underutilized": denominator if big else numerator,
            "delta": float(ratio(c[i], c[j])),
            "ci95": [None, None],
            "contribution": {g: float(c[k]) for k, g in enumerate(groups)},
            "n": int(x.shape[0]),
        }


def by_category(
    per_sample: Mapping[str, torch.Tensor],
    components: Mapping[str, torch.Tensor],
    categories: Sequence[str],
    groups: tuple[str, ...],
    pools: Mapping[str, Pool],
    *,
    numerator: str = "text",
    denominator: str = "image",
    n_boot: int = 1000,
) -> dict:
    """``by_category.{estimator}.{category}``: the fields of ``overall`` (``contribution``, ``dominant``,
    ``underutilized``, ``delta``, ``ci95``, ``n``) over the category's samples, plus ``decision`` (the
    mean logit difference being explained, over the same samples; None when it was not recorded) and,
    for removal-based estimators, ``identical_donor`` and ``blind`` (module docstring).

    Args:
        per_sample: estimator -> ``[sample, layer, group]``.
        components: ``decision`` ``[sample]`` and ``same.<group>`` ``[sample]`` (1 where the donor is identical).
        categories: one name per sample (:func:`category_of`), in the order of the samples.

    Raises:
        InputError: ``categories`` of another length than the samples.
    """
    i, j = groups.index(numerator), groups.index(denominator)
    decision = components.get("decision")
    out: dict = {}
    for est, x in per_sample.items():
        if len(categories) != x.shape[0]:
            raise InputError(f"{len(categories)} categories for {x.shape[0]} samples; give one per sample.")
        out[est] = {}
        for cat in sorted(set(categories)):
            idx = torch.tensor([k for k, c in enumerate(categories) if c == cat])
            sub = x[idx]
            entry = group_imbalance(sub, groups, pools[est], numerator, denominator, n_boot=n_boot)
            keep = idx[estimated(sub, i, j)]
            entry["decision"] = _mean(decision[keep]) if decision is not None else None
            if est in REMOVAL_ESTIMATORS:
                entry.update(identical_donor(components, keep, (denominator, numerator)))
            out[est][cat] = entry
    return out


def identical_donor(
    components: Mapping[str, torch.Tensor], keep: torch.Tensor, groups: Sequence[str]
) -> dict:
    """``{"identical_donor": {group: share}, "blind": [groups]}`` over the samples ``keep`` (indices): the
    share whose donor's embeddings of the group equal their own (``components["same.<group>"]``, so
    removing the group changed no input and its contribution is 0 by construction), and the groups
    where that is every sample. Empty when no ``same.<group>`` was recorded (noise ablation)."""
    shares = {g: _mean(components[f"same.{g}"][keep]) for g in groups if f"same.{g}" in components}
    if not shares:
        return {}
    return {"identical_donor": shares, "blind": [g for g, v in shares.items() if v is not None and v >= 1.0]}


def coverage(
    x: torch.Tensor,
    components: Mapping[str, torch.Tensor],
    i: int,
    j: int,
    groups: Sequence[str],
    ids: Sequence[str] | None = None,
    removal: bool = False,
) -> dict:
    """``overall.{estimator}.coverage``: how many samples have an estimate and why the others have none.

    Args:
        x: ``[sample, layer, group]`` of one estimator (NaN: no estimate).
        components: ``missing.<group>`` ``[sample]``, reason codes of :data:`mech.curves.donors.REASONS`
            (0: the group was removed), where recorded.
        i, j: the indices of the ratio's two groups in ``x``'s last axis.
        groups: the ratio's two group names (numerator, denominator).
        ids: the sample ids, in the order of ``x`` (default: the sample indices).
        removal: whether the estimator removes groups (only then a missing donor is a reason).

    Returns:
        ``{"coverage": n_estimated / n, "n_estimated", "n", "missing": [{"id", "reason"}]}``, one entry of
        ``missing`` per sample without an estimate of both groups; ``reason`` joins each group's reason.
    """
    from mech.curves.donors import NO_POSITIONS, REASONS

    ok = estimated(x, i, j)
    n = int(x.shape[0])
    missing = []
    for k in torch.nonzero(~ok).flatten().tolist():
        why = []
        for g in groups:
            code = components.get(f"missing.{g}")
            c = int(code[k]) if code is not None else 0
            if c and (removal or c == NO_POSITIONS):
                why.append(REASONS[c].format(group=g))
        missing.append(
            {
                "id": str(ids[k]) if ids is not None else k,
                "reason": "; ".join(why) or "the estimate is not a number (NaN)",
            }
        )
    return {
        "coverage": (int(ok.sum()) / n) if n else None,
        "n_estimated": int(ok.sum()),
        "n": n,
        "missing": missing,
    }


def decomposition_json(
    components: Mapping[str, torch.Tensor],
    groups: tuple[str, ...],
    players: Sequence[str] = ("image", "text"),
) -> dict:
    """``contrib.json`` → ``decomposition``: sample means over the samples with every player estimated.

    ``components.{attn,mlp}.{player}`` (per layer), ``embed.{player}``, ``total.{player}`` (= overall C),
    ``mlp_share.{player}`` (the share of the player's contribution written by MLPs; None when
    |C| < 0.01 · max(1, |decision|)),
    ``decision`` (clean logit difference), ``rest`` (frozen readout with every player removed),
    ``removed`` (that run's own logit difference), ``interaction``, ``completeness`` (``max_abs`` and
    ``relative`` residual of Σ φ = decision − rest, the ``tolerance`` and whether it holds), ``n``.
    """
    from mech.curves.decomposition import TOLERANCE, completeness

    attn, mlp, embed = (components[f"decomposition.{k}"].double() for k in ("attn", "mlp", "embed"))
    players = [g for g in players if g in groups and not torch.isnan(attn[..., groups.index(g)]).all()]
    cols = [groups.index(g) for g in players]
    rows = (
        ~torch.isnan(attn[..., cols]).any(-1).any(-1)
        if cols
        else torch.zeros(attn.shape[0], dtype=torch.bool)
    )
    attn, mlp, embed = attn[rows][..., cols], mlp[rows][..., cols], embed[rows][..., cols]
    scalars = {
        k: components[f"decomposition.{k}"].double()[rows]
        for k in ("decision", "rest", "removed", "interaction")
    }
    total = attn.sum(1) + mlp.sum(1) + embed  # [sample, player]
    out: dict = {
        "players": players,
        "components": {
            c: {g: t.mean(0)[:, k].tolist() for k, g in enumerate(players)}
            for c, t in (("attn", attn), ("mlp", mlp))
        },
        "embed": {g: _mean(embed[:, k]) for k, g in enumerate(players)},
        "total": {g: _mean(total[:, k]) for k, g in enumerate(players)},
    }
    share, floor = {}, 0.01 * max(1.0, abs(_mean(scalars["decision"]) or 0.0))  # a share of ~0 is noise
    for k, g in enumerate(players):
        t = _mean(total[:, k])
        share[g] = None if t is None or abs(t) < floor else _mean(mlp[:, :, k].sum(1)) / t
    out["mlp_share"] = share
    out.update({k: _mean(v) for k, v in scalars.items()})
    c = completeness(
        total.sum(-1) - (scalars["decision"] - scalars["rest"]), scalars["decision"], scalars["rest"]
    )
    out["completeness"] = {**c, "ok": None if c["relative"] is None else c["relative"] <= TOLERANCE}
    out["n"] = int(rows.sum())
    return out
