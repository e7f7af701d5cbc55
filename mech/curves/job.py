"""The ``mech contrib`` job: contribution curves and Δ over a data set, on the run loop.

Writes ``contrib.json`` (``curves``, ``cumulative``, ``imbalance_ratio``, ``overall`` per estimator,
``decomposition``, ``by_category.{estimator}.{question type}``),
``contrib.safetensors`` (per-sample ``[sample, layer, group]`` per estimator, plus the answer and
counterfactual token ids, and ``missing.<group>``: why a sample has no estimate) and ``contrib.png``. The
removal of ``patching`` and ``decomposition`` is ``--removal resample`` (default: donors paired once over
the whole data set by content, images resized to the sample's sizes and text fitted to its token count,
:mod:`mech.curves.donors`, so every sample can be estimated and results do not depend on the batch size)
or ``noise``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mech.curves.instrument import ContribSettings
from mech.curves.record import ContribRecord, as_contrib_record
from mech.errors import DataError

__all__ = ["ContribJob", "decomposition_lines"]


@dataclass(frozen=True)
class ContribJob:
    """``mech contrib`` as a :class:`~mech.runs.loop.Job`; ``contrib.json`` is read as :attr:`record`."""

    settings: ContribSettings
    #: the typed record of ``contrib.json`` (what :meth:`summary`, :meth:`captions` and :meth:`section` read)
    record = ContribRecord

    def samples(self):
        """The data set's samples that have an image; the others join its ``skipped`` rows (counted in
        ``contrib.json``). Raises DataError when none has one."""
        import dataclasses

        from mech.prepare.data import load_data
        from mech.prepare.targets import without_untargetable

        s = self.settings
        data = without_untargetable(load_data(s.data, n=s.n))
        keep = [x for x in data if x.get("images")]
        if not keep:
            raise DataError(
                f"{s.data}: no sample with an image; contributions need images — pass a data set with images."
            )
        dropped = [
            (str(x.get("id")), "no image (contributions need one)") for x in data if not x.get("images")
        ]
        return dataclasses.replace(data, samples=keep, skipped=list(data.skipped) + dropped)

    def context(self, samples: list[dict]) -> dict:
        """Donor pairs over the whole data set, once per run (group -> donor index per sample)."""
        from mech.curves import PATCHED_GROUPS
        from mech.curves.donors import pair_donors

        s = self.settings
        if s.removal != "resample" or not {"patching", "decomposition"} & set(s.estimators):
            return {}  # no donors: noise removal, or no estimator that removes a group
        return {g: pair_donors(samples, g, seed=s.seed) for g in PATCHED_GROUPS}

    def measure(self, m: Any, samples: list[dict], rows: range, context: dict):
        from mech.curves.donors import contributions_for_rows

        s = self.settings
        # donors are paired over the whole data set (the same pairs whatever the batching)
        c, answer, cf = contributions_for_rows(
            m, samples, rows, context, estimators=s.estimators, seed=s.seed, removal=s.removal
        )
        # one contract part per batch (mech.contract): the answer and counterfactual tokens ride along as
        # per-sample components; the run-level metadata is set once, at assembly
        extra = {"answer": answer, "counterfactual": cf}
        return replace(c, meta={}, components={**c.components, **extra}).parts()

    def assemble(self, store, samples: list[dict], out: Path, context: dict) -> dict:
        from mech.curves import PATCHED_GROUPS, Contributions
        from mech.curves.summary import category_of
        from mech.figures import contribution_figure, save_figure
        from mech.results import write_tensors
        from mech.runs.loop import concat_parts

        s = self.settings
        whole = concat_parts(Contributions, store)  # every batch's contract part, joined
        # every per-sample tensor (contrib.safetensors), by name: the components' order in contrib.json
        data = dict(sorted({**whole.per_sample, **whole.components}.items()))
        removing = [e for e in ("patching", "decomposition") if e in s.estimators]
        meta = {"corruption": s.removal if removing else None}  # the contrib.json key stays
        if context:  # resample donors were paired: count, per group, the samples the pairing found none for
            meta["patching_without_donor"] = {g: sum(d is None for d in context[g]) for g in PATCHED_GROUPS}
        per_sample = {e: data[e] for e in s.estimators}
        contrib = Contributions(
            per_sample,
            groups=whole.groups,
            meta=meta,
            components={
                k: v for k, v in data.items() if k not in per_sample and k not in ("answer", "counterfactual")
            },
        )
        result = {
            "model": s.model,
            "data": s.data,
            **contrib.to_json(
                categories=[category_of(x) for x in samples], ids=[x.get("id") for x in samples]
            ),
        }
        write_tensors(out / "contrib.safetensors", data, {"groups": list(contrib.groups)})
        rec = ContribRecord.from_json(result)
        save_figure(contribution_figure(rec, f"{s.model} on {s.data} (n = {rec.n})"), out / "contrib.png")
        result["figures"] = ["contrib.png"]
        return result

    def summary(self, rec: ContribRecord) -> list[str]:
        """The lines ``mech contrib`` prints: per estimator Δ(text/image) [95% CI], the dominant group and
        the samples estimated. ``rec``: the :class:`ContribRecord` (or ``contrib.json`` content)."""
        from mech.report_words import fmt

        rec = as_contrib_record(rec)
        lines = []
        for est, o in rec.overall.items():
            lo, hi = o.ci95
            lines.append(
                f"{est}: Δ(text/image) {fmt(o.delta, 2)} [{fmt(lo, 2)}, {fmt(hi, 2)}], dominant "
                f"{o.dominant} (estimated for {o.coverage.n_estimated} of {rec.n})"
            )
        return lines

    @staticmethod
    def captions(co: ContribRecord) -> dict[str, str]:
        """Figure file name -> caption: what the figure plots and over how many samples. ``co``: the
        :class:`ContribRecord` (or ``contrib.json`` content)."""
        co = as_contrib_record(co)
        miss = co.patching_without_donor or {}
        return {
            "contrib.png": "Per-layer contribution of each token group by each estimator ("
            + ", ".join(co.curves)
            + (f"; patching by {co.corruption} ablation" if co.corruption else "")
            + f") and Δ({co.ratio}) per layer (log scale, dashed: Δ = 1; legend: "
            f"overall Δ and its bootstrap 95% interval). n = {co.n} samples"
            + (
                " (patching: "
                + ", ".join(f"{g} of {co.n - k}" for g, k in miss.items())
                + ", the others have no donor)"
                if any(miss.values())
                else ""
            )
            + ".",
        }

    @staticmethod
    def section(co: ContribRecord, prefix: str) -> list[str]:
        """The ``report.md`` lines of ``contrib.json``'s record ``co`` (:class:`ContribRecord`, or the
        JSON content; ``prefix``: the folder of its files)."""
        from mech.report_words import (
            category_table,
            coverage_cell,
            coverage_lines,
            figure_lines,
            fmt,
            identical_cell,
        )

        co = as_contrib_record(co)
        caption = ContribJob.captions(co)
        lines = [
            f"### Modality contributions and the imbalance ratio Δ(text/image) (n = {co.n} samples)",
            "",
            "| estimator | C(text) | C(image) | Δ | 95% CI | dominant | coverage | identical donor |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for est, o in co.overall.items():
            c = o.contribution
            lines.append(
                f"| {est} | {fmt(c.get('text'), 3)} | {fmt(c.get('image'), 3)} | {fmt(o.delta, 2)} | "
                f"[{fmt(o.ci95[0], 2)}, {fmt(o.ci95[1], 2)}] | {o.dominant} | "
                f"{coverage_cell(o)} | {identical_cell(o)} |"
            )
        lines += coverage_lines(co)
        corr = co.corruption
        if corr:
            lines += [
                "",
                f"Removal (patching, decomposition): `{corr}` ablation of each group"
                + (
                    " (donors paired by content over the data set; images resized to the sample's sizes, text "
                    "fitted to its token count)"
                    if corr == "resample"
                    else ""
                )
                + ".",
            ]
        dec = co.dla_decomposition
        if dec:
            attn = ", ".join(
                f"{g} {fmt(dec[f'attn.{g}'], 2)}" for g in co.groups if abs(dec.get(f"attn.{g}", 0.0)) > 1e-3
            )
            lines += [
                "",
                f"DLA decomposition of the decision's logit difference ({fmt(dec['logit_diff'], 2)} logits, "
                f"sample mean): attention writes from {attn}; MLPs {fmt(dec['mlp'], 2)}; embedding and biases "
                f"{fmt(dec['other'], 2)}. Modality-resolved DLA splits attention writes only: what MLPs write "
                "at the answer position (e.g. a prior computed from question words moved there) has no group.",
            ]
        lines += decomposition_lines(co)
        lines += [""] + category_table(co)
        for fig in co.figures if co.figures is not None else ("contrib.png",):
            lines += figure_lines(fig, prefix, caption.get(fig))
        return lines


def decomposition_lines(co: ContribRecord) -> list[str]:
    """The decomposition of the decision by component and modality, in words and numbers, from
    ``co.decomposition`` (``co``: a :class:`ContribRecord` or ``contrib.json`` content); empty without one
    or with no sample decomposed."""
    from mech.report_words import fmt

    dec = as_contrib_record(co).decomposition
    if dec is None or not dec.n:
        return []
    comp = dec.components
    parts = [
        f"{g} {fmt(dec.total[g], 2)} (attention {fmt(sum(comp['attn'][g]), 2)}, MLP "
        f"{fmt(sum(comp['mlp'][g]), 2)}"
        + (f", embedding {fmt(dec.embed[g], 2)}" if abs(dec.embed.get(g) or 0) > 1e-6 else "")
        + ")"
        for g in dec.players
    ]
    c = dec.completeness
    return [
        "",
        f"Decomposition of the decision's logit difference ({fmt(dec.decision, 2)} logits, mean over "
        f"n = {dec.n} samples) by Shapley value of removing each modality: "
        + "; ".join(parts)
        + f"; left with every modality removed (template, bos, prior; frozen readout) {fmt(dec.rest, 2)}, "
        f"interaction {fmt(dec.interaction, 2)} (split equally). Completeness: the parts sum to decision − "
        f"rest up to {c.max_abs:.1e} logits ({c.relative:.1e} relative; tolerance {c.tolerance:.0e}).",
    ]
