"""The ``mech patch`` job: activation patching between the complete and a corrupted condition.

Writes ``patch.json`` (``corruption``, ``direction``, ``metric``, ``clean_metric``,
``corrupted_metric``, ``effect.{site}.{positions}`` per layer), ``patch.safetensors`` (raw metrics,
effects) and one heatmap per site (``patch_{site}.png``). Batches, shards and resume:
:mod:`mech.runs.loop`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mech.runs.settings import PatchSettings


@dataclass(frozen=True)
class PatchJob:
    """``mech patch`` as a :class:`~mech.runs.loop.Job`."""

    settings: PatchSettings

    def samples(self):
        from mech.prepare.data import load_data
        from mech.prepare.targets import without_untargetable

        return without_untargetable(load_data(self.settings.data, n=self.settings.n))

    def context(self, samples) -> None:
        return None

    def measure(self, m: Any, samples: list[dict], rows: range, context: None = None):
        """Patch one batch; the part's tensors (sample axis first) and metadata."""
        batch = [samples[i] for i in rows]
        from mech.conditions import FEATURE_CONDITIONS, condition_inputs
        from mech.measure.patching import activation_patching
        from mech.engines.unembed import answer_logits
        from mech.prepare.targets import answer_tokens

        s = self.settings
        clean = condition_inputs(m, batch, "complete")
        # feature conditions corrupt the forward pass (activation_patching wraps it in corrupt_features)
        corrupted = condition_inputs(m, batch, "complete" if s.corruption in FEATURE_CONDITIONS else s.corruption)
        with torch.no_grad():
            clean_logits = answer_logits(m, clean).float()  # [batch, vocab] at the answer position
        a, c = answer_tokens(m, batch, clean_logits)
        p = activation_patching(m, clean, corrupted, site=s.sites, positions=s.positions, direction=s.direction,
                                metric=s.metric, answer=a, counterfactual=c, condition=s.corruption,
                                normalize=False, max_rows=max(64, 4 * s.batch_size))
        tensors = {"clean_metric": p.clean_metric, "corrupted_metric": p.corrupted_metric,
                   # rows per position group with at least one patched position (empty group -> NaN effect)
                   "n_pairs": torch.tensor([[len(r) for r in p.patched_positions[g]] for g in p.groups]).T.long(),
                   "batch.forward_equivalents": torch.tensor([p.forward_equivalents], dtype=torch.float64),
                   "batch.n_patched_runs": torch.tensor([p.n_patched_runs], dtype=torch.long),
                   "answer": a.long().cpu(), "counterfactual": c.long().cpu()}
        tensors.update({f"patched.{k}": v.movedim(-1, 0) for k, v in p.patched.items()})  # sample axis first
        return tensors, {"groups": list(p.groups), "layers": list(p.layers), "metric": p.metric, "align": p.align}

    def assemble(self, store, samples: list[dict], out: Path, context: None = None) -> dict:
        from mech.measure.patching import PatchingResult
        from mech.measure.patching.metrics import normalized_effect
        from mech.figures import patching_heatmap, save_figure
        from mech.results import write_tensors

        s = self.settings
        cat = store.collect()
        first = store.meta(0)
        groups = tuple(first["groups"])
        clean_m, corr_m = cat["clean_metric"], cat["corrupted_metric"]
        empty = cat["n_pairs"].sum(0) == 0  # [group]: no sample has a patched position there
        patched, effect = {}, {}
        for site in s.sites:
            patched[site] = cat[f"patched.{site}"].movedim(0, -1).contiguous()  # [layer, (head,) group, sample]
            eff = normalized_effect(patched[site], clean_m, corr_m, s.direction)
            eff[..., empty] = float("nan")
            effect[site] = eff
        answers = {k: cat[k].tolist() for k in ("answer", "counterfactual")}
        fe = cat["batch.forward_equivalents"].tolist()
        res = PatchingResult(effect, patched, clean_m, corr_m, groups, list(first["layers"]), s.direction,
                             first["metric"], s.corruption, first["align"], {}, sum(fe) / len(fe),
                             int(cat["batch.n_patched_runs"].sum()), meta=answers)
        result = {"model": s.model, "data": s.data, "n": len(samples), **res.to_json(),
                  "clean_metric_per_sample": clean_m.tolist(), "corrupted_metric_per_sample": corr_m.tolist(),
                  "figures": []}
        for site in s.sites:
            if res.effect[site].dim() == 2:
                fig = patching_heatmap(res.effect[site], res.groups, res.layers,
                                       f"{s.model}: {site}\n{s.direction} from {s.corruption}, "
                                       f"normalized {first['metric']}, n = {len(samples)}")
                png = save_figure(fig, out / f"patch_{site}.png")
                result["figures"].append(str(png.name))
        write_tensors(out / "patch.safetensors", res.tensors(), {"corruption": s.corruption, "direction": s.direction,
                                                                  "metric": first["metric"], "groups": list(groups)})
        return result

    def summary(self, result: dict) -> list[str]:
        return [f"n={result['n']}, {result['direction']} {result['corruption']}: {result['metric']} clean "
                f"{result['clean_metric']:.3f}, corrupted {result['corrupted_metric']:.3f}; "
                f"{result['forward_equivalents_per_patched_run']:.2f} forward-equivalents per patched run"]
