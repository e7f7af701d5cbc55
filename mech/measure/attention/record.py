"""``attention.json`` as a typed, frozen record (:class:`mech.contract.record.Record`): what the report
and a notebook read. The figures of attention draw the per-sample tensors
(:class:`~mech.measure.attention.AttentionMass`, ``attention.safetensors``), not this file.

The file is :meth:`AttentionMass.summary` plus ``grid``, and what ``mech attention`` adds (``model``,
``data``, ``ids``, ``figures``) and the run loop's ``skipped``, ``identity`` and ``provenance``;
:meth:`AttentionMass.save` writes the summary, ``grid`` and its own metadata only, so those keys may be
absent. ``AttentionRecord.from_json(d).to_json() == d``, keys in the file's order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mech.contract.record import CommandRecord

__all__ = ["AttentionRecord"]


@dataclass(frozen=True)
class AttentionRecord(CommandRecord):
    """``attention.json``: attention mass from the query rows to each token group, per decoder layer.

    Attributes:
        layers: the decoder layers, ``[layer]`` (0-based).
        groups: the token groups (``mech.GROUPS``), the last axis of ``mass`` and ``efficiency``.
        mass: ``[layer][group]``: FastV's total attention allocation λ, the fraction of the query's
            attention on each group's keys, mean over heads and samples; each row sums to 1
            (:meth:`AttentionMass.allocation`). None where not a number.
        token_share: group -> the mean fraction of non-padding key positions in the group (the mass
            under uniform attention).
        mdi, mdi_per_sample_median: ``[layer]``: the Modality Dominance Index (*When Language
            Overrules*, eq. 1), aggregated as ``mdi_aggregate`` (``"ratio_of_means"``: the ratio of
            the means over samples; ``"mean_of_ratios"``), and the median over samples of the
            per-sample index; ``mdi_text``: the groups counted as text (``"user"`` or their names).
            Absent when the groups have no ``text`` group and ``mdi_text`` is ``"user"``.
        aei: ``{"text", "non_text"}`` -> ``[layer]``: the attention efficiency index of each side.
            Absent with ``mdi``.
        efficiency: ``[layer][group]``: FastV's attention efficiency ε = λ / |group|, mean over samples
            (None for a group without tokens).
        query: the query rows (``"last"``, ``"answer"``, ``"text"`` or ``"mask"``).
        n: samples measured.
        grid: ``[rows, cols]`` of the first image's patch grid, None when unknown.
        model, data, ids, figures: the model and data specs, the samples' ids in order, and the figure
            files written beside the JSON (``mech attention``; absent from :meth:`AttentionMass.save`).
        skipped: the data rows left out, ``{"count", "reasons": reason -> count, "items": [{"id",
            "reason"[, "stage"]}]}`` (:func:`mech.prepare.data.skipped_summary`).
        identity, provenance: the run's identity and the versions that made the file.

    Raises (``from_json`` / ``read``):
        InputError: a required key missing, or a value of the wrong type (the message names the key).
    """

    COMMAND = "attention"

    layers: tuple[int, ...]
    groups: tuple[str, ...]
    mass: tuple[tuple[float | None, ...], ...]
    token_share: Mapping[str, float | None]
    efficiency: tuple[tuple[float | None, ...], ...]
    query: str
    n: int
    grid: tuple[int, ...] | None
    mdi: tuple[float | None, ...] | None = None
    mdi_text: str | tuple[str, ...] | None = None
    mdi_aggregate: str | None = None
    mdi_per_sample_median: tuple[float | None, ...] | None = None
    aei: Mapping[str, tuple[float | None, ...]] | None = None
    model: str | None = None
    data: str | None = None
    ids: tuple[str, ...] | None = None
    figures: tuple[str, ...] | None = None
