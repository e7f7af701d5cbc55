"""``evaluate``: answers under every condition, batched, resumable, with a progress bar."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mech.conditions import NEEDS_IMAGE, check_condition, condition_inputs
from mech.data import PROMPT_STYLES, SCORINGS, Dataset, format_prompt
from mech.errors import ConfigError, DataError, InputError, MechError
from mech.evaluation.answering import (DEFAULT_MAX_NEW_TOKENS, check_method, generate_batch, is_correct,
                                       option_token_ids, parse_response, score_batch)
from mech.evaluation.consistency import accuracy_table, consistency_table

DEFAULT_CONDITIONS = ("complete", "white_image", "image_only", "no_image", "black_image", "noise_image")
CHECKPOINT_VERSION = 1


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the config and of the first and last parameter tensors (detects retrained weights)."""
    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    params = list(model.parameters())
    for p in (params[0], params[-1]) if params else ():
        h.update(p.detach().float().flatten()[:65536].cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class Checkpoint:
    """Per-batch results as JSON lines in ``path``: a header line, then one record per
    (condition, batch). Each record is appended, flushed and fsync-ed; a torn last line (a run
    killed while writing) is dropped when the file is read back, and the file is rewritten
    atomically without it before new records are appended."""

    def __init__(self, path: str | os.PathLike | None, header: dict):
        self.path = Path(path) if path is not None else None
        self.header = header
        self.records: dict[tuple[str, tuple[str, ...]], dict] = {}
        self.note = ""
        if self.path is None:
            return
        old = self._read()
        if old is not None and old[0] == header:
            self.records = {(r["condition"], tuple(r["ids"])): r for r in old[1]}
        elif old is not None:
            self.note = f"checkpoint {self.path} was written for another run (model, data or settings); starting afresh"
        self._rewrite()

    def _read(self):
        if not self.path.is_file():
            return None
        lines = self.path.read_text(encoding="utf-8").splitlines()
        rows = []
        for line in lines:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn line: everything after it is dropped
        if not rows or "header" not in rows[0]:
            return None
        return rows[0]["header"], [r for r in rows[1:] if "condition" in r and "ids" in r]

    def _rewrite(self):
        from mech.results import _atomic

        text = "".join(json.dumps(x) + "\n" for x in [{"header": self.header}, *self.records.values()])

        def write(tmp):
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)

        _atomic(self.path, write)

    def get(self, condition: str, ids: Sequence[str]) -> dict | None:
        return self.records.get((condition, tuple(ids)))

    def add(self, record: dict) -> None:
        self.records[(record["condition"], tuple(record["ids"]))] = record
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def _answer_batch(m, batch: list[dict], condition: str, *, method: str, scoring: str, style: str,
                  max_new_tokens: int, seed: int) -> dict:
    """Answers of one batch under one condition: ``{"pred", "scores" | "responses"}``."""
    prompt = (lambda s: format_prompt(s, style))
    if method == "score":
        inputs = condition_inputs(m, batch, condition, seed=seed, prompt=prompt)
        rows = score_batch(m, inputs, batch, scoring, condition=condition, seed=seed)
        return {"pred": [r["pred"] for r in rows], "scores": [r["scores"] for r in rows]}
    inputs = condition_inputs(m, batch, condition, seed=seed, prompt=prompt, padding_side="left")
    responses = generate_batch(m, inputs, max_new_tokens, condition=condition, seed=seed)
    return {"pred": [parse_response(r, s) for r, s in zip(responses, batch)], "responses": responses}


def _eligible(samples: list[dict], conditions: Sequence[str], method: str, scoring: str, tokenizer):
    keep, skipped = [], []
    need_image = [c for c in conditions if c in NEEDS_IMAGE]
    for s in samples:
        if need_image and not s.get("images"):
            skipped.append((str(s.get("id")), f"no image (conditions {', '.join(need_image)} need one)"))
            continue
        if method == "score":
            try:
                option_token_ids(tokenizer, s, scoring)
            except InputError as exc:
                skipped.append((str(s.get("id")), str(exc).split(";")[0]))
                continue
        keep.append(s)
    return keep, skipped


def evaluate(m: Any, data: Dataset | Sequence[dict], *, conditions: Sequence[str] = DEFAULT_CONDITIONS,
             method: str = "score", scoring: str | None = None, style: str | None = None, batch_size: int = 8,
             max_new_tokens: int | None = None, seed: int = 0, checkpoint: str | os.PathLike | None = None,
             progress: bool = True) -> dict:
    """Answer every sample under every condition; accuracy and consistency tables.

    Args:
        m: a :class:`~mech.models.MechModel`.
        data: a :class:`~mech.data.Dataset` (or a list of sample dicts).
        conditions: names from :data:`mech.conditions.CONDITIONS` (feature conditions are run
            under :func:`~mech.conditions.corrupt_features`).
        method: ``"score"`` (option scoring, one forward), ``"direct"`` or ``"cot"`` (generation).
        scoring: ``"letter"`` or ``"option_text"``; default: the data set's (``data.scoring``).
        style: prompt style (:data:`mech.data.PROMPT_STYLES`); default ``"cot"`` for
            ``method="cot"``, else the data set's (``"bare"`` for the organisms).
        batch_size: samples per forward.
        max_new_tokens: generation budget (default 16 for direct, 512 for CoT).
        seed: seeds noise images and feature noise.
        checkpoint: a JSON-lines file; finished batches found there are not recomputed, so a
            killed run resumes from its last finished batch with identical results.
        progress: show a tqdm bar over samples.

    Returns:
        dict with ``conditions`` (per condition ``accuracy`` in [0, 1], ``n``, ``correct``,
        ``drop``), ``consistency`` (:func:`consistency_table`), ``ids``, ``predictions`` and
        ``correct`` (condition -> per-sample list), ``scores`` or ``responses``, ``skipped``
        (``count``, ``reasons`` -> count, ``items``), and ``settings``.

    Raises:
        ConfigError: unknown condition/method/scoring/style, duplicate conditions, batch_size < 1.
        DataError: no sample left to evaluate (the message gives the skip reasons).
    """
    from tqdm.auto import tqdm

    conditions = [check_condition(c) for c in conditions]
    if len(set(conditions)) != len(conditions) or not conditions:
        raise ConfigError(f"conditions {conditions} must be a non-empty list without repeats.")
    check_method(method)
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}; pass a positive integer.")
    dataset = data if isinstance(data, Dataset) else Dataset("samples", list(data))
    scoring = scoring or dataset.scoring
    if scoring not in SCORINGS:
        raise ConfigError(f"scoring={scoring!r}; allowed: {', '.join(SCORINGS)}")
    if style is None:
        style = dataset.default_style if dataset.default_style == "bare" else ("cot" if method == "cot" else "direct")
    if style not in PROMPT_STYLES:
        raise ConfigError(f"style={style!r}; allowed: {', '.join(PROMPT_STYLES)}")
    if method != "score":
        max_new_tokens = max_new_tokens or DEFAULT_MAX_NEW_TOKENS[method]
    samples, eval_skipped = _eligible(list(dataset.samples), conditions, method, scoring, m.tokenizer)
    skipped = [(i, r, "data") for i, r in dataset.skipped] + [(i, r, "eval") for i, r in eval_skipped]
    if not samples:
        reasons = sorted({r for _, r, _ in skipped})[:5]
        raise DataError(f"no sample of {dataset.name} can be evaluated; skip reasons: {reasons or 'empty data set'}.")
    ids = [str(s["id"]) for s in samples]
    if len(set(ids)) != len(ids):
        raise DataError(f"{dataset.name}: sample ids are not unique; conditions are aligned by id.")
    settings = {"model": getattr(m, "spec", None), "model_fingerprint": model_fingerprint(m.model),
                "data": dataset.name, "method": method, "scoring": scoring if method == "score" else None,
                "style": style, "batch_size": batch_size, "max_new_tokens": max_new_tokens, "seed": seed,
                "ids_hash": hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]}
    ckpt = Checkpoint(checkpoint, {"version": CHECKPOINT_VERSION, **settings})
    if ckpt.note:
        print(ckpt.note)
    batches = [samples[i:i + batch_size] for i in range(0, len(samples), batch_size)]
    done = sum(len(b) for b in batches if all(ckpt.get(c, [str(s["id"]) for s in b]) for c in conditions))
    bar = tqdm(total=len(samples), initial=done, unit="sample", desc="mech eval", disable=not progress)
    results: dict[str, list[dict]] = {c: [] for c in conditions}
    try:
        for batch in batches:
            bids = [str(s["id"]) for s in batch]
            fresh = False
            for cond in conditions:
                rec = ckpt.get(cond, bids)
                if rec is None:
                    try:
                        out = _answer_batch(m, batch, cond, method=method, scoring=scoring, style=style,
                                            max_new_tokens=max_new_tokens, seed=seed)
                    except MechError as exc:
                        raise type(exc)(f"condition {cond!r}, samples {bids[:3]}: {exc} (to evaluate the "
                                        f"other conditions, leave {cond!r} out)") from exc
                    rec = {"condition": cond, "ids": bids, **out}
                    ckpt.add(rec)
                    fresh = True
                results[cond].append(rec)
            if fresh:
                bar.update(len(batch))
    finally:
        bar.close()
    return _assemble(samples, ids, conditions, results, skipped, settings)


def _assemble(samples, ids, conditions, results, skipped, settings) -> dict:
    predictions = {c: [p for rec in results[c] for p in rec["pred"]] for c in conditions}
    correct = {c: [is_correct(p, s) for p, s in zip(predictions[c], samples)] for c in conditions}
    complete_correct = correct.get("complete")
    out = {"model": settings["model"], "data": settings["data"], "conditions": accuracy_table(correct),
           "settings": settings}
    out["consistency"] = (consistency_table(predictions, complete_correct) if complete_correct is not None
                          else None)
    reasons: dict[str, int] = {}
    for _, r, _ in skipped:
        reasons[r] = reasons.get(r, 0) + 1
    out["skipped"] = {"count": len(skipped), "reasons": reasons,
                      "items": [{"id": i, "reason": r, "stage": st} for i, r, st in skipped]}
    out["ids"] = ids
    out["answers"] = [s["answer"] for s in samples]
    out["n_options"] = [len(s.get("options") or []) for s in samples]
    out["predictions"] = predictions
    out["correct"] = correct
    key = "scores" if settings["method"] == "score" else "responses"
    out[key] = {c: [x for rec in results[c] for x in rec[key]] for c in conditions}
    return out
