"""The ``mech attention`` job: attention mass over a data set, on the run loop (:mod:`mech.runs.loop`).

Writes into ``--out``: ``attention.json`` (``layers``, ``groups``, ``mass``, ``token_share``,
``mdi``; plus ``aei``, ``mdi_text``, ``mdi_aggregate`` (mech's defaults, ``"user"`` and
``"ratio_of_means"``; docs/attention.md), ``efficiency``, ``model``, ``data``, ``n``, ``query``), ``attention.safetensors``
(per-sample ``mass [sample, layer, head, group]``, ``density``, ``token_share``, ``counts``,
``spatial``) and the figures ``attention_mass.png``, ``attention_heads.png``, ``attention_image.png``.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mech.measure.attention.instrument import AttentionSettings
from mech.measure.attention.record import AttentionRecord

__all__ = ["AttentionJob", "present_groups"]


@dataclass(frozen=True)
class AttentionJob:
    """``mech attention`` as a :class:`~mech.runs.loop.Job`."""

    settings: AttentionSettings
    #: the typed record of ``attention.json`` (what the report and :meth:`summary` read)
    record: typing.ClassVar[type[AttentionRecord]] = AttentionRecord

    def samples(self):
        from mech.prepare.data import load_data

        return load_data(self.settings.data, n=self.settings.n)

    def context(self, samples) -> None:
        return None

    def measure(self, m: Any, samples: list[dict], rows: range, context: None = None):
        from mech.conditions import condition_inputs
        from mech.measure.attention import attention_mass

        batch = [samples[i] for i in rows]
        return attention_mass(m, condition_inputs(m, batch, "complete"), query=self.settings.query).parts()

    def assemble(self, store, samples: list[dict], out: Path, context: None = None) -> dict:
        from mech.figures import attention as plots
        from mech.figures import save_figure
        from mech.measure.attention import AttentionMass
        from mech.runs.loop import concat_parts

        s = self.settings
        am = concat_parts(AttentionMass, store)  # every batch's contract part, joined
        meta = {
            "model": s.model,
            "data": s.data,
            "n": len(samples),
            "query": am.query,
            "ids": [x.get("id") for x in samples],
        }
        am.save_tensors(out)
        title = f"{s.model} on {s.data}"
        figures = [
            save_figure(
                plots.mass_curves(
                    am, f"{title}\nattention mass from the answer position (n = {len(samples)})"
                ),
                out / "attention_mass.png",
            )
        ]
        if "image" in am.groups and float(am.token_share[:, am.groups.index("image")].max()) > 0:
            figures.append(save_figure(plots.head_heatmap(am, "image"), out / "attention_heads.png"))
            row = next((i for i, x in enumerate(samples) if x.get("images")), None)
            if row is not None:
                fig = plots.image_overlay(
                    am, samples[row]["images"][0], row=row, sample=samples[row].get("id")
                )
                if fig is not None:
                    figures.append(save_figure(fig, out / "attention_image.png"))
        # names relative to --out: the same JSON whatever the directory
        return {**am.summary(), "grid": am.grid, **meta, "figures": [Path(f).name for f in figures]}

    def summary(self, rec: AttentionRecord) -> list[str]:
        """The line ``mech attention`` prints: n, the query and the mass per group at the last layer."""
        groups, last = rec.groups, rec.mass[-1]
        share = ", ".join(f"{g} {v:.2f}" for g, v in zip(groups, last) if v > 0)
        return [f"n={rec.n}, query {rec.query}; attention mass at the last layer: {share}"]

    @staticmethod
    def captions(att: AttentionRecord) -> dict[str, str]:
        """Figure file name -> caption: what the figure plots and over how many samples."""
        from mech.figures.attention import MAX_PANELS, QUERY_WORDS

        q = QUERY_WORDS.get(att.query, att.query)
        shown = "every layer" if len(att.layers) <= MAX_PANELS else f"{MAX_PANELS} evenly spaced layers"
        return {
            "attention_mass.png": f"Attention mass from {q} on each token group the inputs have "
            f"({', '.join(present_groups(att))}) per decoder layer, mean over heads and "
            f"n = {att.n} samples (solid), and each group's token share, the mass under "
            "uniform attention (dashed).",
            "attention_heads.png": f"Attention mass from {q} on the image tokens per decoder layer and head, mean "
            f"over n = {att.n} samples.",
            "attention_image.png": f"Attention from {q} on each image patch of one sample (the first with an image; "
            f"its id is above the input panel), for {shown} and their mean, mean over heads, "
            "drawn over the image in grey on one colour scale; Σ image is the layer's total "
            "mass on the image. n = 1 sample.",
        }

    @staticmethod
    def section(att: AttentionRecord, prefix: str) -> list[str]:
        """The ``report.md`` lines of ``attention.json`` (``prefix``: the folder of its files)."""
        from mech.report_words import figure_lines, fmt

        caption = AttentionJob.captions(att)
        lines = [
            f"### Attention mass from the answer position (mean over heads and n = {att.n} samples)",
            "",
        ]
        groups = present_groups(att)
        cols = [att.groups.index(g) for g in groups]
        lines += ["| layer | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
        for layer, row in zip(att.layers, att.mass):
            lines.append(f"| {layer} | " + " | ".join(fmt(row[i], 3) for i in cols) + " |")
        share = att.token_share
        lines += ["| token share | " + " | ".join(fmt(share.get(g), 3) for g in groups) + " |", ""]
        left_out = [g for g in att.groups if g not in groups]
        if left_out:
            lines += [f"Left out: {', '.join(left_out)} (no such tokens in these inputs).", ""]
        for fig in att.figures or []:
            lines += figure_lines(fig, prefix, caption.get(fig))
        return lines


def present_groups(att: AttentionRecord | Mapping[str, Any]) -> list[str]:
    """The token groups of ``attention.json`` that the inputs have: a group with no token in any
    sample (token share 0 and no mass in any layer, e.g. video and audio for an image model) is
    left out of the report. ``att``: the record, or the file's content (converted).

    Raises:
        InputError: ``att`` is a dict that is not an ``attention.json``.
    """
    att = AttentionRecord.of(att)
    share = att.token_share
    return [
        g
        for i, g in enumerate(att.groups)
        if (share.get(g) or 0) > 0 or any((row[i] or 0) > 0 for row in att.mass)
    ]
