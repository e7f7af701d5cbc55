"""``patch.json`` as a typed, frozen record (:class:`PatchRecord`): what the report and a notebook read.

The file is written by ``mech patch`` (:class:`mech.measure.patching.job.PatchJob`): ``model``, ``data``,
``n``, :meth:`PatchingResult.to_json <mech.measure.patching.PatchingResult.to_json>`'s keys, the
per-sample metrics, the figures, then the run loop's ``skipped``, ``identity`` and ``provenance``.
Reading, checking and the round trip: :class:`mech.contract.record.Record`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mech.contract.record import CommandRecord

__all__ = ["PatchRecord"]

#: one position group's normalized effect per decoder layer: a number (``None`` where no sample has a
#: position of the group), or per head a tuple of them (a site with a head axis)
Cells = tuple[float | tuple[float | None, ...] | None, ...]


@dataclass(frozen=True)
class PatchRecord(CommandRecord):
    """``patch.json``: activation patching between the complete and a corrupted condition.

    Attributes:
        model, data: the model's and the data set's specs; n: samples measured.
        corruption: the corrupted input condition; direction: ``denoising`` (clean activations into the
            corrupted run) or ``noising``; metric: the patching metric (``logit_diff``, ...).
        clean_metric, corrupted_metric: the metric's mean over the n samples in the clean and the
            corrupted run (the metric's units: logits for ``logit_diff``).
        layers: the decoder layers patched; groups: the position groups patched.
        align: how positions of the two runs are matched (``strict``: same token positions).
        effect: site -> group -> per layer (``[layer]``, or ``[layer][head]``) the normalized effect of the
            batch means over every sample (0 and 1: :func:`mech.measure.patching.job.patch_scale`);
            ``None`` where no sample has a position of the group.
        forward_equivalents_per_patched_run: cost of one patched run in forward passes; n_patched_runs:
            patched runs made.
        answer, counterfactual: per sample the answer's and the counterfactual's token id (None: not
            recorded).
        clean_metric_per_sample, corrupted_metric_per_sample: the metric per sample ``[n]``.
        figures: the heatmaps written (``patch_{site}.png``, one per site with a layer × group effect).
        skipped, identity, provenance: the run loop's coverage (samples left out, with reasons), the
            run's identity (command, settings, sample ids hash) and the versions that wrote the file.

    Raises (from :meth:`from_json` / :meth:`read`):
        InputError: a missing key or a value of the wrong type (the message names the key).
    """

    COMMAND = "patch"

    model: str
    data: str
    n: int
    corruption: str
    direction: str
    metric: str
    clean_metric: float
    corrupted_metric: float
    layers: tuple[int, ...]
    groups: tuple[str, ...]
    align: str
    effect: Mapping[str, Mapping[str, Cells]]
    forward_equivalents_per_patched_run: float
    n_patched_runs: int
    answer: tuple[int, ...] | None
    counterfactual: tuple[int, ...] | None
    clean_metric_per_sample: tuple[float, ...]
    corrupted_metric_per_sample: tuple[float, ...]
    figures: tuple[str, ...] = ()
