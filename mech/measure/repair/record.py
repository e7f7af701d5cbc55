"""``repair.json`` as a typed, frozen record (:class:`RepairRecord`): what the report, the figure and a
notebook read.

The file is written by ``mech repair`` (:class:`mech.measure.repair.job.RepairJob`: ``model``, ``data``,
then :meth:`RepairResult.to_json <mech.measure.repair.result.RepairResult.to_json>`'s keys, the figures
and the run loop's ``skipped``, ``identity``, ``provenance``) or by :meth:`RepairResult.save
<mech.measure.repair.result.RepairResult.save>` (without ``data`` and the run loop's keys). The numbers
of one edit are a :class:`Summary` (:func:`mech.measure.repair.evaluate.summarize`); every accuracy is an
:class:`Estimate` (a mean with its 95% percentile bootstrap interval). Reading, checking and the round
trip: :class:`mech.contract.record.Record`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mech.contract.record import CommandRecord, Record

__all__ = [
    "Accuracy",
    "Controls",
    "CurvePoint",
    "EditInfo",
    "Estimate",
    "Flip",
    "Flips",
    "Options",
    "RandomSummary",
    "RepairRecord",
    "SelectionInfo",
    "Summary",
    "WhiteImage",
]


@dataclass(frozen=True)
class Estimate(Record):
    """A mean over samples (a fraction, 0..1) with its 95% percentile bootstrap interval ``ci95`` (``[lo,
    hi]``) over ``n`` samples; ``value`` and the bounds are None when ``n`` is 0
    (:func:`mech.measure.repair.evaluate.bootstrap_mean`)."""

    value: float | None
    ci95: tuple[float | None, ...]
    n: int


@dataclass(frozen=True)
class Accuracy(Record):
    """Accuracy on all held-out samples, on those whose planted prior is wrong / right, on the question
    types without a planted prior, and per category (``by_category.{category}``)."""

    all: Estimate
    prior_wrong: Estimate
    prior_right: Estimate
    unplanted: Estimate
    by_category: Mapping[str, Estimate]


@dataclass(frozen=True)
class Flip(Record):
    """Answers that flipped one way under the edit: how many, and the fraction of the held-out samples."""

    count: int
    fraction: float | None


@dataclass(frozen=True)
class Flips(Record):
    """Flips against the unedited model: wrong -> right and right -> wrong."""

    wrong_to_right: Flip
    right_to_wrong: Flip


@dataclass(frozen=True)
class Options(Record):
    """Under the option-letter scoring: the predicted letters' distribution (letter -> fraction) over ``n``
    samples, its largest gap to uniform and to the gold letters' distribution (``gold_distribution``), and
    the accuracy."""

    distribution: Mapping[str, float]
    n: int
    max_dev_uniform: float | None
    max_dev_gold: float | None
    gold_distribution: Mapping[str, float]
    accuracy: Estimate


@dataclass(frozen=True)
class WhiteImage(Record):
    """With a white image instead of the image: the accuracy, the chance accuracy, and the consistency
    (same answer) between the complete and the white-image input."""

    accuracy: Estimate
    chance: float
    consistency: Estimate


@dataclass(frozen=True, kw_only=True)
class Summary(Record):
    """The numbers of one edit (or of the unedited model), :func:`mech.measure.repair.evaluate.summarize`.

    Attributes:
        accuracy: per group; flips: against the unedited model; prior_to_gold: of the prior-driven wrong
            answers, the fraction now right; answers_prior: the fraction of prior-wrong samples answered
            with the prior; answer_distribution: category -> answer -> fraction.
        options: present where the data has option letters; white_image: present where the white-image
            condition was evaluated.
    """

    accuracy: Accuracy
    flips: Flips
    prior_to_gold: Estimate
    answers_prior: Estimate
    answer_distribution: Mapping[str, Mapping[str, float]]
    options: Options | None = None
    white_image: WhiteImage | None = None


@dataclass(frozen=True)
class EditInfo(Record):
    """An edit without its tensors: ``kind`` (zero, mean, steer, reweight), ``granularity`` (neurons,
    heads, layers), ``size`` (units edited), ``positions`` (answer / all), ``alpha`` (strength), ``label``
    and the first ``units`` (``L{layer}.N{index}``-style labels; at most 50, 10 for a random edit)."""

    kind: str
    granularity: str
    size: int
    positions: str
    alpha: float
    label: str
    units: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class RandomSummary(Summary):
    """One same-size random edit: its ``edit`` and its :class:`Summary`."""

    edit: EditInfo


@dataclass(frozen=True)
class SelectionInfo(Record):
    """The ranking of units on the fit split: ``source`` (attribution, decomposition, list), the model it
    was ranked on, ``n_fit`` samples with a wrong prior, a ``note``, the first ``ranking`` units
    (``[layer, index]``) with their ``scores``, and ``n_ranked`` units in all."""

    granularity: str
    source: str
    model: str
    n_fit: int
    note: str
    ranking: tuple[tuple[int, ...], ...]
    scores: tuple[float, ...]
    n_ranked: int


@dataclass(frozen=True)
class Controls(Record):
    """The selected edit's effect on the ``target`` accuracy (edited − unedited, a difference of
    fractions) against the random edits' (``random``): their median and max, the ratio to the median
    (None when the median is not positive), whether it is above every random edit, and whether it is
    positive and at least 5× the median. An effect is None where an accuracy has no sample."""

    target: str
    selected: float | None
    random: tuple[float | None, ...]
    median: float | None
    max: float | None
    ratio_to_median: float | None
    above_max: bool
    at_least_5x_median: bool


@dataclass(frozen=True)
class CurvePoint(Record):
    """One size ``k`` of the effect-vs-k curve: the selected edit's effect on the target accuracy, each
    random edit's (``random``), and the selected edit's accuracy per group (group -> fraction)."""

    k: int
    effect: float | None
    random: tuple[float | None, ...]
    accuracy: Mapping[str, float | None]


@dataclass(frozen=True)
class Coverage(Record):
    """Held-out samples evaluated, and per split (``held_out``, ``fit``) the skipped ``[id, reason]``."""

    held_out: int
    skipped: Mapping[str, tuple[tuple[Any, ...], ...]]


@dataclass(frozen=True, kw_only=True)
class RepairRecord(CommandRecord):
    """``repair.json``: an edit of the units an explanation names, against same-size random edits.

    Attributes:
        model: the repaired model; data: the data set (absent when written by ``RepairResult.save``);
            transferred_from: the model the selection was ranked on (None: re-ranked on this model);
            label: that in words.
        edit: the selected edit; k: its size; target: the accuracy its effect is measured on
            (``prior_wrong`` or ``all``); scoring, option_scoring: the answer scorings; prior: where the
            prior answer comes from (planted, white_image); planted: the question types with a planted
            prior (None: none).
        selection: the ranking; n_fit, n_held_out: samples in the fit and the held-out split.
        unedited, selected: the numbers of the unedited model and of the selected edit; random: one
            :class:`RandomSummary` per random edit; controls: the effect against the random ones; curve:
            the effect per k; coverage: samples evaluated and skipped.
        alpha, positions, n_random, n_boot, seed, fit_prior_wrong, k_rule: the plan's settings (the
            strength, the edited positions, random edits, bootstrap resamples, seed, fit samples with a
            wrong prior, and how k was chosen on the fit split; None: given).
        figures: ``repair.png``; skipped, identity, provenance: the run loop's coverage, the run's
            identity and the versions that wrote the file.

    Raises (from :meth:`from_json` / :meth:`read`):
        InputError: a missing key or a value of the wrong type (the message names the key path).
    """

    COMMAND = "repair"

    model: str
    data: str | None = None
    transferred_from: str | None
    label: str
    edit: EditInfo
    k: int
    target: str
    scoring: str
    option_scoring: str
    prior: str
    planted: tuple[str, ...] | None
    selection: SelectionInfo
    n_fit: int
    n_held_out: int
    unedited: Summary
    selected: Summary
    random: tuple[RandomSummary, ...]
    controls: Controls
    curve: tuple[CurvePoint, ...]
    coverage: Coverage
    alpha: float | None = None
    positions: str | None = None
    n_random: int | None = None
    n_boot: int | None = None
    seed: int | None = None
    fit_prior_wrong: int | None = None
    k_rule: Any = None
    figures: tuple[str, ...] = ()
