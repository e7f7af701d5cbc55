"""The parts of ``report.md`` that are written from the numbers: the per-question-type table and the
paragraph saying what the estimators agree and disagree on, and why (:mod:`mech.report`).

Nothing here is hard-coded to a model: orderings, intervals, MLP shares and blind spots are read from
``contrib.json``'s typed record (:class:`mech.curves.record.ContribRecord`: ``overall``, ``decomposition``,
``by_category``; :mod:`mech.curves.summary`). ``results`` is the report's ``{model: {command: record}}``;
where a ``contrib.json`` dict is given instead it is read into its record first
(:func:`mech.curves.record.as_contrib_record`, which raises :class:`~mech.errors.InputError` naming the key
of content that is not ``contrib.json``'s).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mech.curves.record import CategoryRecord, ContribRecord, EstimateRecord, as_contrib_record
from mech.curves.summary import REMOVAL_ESTIMATORS as REMOVAL  # 0 where the removal changes no input

__all__ = [
    "CAUSAL",
    "NEAR_ZERO",
    "agreement",
    "category_cell",
    "category_table",
    "compare_coverage",
    "coverage_cell",
    "coverage_lines",
    "figure_lines",
    "fmt",
    "identical_cell",
]

#: the causal reference estimators, in order of preference
CAUSAL = ("patching", "decomposition")
#: |C(denominator)| below this share of max(1, |decision|) prints no Δ (the ratio is unstable there)
NEAR_ZERO = 0.02


def fmt(x, digits: int = 2) -> str:
    return "–" if x is None or x != x else f"{x:.{digits}f}"


def figure_lines(name: str, prefix: str, caption: str | None) -> list[str]:
    """A figure and its caption (what is plotted and the n) as Markdown lines of ``report.md``."""
    alt = name.rsplit(".", 1)[0]
    return [f"![{alt}]({prefix}{name})", ""] + ([f"*Figure ({alt}).* {caption}", ""] if caption else [])


def _contrib(results: Mapping[str, Mapping[str, Any]], models: Sequence[str]) -> dict[str, ContribRecord]:
    """Each model's ``contrib`` record (a ``contrib.json`` dict read into one)."""
    return {s: as_contrib_record(results[s]["contrib"]) for s in models}


def coverage_cell(o: EstimateRecord) -> str:
    """``overall.{estimator}`` (:class:`~mech.curves.record.EstimateRecord`) → "k / n (p%)": the samples
    with an estimate."""
    cov = o.coverage
    if cov is None:
        return "–"
    return (
        f"{cov.n_estimated} / {cov.n} ({fmt(100 * cov.coverage if cov.coverage is not None else None, 0)}%)"
    )


def identical_cell(o: EstimateRecord | CategoryRecord) -> str:
    """``overall.{estimator}.identical_donor`` → "image 0%, text 3%", or "–" (no removal by donors)."""
    same = o.identical_donor or {}
    return ", ".join(f"{g} {fmt(None if v is None else 100 * v, 0)}%" for g, v in same.items()) or "–"


def compare_coverage(results: Mapping[str, Mapping[str, Any]], models: Sequence[str], name) -> list[str]:
    """One line per model: the samples each estimator has an estimate for (``coverage``) and the
    identical-donor shares of the removal-based estimators (``identical_donor``), from each model's
    ``results[model]["contrib"]`` (:class:`~mech.curves.record.ContribRecord`)."""
    co = _contrib(results, models)
    lines = []
    for s in models:
        overall = co[s].overall
        cov = {e: coverage_cell(o) for e, o in overall.items()}
        counts = sorted(set(cov.values()))
        told = (
            f"every estimator {counts[0]}"
            if len(counts) == 1
            else ", ".join(f"{e} {c}" for e, c in cov.items())
        )
        same = "; ".join(f"{e} {identical_cell(o)}" for e, o in overall.items() if o.identical_donor)
        lines.append(
            f"- `{name(s)}`: estimated samples: {told}"
            + (f"; identical donors: {same}" if same else "")
            + "."
        )
    return lines


def coverage_lines(co: ContribRecord, shown: int = 5) -> list[str]:
    """The samples each estimator has no estimate for, with their reasons (``overall.*.coverage.missing``
    of ``co``, a :class:`~mech.curves.record.ContribRecord` or ``contrib.json`` content): counts per
    reason and the first ``shown`` sample ids; empty when every sample was estimated."""
    out = []
    for est, o in as_contrib_record(co).overall.items():
        missing = (o.coverage.missing if o.coverage is not None else None) or ()
        if not missing:
            continue
        by: dict[str, list] = {}
        for x in missing:
            by.setdefault(x.reason, []).append(str(x.id))
        out.append(
            f"* {est}: no estimate for {len(missing)} of {o.coverage.n} samples, left out of its Δ: "
            + "; ".join(f"{len(v)} because {r} (e.g. {', '.join(v[:shown])})" for r, v in by.items())
            + "."
        )
    return (
        ["", "Samples without an estimate (`contrib.json` → `overall.<estimator>.coverage.missing`):"] + out
        if out
        else []
    )


def _ci(o: EstimateRecord) -> str:
    lo, hi = o.ci95 or (None, None)
    return f"{fmt(o.delta)} [{fmt(lo)}, {fmt(hi)}]"


def category_cell(est: str, e: CategoryRecord, numerator: str = "text", denominator: str = "image") -> str:
    """One cell of the per-question-type table (``e``: ``by_category.{est}.{type}``, a
    :class:`~mech.curves.record.CategoryRecord`): ``C(num) / C(den) · Δ``, or the blind spot named, or no Δ
    where |C(den)| < :data:`NEAR_ZERO` × max(1, |decision|) (not for attention, a fraction)."""
    c = e.contribution or {}
    digits = 3 if est == "attention" else 2
    head = f"{fmt(c.get(numerator), digits)} / {fmt(c.get(denominator), digits)}"
    blind = e.blind or ()
    if blind:
        return f"{head} · Δ – (removing {'/'.join(blind)} changes no input: donor identical)"
    if not e.n:
        return "– (no sample with an estimate: no donor)"
    den, dec = c.get(denominator), e.decision
    if (
        est != "attention"
        and den is not None
        and dec is not None
        and abs(den) < NEAR_ZERO * max(1.0, abs(dec))
    ):
        cell = f"{head} · Δ – (C({denominator}) ≈ 0)"
    else:
        cell = f"{head} · Δ {fmt(e.delta)}"
    part = {g: v for g, v in (e.identical_donor or {}).items() if v}
    if part:
        cell += " (" + ", ".join(f"{g} donor identical in {100 * v:.0f}%" for g, v in part.items()) + ")"
    return cell


def category_table(co: ContribRecord, numerator: str = "text", denominator: str = "image") -> list[str]:
    """Markdown lines: one row per question type, ``n``, the decision explained and each estimator's cell,
    from ``co.by_category`` (``co``: a :class:`~mech.curves.record.ContribRecord` or ``contrib.json``
    content); empty without one."""
    by = as_contrib_record(co).by_category or {}
    if not by:
        return []
    ests = list(by)
    cats = sorted({c for e in ests for c in by[e]})
    first = ests[0]
    lines = [
        f"#### Per question type: C({numerator}) / C({denominator}) · Δ({numerator}/{denominator})",
        "",
        "Contributions in the estimator's unit (attention: a fraction; the others: logits), since a ratio is "
        "unstable when C(image) is near 0. `decision`: the mean logit difference being explained (top option "
        "− runner-up).",
        "",
        "| question type | n | decision | " + " | ".join(ests) + " |",
        "|---" * (len(ests) + 3) + "|",
    ]
    for cat in cats:
        e0 = by[first].get(cat)
        n0 = e0.n if e0 is not None else None
        cells = [category_cell(e, by[e][cat], numerator, denominator) if cat in by[e] else "–" for e in ests]
        cells = [
            c + (f" (n = {by[e][cat].n})" if cat in by[e] and by[e][cat].n not in (0, n0) else "")
            for c, e in zip(cells, ests)
        ]
        lines.append(
            f"| {cat} | {'–' if e0 is None else n0} | {fmt(None if e0 is None else e0.decision)} | "
            + " | ".join(cells)
            + " |"
        )
    blind = sorted(
        {(cat, g) for e in ests if e in REMOVAL for cat, x in by[e].items() for g in x.blind or ()}
    )
    if blind:
        lines += [
            "",
            "Blind spot of the removal-based estimators ("
            + ", ".join(e for e in ests if e in REMOVAL)
            + "): "
            + "; ".join(
                f"in `{cat}` every {g} donor is identical to the sample's own {g}, so removing it "
                f"changes no input and C({g}) is 0 by construction, not because the model ignores it"
                for cat, g in blind
            )
            + ".",
        ]
    return lines + [""]


def _order(co: Mapping[str, ContribRecord], models: Sequence[str], est: str) -> list[str]:
    return sorted(models, key=lambda s: -(co[s].overall[est].delta or 0.0))


def _separated(co: Mapping[str, ContribRecord], order: Sequence[str], est: str) -> bool:
    """Whether every adjacent pair in ``order`` has non-overlapping 95% intervals."""
    cis = [co[s].overall[est].ci95 for s in order]
    return all(a[0] is not None and b[1] is not None and a[0] > b[1] for a, b in zip(cis, cis[1:]))


def agreement(results: Mapping[str, Mapping[str, Any]], models: Sequence[str], name=lambda s: s) -> list[str]:
    """Markdown lines: per estimator the models ordered by Δ(text/image); which estimators give the same
    order; the decomposition's MLP share of each modality's contribution; and why estimators that split
    only attention (DLA) or measure only where attention goes disagree with the causal ones. Reads each
    model's ``results[model]["contrib"]`` (:class:`~mech.curves.record.ContribRecord`) only."""
    co = _contrib(results, models)
    ests = [e for e in co[models[0]].overall if all(e in co[s].overall for s in models)]
    orders = {e: _order(co, models, e) for e in ests}
    lines = []
    for e in ests:
        chain = " > ".join(f"`{name(s)}` {_ci(co[s].overall[e])}" for s in orders[e])
        sep = "intervals separate" if _separated(co, orders[e], e) else "intervals overlap"
        lines.append(f"- **{e}**: Δ(text/image) {chain} ({sep})")
    groups: dict[tuple, list[str]] = {}
    for e in ests:
        groups.setdefault(tuple(orders[e]), []).append(e)
    lines.append("")
    if len(groups) == 1:
        lines.append(
            f"**All estimators order the models the same way** ({' > '.join(map(name, orders[ests[0]]))})."
        )
    else:
        parts = [
            f"{' and '.join(es)} order{'s' if len(es) == 1 else ''} Δ {' > '.join(map(name, o))}"
            for o, es in groups.items()
        ]
        lines.append("**The estimators disagree**: " + "; ".join(parts) + ".")
    open_ = [e for e in ests if not _separated(co, orders[e], e)]
    if open_:
        lines.append(
            f"Where adjacent intervals overlap ({', '.join(open_)}), that order is not resolved at this n."
        )
    ref = next((e for e in CAUSAL if e in ests), None)
    why = []
    if "decomposition" in ests:
        why.append(
            "In logits (decomposition): "
            + "; ".join(
                f"`{name(s)}` "
                + ", ".join(
                    f"C({g}) {fmt(c)}"
                    for g, c in co[s].overall["decomposition"].contribution.items()
                    if g in ("text", "image")
                )
                for s in models
            )
            + "."
        )
    for s in models:
        dec = co[s].decomposition
        share, total = (dec.mlp_share, dec.total) if dec is not None else ({}, {})
        if share:
            why.append(
                f"In `{name(s)}` the decomposition credits "
                + ", ".join(
                    f"{fmt(100 * share[g], 0)}% of C({g}) = {fmt(total.get(g))} logits"
                    for g in share
                    if share[g] is not None
                )
                + " to MLP writes"
                + (
                    f" (completeness residual {dec.completeness.relative:.1e} relative)"
                    if dec.completeness.relative is not None
                    else ""
                )
                + "."
            )
    if ref is not None:
        agree = [e for e in ests if e != ref and orders[e] == orders[ref]]
        differ = [e for e in ests if e != ref and orders[e] != orders[ref]]
        if agree:
            why.append(f"{', '.join(agree)} agree{'s' if len(agree) == 1 else ''} with {ref}'s order.")
        if "dla" in differ:
            mlp = [
                (s, d.mlp_share.get("text") if (d := co[s].decomposition) is not None else None)
                for s in models
            ]
            big = [f"`{name(s)}` ({fmt(100 * v, 0)}%)" for s, v in mlp if v is not None and abs(v) >= 0.5]
            why.append(
                "DLA differs from " + ref + ": it assigns only attention writes to the group whose values "
                "they read, and no MLP write to any group"
                + (f"; the text contribution is mostly written by MLPs in {', '.join(big)}" if big else "")
                + "."
            )
        if "attention" in differ:
            why.append(
                f"Attention mass differs from {ref}: it says where the answer position looks, not what the "
                "decision needs."
            )
    same = [
        (s, e, g, v)
        for s in models
        for e in ests
        if e in REMOVAL
        for g, v in (co[s].overall[e].identical_donor or {}).items()
        if v
    ]
    if same:
        why.append(
            "Removal-based estimators count as 0 the samples whose donor has the same content: "
            + "; ".join(f"`{name(s)}` {e} {g} {fmt(100 * v, 0)}%" for s, e, g, v in same)
            + " of the samples (a fixed question wording repeats across samples); their C is a lower "
            "bound there."
        )
    if why:
        lines += [""] + why
    return lines + [""]
