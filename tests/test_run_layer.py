"""The run layer (mech.runs): settings as frozen data, the command line derived from them, and an
output folder that holds one run identity at a time, also when two processes start together."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mech.cli
from mech.errors import ConfigError
from mech.runs import AttentionSettings, ContribSettings, EvalSettings, PatchSettings, ReportSettings
from mech.runs import settings as S
from mech.testing.tiny import save_tiny

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny("llava", tmp_path_factory.mktemp("runs") / "model")


def _argv(model_dir, out, n):
    return [
        "attention",
        "--model",
        str(model_dir),
        "--data",
        "organism:shapes",
        "--n",
        str(n),
        "--batch-size",
        "2",
        "--out",
        str(out),
        "--no-progress",
    ]


def _env():
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )


def _start(argv):
    return subprocess.Popen(
        [sys.executable, "-m", "mech.cli", *argv],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _files(out: Path) -> dict[str, bytes]:
    return {n: (out / n).read_bytes() for n in ("attention.json", "attention.safetensors")}


def test_two_runs_with_other_settings_into_one_folder(model_dir, tmp_path):
    """Started together with n=4 and n=6: one refuses with a message naming the folder and the
    difference; the other's files equal its solo run's. Two with the same settings give one run's files."""
    solo = {n: tmp_path / f"solo{n}" for n in (4, 6)}
    for n, out in solo.items():
        assert mech.cli.main(_argv(model_dir, out, n)) == 0
    shared = tmp_path / "shared"
    procs = {n: _start(_argv(model_dir, shared, n)) for n in (4, 6)}
    done = {n: (p.wait(timeout=300), p.stderr.read()) for n, p in procs.items()}
    codes = sorted(rc for rc, _ in done.values())
    assert codes == [0, 1], done
    won = next(n for n, (rc, _) in done.items() if rc == 0)
    lost = next(n for n, (rc, _) in done.items() if rc == 1)
    err = done[lost][1]
    assert str(shared) in err and "other settings" in err and f"n: {won} there, {lost} here" in err
    assert "--overwrite" in err and "Traceback" not in err
    assert _files(shared) == _files(solo[won])
    same = tmp_path / "same"
    procs = [_start(_argv(model_dir, same, 4)) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    assert _files(same) == _files(solo[4])


def test_settings_are_frozen_checked_and_give_the_identity():
    s = PatchSettings(sites=["resid_pre"], out="a", device="cpu")
    assert s.sites == ("resid_pre",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.n = 3  # type: ignore[misc]
    with pytest.raises(ConfigError, match="direction='sideways'; allowed: denoising, noising"):
        PatchSettings(direction="sideways")
    with pytest.raises(ConfigError, match="sites='resid_side'; allowed: resid_pre"):
        PatchSettings(sites=("resid_side",))
    with pytest.raises(ConfigError, match="n=0; pass a positive integer"):
        AttentionSettings(n=0)
    # where and how a run is computed is not part of what it computes
    assert s.identity() == s.replace(out="b", device="cuda", shard="1/2", overwrite=True).identity()
    assert s.identity() != s.replace(seed=1).identity()
    assert EvalSettings(conditions="complete, white_image").conditions == ("complete", "white_image")
    with pytest.raises(ConfigError, match="without repeats"):
        EvalSettings(conditions=("complete", "complete"))


def test_the_literals_equal_the_instruments_constants():
    from mech.conditions import CONDITIONS
    from mech.curves import ESTIMATORS, REMOVALS
    from mech.measure.attention import QUERIES
    from mech.measure.evaluation.answering import METHODS, PARSERS
    from mech.measure.evaluation.run import DEFAULT_CONDITIONS
    from mech.measure.patching.align import POSITION_GROUPS
    from mech.measure.patching.metrics import DIRECTIONS, METRICS
    from mech.measure.patching.sites import SITES
    from mech.prepare.data import SCORINGS

    pairs = [
        (S.Condition, CONDITIONS),
        (S.Query, QUERIES),
        (S.Estimator, ESTIMATORS),
        (S.Removal, REMOVALS),
        (S.Scoring, SCORINGS),
        (S.Method, METHODS),
        (S.Position, POSITION_GROUPS),
        (S.Direction, DIRECTIONS),
        (S.PatchMetric, METRICS),
        (S.Site, SITES),
        (S.Parser, PARSERS),
    ]
    for literal, constant in pairs:
        assert S.allowed(literal) == tuple(constant), literal
    assert S.DEFAULT_CONDITIONS == DEFAULT_CONDITIONS


def test_the_command_line_is_derived_from_the_settings():
    from mech.runs.jobs import COMMANDS

    p = mech.cli.parser()
    for command, cls in COMMANDS.items():
        argv = [command] + (["out"] if command == "merge" else [])
        args = p.parse_args(argv)
        for f in dataclasses.fields(cls):  # every default comes from the dataclass, and only from there
            if f.name != "out" or command != "merge":
                assert getattr(args, f.name) == f.default, (command, f.name)
    args = p.parse_args(["patch", "--sites", "resid_pre", "z", "--no-progress", "--n", "5"])
    s = mech.runs.args.settings_from(PatchSettings, args)
    assert s == PatchSettings(sites=("resid_pre", "z"), progress=False, n=5)


def test_the_report_composes_the_steps_settings():
    r = ReportSettings(n=None, seed=3, batch_size=4, removal="noise", compare=("a", "b"))
    from mech.runs.jobs import STEPS

    steps = {cls.command: r.step(cls, "a", "out/a") for cls in STEPS}
    assert steps["contrib"] == ContribSettings(model="a", out="out/a", seed=3, batch_size=4, removal="noise")
    assert (
        steps["eval"].n == EvalSettings.n and steps["patch"].n == PatchSettings.n
    )  # each step's own default
    assert ReportSettings(compare=()).models() == list(S.DEFAULT_COMPARE) and r.models() == ["a", "b"]
    assert r.step(AttentionSettings, "a", "o").replace(n=7) == r.replace(n=7).step(
        AttentionSettings, "a", "o"
    )


def test_help_loads_neither_torch_nor_transformers():
    """``mech --help`` and ``mech <command> --help`` parse without importing torch (issue 16; the
    time ratio to ``import torch`` is measured in benchmarks/bench_cli.py)."""
    code = (
        "import sys, contextlib, io, mech.cli\n"
        "for argv in (['--help'], ['patch', '--help'], ['report', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
        "        mech.cli.main(argv)\n"
        "    assert '--n' in out.getvalue() or 'command' in out.getvalue(), out.getvalue()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'pandas', 'numpy')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
    help_text = subprocess.run(
        [sys.executable, "-m", "mech.cli", "patch", "--help"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "(default: white_image)" in help_text and "(default: 64)" in help_text  # --help shows the defaults


def test_report_loads_each_model_once(model_dir, tmp_path, monkeypatch, capsys):
    """``mech report`` runs eval, attention, patch and contrib on one loaded model; a rerun with the
    same settings reads every step back and loads nothing. Every step prints its summary and files."""
    import mech

    load, loaded = mech.load, []
    monkeypatch.setattr(mech, "load", lambda *a, **k: loaded.append(a[0]) or load(*a, **k))
    argv = [
        "report",
        "--model",
        str(model_dir),
        "--data",
        "organism:shapes",
        "--n",
        "3",
        "--batch-size",
        "3",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    assert mech.cli.main(argv) == 0
    assert loaded == [str(model_dir)]
    cap = capsys.readouterr()
    for command in ("eval", "attention", "patch", "contrib"):
        assert f"mech {command}: wrote {tmp_path}/: {command}.json" in cap.out, cap.out
    assert "Loading weights" not in cap.out + cap.err  # transformers' bars only with --verbose
    assert mech.cli.main(argv) == 0 and loaded == [str(model_dir)]
