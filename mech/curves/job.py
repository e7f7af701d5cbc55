"""The ``mech contrib`` job: contribution curves and Δ over a data set, on the run loop.

Writes ``contrib.json`` (``curves``, ``cumulative``, ``imbalance_ratio``, ``overall`` per estimator,
``decomposition``, ``by_category.{estimator}.{question type}``),
``contrib.safetensors`` (per-sample ``[sample, layer, group]`` per estimator, plus the answer and
counterfactual token ids, and ``missing.<group>``: why a sample has no estimate) and ``contrib.png``. The
removal of ``patching`` and ``decomposition`` is ``--ablation resample`` (default: donors paired once over
the whole data set by content, images resized to the sample's sizes and text fitted to its token count,
:mod:`mech.curves.donors`, so every sample can be estimated and results do not depend on the batch size)
or ``noise``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mech.errors import DataError
from mech.runs.settings import ContribSettings


@dataclass(frozen=True)
class ContribJob:
    """``mech contrib`` as a :class:`~mech.runs.loop.Job`."""

    settings: ContribSettings

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
            raise DataError(f"{s.data}: no sample with an image; contributions need images — pass a data set with "
                            "images.")
        dropped = [(str(x.get("id")), "no image (contributions need one)") for x in data if not x.get("images")]
        return dataclasses.replace(data, samples=keep, skipped=list(data.skipped) + dropped)

    def context(self, samples: list[dict]) -> dict:
        """Donor pairs over the whole data set, once per run (group -> donor index per sample)."""
        from mech.curves import PATCHED_GROUPS
        from mech.curves.donors import pair_donors

        s = self.settings
        if s.ablation != "resample" or not {"patching", "decomposition"} & set(s.estimators):
            return {}  # no donors: noise ablation, or no estimator that removes a group
        return {g: pair_donors(samples, g, seed=s.seed) for g in PATCHED_GROUPS}

    def measure(self, m: Any, samples: list[dict], rows: range, context: dict):
        from mech.curves.donors import contributions_for_rows

        s = self.settings
        # donors are paired over the whole data set (the same pairs whatever the batching)
        c, answer, cf = contributions_for_rows(m, samples, rows, context, estimators=s.estimators,
                                               seed=s.seed, corruption=s.ablation)
        return {**c.per_sample, **c.components, "answer": answer, "counterfactual": cf}, {}

    def assemble(self, store, samples: list[dict], out: Path, context: dict) -> dict:
        from mech.curves import PATCHED_GROUPS, Contributions
        from mech.curves.summary import category_of
        from mech.figures import contribution_figure, save_figure
        from mech.results import write_tensors

        s = self.settings
        data = store.gather()
        removing = [e for e in ("patching", "decomposition") if e in s.estimators]
        meta = {"corruption": s.ablation if removing else None}
        if context:  # resample donors were paired: count, per group, the samples the pairing found none for
            meta["patching_without_donor"] = {g: sum(d is None for d in context[g]) for g in PATCHED_GROUPS}
        per_sample = {e: data[e] for e in s.estimators}
        contrib = Contributions(per_sample, meta=meta, components={
            k: v for k, v in data.items() if k not in per_sample and k not in ("answer", "counterfactual")})
        result = {"model": s.model, "data": s.data,
                  **contrib.to_json(categories=[category_of(x) for x in samples],
                                    ids=[x.get("id") for x in samples])}
        write_tensors(out / "contrib.safetensors", data, {"groups": list(contrib.groups)})
        save_figure(contribution_figure(result, f"{s.model} on {s.data} (n = {result['n']})"), out / "contrib.png")
        result["figures"] = ["contrib.png"]
        return result

    def summary(self, result: dict) -> list[str]:
        from mech.report_words import fmt

        lines = []
        for est, o in result["overall"].items():
            lo, hi = o["ci95"]
            cov = o.get("coverage") or {}
            lines.append(f"{est}: Δ(text/image) {fmt(o['delta'], 2)} [{fmt(lo, 2)}, {fmt(hi, 2)}], dominant "
                         f"{o['dominant']} (estimated for {cov.get('n_estimated', o['n'])} of {result['n']})")
        return lines
