"""The ``mech eval`` job: ``eval.json``, ``eval.md``, ``eval.safetensors`` and ``eval.png`` (:mod:`mech.runs.loop`)."""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mech.measure.evaluation.instrument import EvalSettings
from mech.measure.evaluation.record import EvalRecord
from mech.prepare.data import LETTERS

__all__ = ["EvalJob", "per_sample_tensors", "write_outputs"]


def per_sample_tensors(result: EvalRecord | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``pred_index`` LongTensor ``[sample, condition]`` (option index; -1 = unparsed or open
    answer), ``correct`` uint8 ``[sample, condition]``, and for option scoring ``scores``
    ``[sample, condition, option]`` (log-probabilities, NaN beyond a sample's options and where
    ``eval.json`` holds null: a score that was not finite).

    ``result``: an :class:`EvalRecord` or the dict of ``eval.json`` / :func:`evaluate`.

    Raises:
        InputError: ``result`` is a dict that is not an ``eval.json``.
    """
    rec = EvalRecord.of(result)
    conds = list(rec.predictions)
    n = len(rec.ids)
    pred = torch.full((n, len(conds)), -1, dtype=torch.long)
    correct = torch.zeros((n, len(conds)), dtype=torch.uint8)
    for j, c in enumerate(conds):
        for i, (p, ok) in enumerate(zip(rec.predictions[c], rec.correct[c])):
            if isinstance(p, str) and len(p) == 1 and p in LETTERS and rec.n_options[i]:
                pred[i, j] = LETTERS.index(p)
            correct[i, j] = int(ok)
    out = {"pred_index": pred, "correct": correct}
    if rec.scores is not None:
        width = max(rec.n_options) if rec.n_options else 0
        scores = torch.full((n, len(conds), width), math.nan, dtype=torch.float32)
        for j, c in enumerate(conds):
            for i, row in enumerate(rec.scores[c]):
                row = [math.nan if x is None else x for x in row]  # None: not finite in eval.json
                scores[i, j, : len(row)] = torch.tensor(row, dtype=torch.float32)
        out["scores"] = scores
    return out


def write_outputs(
    result: EvalRecord | Mapping[str, Any],
    out_dir: str | Path,
    *,
    model: str | None = None,
    chance: float | None = None,
    json_too: bool = True,
) -> dict:
    """Write ``eval.json`` (unless ``json_too`` is False: the run loop writes it), ``eval.md``,
    ``eval.safetensors`` and ``eval.png`` to ``out_dir``, each atomically.

    ``result``: an :class:`EvalRecord` or the dict of ``eval.json`` / :func:`evaluate`.

    Raises:
        InputError: ``result`` is a dict that is not an ``eval.json``.
    """
    from mech.figures import save_figure
    from mech.measure.evaluation.tables import figure, markdown
    from mech.results import write_json, write_tensors, write_text

    rec = EvalRecord.of(result)
    out = Path(out_dir)
    paths = {"json": write_json(out / "eval.json", rec.to_json())} if json_too else {}
    paths["md"] = write_text(out / "eval.md", markdown(rec, model))
    meta = {
        "ids": list(rec.ids),
        "conditions": list(rec.predictions),
        "axes": "pred_index/correct: [sample, condition]; scores: [sample, condition, option]",
    }
    paths["safetensors"] = write_tensors(out / "eval.safetensors", per_sample_tensors(rec), meta)
    title = f"{model or rec.settings.model} on {rec.settings.data}"
    paths["png"] = save_figure(figure(rec, chance=chance, title=title), out / "eval.png")
    return paths


@dataclass(frozen=True)
class EvalJob:
    """``mech eval`` as a :class:`~mech.runs.loop.Job`: per batch, the answers under every condition
    (:func:`mech.measure.evaluation.run.answer_rows`, kept as the part's metadata); assembled into the
    accuracy and consistency tables (:func:`mech.measure.evaluation.run.assemble`)."""

    settings: EvalSettings
    #: input conditions work on cross-attention families (Mllama) too
    decoder_sequence: typing.ClassVar[bool] = False
    #: the typed record of ``eval.json`` (what the report and :meth:`summary` read)
    record: typing.ClassVar[type[EvalRecord]] = EvalRecord

    def samples(self):
        from mech.prepare.data import load_data

        return load_data(self.settings.data, n=self.settings.n, seed=self.settings.seed)

    def context(self, data):
        """The checked answering options (:func:`mech.measure.evaluation.run.plan`), once per run."""
        from mech.measure.evaluation.run import plan
        from mech.prepare.data import Dataset

        s = self.settings
        dataset = data if isinstance(data, Dataset) else Dataset(s.data, list(data))
        return plan(
            dataset,
            conditions=s.conditions,
            method=s.method,
            scoring=s.scoring,
            batch_size=s.batch_size,
            max_new_tokens=s.max_new_tokens,
            seed=s.seed,
            parser=s.parser,
        )

    def measure(self, m: Any, samples, rows: range, context):
        from mech.measure.evaluation.run import answer_rows, model_fingerprint

        part = answer_rows(m, context, [samples[i] for i in rows])
        return {"rows": torch.tensor(list(rows), dtype=torch.long)}, {
            **part,
            "fingerprint": model_fingerprint(m.model),
        }

    def assemble(self, store, samples, out: Path, context) -> dict:
        from mech.measure.evaluation.run import assemble

        s = self.settings
        parts = [store.meta(k) for k in store.indices()]
        result = assemble(
            context,
            list(samples),
            parts,
            model=s.model,
            fingerprint=parts[0]["fingerprint"],
            data_skipped=getattr(samples, "skipped", []),
            data_notes=getattr(samples, "notes", []),
        )
        opts = [len(x.get("options") or []) for x in samples if x.get("options")]
        chance = sum(1 / k for k in opts) / len(opts) if opts else None  # uniform guessing over the options
        result["settings"]["chance"] = chance
        result["model"], result["figures"] = s.model, ["eval.png"]
        write_outputs(EvalRecord.from_json(result), out, model=s.model, chance=chance, json_too=False)
        return result

    def summary(self, rec: EvalRecord) -> list[str]:
        """The lines ``mech eval`` prints: accuracy per condition, the complete & white-image
        consistency, the guessed answers, the conditions not measured, the number answered."""
        lines = [
            "accuracy: "
            + ", ".join(
                f"{c} {100 * v.accuracy:.1f}%" for c, v in rec.conditions.items() if v.accuracy is not None
            )
        ]
        cons = (rec.consistency or {}).get("all", {}).get("complete&white_image")
        if cons:
            lines.append(f"complete & white_image consistency: {cons.num}/{cons.total} ({cons.pct:.1f}%)")
        guessed = {c: k for c, k in (rec.guessed or {}).items() if k}
        if guessed:  # the official parser's fallback (MMMU-Pro's random guess, made deterministic)
            lines.append(
                "guessed answers (no letter found): " + ", ".join(f"{c} {k}" for c, k in guessed.items())
            )
        for c, reason in (rec.unavailable or {}).items():
            lines.append(f"{c} not measured: {reason}")
        lines.append(f"n={len(rec.ids)} answered")
        return lines

    @staticmethod
    def captions(ev: EvalRecord) -> dict[str, str]:
        """Figure file name -> caption: what the figure plots and over how many samples."""
        from mech.measure.evaluation.tables import chance_level

        chance = ev.settings.chance
        chance = chance_level(ev) if chance is None else chance
        n_ev = next(iter(ev.conditions.values())).n if ev.conditions else 0
        return {
            "eval.png": "Top: accuracy per input condition"
            + (
                f" (dashed: chance {chance:.3f}, the mean over samples of 1 / number of options)"
                if chance is not None
                else ""
            )
            + "; bottom: the share of predictions that agree between two conditions, over all, "
            f"correctly and wrongly answered samples. n = {n_ev} samples.",
        }

    @staticmethod
    def section(ev: EvalRecord, prefix: str) -> list[str]:
        """The ``report.md`` lines of ``eval.json`` (``prefix``: the folder of its files, relative to the report)."""
        from mech.report_words import figure_lines, fmt

        caption = EvalJob.captions(ev)
        md = Path(prefix or ".") / "eval.md"
        lines = ["### Behaviour: accuracy per condition and prediction consistency", ""]
        lines += ["| condition | accuracy | n |", "|---|---|---|"]
        lines += [f"| {c} | {fmt(v.accuracy, 3)} | {v.n} |" for c, v in ev.conditions.items()]
        chance = ev.settings.chance
        if chance is not None:
            lines += [f"| chance (mean 1 / options) | {fmt(chance, 3)} | |"]
        cons = ev.consistency["all"]
        lines += ["", "| pair (all samples) | consistent | % |", "|---|---|---|"]
        lines += [f"| {p} | {v.num} | {fmt(v.pct, 1)} |" for p, v in cons.items()]
        lines += ["", f"Full Table 1/2 layout: [{md.as_posix()}]({md.as_posix()})", ""]
        for fig in ev.figures if ev.figures is not None else ["eval.png"]:
            lines += figure_lines(fig, prefix, caption.get(fig))
        return lines
