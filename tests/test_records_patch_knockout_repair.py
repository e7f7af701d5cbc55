"""The typed records of ``patch.json``, ``knockout.json`` and ``repair.json`` on real runs of the commands
(tiny ones on the organisms).

Oracles: the file's own bytes (the record writes back exactly the file's JSON, in its key order); the
tensors in each command's ``.safetensors`` (a number of the report section re-derived from them, not from
the JSON the section reads); the JSON itself, by hand (the repair section's effect and random median); and
the command's own PNGs (a figure drawn from the record is the figure the command wrote, byte for byte).
"""

from __future__ import annotations

import json
import re
import statistics

import pytest
from safetensors.torch import load_file

import mech.cli
from mech.errors import InputError
from mech.figures import save_figure
from mech.figures.knockout import knockout_curves
from mech.figures.repair import repair_figure
from mech.measure.knockout import KnockoutRecord
from mech.measure.knockout.instrument import KnockoutJob
from mech.measure.patching import PatchRecord
from mech.measure.patching.job import PatchJob
from mech.measure.repair import RepairRecord
from mech.measure.repair.job import RepairJob

MODEL = "organism:balanced"
COMMON = ["--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny run of each command: command -> its folder."""
    root = tmp_path_factory.mktemp("records")
    argv = {
        "patch": ["--model", MODEL, "--n", "6", "--batch-size", "6", "--sites", "resid_post"],
        "knockout": ["--model", MODEL, "--n", "6", "--batch-size", "6", "--window", "3"],
        "repair": [
            *("--model", "organism:text-biased", "--n", "40", "--fit-n", "60"),
            *("--k", "40", "--ks", "40", "--batch-size", "40"),
        ],
    }
    for command, args in argv.items():
        assert mech.cli.main([command, *args, "--out", str(root / command), *COMMON]) == 0
    return {c: root / c for c in argv}


RECORDS = {
    "patch": (PatchRecord, PatchJob),
    "knockout": (KnockoutRecord, KnockoutJob),
    "repair": (RepairRecord, RepairJob),
}


@pytest.mark.parametrize("command", list(RECORDS))
def test_the_record_writes_back_the_file(runs, command):
    """``Record.read(out).to_json()`` is the file: the same parsed content, the same key order at every
    level, and (with the writer's indent) the same bytes; the job declares the record."""
    cls, job = RECORDS[command]
    path = runs[command] / f"{command}.json"
    text = path.read_text()
    rec = cls.read(runs[command])
    assert job.record is cls and rec.COMMAND == command and not rec.extra  # every key declared
    back = rec.to_json()
    assert back == json.loads(text) and json.dumps(back) == json.dumps(json.loads(text))  # order too
    assert json.dumps(back, indent=2) + "\n" == text
    assert cls.from_json(back) == rec


def test_patch_section_matches_the_tensors(runs):
    """The report's patching table, layer 0 and group image, is the normalized effect of the batch
    means, recomputed from ``patch.safetensors``' patched, clean and corrupted metrics (Heimersheim &
    Nanda 2024, eq. 1)."""
    rec = PatchRecord.read(runs["patch"])
    t = load_file(runs["patch"] / "patch.safetensors")
    clean, corr = t["clean_metric"].double().mean(), t["corrupted_metric"].double().mean()
    g = rec.groups.index("image")
    want = float((t["patched.resid_post"][0, g].double().mean() - corr) / (clean - corr))
    lines = PatchJob.section(rec, "p/")
    header = next(i for i, ln in enumerate(lines) if ln.startswith("| layer |"))
    cols = [c.strip() for c in lines[header].strip("|").split("|")]
    row0 = [c.strip() for c in lines[header + 2].strip("|").split("|")]
    assert row0[0] == "0" and abs(float(row0[cols.index("image")]) - want) <= 5e-4 + 1e-6 * abs(want)
    assert f"clean {float(clean):.3f}" in lines[2] and "![patch_resid_post](p/patch_resid_post.png)" in lines
    assert PatchJob.summary(None, rec)[0].startswith(f"n={rec.n}, denoising white_image")


def test_knockout_section_matches_the_tensors(runs):
    """The report's knockout cell (first window, first edge) is the mean over kept samples of
    ``100·(p_knocked − p_clean)/p_clean``, recomputed from ``knockout.safetensors``' probabilities."""
    rec = KnockoutRecord.read(runs["knockout"])
    t = load_file(runs["knockout"] / "knockout.safetensors")
    kept = t["kept"].bool()
    p_clean, p_knocked = t["p_clean"].double()[kept], t["p_knocked"][0, 0].double()[kept]
    want = float((100 * (p_knocked - p_clean) / p_clean).mean())
    lines = KnockoutJob.section(rec, "k/")
    row = next(ln for ln in lines if ln.startswith("| 0 |"))
    cell = float(row.strip("|").split("|")[2])
    assert abs(cell - want) <= 0.05 + 1e-6 * abs(want), (cell, want)
    assert "![knockout](k/knockout.png)" in lines and f"n = {int(kept.sum())} of {rec.n}" in lines[2]


def test_repair_section_rederived_from_the_json(runs):
    """The repair section's effect on the target accuracy and its random edits' median are the JSON's
    accuracies, subtracted and taken the median of by hand."""
    path = runs["repair"] / "repair.json"
    d = json.loads(path.read_text())
    rec = RepairRecord.read(path)
    target = d["controls"]["target"]
    effect = d["selected"]["accuracy"][target]["value"] - d["unedited"]["accuracy"][target]["value"]
    text = "\n".join(RepairJob.section(rec, "r/"))
    assert f"Effect on accuracy {target.replace('_', ' ')}: {effect:+.3f};" in text
    med = statistics.median(r["accuracy"]["all"]["value"] for r in d["random"])
    assert re.search(rf"\| all \| [^|]+ \| [^|]+ \| {med:.3f} \| {d['n_held_out']} \|", text), text
    assert "![repair.png](r/repair.png)" in text


def test_wrong_types_and_missing_keys_name_the_key(runs):
    """A value of the wrong type, at the top or nested, and a missing key raise InputError naming it."""
    pa = json.loads((runs["patch"] / "patch.json").read_text())
    with pytest.raises(InputError, match=r"patch.json: n: expected int, found '6'"):
        PatchRecord.from_json({**pa, "n": "6"})
    with pytest.raises(InputError, match=r"patch.json: effect.resid_post.image\[0\]"):
        PatchRecord.from_json({**pa, "effect": {"resid_post": {"image": ["x"]}}})
    ko = json.loads((runs["knockout"] / "knockout.json").read_text())
    with pytest.raises(InputError, match=r"knockout.json has no 'change'"):
        KnockoutRecord.from_json({k: v for k, v in ko.items() if k != "change"})
    with pytest.raises(InputError, match=r"knockout.json: only_correct: expected bool"):
        KnockoutRecord.from_json({**ko, "only_correct": 0})
    r = json.loads((runs["repair"] / "repair.json").read_text())
    r["unedited"]["accuracy"]["all"]["n"] = "40"
    with pytest.raises(InputError, match=r"repair.json: unedited: accuracy: all: n: expected int"):
        RepairRecord.from_json(r)


def test_figures_take_the_record_and_the_dict(runs, tmp_path):
    """``knockout_curves`` and ``repair_figure`` drawn from the record, from the JSON content and (the
    knockout) from the result give the same figure, byte for byte the PNG the command wrote."""
    from mech.measure.knockout import KnockoutResult

    out = runs["knockout"]
    content = json.loads((out / "knockout.json").read_text())
    title = f"{MODEL} on organism:shapes\nattention knockout, 3-layer windows (center)"
    want = (out / "knockout.png").read_bytes()
    for i, ko in enumerate(
        (KnockoutRecord.from_json(content), content, KnockoutResult.load(out / "knockout.safetensors"))
    ):
        assert save_figure(knockout_curves(ko, title), tmp_path / f"k{i}.png").read_bytes() == want, i
    out = runs["repair"]
    content = json.loads((out / "repair.json").read_text())
    want = (out / "repair.png").read_bytes()
    saved = {
        k: v for k, v in content.items() if k not in ("data", "figures", "skipped", "identity", "provenance")
    }
    for i, r in enumerate((RepairRecord.from_json(content), content, saved)):  # saved: RepairResult.save's
        assert save_figure(repair_figure(r), tmp_path / f"r{i}.png").read_bytes() == want, i
