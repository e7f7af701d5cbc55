"""``contrib.json`` as a typed, frozen record (:class:`ContribRecord`): what the report, the figures and a
notebook read instead of the JSON dict.

A field is named exactly as the file's key (:class:`mech.contract.record.Record`), so
``ContribRecord.read(folder).overall["patching"].delta`` is ``contrib.json`` → ``overall.patching.delta``.
``ContribRecord.from_json(d).to_json() == d``, keys in the file's order, so nothing is lost by reading
the record: a key it does not declare (a file from a newer mech) is kept in ``extra``. Contributions
are in each estimator's unit: attention mass a fraction of the answer position's attention, the others
logits (:data:`mech.figures.contributions.UNITS`). Every list of per-layer values is ``[layer]`` over
the decoder layers, ``null`` (None) where undefined (NaN). The numbers are made by
:meth:`mech.curves.Contributions.to_json` and :mod:`mech.curves.summary`, where each is defined and
sourced; Δ is the paper's modality imbalance ratio (eq. 2).

Errors: :meth:`ContribRecord.from_json` and :meth:`ContribRecord.read` raise
:class:`~mech.errors.InputError` naming the key (``contrib.json: overall.dla: delta: expected a number``)
when a required key is missing or a value has the wrong type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mech.contract.record import CommandRecord, Record

__all__ = [
    "CategoryRecord",
    "CompletenessRecord",
    "ContribRecord",
    "CoverageRecord",
    "DecompositionRecord",
    "EstimateRecord",
    "MissingRecord",
    "as_contrib_record",
]

#: per-layer values ``[layer]``; None where undefined (NaN in the computation, null in the file)
Layers = tuple[float | None, ...]


@dataclass(frozen=True)
class MissingRecord(Record):
    """One sample without an estimate: ``id`` (the data set's sample id; the sample index when ids were
    not given) and ``reason`` (each group's reason, joined by "; ")."""

    id: str | int
    reason: str


@dataclass(frozen=True)
class CoverageRecord(Record):
    """``overall.<estimator>.coverage`` (:func:`mech.curves.summary.coverage`): ``coverage`` =
    ``n_estimated / n`` (None when n = 0), ``n_estimated`` samples with an estimate of both groups of the
    ratio, ``n`` samples, and ``missing``: one entry per other sample, with its reason."""

    coverage: float | None
    n_estimated: int
    n: int
    missing: tuple[MissingRecord, ...]


@dataclass(frozen=True)
class _Imbalance(Record):
    """The fields of :meth:`mech.curves.ratio.Imbalance.to_json`: ``dominant`` / ``underutilized`` (group
    names; None without an estimated sample), ``delta`` = Δ(numerator/denominator) of the sample-mean
    pooled contributions, ``ci95`` (its bootstrap 95% interval, ``(lo, hi)``; ``(None, None)`` with fewer
    than 2 estimated samples), ``contribution`` (group -> sample-mean contribution pooled over layers,
    in the estimator's unit; None for a group the estimator does not cover) and ``n`` (estimated samples)."""

    dominant: str | None
    underutilized: str | None
    delta: float | None
    ci95: tuple[float | None, ...]
    contribution: Mapping[str, float | None]
    n: int


@dataclass(frozen=True)
class EstimateRecord(_Imbalance):
    """``overall.<estimator>``: :class:`_Imbalance`'s fields over every sample, ``coverage``, and for the
    removal-based estimators (patching, decomposition, with resample removal) ``identical_donor`` (group
    -> share of the estimated samples whose donor's embeddings of the group equal their own) and
    ``blind`` (the groups where that share is 1: C = 0 by construction)."""

    coverage: CoverageRecord
    identical_donor: Mapping[str, float | None] | None = None
    blind: tuple[str, ...] | None = None


@dataclass(frozen=True)
class CategoryRecord(_Imbalance):
    """``by_category.<estimator>.<question type>`` (:func:`mech.curves.summary.by_category`):
    :class:`_Imbalance`'s fields over the question type's samples, ``decision`` (their mean logit
    difference, top option − runner-up, in logits; None when not recorded) and, for the removal-based
    estimators, ``identical_donor`` and ``blind`` (as :class:`EstimateRecord`)."""

    decision: float | None
    identical_donor: Mapping[str, float | None] | None = None
    blind: tuple[str, ...] | None = None


@dataclass(frozen=True)
class CompletenessRecord(Record):
    """``decomposition.completeness`` (:func:`mech.curves.decomposition.completeness`): ``max_abs`` (logits)
    and ``relative`` residual of Σ φ = decision − rest over the samples (None without samples), the
    ``tolerance`` on ``relative`` and whether it holds (``ok``; None without samples)."""

    max_abs: float | None
    relative: float | None
    tolerance: float
    ok: bool | None


@dataclass(frozen=True)
class DecompositionRecord(Record):
    """``decomposition`` (:func:`mech.curves.summary.decomposition_json`), sample means in logits over the
    ``n`` samples with every player estimated: ``players`` (the modalities removed), ``components``
    (``attn`` / ``mlp`` -> player -> ``[layer]`` Shapley shares), ``embed`` and ``total`` (player -> the
    embedding's share and the whole contribution, = ``overall.decomposition.contribution``),
    ``mlp_share`` (player -> the share of its contribution written by MLPs; None where |C| is below 1% of
    the decision), ``decision``, ``rest`` (every player removed, frozen readout), ``removed`` (that
    run's own logit difference), ``interaction`` and ``completeness``."""

    players: tuple[str, ...]
    components: Mapping[str, Mapping[str, Layers]]
    embed: Mapping[str, float | None]
    total: Mapping[str, float | None]
    mlp_share: Mapping[str, float | None]
    decision: float | None
    rest: float | None
    removed: float | None
    interaction: float | None
    completeness: CompletenessRecord
    n: int


@dataclass(frozen=True)
class ContribRecord(CommandRecord):
    """``contrib.json``, written by ``mech contrib`` (:class:`mech.curves.job.ContribJob`).

    Fields (the file's keys):
        model, data: the model and data specs (absent from :meth:`mech.curves.Contributions.to_json`,
            hence optional).
        groups: the token groups along the per-sample tensors' last axis.
        pool: estimator -> how its ``[layer]`` contributions pool into one number (``mean``, ``first``,
            ``abs_sum``, ``sum``; :data:`mech.curves.contributions.POOL`).
        ratio: ``"<numerator>/<denominator>"`` of Δ (``"text/image"``).
        curves: estimator -> group -> ``[layer]`` sample-mean contribution (groups the estimator does not
            cover left out); cumulative: the same summed over layers 0..l (not for patching, whose
            restoration is already cumulative).
        imbalance_ratio: estimator -> ``[layer]`` Δ per layer.
        overall: estimator -> :class:`EstimateRecord`, in the order the estimators ran.
        n: the number of samples.
        corruption: the removal of patching and decomposition (``resample`` / ``noise``); None without
            either estimator. Absent from a Python-made result without it.
        patching_without_donor: group -> the samples resample pairing found no donor for (resample only).
        dla_decomposition: the DLA split of the sample-mean logit difference, in logits:
            ``attn.<group>``, ``mlp``, ``other``, ``logit_diff`` (with ``dla`` only).
        decomposition: :class:`DecompositionRecord` (with ``decomposition`` only).
        by_category: estimator -> question type -> :class:`CategoryRecord` (when the samples' question
            types were given; always in ``contrib.json``).
        figures: the figure files written beside it (``contrib.png``).
        skipped: the data rows left out, ``{"count", "reasons": reason -> count, "items": [{"id",
            "reason"[, "stage"]}]}`` (:func:`mech.prepare.data.skipped_summary`; rows without an image
            among them).
        identity, provenance: the run's identity (command, settings, sample ids hash) and the versions
            that wrote the file (the run loop adds them; absent from content made in Python).
    """

    COMMAND = "contrib"

    groups: tuple[str, ...]
    pool: Mapping[str, str]
    ratio: str
    curves: Mapping[str, Mapping[str, Layers]]
    cumulative: Mapping[str, Mapping[str, Layers]]
    imbalance_ratio: Mapping[str, Layers]
    overall: Mapping[str, EstimateRecord]
    n: int | None
    model: str | None = None
    data: str | None = None
    corruption: str | None = None
    patching_without_donor: Mapping[str, int] | None = None
    dla_decomposition: Mapping[str, float] | None = None
    decomposition: DecompositionRecord | None = None
    by_category: Mapping[str, Mapping[str, CategoryRecord]] | None = None
    figures: tuple[str, ...] | None = None


def as_contrib_record(contrib: Any) -> ContribRecord:
    """``contrib`` as a :class:`ContribRecord`: itself when it is one, else ``contrib.json`` content (a
    dict) or a :class:`mech.curves.Contributions` (its ``to_json()``), read by
    :meth:`ContribRecord.of <mech.contract.record.Record.of>`.

    Raises:
        InputError: content that is not ``contrib.json``'s (the message names the key).
    """
    from mech.curves.contributions import Contributions

    return ContribRecord.of(contrib.to_json() if isinstance(contrib, Contributions) else contrib)
