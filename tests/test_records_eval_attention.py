"""``eval.json`` and ``attention.json`` as typed records (issue 25, item 1): :class:`EvalRecord` and
:class:`AttentionRecord` read what ``mech eval`` and ``mech attention`` write on organism:balanced, give it
back byte for byte, refuse a value of the wrong type naming its key, and the report sections, captions,
``eval.md`` and the evaluation figure read the record.

Oracles: the files as written (the round trip: ``json.dumps`` of ``to_json`` is the file's text); the
per-sample answers in the same JSON (accuracy and consistency recounted by hand, not by
:mod:`mech.measure.evaluation.consistency`); and for attention the per-sample tensors of
``attention.safetensors`` read with ``safetensors`` itself, averaged in float64 (the section prints three
decimals, so a printed value is within 0.0005 of the float64 mean, plus float32 rounding of the mean).
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from safetensors.torch import load_file

import mech
import mech.cli
from mech.errors import InputError
from mech.measure.attention import AttentionRecord
from mech.measure.attention.job import AttentionJob, present_groups
from mech.measure.evaluation import EvalRecord
from mech.measure.evaluation.job import EvalJob
from mech.measure.evaluation.record import ConditionAccuracy, ConsistencyCell
from mech.measure.evaluation.tables import chance_level, figure, markdown, table1, table2
from mech.runs.settings import AttentionSettings, EvalSettings

MODEL, DATA, N, BATCH = "organism:balanced", "organism:shapes", 6, 4


def _argv(command, out, *extra):
    return [command, "--model", MODEL, "--data", DATA, "--n", str(N), "--batch-size", str(BATCH)] + [
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


@pytest.fixture(scope="module")
def ev_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    assert mech.cli.main(_argv("eval", out)) == 0
    return out


@pytest.fixture(scope="module")
def att_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("attention")
    assert mech.cli.main(_argv("attention", out)) == 0
    return out


def _round_trip(cls, out):
    """The record of ``out``'s file gives the file back: the same content, keys in the same order (the
    writer's layout: indent 2, a final newline)."""
    text = (out / f"{cls.COMMAND}.json").read_text()
    rec = cls.read(out)
    assert rec.to_json() == json.loads(text)
    assert json.dumps(rec.to_json(), indent=2) + "\n" == text  # order too, at every depth
    assert not rec.extra  # every key of the file is declared
    return rec, json.loads(text)


def test_the_jobs_declare_their_records():
    assert EvalJob.record is EvalRecord and AttentionJob.record is AttentionRecord
    assert EvalRecord.COMMAND == "eval" and AttentionRecord.COMMAND == "attention"


def test_eval_record_round_trip_and_typed_values(ev_out):
    rec, content = _round_trip(EvalRecord, ev_out)
    assert isinstance(rec.conditions["complete"], ConditionAccuracy)
    assert isinstance(rec.consistency["all"]["complete&white_image"], ConsistencyCell)
    assert rec.settings.chance == pytest.approx(1 / 4) and rec.identity["command"] == "eval"
    assert rec.scores is not None and rec.responses is None and rec.guessed is None  # method "score"
    assert len(rec.ids) == N == rec.conditions["complete"].n and rec.figures == ("eval.png",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.conditions["complete"].accuracy = 1.0
    with pytest.raises(TypeError):
        rec.predictions["complete"] = ()  # a read-only mapping


def test_eval_section_rederived_from_the_answers(ev_out):
    """The report section's numbers, recounted from the per-sample answers of the same JSON."""
    rec, content = _round_trip(EvalRecord, ev_out)
    lines = EvalJob.section(rec, "e/")
    for c, flags in content["correct"].items():
        assert f"| {c} | {sum(flags) / len(flags):.3f} | {len(flags)} |" in lines
    p = content["predictions"]
    num = sum(a is not None and a == b for a, b in zip(p["complete"], p["white_image"]))
    assert f"| complete&white_image | {num} | {100 * num / N:.1f} |" in lines
    assert "![eval](e/eval.png)" in lines and "[e/eval.md](e/eval.md)" in " ".join(lines)
    assert f"n = {N} samples" in EvalJob.captions(rec)["eval.png"]
    assert EvalJob(EvalSettings()).summary(rec)[-1] == f"n={N} answered"
    # eval.md as written is the record's markdown, and the dict's (converted at the call)
    md = (ev_out / "eval.md").read_text()
    assert markdown(rec, MODEL) == md == markdown(content, MODEL)
    assert table1(rec) == table1(content) and table2(rec) == table2(content)


def test_eval_figure_takes_the_record_and_the_dict(ev_out):
    rec, content = _round_trip(EvalRecord, ev_out)

    def bars(fig):
        return [round(b.get_height(), 9) for b in fig.axes[0].patches]

    want = [round(100 * sum(f) / len(f), 9) for f in content["correct"].values()]  # TABLE1_ORDER here
    assert sorted(bars(figure(rec))) == sorted(bars(figure(content))) == sorted(want)
    assert chance_level(rec) == chance_level(content) == pytest.approx(sum(1 / k for k in rec.n_options) / N)


def test_eval_record_of_the_in_memory_result():
    """``mech.evaluate``'s dict has no ``settings.chance``, ``figures``, ``identity``: still a record,
    and it round-trips without them."""
    m = mech.load(MODEL)
    ev = mech.evaluate(m, mech.load_data(DATA, n=3), conditions=("complete", "white_image"), progress=False)
    rec = EvalRecord.from_json(ev)
    assert rec.to_json() == ev and list(rec.to_json()) == list(ev)
    assert rec.figures is None and rec.identity is None and rec.settings.chance is None
    assert "chance" not in rec.settings.to_json()
    assert table1(rec) == table1(ev)


def test_eval_record_refuses_wrong_types_naming_the_key(ev_out):
    content = json.loads((ev_out / "eval.json").read_text())
    bad = json.loads(json.dumps(content))
    bad["conditions"]["complete"]["n"] = "six"
    with pytest.raises(InputError, match=r"conditions\.complete: n: expected int"):
        EvalRecord.from_json(bad)
    bad = json.loads(json.dumps(content))
    bad["correct"]["white_image"][0] = "yes"
    with pytest.raises(InputError, match=r"correct\.white_image\[0\]: expected bool"):
        EvalRecord.from_json(bad)
    with pytest.raises(InputError, match="has no 'settings'"):
        EvalRecord.from_json({k: v for k, v in content.items() if k != "settings"})
    with pytest.raises(InputError, match=r"settings: expected an object"):
        figure({**content, "settings": "score"})  # the figure's boundary converts, and checks


def test_attention_record_round_trip(att_out):
    rec, content = _round_trip(AttentionRecord, att_out)
    assert rec.n == N and rec.query == "last" and rec.layers == tuple(range(len(rec.mass)))
    assert rec.groups == tuple(content["groups"]) and rec.grid == tuple(content["grid"])
    assert rec.skipped.count == 0 and rec.figures[0] == "attention_mass.png"
    with pytest.raises(TypeError):
        rec.token_share["image"] = 1.0


def test_attention_section_rederived_from_the_tensors(att_out):
    """Each number of the report's table is the float64 mean over samples and heads of
    ``attention.safetensors``' per-sample mass, read with safetensors itself."""
    rec, _ = _round_trip(AttentionRecord, att_out)
    t = load_file(att_out / "attention.safetensors")
    mass = t["mass"].double().mean(dim=(0, 2))  # [sample, layer, head, group] -> [layer, group]
    share = t["token_share"].double().mean(0)
    lines = AttentionJob.section(rec, "a/")
    groups = present_groups(rec)
    assert groups == present_groups(rec.to_json()) and "image" in groups and "video" not in groups
    assert lines[2] == "| layer | " + " | ".join(groups) + " |"
    tol = 0.0005 + 1e-6  # three printed decimals, plus the float32 mean's rounding
    rows = [ln for ln in lines if re.match(r"\| (\d+|token share) \|", ln)]
    assert len(rows) == len(rec.layers) + 1
    for layer, row in enumerate(rows[:-1]):
        printed = [float(x) for x in row.strip("|").split("|")[1:]]
        want = [mass[layer, rec.groups.index(g)].item() for g in groups]
        assert max(abs(a - b) for a, b in zip(printed, want)) <= tol, (layer, printed, want)
    printed = [float(x) for x in rows[-1].strip("|").split("|")[1:]]
    assert max(abs(a - share[rec.groups.index(g)].item()) for a, g in zip(printed, groups)) <= tol
    caps = AttentionJob.captions(rec)
    assert all(f"n = {N} samples" in caps[f] for f in ("attention_mass.png", "attention_heads.png"))
    for f in rec.figures:
        assert f"![{f[:-4]}](a/{f})" in lines
    assert AttentionJob(AttentionSettings()).summary(rec)[0].startswith(f"n={N}, query last;")


def test_attention_record_refuses_wrong_types_naming_the_key(att_out):
    content = json.loads((att_out / "attention.json").read_text())
    bad = json.loads(json.dumps(content))
    bad["mass"][1][0] = "high"
    with pytest.raises(InputError, match=r"mass\[1\]\[0\]: expected a number"):
        AttentionRecord.from_json(bad)
    with pytest.raises(InputError, match="has no 'groups'"):
        present_groups({k: v for k, v in content.items() if k != "groups"})
