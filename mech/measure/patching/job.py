"""The ``mech patch`` job: activation patching between the complete and a corrupted condition.

Writes ``patch.json`` (``corruption``, ``direction``, ``metric``, ``clean_metric``,
``corrupted_metric``, ``effect.{site}.{positions}`` per layer; read back as
:class:`~mech.measure.patching.record.PatchRecord`), ``patch.safetensors`` (raw metrics, effects) and
one heatmap per site (``patch_{site}.png``). Batches, shards and resume: :mod:`mech.runs.loop`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from mech.measure.patching.instrument import PatchSettings
from mech.measure.patching.record import PatchRecord

__all__ = ["PatchJob", "patch_scale"]


@dataclass(frozen=True)
class PatchJob:
    """``mech patch`` as a :class:`~mech.runs.loop.Job`; ``patch.json`` reads back as ``record``."""

    settings: PatchSettings
    record: ClassVar[type[PatchRecord]] = PatchRecord

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
        from mech.engines.unembed import answer_logits
        from mech.measure.patching import activation_patching
        from mech.prepare.targets import answer_tokens

        s = self.settings
        clean = condition_inputs(m, batch, "complete")
        # feature conditions corrupt the forward pass (activation_patching wraps it in feature_condition)
        corrupted = condition_inputs(
            m, batch, "complete" if s.corruption in FEATURE_CONDITIONS else s.corruption
        )
        with torch.no_grad():
            clean_logits = answer_logits(m, clean).float()  # [batch, vocab] at the answer position
        a, c = answer_tokens(m, batch, clean_logits)
        p = activation_patching(
            m,
            clean,
            corrupted,
            sites=s.sites,
            positions=s.positions,
            direction=s.direction,
            metric=s.metric,
            answer=a,
            counterfactual=c,
            condition=s.corruption,
            normalize=False,
            max_rows=max(64, 4 * s.batch_size),
        )
        return p.parts()  # the result itself (mech.contract): tensors and its other fields

    def assemble(self, store, samples: list[dict], out: Path, context: None = None) -> dict:
        from mech.figures import patching_heatmap, save_figure
        from mech.measure.patching import PatchingResult
        from mech.results import write_tensors
        from mech.runs.loop import concat_parts

        s = self.settings
        # the union's normalized effect: batch means over every sample (one batch may have clean == corrupted)
        res = concat_parts(PatchingResult, store).with_effects(normalize=True)
        clean_m, corr_m = res.clean_metric, res.corrupted_metric
        result = {
            "model": s.model,
            "data": s.data,
            "n": len(samples),
            **res.to_json(),
            "clean_metric_per_sample": clean_m.tolist(),
            "corrupted_metric_per_sample": corr_m.tolist(),
            "figures": [],
        }
        for site in s.sites:
            if res.effect[site].dim() == 2:
                fig = patching_heatmap(
                    res.effect[site],
                    res.groups,
                    res.layers,
                    f"{s.model}: {site}\n{s.direction} from {s.corruption}, "
                    f"normalized {res.metric}, n = {len(samples)}",
                )
                png = save_figure(fig, out / f"patch_{site}.png")
                result["figures"].append(str(png.name))
        # patch.safetensors keeps its tensors: the effects, the patched and the two unpatched metrics
        tensors = {
            k: v
            for k, v in res.tensors().items()
            if k.split(".")[0] in ("effect", "patched", "clean_metric", "corrupted_metric")
        }
        write_tensors(
            out / "patch.safetensors",
            tensors,
            {
                "corruption": s.corruption,
                "direction": s.direction,
                "metric": res.metric,
                "groups": list(res.groups),
            },
        )
        return result

    def summary(self, rec: PatchRecord) -> list[str]:
        """The lines ``mech patch`` prints when done."""
        return [
            f"n={rec.n}, {rec.direction} {rec.corruption}: {rec.metric} clean "
            f"{rec.clean_metric:.3f}, corrupted {rec.corrupted_metric:.3f}; "
            f"{rec.forward_equivalents_per_patched_run:.2f} forward-equivalents per patched run"
        ]

    @staticmethod
    def captions(pa: PatchRecord) -> dict[str, str]:
        """Figure file name -> caption: what the figure plots and over how many samples."""
        return {
            f"patch_{site}.png": f"Normalized effect of {pa.direction} activation patching of `{site}` from "
            f"`{pa.corruption}` per decoder layer and position group ({pa.metric}; "
            f"{patch_scale(pa.direction)}), of the means over n = {pa.n} samples; "
            "'–': no sample has a position of that group."
            for site in pa.effect
        }

    @staticmethod
    def section(pa: PatchRecord, prefix: str) -> list[str]:
        """The ``report.md`` lines of ``patch.json`` (``prefix``: the folder of its files)."""
        from mech.report_words import figure_lines, fmt

        caption = PatchJob.captions(pa)
        lines = [
            f"### Activation patching: {pa.direction} from `{pa.corruption}`, metric {pa.metric}",
            "",
            f"clean {fmt(pa.clean_metric, 3)}, corrupted {fmt(pa.corrupted_metric, 3)} (mean over "
            f"n = {pa.n} samples); normalized effect per layer ({patch_scale(pa.direction)}):",
            "",
        ]
        for site, eff in pa.effect.items():
            gs = [g for g in eff if any(v is not None for v in eff[g])] or list(eff)
            lines += [f"**{site}**", "", "| layer | " + " | ".join(gs) + " |", "|---" * (len(gs) + 1) + "|"]
            for layer in range(len(eff[gs[0]])):
                lines.append(f"| {layer} | " + " | ".join(fmt(eff[g][layer], 3) for g in gs) + " |")
            lines.append("")
        for fig in pa.figures:
            lines += figure_lines(fig, prefix, caption.get(fig))
        return lines


def patch_scale(direction: str) -> str:
    """What 0 and 1 of the normalized patching effect mean in ``direction``."""
    return (
        "0 = the corrupted run, 1 = the clean run restored"
        if direction == "denoising"
        else "0 = the clean run unchanged, 1 = as broken as the corrupted run"
    )
