"""``evaluate``: answers under every condition, batched, with a progress bar; the pieces
(:func:`plan`, :func:`answer_rows`, :func:`assemble`) that ``mech eval`` runs on the run loop."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mech.conditions import NEEDS_IMAGE, check_condition, condition_inputs
from mech.errors import ConfigError, DataError, InputError, MechError
from mech.measure.evaluation.answering import (
    DEFAULT_MAX_NEW_TOKENS,
    PARSERS,
    check_method,
    generate_batch,
    is_correct,
    option_token_ids,
    read_response,
    score_batch,
)
from mech.measure.evaluation.consistency import accuracy_table, consistency_table
from mech.models.fingerprint import model_fingerprint
from mech.models.load import takes_model
from mech.prepare.data import PROMPT_STYLES, SCORINGS, Dataset, format_prompt, skipped_summary
from mech.prepare.fit import max_positions, text_only_refusal, usable_images

__all__ = ["DEFAULT_CONDITIONS", "EvalPlan", "answer_rows", "assemble", "evaluate", "plan", "to_frame"]

DEFAULT_CONDITIONS = ("complete", "white_image", "image_only", "no_image", "black_image", "noise_image")


def _answer_batch(
    m,
    batch: list[dict],
    condition: str,
    *,
    method: str,
    scoring: str,
    style: str,
    max_new_tokens: int,
    seed: int,
    parser: str = "official",
) -> dict:
    """Answers of one batch under one condition: ``{"pred", "scores" | "responses", "guessed"}``."""

    def prompt(s):
        return format_prompt(s, style)

    if method == "score":
        inputs = condition_inputs(m, batch, condition, seed=seed, prompt=prompt)
        rows = score_batch(m, inputs, batch, scoring, condition=condition, seed=seed)
        return {"pred": [r["pred"] for r in rows], "scores": [r["scores"] for r in rows]}
    inputs = condition_inputs(m, batch, condition, seed=seed, prompt=prompt, padding_side="left")
    responses = generate_batch(m, inputs, max_new_tokens, condition=condition, seed=seed)
    read = [read_response(r, s, parser) for r, s in zip(responses, batch)]
    return {"pred": [x[0] for x in read], "responses": responses, "guessed": [x[1] for x in read]}


def _eligible(
    samples: list[dict],
    conditions: Sequence[str],
    method: str,
    scoring: str,
    tokenizer,
    style: str = "direct",
    limit: int | None = None,
):
    """``(keep, skipped)``: the samples this model can answer, and ``(id, reason)`` of the others (no image
    for an image condition; options outside the vocabulary; a prompt whose words alone exceed the model's
    ``limit`` positions; one that fits only without its image tokens still raises in ``m.prepare``)."""
    keep, skipped = [], []
    need_image = [c for c in conditions if c in NEEDS_IMAGE]
    for s in samples:
        if need_image and not s.get("images"):
            skipped.append((str(s.get("id")), f"no image (conditions {', '.join(need_image)} need one)"))
            continue
        if limit is not None and tokenizer is not None:
            n = len(tokenizer(format_prompt(s, style))["input_ids"])
            if n > limit:
                skipped.append((str(s.get("id")), f"prompt longer than the model's {limit} positions"))
                continue
        if method == "score":
            try:
                option_token_ids(tokenizer, s, scoring)
            except InputError as exc:
                skipped.append((str(s.get("id")), str(exc).split(";")[0]))
                continue
        keep.append(s)
    return keep, skipped


@dataclass(frozen=True)
class EvalPlan:
    """How an evaluation answers: the checked options of :func:`evaluate` (one per run, immutable)."""

    data: str
    conditions: tuple[str, ...]
    method: str
    scoring: str
    style: str
    max_new_tokens: int | None
    seed: int
    batch_size: int
    parser: str = "official"


def plan(
    data: Dataset,
    *,
    conditions: Sequence[str] = DEFAULT_CONDITIONS,
    method: str = "score",
    scoring: str | None = None,
    style: str | None = None,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    seed: int = 0,
    parser: str = "official",
) -> EvalPlan:
    """Check the options of :func:`evaluate` and fill in the data set's defaults.

    Raises:
        ConfigError: unknown condition/method/scoring/style/parser, duplicate conditions, batch_size < 1.
    """
    conditions = tuple(check_condition(c) for c in conditions)
    if len(set(conditions)) != len(conditions) or not conditions:
        raise ConfigError(f"conditions {list(conditions)} must be a non-empty list without repeats.")
    check_method(method)
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}; pass a positive integer.")
    scoring = scoring or data.scoring
    if scoring not in SCORINGS:
        raise ConfigError(f"scoring={scoring!r}; allowed: {', '.join(SCORINGS)}")
    if style is None:
        style = (
            data.default_style if data.default_style == "bare" else ("cot" if method == "cot" else "direct")
        )
    if style not in PROMPT_STYLES:
        raise ConfigError(f"style={style!r}; allowed: {', '.join(PROMPT_STYLES)}")
    if parser not in PARSERS:
        raise ConfigError(f"parser={parser!r}; allowed: {', '.join(PARSERS)}")
    if method != "score":
        max_new_tokens = max_new_tokens or DEFAULT_MAX_NEW_TOKENS[method]
    return EvalPlan(data.name, conditions, method, scoring, style, max_new_tokens, seed, batch_size, parser)


def answer_rows(m: Any, p: EvalPlan, batch: Sequence[dict]) -> dict[str, Any]:
    """Answers of one batch under every condition of ``p``.

    Returns:
        ``{"ids": [...] (the answered samples), "skipped": [[id, reason], ...] (samples that cannot be
        evaluated with this model: no image for an image condition, options outside the vocabulary),
        "records": {condition: {"pred": [...], "scores" | "responses": [...]}}, "unavailable": {condition:
        reason} (conditions this model cannot take at all, :func:`~mech.prepare.fit.text_only_refusal`)}``,
        JSON-able.

    Raises:
        MechError: a condition fails on this batch (the message names the condition and samples).
    """
    keep, skipped = _eligible(
        list(batch), p.conditions, p.method, p.scoring, m.tokenizer, p.style, max_positions(m)
    )
    unavailable = {}
    if "no_image" in p.conditions and (reason := text_only_refusal(m.processor)):
        unavailable["no_image"] = reason  # the model cannot take this condition at all: reported, not run
    records = {}
    ids = [str(s["id"]) for s in keep]
    for cond in [c for c in p.conditions if c not in unavailable] if keep else ():
        try:
            records[cond] = _answer_batch(
                m,
                keep,
                cond,
                method=p.method,
                scoring=p.scoring,
                style=p.style,
                max_new_tokens=p.max_new_tokens,
                seed=p.seed,
                parser=p.parser,
            )
        except MechError as exc:
            raise type(exc)(
                f"condition {cond!r}, samples {ids[:3]}: {exc} (to evaluate the other conditions, "
                f"leave {cond!r} out)"
            ) from exc
    return {"ids": ids, "skipped": [list(x) for x in skipped], "records": records, "unavailable": unavailable}


def assemble(
    p: EvalPlan,
    samples: Sequence[dict],
    parts: Sequence[dict],
    *,
    model: str | None,
    fingerprint: str,
    data_skipped: Sequence[tuple[str, str]] = (),
    data_notes: Sequence[tuple[str, str]] = (),
) -> dict:
    """The :func:`evaluate` result from the :func:`answer_rows` parts of ``samples``, in order;
    ``data_notes``: the data set's kept-but-odd rows (:attr:`~mech.prepare.data.Dataset.notes`).

    Raises:
        DataError: no sample left to evaluate (the message gives the skip reasons); ids not unique.
    """
    by_id = {str(s["id"]): s for s in samples}
    kept = [by_id[i] for part in parts for i in part["ids"]]
    skipped = [(i, r, "data") for i, r in data_skipped] + [
        (i, r, "eval") for part in parts for i, r in part["skipped"]
    ]
    if not kept:
        reasons = sorted({r for _, r, _ in skipped})[:5]
        raise DataError(
            f"no sample of {p.data} can be evaluated; skip reasons: {reasons or 'empty data set'}."
        )
    ids = [str(s["id"]) for s in kept]
    if len(set(ids)) != len(ids) or len(by_id) != len(samples):
        raise DataError(f"{p.data}: sample ids are not unique; conditions are aligned by id.")
    settings = {
        "model": model,
        "model_fingerprint": fingerprint,
        "data": p.data,
        "method": p.method,
        "scoring": p.scoring if p.method == "score" else None,
        "style": p.style,
        "parser": p.parser if p.method != "score" else None,
        "batch_size": p.batch_size,
        "max_new_tokens": p.max_new_tokens,
        "seed": p.seed,
        "ids_hash": hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16],
    }
    unavailable = {c: r for part in parts for c, r in (part.get("unavailable") or {}).items()}
    conditions = [c for c in p.conditions if c not in unavailable]
    results = {c: [part["records"][c] for part in parts if part["ids"]] for c in conditions}
    out = _assemble(kept, ids, conditions, results, skipped, settings)
    out["unavailable"] = {c: unavailable[c] for c in p.conditions if c in unavailable}
    kept_ids = set(ids)
    out["data_notes"] = [{"id": i, "note": n} for i, n in data_notes if i in kept_ids]
    return out


@takes_model
def evaluate(
    m: Any,
    data: Dataset | Sequence[dict],
    *,
    conditions: Sequence[str] = DEFAULT_CONDITIONS,
    method: str = "score",
    scoring: str | None = None,
    style: str | None = None,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    seed: int = 0,
    parser: str = "official",
    progress: bool = True,
) -> dict:
    """Answer every sample under every condition; accuracy and consistency tables.

    In memory, for notebooks and scripts; ``mech eval`` runs the same batches on the run loop
    (:mod:`mech.runs.loop`: resumable, sharded, written atomically).

    Args:
        m: a :class:`~mech.models.MechModel`.
        data: a :class:`~mech.prepare.data.Dataset` (or a list of sample dicts).
        conditions: names from :data:`mech.conditions.CONDITIONS` (feature conditions are run
            under :func:`~mech.conditions.feature_condition`).
        method: ``"score"`` (option scoring, one forward), ``"direct"`` or ``"cot"`` (generation).
        scoring: ``"letter"`` or ``"option_text"``; default: the data set's (``data.scoring``).
        style: prompt style (:data:`mech.prepare.data.PROMPT_STYLES`); default ``"cot"`` for
            ``method="cot"``, else the data set's (``"bare"`` for the organisms).
        batch_size: samples per forward.
        max_new_tokens: generation budget (default 16 for direct, 512 for CoT).
        seed: seeds noise images and feature noise.
        parser: how generated answers are read (:data:`~mech.measure.evaluation.answering.PARSERS`):
            ``"official"`` (MMMU-Pro's ``parse_multi_choice_response``, its random guess made
            deterministic) or ``"strict"`` (mech's stricter reading; unparsed answers are None).
        progress: show a tqdm bar over samples.

    Returns:
        dict with ``conditions`` (per condition ``accuracy`` in [0, 1], ``n``, ``correct``,
        ``drop``), ``consistency`` (:func:`consistency_table`), ``ids``, ``predictions`` and
        ``correct`` (condition -> per-sample list), ``scores`` or ``responses``, for generation
        ``guessed`` (condition -> number of answers the official parser guessed), ``unavailable``
        (condition -> why this model cannot take it at all, e.g. ``no_image`` where the processor
        refuses a prompt without images; such a condition has no accuracy), ``skipped``
        (``count``, ``reasons`` -> count, ``items``), ``data_notes`` (rows kept as the benchmark's
        official code keeps them, with why they are odd) and ``settings``.

    Raises:
        ConfigError: unknown condition/method/scoring/style, duplicate conditions, batch_size < 1.
        DataError: no sample left to evaluate (the message gives the skip reasons).
    """
    from tqdm.auto import tqdm

    dataset = data if isinstance(data, Dataset) else Dataset("samples", list(data))
    p = plan(
        dataset,
        conditions=conditions,
        method=method,
        scoring=scoring,
        style=style,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        seed=seed,
        parser=parser,
    )
    # an image the processor refuses skips its row, once per run (mech eval: the run loop does the same)
    samples, refused = usable_images(m.processor, list(dataset.samples))
    parts = []
    with tqdm(total=len(samples), unit="sample", desc="mech eval", disable=not progress) as bar:
        for i in range(0, len(samples), batch_size):
            parts.append(answer_rows(m, p, samples[i : i + batch_size]))
            bar.update(len(samples[i : i + batch_size]))
    return assemble(
        p,
        list(dataset.samples),
        parts,
        model=getattr(m, "spec", None),
        fingerprint=model_fingerprint(m.model),
        data_skipped=list(dataset.skipped) + refused,
        data_notes=getattr(dataset, "notes", []),
    )


def to_frame(result: dict):
    """The per-sample answers of an :func:`evaluate` result (or ``eval.json``) as a tidy ``pandas.DataFrame``,
    one row per sample × condition (sample-major), columns ``sample, id, condition, prediction, correct,
    answer, n_options``: ``sample`` the position in ``result["ids"]`` (int64), ``id`` and ``condition``
    Categoricals (conditions in the result's order), ``prediction`` the parsed option letter (missing
    where none was parsed), ``correct`` bool, ``answer`` the gold letter, ``n_options`` int64.
    Scores and responses are left out (a list per sample, see ``result["scores"|"responses"]``)."""
    import numpy as np

    from mech.frames import tidy

    conds = list(result["predictions"])
    ids, n = list(result["ids"]), len(result["ids"])
    pred = np.empty((n, len(conds)), dtype=object)
    for j, c in enumerate(conds):
        pred[:, j] = result["predictions"][c]
    correct = np.array(
        [[bool(result["correct"][c][i]) for c in conds] for i in range(n)], dtype=bool
    ).reshape(n, -1)
    answer = np.empty((n, 1), dtype=object)
    answer[:, 0] = result["answers"]
    options = np.asarray(result["n_options"], dtype=np.int64).reshape(n, 1)
    return tidy(
        {"prediction": pred, "correct": correct, "answer": answer, "n_options": options},
        {"sample": {"sample": None, "id": ids}, "condition": conds},
    )


def _assemble(samples, ids, conditions, results, skipped, settings) -> dict:
    predictions = {c: [p for rec in results[c] for p in rec["pred"]] for c in conditions}
    correct = {c: [is_correct(p, s) for p, s in zip(predictions[c], samples)] for c in conditions}
    complete_correct = correct.get("complete")
    out = {
        "model": settings["model"],
        "data": settings["data"],
        "conditions": accuracy_table(correct),
        "settings": settings,
    }
    out["consistency"] = (
        consistency_table(predictions, complete_correct) if complete_correct is not None else None
    )
    out["skipped"] = skipped_summary(skipped)
    out["ids"] = ids
    out["answers"] = [s["answer"] for s in samples]
    out["n_options"] = [len(s.get("options") or []) for s in samples]
    out["predictions"] = predictions
    out["correct"] = correct
    key = "scores" if settings["method"] == "score" else "responses"
    out[key] = {c: [x for rec in results[c] for x in rec[key]] for c in conditions}
    if key == "responses":
        out["guessed"] = {
            c: sum(bool(x) for rec in results[c] for x in rec.get("guessed", ())) for c in conditions
        }
    return out
