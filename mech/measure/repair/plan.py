"""The fit stage of a repair: check the options, rank units on the fit split, build the edit, its random
controls and the curve's edits (:class:`Plan`). Nothing here reads the held-out split's answers."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mech.errors import ConfigError, DataError, InputError
from mech.measure.repair import select as SE
from mech.measure.repair.edits import ALLOWED, GRANULARITIES, KINDS, POINTS, POSITIONS, Edit, n_units
from mech.measure.repair.targets import candidates, default_scoring, resolve_prior

__all__ = [
    "DEFAULT_ALPHA",
    "MIN_RANDOM",
    "Plan",
    "answer_means",
    "check_options",
    "choose_k",
    "default_k",
    "make_plan",
    "planted_categories",
    "random_edit",
    "usable",
]

MIN_RANDOM = 5
DEFAULT_ALPHA = {"zero": 1.0, "mean": 1.0, "steer": 4.0, "reweight": 2.0}


def planted_categories(m) -> tuple[str, ...] | None:
    """The question types an organism's prior was planted on (its card's ``prior_templates`` when p > 0;
    ``()`` for an organism without one), or None for a model that is not an organism."""
    spec = str(getattr(m, "spec", ""))
    if not spec.startswith("organism:"):
        return None
    from mech.organisms import organism_dir

    card = json.loads((organism_dir(spec) / "card.json").read_text())
    t = card.get("training", {})
    return tuple(t.get("prior_templates") or ()) if float(t.get("p", 0) or 0) > 0 else ()


def default_k(m, granularity: str, kind: str) -> int:
    """A quarter of the MLP neurons, a tenth of the heads, two layer components (one layer to steer)."""
    n_l, n_u = n_units(m, granularity)
    if granularity == "neurons":
        return max(1, round(0.25 * n_l * n_u))
    if granularity == "heads":
        return max(1, round(0.1 * n_l * n_u))
    return 1 if kind == "steer" else 2


def usable(tokenizer, samples: Sequence[dict], scorings: Sequence[str], option_scoring: str):
    """``(kept samples, [(id, reason)] skipped, {scoring: [Candidates]}, kept row indices)``: a sample needs an
    image (the white-image condition) and candidates the tokenizer can score."""
    keep, skipped, cands, rows = [], [], {s: [] for s in scorings}, []
    for r, s in enumerate(samples):
        if not s.get("images"):
            skipped.append((str(s.get("id")), "no image (the white-image condition needs one)"))
            continue
        try:
            cs = {sc: candidates(tokenizer, s, sc, option_scoring) for sc in scorings}
        except InputError as exc:
            skipped.append((str(s.get("id")), str(exc).split(";")[0]))
            continue
        keep.append(s)
        rows.append(r)
        for sc in scorings:
            cands[sc].append(cs[sc])
    return keep, skipped, cands, rows


@torch.no_grad()
def answer_means(m, samples: Sequence[dict], names: Sequence[str], condition: str, batch_size: int) -> dict:
    """hook name -> mean activation at the answer position over ``samples`` under ``condition`` (float64 sums)."""
    from mech.conditions import condition_inputs
    from mech.engines.hooks import hooks
    from mech.engines.unembed import answer_logits

    sums: dict = {}
    for i in range(0, len(samples), batch_size):
        inputs = condition_inputs(m, samples[i : i + batch_size], condition)
        q = inputs.groups.last()

        def add(x, hook, q=q):  # summed at the answer position as it passes: no [batch, pos, d] cache
            at = x[torch.arange(x.shape[0], device=x.device), q.to(x.device)]
            sums[hook.name] = sums.get(hook.name, 0) + at.detach().double().sum(0).cpu()

        with torch.no_grad(), hooks(m, [(n, add) for n in names], POINTS):
            answer_logits(m, inputs)  # the answer position's logits only
    return {k: (v / len(samples)).float() for k, v in sums.items()}


def random_edit(edit: Edit, pool: Sequence[tuple[int, int]], rng: np.random.Generator, label: str) -> Edit:
    """A same-size random control of ``edit``: ``edit.size`` units drawn without replacement from ``pool`` minus
    the edit's own units (never overlapping them); for ``steer``, a Gaussian direction rescaled to the same norm
    at the same layers.

    Raises:
        ConfigError: fewer free units than ``edit.size``.
    """
    if edit.kind == "steer":
        values = {}
        for name, v in edit.values.items():
            r = torch.from_numpy(rng.standard_normal(v.numel())).float().reshape(v.shape)
            values[name] = r * (v.norm() / r.norm())
        return dataclasses.replace(edit, values=values, label=label)
    chosen = set(edit.units)
    free = [u for u in pool if u not in chosen]
    if len(free) < edit.size:
        raise ConfigError(
            f"k={edit.size} leaves only {len(free)} other units for a same-size random control; "
            "pass a smaller k."
        )
    idx = rng.choice(len(free), size=edit.size, replace=False)
    return dataclasses.replace(edit, units=tuple(free[i] for i in sorted(idx)), label=label)


@dataclass(frozen=True)
class Plan:
    """Everything the held-out stage needs: the options, the selection and every edit by label
    (``selected``, ``random j``, and for the curve ``k=<k>/selected``, ``k=<k>/random j``)."""

    edit: str
    granularity: str
    k: int
    ks: tuple[int, ...]
    alpha: float
    positions: str
    n_random: int
    prior: str
    planted: tuple[str, ...] | None
    scoring: str
    scorings: tuple[str, ...]
    option_scoring: str
    selection: SE.Selection
    transferred_from: str | None
    edits: dict
    n_fit: int
    n_fit_prior_wrong: int
    fit_skipped: tuple
    seed: int
    batch_size: int
    k_rule: dict | None = None


def check_options(edit, granularity, source, positions, n_random) -> None:
    """Raises ConfigError for a value outside its allowed ones or a combination that does not exist."""
    for name, v, allowed in (
        ("edit", edit, KINDS),
        ("granularity", granularity, GRANULARITIES),
        ("source", source, SE.SOURCES),
        ("positions", positions, POSITIONS),
    ):
        if v not in allowed:
            raise ConfigError(f"{name}={v!r}; allowed: {', '.join(allowed)}")
    if edit not in ALLOWED[granularity]:
        raise ConfigError(
            f"edit {edit!r} does not act on {granularity}; use granularity in "
            f"{[g for g in GRANULARITIES if edit in ALLOWED[g]]}"
        )
    if source == "decomposition" and granularity != "layers":
        raise ConfigError(
            "source='decomposition' ranks layer components; use granularity='layers' "
            "(or source='attribution' for neurons and heads)."
        )
    if n_random < MIN_RANDOM:
        raise ConfigError(
            f"n_random={n_random}; a repair is always compared with at least {MIN_RANDOM} random edits."
        )


def make_plan(
    m,
    fit: Sequence[dict],
    held_out: Sequence[dict],
    *,
    edit="zero",
    granularity="neurons",
    source="attribution",
    k=None,
    ks=None,
    units=None,
    selection=None,
    positions="answer",
    alpha=None,
    n_random=MIN_RANDOM,
    prior="auto",
    planted=None,
    scoring=None,
    option_scoring=None,
    batch_size=64,
    seed=0,
    max_fit_drop=None,
) -> Plan:
    """The fit stage (arguments: :func:`mech.measure.repair.core.repair`). ``held_out`` is read for its ids
    and its kind of data only (scoring defaults), never for answers.

    Raises:
        DataError: shared ids; no usable fit sample; no fit sample whose prior is wrong (when ranking).
        ConfigError: as :func:`check_options`; a selection of another granularity; k too large.
    """
    check_options(edit, granularity, source, positions, n_random)
    fit = list(getattr(fit, "samples", fit))
    shared = {str(s.get("id")) for s in fit} & {str(s.get("id")) for s in held_out}
    if shared:
        raise DataError(
            f"fit and held-out splits share {len(shared)} sample ids (e.g. {sorted(shared)[:3]}); "
            "evaluate on samples the ranking never saw (organism:shapes: another --fit-seed)."
        )
    primary = scoring or default_scoring(held_out)
    words = all(
        "answer_text" in s for s in held_out
    )  # word answers (the organisms): options scored by their text
    option_scoring = option_scoring or ("option_text" if words else "letter")
    scorings = (primary,) + (
        ("options",) if primary != "options" and all(s.get("options") for s in held_out) else ()
    )
    fit, fit_skipped, fcands, _ = usable(m.tokenizer, fit, [primary], option_scoring)
    if not fit:
        raise DataError(
            f"no usable fit sample ({len(fit_skipped)} skipped); pass samples with images and "
            "options the tokenizer can score."
        )
    prior_kind = resolve_prior(list(fit) + list(held_out), prior)
    planted = planted_categories(m) if planted is None else tuple(planted)
    alpha = DEFAULT_ALPHA[edit] if alpha is None else float(alpha)
    k = k or default_k(m, granularity, edit)
    from mech.curves.summary import category_of

    if prior_kind == "planted":
        fprior = [c.index_of(s["prior_answer"]) for s, c in zip(fit, fcands[primary])]
    else:
        from mech.measure.repair import evaluate as EV

        fprep = EV.prepare_split(
            m, fit, {primary: fcands[primary]}, batch_size, conditions=("white_image",), seed=seed
        )
        fprior = EV.answers(m, fprep, None, ("white_image",))["white_image"][primary].tolist()
    fprior = [
        -1 if p is None or (planted and category_of(s) not in planted) else int(p)
        for p, s in zip(fprior, fit)
    ]  # rank on the question types whose prior was planted
    values: dict = {}
    names = SE.site_names(m, granularity, edit)
    if edit == "mean":
        values = answer_means(m, fit, names, "complete", batch_size)
    if edit == "steer":
        with_image = answer_means(m, fit, names, "complete", batch_size)
        white = answer_means(m, fit, names, "white_image", batch_size)
        values = {n: with_image[n] - white[n] for n in names}
    batches, n_wrong = SE.fit_batches(m, fit, fcands[primary], fprior, batch_size)
    transferred = None
    if selection is not None:
        if selection.granularity != granularity:
            raise ConfigError(
                f"the selection ranks {selection.granularity}, not {granularity}; pass "
                f"granularity={selection.granularity!r}."
            )
        SE.from_list(m, granularity, selection.ranking)  # every unit must exist in this model
        transferred = selection.model if selection.model != m.spec else None
    elif source == "list":
        selection = SE.from_list(m, granularity, units or ())
    else:
        if not batches:
            raise DataError(
                "no fit sample has a wrong prior answer to explain; pass more fit samples (--fit-n) "
                "or data whose question prior is sometimes wrong."
            )
        note = ""
        if source == "decomposition":
            scores = SE.decomposition_scores(m, batches, seed=seed)
        else:
            scores = SE.attribution_scores(m, batches, granularity, edit, values, alpha)
            if edit == "reweight":
                note = (
                    "reweight: heads ranked by their zero-ablation attribution (a proxy; no first-order form)"
                )
        selection = SE.rank(scores / n_wrong, granularity, source, m.spec, n_wrong, note)
    n_l, n_u = n_units(m, granularity)
    pool = list(selection.ranking) if edit == "steer" else [(l, i) for l in range(n_l) for i in range(n_u)]
    k = min(k, len(selection.ranking)) if source == "list" else k
    chosen_later = max_fit_drop is not None and ks  # k is then one of the given sizes
    ks = sorted(
        {int(x) for x in (ks or [k // 8, k // 4, k // 2, k, 2 * k]) if 1 <= int(x) <= len(selection.ranking)}
        | (set() if chosen_later else {k})
    )
    ks = [x for x in ks if edit == "steer" or len(pool) - x >= x]  # room for a disjoint random control
    k = max(ks) if chosen_later and ks else k
    if k not in ks or k > len(selection.ranking):
        raise ConfigError(
            f"k={k}: the selection ranks {len(selection.ranking)} units and a same-size random control "
            f"needs k more outside it (pool {len(pool)}); pass a smaller k."
        )

    def make(kk: int, label: str) -> Edit:
        layers = {l for l, _ in selection.top(kk)}
        vals = {n: v for n, v in values.items() if edit != "steer" or int(n.split(".")[1]) in layers}
        return Edit(edit, granularity, selection.top(kk), positions, alpha, vals, label)

    k_rule = None
    if max_fit_drop is not None:  # k from the fit split: the largest size that costs at most max_fit_drop
        k, k_rule = choose_k(m, fit, fcands[primary], ks, make, float(max_fit_drop), batch_size, seed)

    rng = np.random.default_rng([seed, 9973])
    edits = {"selected": make(k, "selected")}
    for j in range(n_random):
        edits[f"random {j + 1}"] = random_edit(edits["selected"], pool, rng, f"random {j + 1}")
    for kk in ks:
        if kk != k:
            edits[f"k={kk}/selected"] = make(kk, f"k={kk}/selected")
            for j in range(n_random):
                lab = f"k={kk}/random {j + 1}"
                edits[lab] = random_edit(edits[f"k={kk}/selected"], pool, rng, lab)
    return Plan(
        edit,
        granularity,
        k,
        tuple(ks),
        alpha,
        positions,
        n_random,
        prior_kind,
        planted,
        primary,
        scorings,
        option_scoring,
        selection,
        transferred,
        edits,
        len(fit),
        n_wrong,
        tuple(fit_skipped),
        seed,
        batch_size,
        k_rule,
    )


def choose_k(m, fit, cands, ks, make, max_drop: float, batch_size: int, seed: int) -> tuple[int, dict]:
    """The largest ``k`` in ``ks`` whose edit lowers the fit split's accuracy (complete image) by at most
    ``max_drop`` (the smallest ``k`` when none does), and the fit accuracy per k: an edit's size is chosen
    where the ranking was made, never on the held-out split."""
    from mech.measure.repair import evaluate as EV

    prep = EV.prepare_split(m, fit, {"fit": cands}, batch_size, conditions=("complete",), seed=seed)
    gold = torch.tensor([c.gold for c in cands])

    def acc(edit):
        return float((EV.answers(m, prep, edit, ("complete",))["complete"]["fit"] == gold).double().mean())

    base = acc(None)
    per_k = {}
    for kk in sorted(ks, reverse=True):
        per_k[kk] = acc(make(kk, "fit"))
        if base - per_k[kk] <= max_drop:
            return kk, {
                "max_fit_drop": max_drop,
                "fit_accuracy_unedited": base,
                "fit_accuracy": per_k,
                "chosen": kk,
            }
    kk = min(ks)
    return kk, {
        "max_fit_drop": max_drop,
        "fit_accuracy_unedited": base,
        "fit_accuracy": per_k,
        "chosen": kk,
        "note": "no size kept the fit accuracy; the smallest was used",
    }
