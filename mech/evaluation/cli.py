"""``mech eval``: write ``eval.json``, ``eval.md``, ``eval.safetensors`` and ``eval.png``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from mech.data import LETTERS


def _conditions(value: Any) -> list[str]:
    from mech.evaluation.run import DEFAULT_CONDITIONS

    if value is None:
        return list(DEFAULT_CONDITIONS)
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def per_sample_tensors(result: dict) -> dict[str, torch.Tensor]:
    """``pred_index`` LongTensor ``[sample, condition]`` (option index; -1 = unparsed or open
    answer), ``correct`` uint8 ``[sample, condition]``, and for option scoring ``scores``
    ``[sample, condition, option]`` (log-probabilities, NaN beyond a sample's options)."""
    conds = list(result["predictions"])
    n = len(result["ids"])
    pred = torch.full((n, len(conds)), -1, dtype=torch.long)
    correct = torch.zeros((n, len(conds)), dtype=torch.uint8)
    for j, c in enumerate(conds):
        for i, (p, ok) in enumerate(zip(result["predictions"][c], result["correct"][c])):
            if isinstance(p, str) and len(p) == 1 and p in LETTERS and result["n_options"][i]:
                pred[i, j] = LETTERS.index(p)
            correct[i, j] = int(ok)
    out = {"pred_index": pred, "correct": correct}
    if "scores" in result:
        width = max(result["n_options"]) if result["n_options"] else 0
        scores = torch.full((n, len(conds), width), math.nan, dtype=torch.float32)
        for j, c in enumerate(conds):
            for i, row in enumerate(result["scores"][c]):
                scores[i, j, :len(row)] = torch.tensor(row, dtype=torch.float32)
        out["scores"] = scores
    return out


def write_outputs(result: dict, out_dir: str | Path, *, model: str | None = None, chance: float | None = None) -> dict:
    """Write ``eval.json`` (atomic), ``eval.md``, ``eval.safetensors`` and ``eval.png`` to ``out_dir``."""
    import json

    from mech.evaluation.tables import figure, markdown
    from mech.results import _atomic, write_json, write_tensors

    out = Path(out_dir)
    paths = {"json": write_json(out / "eval.json", result)}
    text = markdown(result, model)

    def write_md(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    paths["md"] = _atomic(out / "eval.md", write_md)
    meta = {"ids": json.dumps(result["ids"]), "conditions": json.dumps(list(result["predictions"])),
            "axes": "pred_index/correct: [sample, condition]; scores: [sample, condition, option]"}
    paths["safetensors"] = write_tensors(out / "eval.safetensors", per_sample_tensors(result), meta)
    title = f"{model or result['settings'].get('model')} on {result['settings'].get('data')}"
    paths["png"] = figure(result, out / "eval.png", chance=chance, title=title)
    return paths


RUN_KEYS = ("model", "data", "n", "dtype", "conditions", "method", "scoring", "max_new_tokens", "seed", "batch_size")


def cmd_eval(args) -> dict:
    """``mech eval --model SPEC --data SPEC [--n N] [--out DIR] [--batch-size B] [--shard K/N]`` plus
    the optional attributes ``conditions`` (comma list), ``method`` (score|direct|cot), ``scoring``
    (letter|option_text), ``max_new_tokens``, ``seed``, ``no_progress``.

    Resumable: per-batch results go to ``DIR/eval.ckpt.jsonl``; a rerun with the same model,
    data and settings skips the finished batches and writes the same ``eval.json``. A shard ``K/N``
    (:mod:`mech.parallel`) writes ``DIR/eval.ckpt.K-of-N.jsonl``; the invocation that finds every
    batch done writes the results. Returns the ``eval.json`` content, or ``{"complete": False, ...}``
    for a shard that finished while others' batches are missing.
    """
    import mech
    from mech import parallel
    from mech.data import load_data
    from mech.evaluation.run import evaluate

    shard = parallel.resolve(args)
    seed = int(getattr(args, "seed", 0) or 0)
    data = load_data(args.data, n=args.n, seed=seed)
    m = mech.load(args.model, device=parallel.device(args, shard), dtype=args.dtype,
                  device_map=getattr(args, "device_map", None))
    if m.spec == "(model, processor)":
        m.spec = str(args.model)
    method = getattr(args, "method", None) or "score"
    out_dir = Path(args.out)
    conditions = _conditions(getattr(args, "conditions", None))
    run = {k: getattr(args, k, None) for k in RUN_KEYS}
    run.update(model=str(args.model), data=str(args.data), conditions=",".join(conditions), method=method, seed=seed)
    result = evaluate(m, data, conditions=conditions, method=method,
                      scoring=getattr(args, "scoring", None), batch_size=int(args.batch_size or 8),
                      max_new_tokens=getattr(args, "max_new_tokens", None), seed=seed,
                      checkpoint=out_dir / "eval.ckpt.jsonl", progress=not getattr(args, "no_progress", False),
                      shard=shard, run=run)
    if isinstance(result, parallel.Pending):
        return parallel.unfinished("eval", result.missing, result.total, shard, out_dir)
    flag = out_dir / ".eval.assembling"
    if shard.sharded and not parallel.claim(flag):
        return parallel.assembling_elsewhere("eval", flag, out_dir)
    try:
        return _finish(result, data, args, out_dir)
    finally:
        parallel.release(flag)  # also a claim left by a shard that died while assembling


def _finish(result: dict, data, args, out_dir: Path) -> dict:
    opts = [len(s.get("options") or []) for s in data.samples if s.get("options")]
    chance = sum(1 / k for k in opts) / len(opts) if opts else None  # uniform guessing over the options
    result["settings"]["chance"] = chance
    result["model"], result["figures"] = str(args.model), ["eval.png"]
    paths = write_outputs(result, out_dir, model=str(args.model), chance=chance)
    acc = {c: v["accuracy"] for c, v in result["conditions"].items()}
    print("accuracy:", ", ".join(f"{c} {100 * a:.1f}%" for c, a in acc.items() if a is not None))
    cons = (result.get("consistency") or {}).get("all", {}).get("complete&white_image")
    if cons:
        print(f"complete & white_image consistency: {cons['num']}/{cons['total']} ({cons['pct']:.1f}%)")
    print(f"skipped: {result['skipped']['count']}; wrote {', '.join(str(p) for p in paths.values())}")
    return result
