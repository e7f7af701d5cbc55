"""``contrib.json`` as a typed record (issue 25, item 1): :class:`ContribRecord` reads what ``mech contrib``
writes on organism:balanced, gives it back byte for byte, refuses a value of the wrong type naming its key,
and the job's summary, captions and section, the report's words (:mod:`mech.report_words`) and the
contribution figures read the record (a dict or a :class:`Contributions` is read into one at the boundary).

Oracles: the file as written (the round trip: ``json.dumps`` of ``to_json`` is the file's text); the
per-sample contributions in ``contrib.safetensors``, read with ``safetensors`` itself and pooled by hand in
float64 (DLA: the sum over layers of |C|, then the sample mean; Δ = |C(text)| / |C(image)|, Zheng et al.
2025 eq. 2). The section prints C with three decimals and Δ with two, so a printed value is within half a
unit of its last digit of the float64 value, plus the float32 storage of the per-sample values (relative
2⁻²³ per value, summed over the layers: far below that half unit here).
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
from safetensors import safe_open

import mech.cli
from mech.curves import ContribRecord, Contributions
from mech.curves.job import ContribJob, decomposition_lines
from mech.curves.record import (
    CategoryRecord,
    CompletenessRecord,
    CoverageRecord,
    DecompositionRecord,
    EstimateRecord,
    as_contrib_record,
)
from mech.errors import InputError
from mech.figures import compare_figure, contribution_figure, save_figure
from mech.report_words import agreement, category_table, compare_coverage, coverage_lines

MODEL, DATA, N, BATCH = "organism:balanced", "organism:shapes", 8, 4


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = tmp_path_factory.mktemp("contrib")
    argv = ["contrib", "--model", MODEL, "--data", DATA, "--n", str(N), "--batch-size", str(BATCH)]
    assert mech.cli.main([*argv, "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def content(out):
    return json.loads((out / "contrib.json").read_text())


def test_the_job_declares_its_record():
    assert ContribJob.record is ContribRecord and ContribRecord.COMMAND == "contrib"


def test_round_trip_byte_for_byte_and_typed_values(out, content):
    text = (out / "contrib.json").read_text()
    rec = ContribRecord.read(out)
    assert rec.to_json() == content
    assert json.dumps(rec.to_json(), indent=2) + "\n" == text  # key order too, at every depth
    assert not rec.extra  # every key of the file is declared
    assert rec.n == N and rec.model == MODEL and rec.corruption == "resample"
    assert list(rec.overall) == ["attention", "patching", "dla", "decomposition"]
    o = rec.overall["patching"]
    assert isinstance(o, EstimateRecord) and isinstance(o.coverage, CoverageRecord)
    assert o.delta == content["overall"]["patching"]["delta"] and o.ci95 == tuple(
        content["overall"]["patching"]["ci95"]
    )
    assert o.identical_donor is not None and rec.overall["dla"].identical_donor is None  # removal-based only
    assert isinstance(rec.decomposition, DecompositionRecord)
    assert isinstance(rec.decomposition.completeness, CompletenessRecord)
    cat = next(iter(rec.by_category["dla"].values()))
    assert isinstance(cat, CategoryRecord) and cat.blind is None
    assert rec.identity["command"] == "contrib" and rec.skipped.count == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.n = 3
    with pytest.raises(TypeError):
        rec.overall["dla"] = o  # read-only mapping


def test_a_python_made_result_round_trips_without_the_command_keys():
    """:meth:`Contributions.to_json` has no model, data, corruption or figures: those stay absent."""
    torch.manual_seed(0)
    per = {"attention": torch.rand(5, 3, 6), "dla": torch.randn(5, 3, 6)}
    c = Contributions(per)
    content = c.to_json()
    rec = as_contrib_record(c)
    assert rec.to_json() == content and list(rec.to_json()) == list(content)
    assert rec.model is None and rec.corruption is None and rec.figures is None and rec.by_category is None
    assert rec.overall["dla"].n == 5 and as_contrib_record(rec) is rec


def test_a_wrong_type_or_a_missing_key_raises_input_error_naming_it(content):
    bad = json.loads(json.dumps(content))
    bad["overall"]["patching"]["coverage"]["n_estimated"] = "8"
    with pytest.raises(InputError, match=r"overall\.patching: coverage: n_estimated: expected int"):
        ContribRecord.from_json(bad)
    bad = json.loads(json.dumps(content))
    bad["curves"]["dla"]["text"][2] = "x"
    with pytest.raises(InputError, match=r"curves\.dla\.text\[2\]: expected a number"):
        ContribRecord.from_json(bad)
    bad = {k: v for k, v in content.items() if k != "overall"}
    with pytest.raises(InputError, match="has no 'overall'"):
        ContribRecord.from_json(bad)
    with pytest.raises(InputError, match="by_category: expected an object"):
        ContribRecord.from_json({**content, "by_category": []})


def _dla_by_hand(out):
    """C(text), C(image) and Δ(text/image) of DLA from ``contrib.safetensors``, in float64 by hand."""
    with safe_open(str(out / "contrib.safetensors"), "pt") as f:
        x = f.get_tensor("dla").double()  # [sample, layer, group]
        groups = json.loads(f.metadata()["mech"])["groups"]
    pooled = x.abs().sum(1).mean(0)  # the sum over layers of |C|, then the sample mean
    text, image = float(pooled[groups.index("text")]), float(pooled[groups.index("image")])
    return text, image, abs(text) / abs(image)


def test_the_section_reads_the_record_and_matches_the_tensors(out, content):
    rec = ContribRecord.read(out)
    lines = ContribJob.section(rec, "c/")
    assert lines == ContribJob.section(content, "c/")  # a dict is read into the record at the boundary
    assert lines[0].endswith(f"(n = {N} samples)")
    row = next(x for x in lines if x.startswith("| dla |")).split("|")
    c_text, c_image, delta = (float(row[k]) for k in (2, 3, 4))
    text, image, want = _dla_by_hand(out)
    assert c_text == pytest.approx(text, abs=5e-4 + 1e-6 * abs(text))
    assert c_image == pytest.approx(image, abs=5e-4 + 1e-6 * abs(image))
    assert delta == pytest.approx(want, abs=5e-3 + 1e-6 * want)
    assert f"{N} / {N} (100%)" in row[7]  # coverage: every sample estimated
    assert "![contrib](c/contrib.png)" in lines
    dec = rec.decomposition
    words = "\n".join(decomposition_lines(rec))
    assert f"n = {dec.n} samples" in words and f"{dec.completeness.max_abs:.1e}" in words


def test_summary_and_captions_read_the_record(out, content):
    rec = ContribRecord.read(out)
    job = ContribJob.__new__(ContribJob)  # summary reads nothing of the settings
    lines = job.summary(rec)
    assert lines == job.summary(content)
    assert [x.split(":")[0] for x in lines] == list(rec.overall)
    assert all(f"(estimated for {N} of {N})" in x for x in lines)
    caption = ContribJob.captions(rec)["contrib.png"]
    assert caption == ContribJob.captions(content)["contrib.png"]
    assert f"n = {N} samples" in caption and "patching by resample ablation" in caption


def test_report_words_read_the_records(content):
    """Coverage with a sample left out, a blind question type and the side-by-side words, from records."""
    c = json.loads(json.dumps(content))
    cov = c["overall"]["patching"]["coverage"]
    cov.update(n_estimated=N - 2, coverage=(N - 2) / N, missing=[{"id": "s1", "reason": "no donor"}] * 2)
    cat = next(iter(c["by_category"]["patching"]))
    c["by_category"]["patching"][cat].update(identical_donor={"image": 1.0, "text": 0.0}, blind=["image"])
    rec = ContribRecord.from_json(c)
    assert coverage_lines(rec) == coverage_lines(c)
    assert f"* patching: no estimate for 2 of {N} samples" in "\n".join(coverage_lines(rec))
    table = "\n".join(category_table(rec))
    assert table == "\n".join(category_table(c)) and f"in `{cat}` every image donor is identical" in table
    results = {"a": {"contrib": rec}, "b": {"contrib": ContribRecord.from_json(content)}}
    words = "\n".join(compare_coverage(results, ["a", "b"], str))
    assert f"patching {N - 2} / {N} (75%)" in words and f"every estimator {N} / {N} (100%)" in words
    said = agreement(results, ["a", "b"])
    assert said == agreement({k: {"contrib": v["contrib"].to_json()} for k, v in results.items()}, ["a", "b"])
    assert any(x.startswith("- **decomposition**: Δ(text/image)") for x in said)


def test_the_figures_take_the_record_and_a_dict(out, content, tmp_path):
    rec = ContribRecord.read(out)
    title = f"{MODEL} on {DATA} (n = {N})"
    save_figure(contribution_figure(rec, title), tmp_path / "rec.png")
    save_figure(contribution_figure(content, title), tmp_path / "dict.png")
    assert (tmp_path / "rec.png").read_bytes() == (tmp_path / "dict.png").read_bytes()
    assert (tmp_path / "rec.png").read_bytes() == (out / "contrib.png").read_bytes()  # what the job drew
    save_figure(compare_figure({"a": rec, "b": content}), tmp_path / "cmp_rec.png")
    save_figure(compare_figure({"a": content, "b": content}), tmp_path / "cmp_dict.png")
    assert (tmp_path / "cmp_rec.png").read_bytes() == (tmp_path / "cmp_dict.png").read_bytes()
    with pytest.raises(InputError, match="has no 'groups'"):
        contribution_figure({k: v for k, v in content.items() if k != "groups"})


def test_the_record_is_exported():
    import mech.curves

    assert "ContribRecord" in mech.curves.__all__ and re.search("ContribRecord", mech.curves.__doc__)
