"""``benchmarks/gpu.py`` (issue 27): its dry run, so that the GPU benchmark cannot rot before a GPU comes.

The dry run builds the same two families from their published configs scaled down and runs every row on the
CPU; the result file must hold one row per model × instrument × length of the plan, with finite positive
ratios where measured and a status with a reason where not. The configs themselves are checked against the
parameter counts the Hugging Face Hub publishes for the two checkpoints. The bf16-vs-fp32 correctness
checks at real width run only where a CUDA GPU is present.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu  # noqa: E402
import gpu_models as GM  # noqa: E402

FIELDS = {"model", "family", "instrument", "visual_tokens", "time_ratio", "memory_ratio", "status"}
INSTRUMENTS = {
    "plain forward (baseline)",
    "attention_mass(query='last')",
    "attention_mass(query='text')",
    "eager output_attentions",
    "activation_patching(resid_pre sweep)",
    "attribution_patching(method='deeplift')",
    "modality_contributions(defaults)",
}


def _run(tmp: Path, *args: str, timeout: int = 400) -> tuple[dict, str]:
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", OUT=str(out))
    proc = subprocess.run(
        [sys.executable, str(BENCH / "gpu.py"), "--dry-run", "--results-dir", str(tmp / "res"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted((tmp / "res").glob("*-cpu-dry-run*.json"))
    assert len(files) == 1, files
    assert (out / files[0].name).read_bytes() == files[0].read_bytes()  # the copy under $OUT
    return json.loads(files[0].read_text()), files[0].with_suffix(".md").read_text()


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    # a generous budget: on a loaded CPU no row may be skipped, since the dry run exists to run every row
    return _run(tmp_path_factory.mktemp("dry"), "--budget-s", "900", "--row-cap-s", "400")


@pytest.mark.slow
def test_dry_run_runs_every_row_of_the_plan(dry):
    result, _ = dry
    assert result["dry_run"] and result["complete"] and result["device"] == "cpu-dry-run"
    # under 2 minutes of one CPU (process CPU time: the wall clock depends on what else the machine runs)
    assert result["cpu_s"] < 120, result["cpu_s"]
    rows = result["rows"]
    for r in rows:
        assert FIELDS <= set(r), (set(FIELDS) - set(r), r)
        assert r["status"] == "ok", r  # nothing may fail, time out or be skipped in the dry run
    cfgs = gpu._configs(True)
    for family, (label, cfg, _) in cfgs.items():
        got = {(r["instrument"], r["visual_tokens"]) for r in rows if r["model"] == label}
        assert {i for i, _ in got} == INSTRUMENTS
        lengths = [GM.images_for(family, cfg, n).tokens(family, cfg) for n in gpu.PLAN["attention"][1]]
        for n in lengths:
            for i in (
                "plain forward (baseline)",
                "attention_mass(query='last')",
                "attention_mass(query='text')",
                "eager output_attentions",
            ):
                assert (i, n) in got, (i, n)
        deeplift = {n for i, n in got if i.startswith("attribution_patching")}
        assert deeplift == {
            GM.images_for(family, cfg, n).tokens(family, cfg) for n in gpu.PLAN["deeplift"][1]
        }
        assert result["models"][label]["deeplift_longest_fit_visual_tokens"] == max(deeplift)
        assert result["models"][label]["params"] > 0


@pytest.mark.slow
def test_dry_run_ratios_are_finite_and_positive(dry):
    result, md = dry
    for r in result["rows"]:
        for key in ("time_ratio", "memory_ratio", "seconds", "plain_seconds"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (key, r)
        if r["instrument"] == "plain forward (baseline)":
            assert r["time_ratio"] == 1.0 and r["memory_ratio"] == 1.0
        if r["instrument"].startswith("activation_patching"):
            # with prefix reuse a patched run re-evaluates only the layers from the patched one on
            fe = r["forward_equivalents_per_patched_run"]
            assert 0 < fe <= 1 and r["n_patched_runs"] > 0
        if r["instrument"].startswith("modality_contributions"):
            per = r[
                "visual_tokens_per_sample"
            ]  # images of different sizes, each size twice (in-batch donors)
            assert r["batch"] == len(per) and len(set(per)) >= 2 and all(per.count(t) == 2 for t in per)
            for est, cov in r["coverage"].items():  # every sample has a donor of its size: all estimated
                assert cov["n"] == r["batch"] and cov["samples"] == r["batch"], (est, cov)
        assert f"| {r['model']} | {r['instrument']} | {r['visual_tokens']} |" in md
    assert result["non_finite"] == []
    assert result["environment"]["packages"]["torch"] == torch.__version__


@pytest.mark.slow
def test_dry_run_correctness_checks_pass(dry):
    result, _ = dry
    checks = result["checks"]
    names = {(c["model"], c["check"], c["dtype"]) for c in checks}
    for label, _, _ in gpu._configs(True).values():
        for check in ("attention_mass_oracle", "dla_completeness", "decomposition_completeness"):
            assert {(label, check, "fp32"), (label, check, "bf16")} <= names
        assert (label, "attention_mass_bf16_vs_fp32", "bf16") in names
    for c in checks:
        assert c["passed"] and math.isfinite(c["value"]) and c["value"] <= c["tolerance"], c


def test_rows_over_budget_are_recorded_as_skipped(tmp_path):
    """With no budget left every row is still in the file, marked skipped with the reason."""
    result, md = _run(tmp_path, "--budget-s", "0.001", "--no-checks", "--models", "llava", timeout=200)
    assert result["complete"]
    assert {r["instrument"] for r in result["rows"]} == INSTRUMENTS | {"build"}  # every planned row is there
    for r in result["rows"]:
        assert r["status"] == "skipped" and "budget:" in r["reason"], r
        assert r["time_ratio"] is None and r["memory_ratio"] is None
        assert f"| {r['model']} | {r['instrument']} |" in md


def test_configs_are_the_published_checkpoints():
    """Parameter counts on the meta device equal the Hub's for Qwen/Qwen2.5-VL-7B-Instruct (8.29B) and
    llava-hf/llava-1.5-7b-hf (7.06B); the dry run's configs are the same classes with the same patch size
    and vision-feature layer, every special token id at the same distance from the top of the vocabulary."""
    counts = {f: GM.n_params(f, GM.config(f)) for f in GM.FAMILIES}
    assert round(counts["qwen2_5_vl"] / 1e7) == 829 and round(counts["llava"] / 1e7) == 706, counts
    for family in GM.FAMILIES:
        real, small = GM.config(family), GM.scaled(family, GM.config(family))
        assert type(small) is type(real) and type(small.get_text_config()) is type(real.get_text_config())
        assert small.vision_config.patch_size == real.vision_config.patch_size
        top, small_top = real.get_text_config().vocab_size, small.get_text_config().vocab_size
        assert small_top < top
        for key in ("image_token_id", "image_token_index", "vision_start_token_id", "vision_end_token_id"):
            if getattr(real, key, None) is not None:
                assert top - getattr(real, key) == small_top - getattr(small, key), key
        assert getattr(small, "vision_feature_layer", None) == getattr(real, "vision_feature_layer", None)


@pytest.mark.gpu
@pytest.mark.parametrize("family", list(GM.FAMILIES))
def test_bf16_against_fp32_on_cuda(family):
    """The checks at the real width (decoder cut to 4 layers) at ~1k visual tokens, on the GPU."""
    import gpu_checks

    _, _, small = gpu._configs(False)[family]
    for c in gpu_checks.checks(family, small, "cuda", gpu.PLAN["checks"][0], family):
        assert c["passed"], c


def test_the_carried_wheels_are_locked_with_hashes():
    """``fetch_wheels.py`` carries only locked packages, each with the lock's sha256 hashes to verify against."""
    import re

    import fetch_wheels

    text = (ROOT / "requirements.lock").read_text()
    pins = fetch_wheels.locked(ROOT / "requirements.lock")
    for name in fetch_wheels.DEVICE_WHEELS:
        version, hashes = pins[name]
        assert re.search(rf"^{name}=={re.escape(version)} \\$", text, re.M)
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes)
        assert all(h in text for h in hashes)


def test_rows_that_fail_are_recorded_with_their_status(tmp_path, monkeypatch):
    """Out of memory (in a measurement or outside one), an exception and a row past its deadline each leave
    a row with that status, its reason and no ratios, and the file is written after each."""
    import types

    import gpu_rows
    import timing

    monkeypatch.delenv("OUT", raising=False)
    args = types.SimpleNamespace(
        budget_s=60, row_cap_s=1, dry_run=True, reps=1, models=["llava"], results_dir=str(tmp_path)
    )
    run = gpu.Run(args, "cpu-dry-run", False)

    def oom():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 30.00 GiB")

    t = timing.measure(oom, cuda=False)
    assert t.oom and t.seconds is None and "out of memory" in t.error
    ctx = gpu_rows.Ctx(None, "llava", "m", GM.config("llava"), False, 1, {})
    r = gpu_rows.row(ctx, "eager output_attentions", 16128, 16170, t, timing.Timing(1.0, 2.0, 1.0))
    assert r["status"] == "oom" and r["time_ratio"] is None and r["memory_ratio"] is None
    assert r["beyond_max_position_embeddings"] == 4096  # LLaVA-1.5 was trained on 4096 positions

    def spin():
        while True:
            pass

    def fail():
        raise ValueError("a bug")

    for fn, status in ((oom, "oom"), (fail, "error"), (spin, "timeout")):
        (got,) = run.guarded(status, [("m", "llava", status, 1)], 0, fn)
        assert got["status"] == status and got["reason"] and got["time_ratio"] is None, got
    written = json.loads((tmp_path / f"{run.name}.json").read_text())
    assert [r["status"] for r in written["rows"]] == ["oom", "error", "timeout"]
