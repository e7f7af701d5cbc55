"""``repair``: from an explanation to an edit, checked on a held-out split against same-size random edits.

1. **Fit split** (:func:`mech.measure.repair.plan.make_plan`): rank units by an explanation
   (:mod:`mech.measure.repair.select`) on the fit samples whose prior answer is wrong, and compute the
   fit statistics an edit needs (means, steering direction).
2. **Edit**: the top ``k`` units, through the scoped engines (:mod:`mech.measure.repair.edits`).
3. **Held-out split** (other sample ids; overlapping ids raise): the unedited model, the edit, and
   ``n_random`` (at least 5) random edits of the same size drawn from the units *not* selected (a random
   direction of the same norm at the same layers for ``steer``), each under the complete and the white
   image (:func:`predict`); the curve of the effect against ``k`` (the edit and its random controls at
   each k, complete image); the numbers with bootstrap intervals (:func:`assemble`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mech.errors import DataError
from mech.measure.repair import evaluate as EV
from mech.measure.repair.plan import MIN_RANDOM, Plan, make_plan, usable
from mech.measure.repair.result import RepairResult
from mech.measure.repair.select import Selection
from mech.measure.repair.targets import answer_set
from mech.models.load import takes_model

__all__ = ["assemble", "plan_from_json", "plan_json", "predict", "repair"]


def predict(m, plan: Plan, samples: Sequence[dict]) -> tuple[dict[str, torch.Tensor], list]:
    """Per-sample answers of ``samples`` (a held-out batch) under every edit of ``plan``.

    Returns:
        ``(tensors, skipped)``: ``pred.{label}.{condition}.{scoring}`` LongTensor ``[sample]`` (candidate
        index; -1 for a skipped sample), ``gold.{scoring}``, ``prior.{scoring}`` (the planted prior's
        candidate index, -1 when absent or not planted), ``n_cand.{scoring}``, ``usable`` (bool); and
        ``[(id, reason)]`` of the skipped samples. Labels: ``unedited`` and the plan's edits; curve edits
        (``k=...``) under the complete image only.
    """
    keep, skipped, cands, idx = usable(m.tokenizer, samples, plan.scorings, plan.option_scoring)
    n = len(samples)
    ok = torch.zeros(n, dtype=torch.bool)
    ok[idx] = True
    out: dict[str, torch.Tensor] = {"usable": ok}
    for sc in plan.scorings:
        for key, vals in (
            ("gold", [c.gold for c in cands[sc]]),
            ("prior", [_planted(c, s, plan.prior) for c, s in zip(cands[sc], keep)]),
            ("n_cand", [len(c.ids) for c in cands[sc]]),
        ):
            t = torch.full((n,), -1, dtype=torch.long)
            t[idx] = torch.tensor(vals, dtype=torch.long) if vals else t[idx]
            out[f"{key}.{sc}"] = t
    if keep:
        prep = EV.prepare_split(m, keep, cands, plan.batch_size, seed=plan.seed)
        labels = [("unedited", None)] + list(plan.edits.items())
        for label, edit in labels:
            conds = ("complete",) if label.startswith("k=") else EV.CONDITIONS
            for c, d in EV.answers(m, prep, edit, conds).items():
                for sc, t in d.items():
                    full = torch.full((n,), -1, dtype=torch.long)
                    full[idx] = t
                    out[f"pred.{label}.{c}.{sc}"] = full
    return out, skipped


def _planted(c, sample: dict, prior: str) -> int:
    if prior != "planted":
        return -1
    i = c.index_of(sample.get("prior_answer"))
    return -1 if i is None else i


def assemble(
    plan: Plan,
    samples: Sequence[dict],
    tensors: dict[str, torch.Tensor],
    skipped: list,
    model: str,
    n_boot: int = 1000,
) -> RepairResult:
    """The :class:`RepairResult` from :func:`predict`'s tensors over the whole held-out split (model-free).

    Raises:
        DataError: no usable held-out sample.
    """
    from mech.curves.summary import category_of

    ok = tensors["usable"].numpy().astype(bool)
    if not ok.any():
        raise DataError(
            f"no usable held-out sample ({len(skipped)} skipped); pass samples with images and options."
        )
    held = [s for s, u in zip(samples, ok) if u]
    sc0 = plan.scoring
    pred = {}
    for key, t in tensors.items():
        if key.startswith("pred."):
            label, c, sc = key[5:].rsplit(".", 2)
            pred.setdefault(label, {}).setdefault(c, {})[sc] = t[ok]
    gold = {sc: tensors[f"gold.{sc}"].numpy()[ok] for sc in plan.scorings}
    if plan.prior == "planted":
        prior = {sc: tensors[f"prior.{sc}"].numpy()[ok] for sc in plan.scorings}
    else:  # the unedited model's answer under the white image
        prior = {sc: pred["unedited"]["white_image"][sc].numpy() for sc in plan.scorings}
    cat = np.array([category_of(s) for s in held])
    group = np.where(
        prior[sc0] < 0, "prior_absent", np.where(prior[sc0] == gold[sc0], "prior_right", "prior_wrong")
    )
    if plan.planted:
        group = np.where(np.isin(cat, list(plan.planted)), group, "unplanted")
    labels = {sc: [_labels(s, sc) for s in held] for sc in plan.scorings}
    info = {
        "gold": gold,
        "prior": prior,
        "category": cat,
        "group": group,
        "labels": labels,
        "n_candidates": {sc: tensors[f"n_cand.{sc}"].numpy()[ok] for sc in plan.scorings},
        "n_options": tensors[f"n_cand.{plan.scorings[-1]}"].numpy()[ok],
    }
    target = "prior_wrong" if (group == "prior_wrong").any() else "all"
    base = pred["unedited"]
    base_sum = EV.summarize(base, base, info, sc0, n_boot, plan.seed)
    main = ["selected"] + [f"random {j + 1}" for j in range(plan.n_random)]
    summaries = {lab: EV.summarize(pred[lab], base, info, sc0, n_boot, plan.seed) for lab in main}

    def summary(lab: str) -> dict:  # the curve's point at k reuses the main edits' summaries
        return (
            summaries[lab]
            if lab in summaries
            else EV.summarize(pred[lab], base, info, sc0, n_boot, plan.seed)
        )

    curve = []
    for kk in plan.ks:
        pre = "" if kk == plan.k else f"k={kk}/"
        s_sel = summary(pre + "selected")
        effs = [
            EV.target_effect(summary(f"{pre}random {j + 1}"), base_sum, target) for j in range(plan.n_random)
        ]
        curve.append(
            {
                "k": kk,
                "effect": EV.target_effect(s_sel, base_sum, target),
                "random": effs,
                "accuracy": {
                    g: s_sel["accuracy"][g]["value"]
                    for g in ("all", "prior_wrong", "prior_right", "unplanted")
                },
            }
        )
    strip = lambda e: dataclasses.replace(e, values={})  # noqa: E731  (results carry units, not tensors)
    keep_pred = {lab: d for lab, d in pred.items() if not lab.startswith("k=")}
    return RepairResult(
        model=model,
        edit=strip(plan.edits["selected"]),
        selection=plan.selection,
        k=plan.k,
        target=target,
        scoring=sc0,
        option_scoring=plan.option_scoring,
        prior=plan.prior,
        planted=plan.planted,
        transferred_from=plan.transferred_from,
        unedited=base_sum,
        summaries=summaries,
        curve=curve,
        controls=[strip(plan.edits[lab]) for lab in main[1:]],
        n_fit=plan.n_fit,
        n_held_out=len(held),
        skipped={"held_out": [tuple(x) for x in skipped], "fit": list(plan.fit_skipped)},
        ids=[str(s.get("id")) for s in held],
        predictions=keep_pred,
        meta={
            "alpha": plan.alpha,
            "positions": plan.positions,
            "n_random": plan.n_random,
            "n_boot": n_boot,
            "seed": plan.seed,
            "fit_prior_wrong": plan.n_fit_prior_wrong,
            "k_rule": plan.k_rule,
        },
    )


def _labels(sample: dict, scoring: str) -> tuple[str, ...]:
    if scoring == "answer_set":
        return tuple(answer_set(sample) or ())
    from mech.prepare.data import LETTERS

    return tuple(LETTERS[: len(sample.get("options") or [])])


@takes_model
def repair(
    m,
    fit: Sequence[dict],
    held_out: Sequence[dict],
    *,
    edit: str = "zero",
    granularity: str = "neurons",
    source: str = "attribution",
    k: int | None = None,
    ks: Sequence[int] | None = None,
    units: Sequence[Sequence[int]] | None = None,
    selection: Selection | None = None,
    positions: str = "answer",
    alpha: float | None = None,
    n_random: int = MIN_RANDOM,
    prior: str = "auto",
    planted: Sequence[str] | None = None,
    scoring: str | None = None,
    option_scoring: str | None = None,
    batch_size: int = 64,
    n_boot: int = 1000,
    seed: int = 0,
    max_fit_drop: float | None = None,
) -> RepairResult:
    """Select units from an explanation on ``fit``, edit them, and evaluate on ``held_out`` (module docstring).

    Args:
        m: a :class:`~mech.MechModel`. fit, held_out: sample dicts or a Dataset
            (:func:`mech.prepare.data.load_data`) with disjoint ids.
        edit: ``zero`` | ``mean`` | ``steer`` | ``reweight``; granularity: ``neurons`` | ``heads`` | ``layers``
            (``steer`` on layers; ``reweight`` on heads or layers).
        source: ``attribution`` | ``decomposition`` (layers) | ``list`` (``units`` given as (layer, index)).
        k: units edited (default :func:`mech.measure.repair.plan.default_k`); ks: the curve's sizes (default
            k/8, k/4, k/2, k, 2k where a disjoint random control fits).
        selection: a ranking made earlier (on this or another model: then labelled ``transferred_from``).
        positions: ``answer`` (the last position) or ``all``; alpha: steering scale / attention factor.
        n_random: same-size random edits (at least 5). prior: ``auto`` | ``planted`` | ``white_image``.
        planted: the question types whose prior was planted (default: the organism card's; None elsewhere:
            then the prior groups cover every sample).
        scoring: ``answer_set`` (organisms' default) or ``options``; option_scoring: ``letter`` |
            ``option_text`` (default: ``option_text`` for organism data, else ``letter``).
        n_boot: bootstrap resamples of every interval.
        max_fit_drop: choose k on the fit split instead: the largest of ``ks`` whose edit lowers the fit
            accuracy by at most this much (:func:`mech.measure.repair.plan.choose_k`); None: use ``k``.

    Returns:
        :class:`~mech.measure.repair.result.RepairResult` (``.to_json()``, ``.to_frame()``, ``.save(out)``).

    Raises:
        DataError: fit and held-out share sample ids; no usable sample; no fit sample with a wrong prior.
        ConfigError: an option outside its allowed values, fewer than 5 random edits, k too large.
    """
    held_out = list(getattr(held_out, "samples", held_out))
    plan = make_plan(
        m,
        fit,
        held_out,
        edit=edit,
        granularity=granularity,
        source=source,
        k=k,
        ks=ks,
        units=units,
        selection=selection,
        positions=positions,
        alpha=alpha,
        n_random=n_random,
        prior=prior,
        planted=planted,
        scoring=scoring,
        option_scoring=option_scoring,
        batch_size=batch_size,
        seed=seed,
        max_fit_drop=max_fit_drop,
    )
    tensors, skipped = predict(m, plan, held_out)
    return assemble(plan, held_out, tensors, skipped, m.spec, n_boot)


def plan_json(plan: Plan) -> dict[str, Any]:
    """The plan as JSON (selection, every edit's units, the options; no tensors): what the held-out
    assembly needs, stored with every batch so that batches can be checked to agree."""
    d = {
        f.name: getattr(plan, f.name)
        for f in dataclasses.fields(plan)
        if f.name not in ("selection", "edits")
    }
    d["selection"] = plan.selection.to_json(limit=10**9)
    d["edits"] = {
        lab: {
            "kind": e.kind,
            "granularity": e.granularity,
            "units": [list(u) for u in e.units],
            "positions": e.positions,
            "alpha": e.alpha,
        }
        for lab, e in plan.edits.items()
    }
    return json.loads(json.dumps(d, default=list))


def plan_from_json(d: dict[str, Any]) -> Plan:
    """The :class:`Plan` of :func:`plan_json` (edits without their tensors: enough to assemble)."""
    from mech.measure.repair.edits import Edit

    sel = d["selection"]
    selection = Selection.from_json(sel)
    edits = {
        lab: Edit(
            e["kind"],
            e["granularity"],
            tuple(tuple(u) for u in e["units"]),
            e["positions"],
            e["alpha"],
            {},
            lab,
        )
        for lab, e in d["edits"].items()
    }
    rest = {k: v for k, v in d.items() if k not in ("selection", "edits")}
    for key in ("ks", "scorings", "fit_skipped"):
        rest[key] = tuple(tuple(x) if isinstance(x, list) else x for x in rest[key])
    if rest.get("planted") is not None:
        rest["planted"] = tuple(rest["planted"])
    return Plan(selection=selection, edits=edits, **rest)
