"""``mech report``: eval -> attention -> patch -> contrib on one model (or two or more, side by side),
and ``report.md`` with every table and figure.

``mech report --model A --data D --out DIR`` writes each command's outputs into ``DIR`` and
``DIR/report.md``. ``mech report --compare A B [C ...]`` (default: the image-biased, balanced and
text-biased organisms) runs each into ``DIR/<name>/`` and writes one ``DIR/report.md`` laying them side by side,
plus ``DIR/compare.json`` (overall Δ per estimator; ``skipped``: each model's skipped rows per step) and
``DIR/compare.png`` (overall Δ per estimator with 95% intervals). The
words on what the estimators agree and disagree on, and the per-question-type tables, are written
from the numbers (:mod:`mech.report_words`).

Resumable: a command whose JSON already exists for the same model and data is not rerun, and
each command resumes its own finished batches.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mech.report_words import (
    agreement,
    compare_coverage,
    figure_lines,
    fmt,
)
from mech.results import read_json, write_json, write_text
from mech.runs.jobs import STEPS as STEP_SETTINGS
from mech.runs.settings import ReportSettings

__all__ = ["INTRO", "STEPS", "report", "run_one"]

STEPS = tuple(cls.command for cls in STEP_SETTINGS)


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.split(":")[-1].rstrip("/").split("/")[-1]) or "model"


def run_one(settings: ReportSettings, model: str, out: Path) -> dict[str, Any]:
    """Run every step for ``model`` into ``out``, loading the model once; their typed records by step
    (each job's ``record``, :class:`mech.contract.record.Record`, read from the JSON it wrote). A step
    whose result in ``out`` has the same identity is read back, not rerun; each step resumes its own
    finished batches."""
    from mech.runs.jobs import job_for
    from mech.runs.loop import as_record, identity, load_model, run
    from mech.runs.shards import WHOLE

    results, todo = {}, []
    for cls in STEP_SETTINGS:
        job = job_for(settings.step(cls, model, str(out)))
        data = job.samples()  # loaded once: for the identity check and for the run
        path = out / f"{cls.command}.json"
        done = read_json(path) if path.is_file() else {}
        if done.get("identity") == identity(job.settings, list(data)):
            results[cls.command] = as_record(job, done)
            continue
        todo.append((job, data))
    m = load_model(todo[0][0].settings, WHOLE) if todo else None  # one load serves every step
    for job, data in todo:
        results[job.settings.command] = as_record(job, run(job, shard=WHOLE, model=m, data=data))
    return {cls.command: results[cls.command] for cls in STEP_SETTINGS}


def _fmt(x, digits: int = 3) -> str:
    return fmt(x, digits)


def _section(name: str, res: dict[str, Any], prefix: str, folder: Path) -> list[str]:
    """One model's part of ``report.md``: each instrument's section (its job's ``section``), in the
    registrations' order: the report's steps from ``res``, then any other instrument whose JSON is in
    ``folder`` (a ``mech repair`` run into the same folder)."""
    from mech.runs.instruments import load_job
    from mech.runs.jobs import INSTRUMENTS

    lines = [f"## {name}", ""]
    for inst in INSTRUMENTS:
        path = folder / f"{inst.command}.json"
        if inst.in_report:
            lines += load_job(inst).section(res[inst.command], prefix)
        elif path.is_file():
            job = load_job(inst)
            lines += job.section(job.record.read(path), prefix)
    return lines


INTRO = """# mech report

Model(s) measured on `{data}`. Each instrument answers a different question — where attention goes
(attention mass), what the answer causally needs (activation patching), what each group's values
write directly into the answer logit through attention (DLA), and how every component's direct write,
MLPs included, splits over the modalities it depends on (the decomposition) — so where they disagree,
the disagreement is part of the result (see docs/organisms.md: attention mass alone does not detect a
planted text bias).
"""


def report(settings: ReportSettings) -> dict:
    """Run the report (module docstring); returns ``compare.json`` content (or the single model's)."""
    from mech.contract.record import thaw
    from mech.figures import compare_figure, save_figure
    from mech.runs.folder import check_out

    out = check_out(settings.out)
    models = settings.models()
    single = len(models) == 1
    results = {}
    for spec in models:
        results[spec] = run_one(settings, spec, out if single else out / _slug(spec))
    lines = [INTRO.format(data=settings.data)]
    summary = {"data": settings.data, "models": models, "overall": {}}
    if not single:
        lines += [
            "## Side by side: overall Δ(text/image) per estimator",
            "",
            "| estimator | "
            + " | ".join(f"{_slug(s)} Δ [95% CI]" for s in models)
            + " | two intervals overlap |",
            "|---" * (len(models) + 2) + "|",
        ]
        ests = list(results[models[0]]["contrib"].overall)
        for est in ests:
            cells, cis = [], []
            for s in models:
                o = results[s]["contrib"].overall[est]
                cells.append(f"{_fmt(o.delta, 2)} [{_fmt(o.ci95[0], 2)}, {_fmt(o.ci95[1], 2)}]")
                cis.append(list(o.ci95))
            known = [c for c in cis if c and None not in c]  # an undefined Δ has no interval
            overlap = any(
                max(a[0], b[0]) <= min(a[1], b[1]) for i, a in enumerate(known) for b in known[i + 1 :]
            )
            lines.append(f"| {est} | " + " | ".join(cells) + f" | {'yes' if overlap else 'no'} |")
        lines += [""] + compare_coverage(results, models, _slug)
        save_figure(compare_figure({_slug(s): results[s]["contrib"] for s in models}), out / "compare.png")
        ns = sorted({results[s]["contrib"].n for s in models})
        lines += (
            [""]
            + agreement(results, models, _slug)
            + figure_lines(
                "compare.png",
                "",
                "Overall Δ(text/image) per estimator with its bootstrap 95% interval, one bar per "
                "model (log scale; dashed: Δ = 1, no imbalance). n = "
                + " / ".join(map(str, ns))
                + " samples per model.",
            )
        )
        for s in models:
            cell = (results[s]["eval"].consistency or {}).get("all", {}).get("complete&white_image")
            lines.append(f"- `{s}`: complete&white_image consistency {_fmt(cell.pct if cell else None, 1)}%")
        lines.append("")
    for s in models:
        prefix = "" if single else f"{_slug(s)}/"
        lines += _section(s, results[s], prefix, out / prefix)
        summary["overall"][s] = thaw(results[s]["contrib"].overall)
        summary.setdefault("skipped", {})[s] = {step: thaw(r.skipped) for step, r in results[s].items()}
    write_text(out / "report.md", "\n".join(lines) + "\n")
    write_json(out / "compare.json", summary)
    print(f"mech report: wrote {out / 'report.md'}")
    return summary
