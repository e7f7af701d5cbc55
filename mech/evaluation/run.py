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
    atomically without it before new records are appended.

    Sharded runs (:mod:`mech.parallel`): shard ``K`` of ``N`` appends to its own file
    ``<stem>.K-of-N.jsonl`` beside ``path``; every invocation also reads (never writes) the other
    files of the same run there, so a single-process rerun, or the shard that finishes last, sees
    every record. ``run`` (the command-line settings) is kept on the header line for ``mech merge``,
    with :func:`mech.results.provenance` (not part of what a resumed run must match).
    """

    def __init__(self, path: str | os.PathLike | None, header: dict, *, shard=None, run: dict | None = None):
        from mech.parallel import WHOLE

        self.shard = shard or WHOLE
        self.base = Path(path) if path is not None else None
        self.path = self.base
        if self.base is not None and self.shard.sharded:
            name = f"{self.base.stem}.{self.shard.rank}-of-{self.shard.world}{self.base.suffix}"
            self.path = self.base.with_name(name)
        self.header, self.run = header, run
        self.own: dict[tuple[str, tuple[str, ...]], dict] = {}
        self.records: dict[tuple[str, tuple[str, ...]], dict] = {}
        self.note = ""
        if self.path is None:
            return
        old = self._read(self.path)
        if old is not None and old[0] == header:
            self.own = {(r["condition"], tuple(r["ids"])): r for r in old[1]}
        elif old is not None:
            self.note = f"checkpoint {self.path} was written for another run (model, data or settings); starting afresh"
        self.refresh()
        if self.shard.computes:
            self._rewrite()

    def siblings(self) -> list[Path]:
        """The other checkpoint files of this run's directory (the base file and every shard file)."""
        if self.base is None:
            return []
        files = [self.base, *sorted(self.base.parent.glob(f"{self.base.stem}.*-of-*{self.base.suffix}"))]
        return [f for f in files if f != self.path and f.is_file()]

    def refresh(self) -> None:
        """Re-read the other files (records other shards appended since)."""
        self.records = {}
        for f in self.siblings():
            old = self._read(f)
            if old is not None and old[0] == self.header:
                self.records.update({(r["condition"], tuple(r["ids"])): r for r in old[1]})
        self.records.update(self.own)

    @staticmethod
    def _read(path: Path):
        if not path.is_file():
            return None
        lines = path.read_text(encoding="utf-8").splitlines()
        rows = []
        for line in lines:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn line: everything after it is dropped
        if not rows or "header" not in rows[0]:
            return None
        return rows[0]["header"], [r for r in rows[1:] if "condition" in r and "ids" in r], rows[0].get("run")

    def _rewrite(self):
        from mech.results import _atomic, with_provenance

        first = with_provenance({"header": self.header, **({"run": self.run} if self.run is not None else {})})
        text = "".join(json.dumps(x) + "\n" for x in [first, *self.own.values()])

        def write(tmp):
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)

        _atomic(self.path, write)

    def get(self, condition: str, ids: Sequence[str]) -> dict | None:
        return self.records.get((condition, tuple(ids)))

    def add(self, record: dict) -> None:
        key = (record["condition"], tuple(record["ids"]))
        self.records[key] = self.own[key] = record
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
             progress: bool = True, shard=None, run: dict | None = None) -> dict:
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
        shard: a :class:`mech.parallel.Shard`: compute only the batches ``k % N == K`` (needs
            ``checkpoint``; other shards' records are read from the files beside it).
        run: the command-line settings, kept in the checkpoint for ``mech merge``.

    Returns:
        dict with ``conditions`` (per condition ``accuracy`` in [0, 1], ``n``, ``correct``,
        ``drop``), ``consistency`` (:func:`consistency_table`), ``ids``, ``predictions`` and
        ``correct`` (condition -> per-sample list), ``scores`` or ``responses``, ``skipped``
        (``count``, ``reasons`` -> count, ``items``), and ``settings``. With a ``shard``, when
        other shards' batches are still missing: a :class:`mech.parallel.Pending` instead.

    Raises:
        ConfigError: unknown condition/method/scoring/style, duplicate conditions, batch_size < 1,
            a sharded run without ``checkpoint``.
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
    from mech.parallel import WHOLE, Pending

    shard = shard or WHOLE
    if checkpoint is None and (shard.sharded or not shard.computes):
        raise ConfigError("a sharded evaluation needs checkpoint=<file> (the shards meet there); pass one.")
    ckpt = Checkpoint(checkpoint, {"version": CHECKPOINT_VERSION, **settings}, shard=shard, run=run)
    if ckpt.note:
        print(ckpt.note)
    batches = [samples[i:i + batch_size] for i in range(0, len(samples), batch_size)]
    keys = [[str(s["id"]) for s in b] for b in batches]
    mine = [k for k in range(len(batches)) if shard.mine(k)]
    done = sum(len(batches[k]) for k in mine if all(ckpt.get(c, keys[k]) for c in conditions))
    bar = tqdm(total=sum(len(batches[k]) for k in mine), initial=done, unit="sample",
               desc="mech eval" + (f" (shard {shard})" if shard.sharded else ""), disable=not progress)
    try:
        for k in mine:
            batch, bids = batches[k], keys[k]
            fresh = False
            for cond in conditions:
                if ckpt.get(cond, bids) is None:
                    try:
                        out = _answer_batch(m, batch, cond, method=method, scoring=scoring, style=style,
                                            max_new_tokens=max_new_tokens, seed=seed)
                    except MechError as exc:
                        raise type(exc)(f"condition {cond!r}, samples {bids[:3]}: {exc} (to evaluate the "
                                        f"other conditions, leave {cond!r} out)") from exc
                    ckpt.add({"condition": cond, "ids": bids, **out})
                    fresh = True
            if fresh:
                bar.update(len(batch))
    finally:
        bar.close()
    if shard.sharded or not shard.computes:
        ckpt.refresh()  # records the other shards appended meanwhile
    missing = [k for k in range(len(batches)) if not all(ckpt.get(c, keys[k]) for c in conditions)]
    if missing:
        return Pending("eval", missing, len(batches), shard, Path(checkpoint).parent)
    results = {c: [ckpt.get(c, keys[k]) for k in range(len(batches))] for c in conditions}
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
