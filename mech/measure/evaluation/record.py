"""``eval.json`` as a typed, frozen record (:class:`mech.contract.record.Record`): what the report,
``eval.md``, the evaluation figure and a notebook read.

The file is :func:`mech.measure.evaluation.run.assemble`'s result (the same dict :func:`evaluate`
returns in memory) plus what ``mech eval`` adds: ``settings.chance``, ``figures``, and the run loop's
``identity`` and ``provenance``. ``EvalRecord.from_json(d).to_json() == d``, keys in the file's order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mech.contract.record import CommandRecord, Record, Skipped

__all__ = [
    "ConditionAccuracy",
    "ConsistencyCell",
    "EvalRecord",
    "EvalRunSettings",
    "Skipped",
]


@dataclass(frozen=True)
class ConditionAccuracy(Record):
    """One condition's row of Table 1 (:func:`mech.measure.evaluation.consistency.accuracy_table`).

    ``accuracy``: correct / n, a fraction in [0, 1] (None when n = 0); ``n``: samples answered;
    ``correct``: how many correctly; ``drop``: accuracy(complete) − accuracy, same unit (None without
    the complete condition)."""

    accuracy: float | None
    n: int
    correct: int
    drop: float | None


@dataclass(frozen=True)
class ConsistencyCell(Record):
    """One cell of Table 2 (:func:`mech.measure.evaluation.consistency.consistency_table`): of
    ``total`` samples of the subset, ``num`` give the same non-None prediction under the compared
    conditions (``pct`` = 100 · num / total, percent; None for an empty subset) and
    ``inconsistent_num`` = total − num do not (``inconsistent_pct`` likewise)."""

    num: int
    pct: float | None
    inconsistent_num: int
    inconsistent_pct: float | None
    total: int


@dataclass(frozen=True)
class EvalRunSettings(Record):
    """The ``settings`` key of ``eval.json``: how the answers were read.

    ``model`` (None in memory without a spec) and its ``model_fingerprint`` (a hash of the weights);
    ``data``; ``method`` (``score`` | ``direct`` | ``cot``); ``scoring`` (``letter`` |
    ``option_text``, None unless ``method="score"``); ``style`` (the prompt style); ``parser``
    (``official`` | ``strict``, None for ``method="score"``); ``batch_size``; ``max_new_tokens``
    (None: the method's default); ``seed``; ``ids_hash`` (a hash of the answered ids, in order);
    ``chance`` (the accuracy of uniform guessing, mean over samples of 1 / number of options; None
    without options; written by ``mech eval``, absent from :func:`evaluate`'s result)."""

    model: str | None
    model_fingerprint: str
    data: str
    method: str
    scoring: str | None
    style: str
    parser: str | None
    batch_size: int
    max_new_tokens: int | None
    seed: int
    ids_hash: str
    chance: float | None = None


@dataclass(frozen=True)
class EvalRecord(CommandRecord):
    """``eval.json``: accuracy per input condition and prediction consistency (Zheng et al. 2025,
    arXiv:2505.18657, Tables 1-2), with every answer behind them.

    Attributes:
        model, data: the model and data set specs.
        conditions: condition -> its Table 1 row (:class:`ConditionAccuracy`), in the order evaluated;
            conditions the model cannot take are left out (see ``unavailable``).
        settings: :class:`EvalRunSettings`.
        consistency: subset (``all`` | ``correct`` | ``wrong``, by the complete-input prediction) ->
            comparison key (:data:`~mech.measure.evaluation.consistency.PAIRS`) -> its Table 2 cell
            (:class:`ConsistencyCell`; None when a compared condition was not evaluated). None without
            the complete condition.
        skipped: the samples left out (:class:`Skipped`).
        ids: the answered samples' ids, in order (every per-sample list below is aligned on them).
        answers: per sample, the gold option letter (or the open answer text).
        n_options: per sample, its number of options (0 for an open question).
        predictions: condition -> per sample, the predicted letter (normalised text for an open
            question), None when the response could not be parsed.
        correct: condition -> per sample, whether the prediction is the answer.
        unavailable: condition -> why this model cannot take it (not measured).
        data_notes: ``{"id", "note"}`` per answered sample the data set kept but flagged.
        scores: ``method="score"`` only: condition -> per sample, the log-probability of each option
            (natural log; one value per option; None in the file where it was not finite, e.g. -inf).
        responses: ``method="direct"|"cot"`` only: condition -> per sample, the generated text.
        guessed: ``method="direct"|"cot"`` only: condition -> how many answers the official parser
            guessed (no letter found; MMMU-Pro's fallback, made deterministic).
        figures: the figure files written beside the JSON (``mech eval`` only).
        identity, provenance: the run's identity and the versions that made the file (the run loop
            writes them; absent from :func:`evaluate`'s result).

    Raises (``from_json`` / ``read``):
        InputError: a required key missing, or a value of the wrong type (the message names the key).
    """

    COMMAND = "eval"

    model: str | None
    data: str
    conditions: Mapping[str, ConditionAccuracy]
    settings: EvalRunSettings
    consistency: Mapping[str, Mapping[str, ConsistencyCell | None]] | None
    ids: tuple[str, ...]
    answers: tuple[str, ...]
    n_options: tuple[int, ...]
    predictions: Mapping[str, tuple[str | None, ...]]
    correct: Mapping[str, tuple[bool, ...]]
    unavailable: Mapping[str, str]
    data_notes: tuple[Mapping[str, str], ...]
    scores: Mapping[str, tuple[tuple[float | None, ...], ...]] | None = None
    responses: Mapping[str, tuple[str, ...]] | None = None
    guessed: Mapping[str, int] | None = None
    figures: tuple[str, ...] | None = None
