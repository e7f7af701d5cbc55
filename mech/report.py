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

from mech.report_words import (
    agreement,
    category_table,
    compare_coverage,
    coverage_cell,
    coverage_lines,
    fmt,
    identical_cell,
)
from mech.results import read_json, write_json, write_text
from mech.runs.settings import ReportSettings

STEPS = tuple(cls.command for cls in ReportSettings.steps)


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.split(":")[-1].rstrip("/").split("/")[-1]) or "model"


def run_one(settings: ReportSettings, model: str, out: Path) -> dict[str, dict]:
    """Run every step for ``model`` into ``out``, loading the model once; their JSON by step. A
    step whose result in ``out`` has the same identity is read back, not rerun; each step resumes
    its own finished batches."""
    from mech.runs.jobs import job_for
    from mech.runs.loop import identity, load_model, run
    from mech.runs.shards import WHOLE

    results, todo = {}, []
    for cls in ReportSettings.steps:
        job = job_for(settings.step(cls, model, str(out)))
        data = job.samples()  # loaded once: for the identity check and for the run
        path = out / f"{cls.command}.json"
        done = read_json(path) if path.is_file() else {}
        if done.get("identity") == identity(job.settings, list(data)):
            results[cls.command] = done
            continue
        todo.append((job, data))
    m = load_model(todo[0][0].settings, WHOLE) if todo else None  # one load serves every step
    for job, data in todo:
        results[job.settings.command] = run(job, shard=WHOLE, model=m, data=data)
    return {cls.command: results[cls.command] for cls in ReportSettings.steps}


def _fmt(x, digits: int = 3) -> str:
    return fmt(x, digits)


def present_groups(att: dict) -> list[str]:
    """The token groups of ``attention.json`` that the inputs have: a group with no token in any
    sample (token share 0 and no mass in any layer, e.g. video and audio for an image model) is
    left out of the report."""
    share = att["token_share"]
    return [
        g
        for i, g in enumerate(att["groups"])
        if (share.get(g) or 0) > 0 or any((row[i] or 0) > 0 for row in att["mass"])
    ]


def _figure(name: str, prefix: str, caption: str | None) -> list[str]:
    """A figure and its caption (what is plotted and the n) as Markdown lines."""
    alt = name.rsplit(".", 1)[0]
    return [f"![{alt}]({prefix}{name})", ""] + ([f"*Figure ({alt}).* {caption}", ""] if caption else [])


def _patch_scale(direction: str) -> str:
    return (
        "0 = the corrupted run, 1 = the clean run restored"
        if direction == "denoising"
        else "0 = the clean run unchanged, 1 = as broken as the corrupted run"
    )


def captions(ev: dict, att: dict, pa: dict, co: dict) -> dict[str, str]:
    """Figure file name -> caption: what the figure plots and over how many samples."""
    from mech.figures.attention import MAX_PANELS, QUERY_WORDS
    from mech.measure.evaluation.tables import chance_level

    q = QUERY_WORDS.get(att["query"], att["query"])
    chance = ev.get("settings", {}).get("chance")
    chance = chance_level(ev) if chance is None else chance
    n_ev = next(iter(ev["conditions"].values()))["n"] if ev["conditions"] else 0
    miss = co.get("patching_without_donor") or {}
    shown = "every layer" if len(att["layers"]) <= MAX_PANELS else f"{MAX_PANELS} evenly spaced layers"
    out = {
        "eval.png": "Top: accuracy per input condition"
        + (
            f" (dashed: chance {chance:.3f}, the mean over samples of 1 / number of options)"
            if chance is not None
            else ""
        )
        + "; bottom: the share of predictions that agree between two conditions, over all, "
        f"correctly and wrongly answered samples. n = {n_ev} samples.",
        "attention_mass.png": f"Attention mass from {q} on each token group the inputs have "
        f"({', '.join(present_groups(att))}) per decoder layer, mean over heads and "
        f"n = {att['n']} samples (solid), and each group's token share, the mass under "
        "uniform attention (dashed).",
        "attention_heads.png": f"Attention mass from {q} on the image tokens per decoder layer and head, mean "
        f"over n = {att['n']} samples.",
        "attention_image.png": f"Attention from {q} on each image patch of one sample (the first with an image; "
        f"its id is above the input panel), for {shown} and their mean, mean over heads, "
        "drawn over the image in grey on one colour scale; Σ image is the layer's total "
        "mass on the image. n = 1 sample.",
        "contrib.png": "Per-layer contribution of each token group by each estimator ("
        + ", ".join(co["curves"])
        + (f"; patching by {co['corruption']} ablation" if co.get("corruption") else "")
        + f") and Δ({co.get('ratio', 'text/image')}) per layer (log scale, dashed: Δ = 1; legend: "
        f"overall Δ and its bootstrap 95% interval). n = {co['n']} samples"
        + (
            " (patching: "
            + ", ".join(f"{g} of {co['n'] - k}" for g, k in miss.items())
            + ", the others have no donor)"
            if any(miss.values())
            else ""
        )
        + ".",
    }
    for site in pa["effect"]:
        out[f"patch_{site}.png"] = (
            f"Normalized effect of {pa['direction']} activation patching of `{site}` from "
            f"`{pa['corruption']}` per decoder layer and position group ({pa['metric']}; "
            f"{_patch_scale(pa['direction'])}), of the means over n = {pa['n']} samples; "
            "'–': no sample has a position of that group."
        )
    return out


def _section(name: str, res: dict[str, dict], prefix: str) -> list[str]:
    ev, att, pa, co = (res[s] for s in STEPS)
    caption = captions(ev, att, pa, co)
    lines = [f"## {name}", ""]
    md = Path(prefix or ".") / "eval.md"
    lines += ["### Behaviour: accuracy per condition and prediction consistency", ""]
    conds = ev["conditions"]
    lines += ["| condition | accuracy | n |", "|---|---|---|"]
    lines += [f"| {c} | {_fmt(v['accuracy'])} | {v['n']} |" for c, v in conds.items()]
    chance = ev.get("settings", {}).get("chance")
    if chance is not None:
        lines += [f"| chance (mean 1 / options) | {_fmt(chance)} | |"]
    cons = ev["consistency"]["all"]
    lines += ["", "| pair (all samples) | consistent | % |", "|---|---|---|"]
    lines += [f"| {p} | {v['num']} | {_fmt(v['pct'], 1)} |" for p, v in cons.items()]
    lines += ["", f"Full Table 1/2 layout: [{md.as_posix()}]({md.as_posix()})", ""]
    for fig in ev.get("figures", ["eval.png"]):
        lines += _figure(fig, prefix, caption.get(fig))
    lines += [f"### Attention mass from the answer position (mean over heads and n = {att['n']} samples)", ""]
    groups = present_groups(att)
    cols = [att["groups"].index(g) for g in groups]
    lines += ["| layer | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
    for layer, row in zip(att["layers"], att["mass"]):
        lines.append(f"| {layer} | " + " | ".join(_fmt(row[i]) for i in cols) + " |")
    share = att["token_share"]
    lines += ["| token share | " + " | ".join(_fmt(share.get(g)) for g in groups) + " |", ""]
    left_out = [g for g in att["groups"] if g not in groups]
    if left_out:
        lines += [f"Left out: {', '.join(left_out)} (no such tokens in these inputs).", ""]
    for fig in att.get("figures", []):
        lines += _figure(fig, prefix, caption.get(fig))
    lines += [
        f"### Activation patching: {pa['direction']} from `{pa['corruption']}`, metric {pa['metric']}",
        "",
        f"clean {_fmt(pa['clean_metric'])}, corrupted {_fmt(pa['corrupted_metric'])} (mean over "
        f"n = {pa['n']} samples); normalized effect per layer ({_patch_scale(pa['direction'])}):",
        "",
    ]
    for site, eff in pa["effect"].items():
        gs = [g for g in eff if any(v is not None for v in eff[g])] or list(eff)
        lines += [f"**{site}**", "", "| layer | " + " | ".join(gs) + " |", "|---" * (len(gs) + 1) + "|"]
        for layer in range(len(eff[gs[0]])):
            lines.append(f"| {layer} | " + " | ".join(_fmt(eff[g][layer]) for g in gs) + " |")
        lines.append("")
    for fig in pa.get("figures", []):
        lines += _figure(fig, prefix, caption.get(fig))
    lines += [
        f"### Modality contributions and the imbalance ratio Δ(text/image) (n = {co['n']} samples)",
        "",
        "| estimator | C(text) | C(image) | Δ | 95% CI | dominant | coverage | identical donor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for est, o in co["overall"].items():
        c = o["contribution"]
        lines.append(
            f"| {est} | {_fmt(c.get('text'))} | {_fmt(c.get('image'))} | {_fmt(o['delta'], 2)} | "
            f"[{_fmt(o['ci95'][0], 2)}, {_fmt(o['ci95'][1], 2)}] | {o['dominant']} | "
            f"{coverage_cell(o)} | {identical_cell(o)} |"
        )
    lines += coverage_lines(co)
    corr = co.get("corruption")
    if corr:
        lines += [
            "",
            f"Removal (patching, decomposition): `{corr}` ablation of each group"
            + (
                " (donors paired by content over the data set; images resized to the sample's sizes, text "
                "fitted to its token count)"
                if corr == "resample"
                else ""
            )
            + ".",
        ]
    dec = co.get("dla_decomposition")
    if dec:
        attn = ", ".join(
            f"{g} {_fmt(dec[f'attn.{g}'], 2)}" for g in co["groups"] if abs(dec.get(f"attn.{g}", 0.0)) > 1e-3
        )
        lines += [
            "",
            f"DLA decomposition of the decision's logit difference ({_fmt(dec['logit_diff'], 2)} logits, "
            f"sample mean): attention writes from {attn}; MLPs {_fmt(dec['mlp'], 2)}; embedding and biases "
            f"{_fmt(dec['other'], 2)}. Modality-resolved DLA splits attention writes only: what MLPs write "
            "at the answer position (e.g. a prior computed from question words moved there) has no group.",
        ]
    lines += _decomposition_lines(co)
    lines += [""] + category_table(co)
    for fig in co.get("figures", ["contrib.png"]):
        lines += _figure(fig, prefix, caption.get(fig))
    return lines


def _decomposition_lines(co: dict) -> list[str]:
    """The decomposition of the decision by component and modality, in words and numbers."""
    dec = co.get("decomposition")
    if not dec or not dec.get("n"):
        return []
    comp = dec["components"]
    parts = [
        f"{g} {_fmt(dec['total'][g], 2)} (attention {_fmt(sum(comp['attn'][g]), 2)}, MLP "
        f"{_fmt(sum(comp['mlp'][g]), 2)}"
        + (f", embedding {_fmt(dec['embed'][g], 2)}" if abs(dec["embed"].get(g) or 0) > 1e-6 else "")
        + ")"
        for g in dec["players"]
    ]
    c = dec["completeness"]
    return [
        "",
        f"Decomposition of the decision's logit difference ({_fmt(dec['decision'], 2)} logits, mean over "
        f"n = {dec['n']} samples) by Shapley value of removing each modality: "
        + "; ".join(parts)
        + f"; left with every modality removed (template, bos, prior; frozen readout) {_fmt(dec['rest'], 2)}, "
        f"interaction {_fmt(dec['interaction'], 2)} (split equally). Completeness: the parts sum to decision − "
        f"rest up to {c['max_abs']:.1e} logits ({c['relative']:.1e} relative; tolerance {c['tolerance']:.0e}).",
    ]


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
        ests = list(results[models[0]]["contrib"]["overall"])
        for est in ests:
            cells, cis = [], []
            for s in models:
                o = results[s]["contrib"]["overall"][est]
                cells.append(f"{_fmt(o['delta'], 2)} [{_fmt(o['ci95'][0], 2)}, {_fmt(o['ci95'][1], 2)}]")
                cis.append(o["ci95"])
            known = [c for c in cis if c and None not in c]  # an undefined Δ has no interval
            overlap = any(
                max(a[0], b[0]) <= min(a[1], b[1]) for i, a in enumerate(known) for b in known[i + 1 :]
            )
            lines.append(f"| {est} | " + " | ".join(cells) + f" | {'yes' if overlap else 'no'} |")
        lines += [""] + compare_coverage(results, models, _slug)
        save_figure(compare_figure({_slug(s): results[s]["contrib"] for s in models}), out / "compare.png")
        ns = sorted({results[s]["contrib"]["n"] for s in models})
        lines += (
            [""]
            + agreement(results, models, _slug)
            + _figure(
                "compare.png",
                "",
                "Overall Δ(text/image) per estimator with its bootstrap 95% interval, one bar per "
                "model (log scale; dashed: Δ = 1, no imbalance). n = "
                + " / ".join(map(str, ns))
                + " samples per model.",
            )
        )
        for s in models:
            ev = results[s]["eval"]["consistency"]["all"].get("complete&white_image", {})
            lines.append(f"- `{s}`: complete&white_image consistency {_fmt(ev.get('pct'), 1)}%")
        lines.append("")
    for s in models:
        prefix = "" if single else f"{_slug(s)}/"
        lines += _section(s, results[s], prefix)
        if (out / prefix / "repair.json").is_file():  # a `mech repair` run into the same folder
            from mech.measure.repair.section import repair_lines

            lines += repair_lines(read_json(out / prefix / "repair.json"), prefix)
        summary["overall"][s] = results[s]["contrib"]["overall"]
        summary.setdefault("skipped", {})[s] = {step: r.get("skipped") for step, r in results[s].items()}
    write_text(out / "report.md", "\n".join(lines) + "\n")
    write_json(out / "compare.json", summary)
    print(f"mech report: wrote {out / 'report.md'}")
    return summary
