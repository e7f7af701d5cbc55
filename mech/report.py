"""``mech report``: eval -> attention -> patch -> contrib on one model (or two, side by side), and
``report.md`` with every table and figure.

``mech report --model A --data D --out DIR`` writes each command's outputs into ``DIR`` and
``DIR/report.md``. ``mech report --compare A B`` (default: the balanced and text-biased organisms)
runs both into ``DIR/<name>/`` and writes one ``DIR/report.md`` laying them side by side, plus
``DIR/compare.json`` and ``DIR/compare.png`` (overall Δ per estimator with 95% intervals).

Resumable: a command whose JSON already exists for the same model and data is not rerun, and
each command resumes its own finished batches.
"""

from __future__ import annotations

import re
from pathlib import Path

from mech.results import read_json, write_json, write_text
from mech.runs.settings import ReportSettings

STEPS = tuple(cls.command for cls in ReportSettings.steps)


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.split(":")[-1].rstrip("/").split("/")[-1]) or "model"


def run_one(settings: ReportSettings, model: str, out: Path) -> dict[str, dict]:
    """Run every step for ``model`` into ``out``; their JSON by step. A step whose result in ``out``
    has the same identity is read back, not rerun; each step resumes its own finished batches."""
    from mech.runs.jobs import job_for
    from mech.runs.loop import identity, run
    from mech.runs.shards import WHOLE

    results = {}
    for cls in ReportSettings.steps:
        job = job_for(settings.step(cls, model, str(out)))
        path = out / f"{cls.command}.json"
        if path.is_file():
            done = read_json(path)
            data = job.samples()
            if done.get("identity") == identity(job.settings, list(data)):
                results[cls.command] = done
                continue
        results[cls.command] = run(job, shard=WHOLE)
    return results


def _fmt(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _section(name: str, res: dict[str, dict], prefix: str) -> list[str]:
    ev, att, pa, co = (res[s] for s in STEPS)
    lines = [f"## {name}", ""]
    md = Path(prefix or ".") / "eval.md"
    lines += ["### Behaviour: accuracy per condition and prediction consistency", ""]
    conds = ev["conditions"]
    lines += ["| condition | accuracy | n |", "|---|---|---|"]
    lines += [f"| {c} | {_fmt(v['accuracy'])} | {v['n']} |" for c, v in conds.items()]
    cons = ev["consistency"]["all"]
    lines += ["", "| pair (all samples) | consistent | % |", "|---|---|---|"]
    lines += [f"| {p} | {v['num']} | {_fmt(v['pct'], 1)} |" for p, v in cons.items()]
    lines += ["", f"Full Table 1/2 layout: [{md.as_posix()}]({md.as_posix()})", ""]
    for fig in ev.get("figures", ["eval.png"]):
        lines.append(f"![eval]({prefix}{fig})")
    lines += ["", "### Attention mass from the answer position (mean over heads and samples)", ""]
    groups = att["groups"]
    lines += ["| layer | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
    for layer, row in zip(att["layers"], att["mass"]):
        lines.append(f"| {layer} | " + " | ".join(_fmt(v) for v in row) + " |")
    share = att["token_share"]
    lines += ["| token share | " + " | ".join(_fmt(share.get(g)) for g in groups) + " |", ""]
    for fig in att.get("figures", []):
        lines.append(f"![attention]({prefix}{fig})")
    lines += ["", f"### Activation patching: {pa['direction']} from `{pa['corruption']}`, metric {pa['metric']}", "",
              f"clean {_fmt(pa['clean_metric'])}, corrupted {_fmt(pa['corrupted_metric'])} (mean over samples); "
              "normalized effect per layer:", ""]
    for site, eff in pa["effect"].items():
        gs = list(eff)
        lines += [f"**{site}**", "", "| layer | " + " | ".join(gs) + " |", "|---" * (len(gs) + 1) + "|"]
        for layer in range(len(eff[gs[0]])):
            lines.append(f"| {layer} | " + " | ".join(_fmt(eff[g][layer]) for g in gs) + " |")
        lines.append("")
    for fig in pa.get("figures", []):
        lines.append(f"![patching]({prefix}{fig})")
    lines += ["", "### Modality contributions and the imbalance ratio Δ(text/image)", "",
              "| estimator | C(text) | C(image) | Δ | 95% CI | dominant |", "|---|---|---|---|---|---|"]
    for est, o in co["overall"].items():
        c = o["contribution"]
        lines.append(f"| {est} | {_fmt(c.get('text'))} | {_fmt(c.get('image'))} | {_fmt(o['delta'], 2)} | "
                     f"[{_fmt(o['ci95'][0], 2)}, {_fmt(o['ci95'][1], 2)}] | {o['dominant']} |")
    corr = co.get("corruption")
    if corr:
        miss = co.get("patching_without_donor") or {}
        lines += ["", f"Patching estimator: `{corr}` corruption of each group"
                  + (f" (samples without a donor, left out: {miss})" if any(miss.values()) else "") + "."]
    dec = co.get("dla_decomposition")
    if dec:
        attn = ", ".join(f"{g} {_fmt(dec[f'attn.{g}'], 2)}" for g in co["groups"]
                         if abs(dec.get(f"attn.{g}", 0.0)) > 1e-3)
        lines += ["", f"DLA decomposition of the decision's logit difference ({_fmt(dec['logit_diff'], 2)} logits, "
                  f"sample mean): attention writes from {attn}; MLPs {_fmt(dec['mlp'], 2)}; embedding and biases "
                  f"{_fmt(dec['other'], 2)}. Modality-resolved DLA splits attention writes only: what MLPs write "
                  "at the answer position (e.g. a prior computed from question words moved there) has no group."]
    lines += ["", f"![contributions]({prefix}contrib.png)", ""]
    return lines


def _agreement(results: dict, models: list[str]) -> list[str]:
    """Lines saying, per estimator, which model has the larger Δ and whether the estimators agree."""
    ests = list(results[models[0]]["contrib"]["overall"])
    larger = {e: max(models, key=lambda s: results[s]["contrib"]["overall"][e]["delta"]) for e in ests}
    lines = [f"- larger Δ(text/image) by **{e}**: `{larger[e]}`" for e in ests]
    if len(set(larger.values())) > 1:
        lines += ["", "**The estimators disagree.** They measure different things: attention mass is where the "
                  "answer position looks, not what it uses; modality-resolved DLA counts only what attention "
                  "writes directly into the answer logit (not what MLPs compute from it, nor information moved "
                  "between positions in earlier layers); patching measures what the decision causally needs. "
                  "Trust the causal estimate for *use*, and read the others as where and how it happens."]
    return lines + [""]


INTRO = """# mech report

Model(s) measured on `{data}`. Each instrument answers a different question — where attention goes
(attention mass), what the answer causally needs (activation patching), what each group writes
directly into the answer logit (DLA) — so where they disagree, the disagreement is part of the
result (see docs/organisms.md: attention mass alone does not detect a planted text bias).
"""


def report(settings: ReportSettings) -> dict:
    """Run the report (module docstring); returns ``compare.json`` content (or the single model's)."""
    from mech.figures.contributions import compare_figure
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
        lines += ["## Side by side: overall Δ(text/image) per estimator", "",
                  "| estimator | " + " | ".join(f"{_slug(s)} Δ [95% CI]" for s in models) + " | intervals overlap |",
                  "|---" * (len(models) + 2) + "|"]
        ests = list(results[models[0]]["contrib"]["overall"])
        for est in ests:
            cells, cis = [], []
            for s in models:
                o = results[s]["contrib"]["overall"][est]
                cells.append(f"{_fmt(o['delta'], 2)} [{_fmt(o['ci95'][0], 2)}, {_fmt(o['ci95'][1], 2)}]")
                cis.append(o["ci95"])
            overlap = max(c[0] for c in cis) <= min(c[1] for c in cis)
            lines.append(f"| {est} | " + " | ".join(cells) + f" | {'yes' if overlap else 'no'} |")
        compare_figure({_slug(s): results[s]["contrib"] for s in models}, out / "compare.png")
        lines += [""] + _agreement(results, models) + ["![compare](compare.png)", ""]
        for s in models:
            ev = results[s]["eval"]["consistency"]["all"].get("complete&white_image", {})
            lines.append(f"- `{s}`: complete&white_image consistency {_fmt(ev.get('pct'), 1)}%")
        lines.append("")
    for s in models:
        prefix = "" if single else f"{_slug(s)}/"
        lines += _section(s, results[s], prefix)
        summary["overall"][s] = results[s]["contrib"]["overall"]
    write_text(out / "report.md", "\n".join(lines) + "\n")
    write_json(out / "compare.json", summary)
    print(f"mech report: wrote {out / 'report.md'}")
    return summary
