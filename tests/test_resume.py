"""Reliability of runs (issue 8): the same seed gives identical JSON, and ``kill -9`` during
``mech report`` followed by a rerun gives the files of an uninterrupted run.

Setup: a saved tiny LLaVA (model + processor) and a ``jsonl:`` data set whose questions use the tiny
tokenizer's words, with PNG images written here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import mech
import mech.cli
from mech.testing.tiny import save_tiny, save_tiny_jsonl

ROOT = Path(__file__).resolve().parents[1]

QUESTIONS = [
    "what colour is the shape ?",
    "which shape is in the image ?",
    "what is the big shape ?",
    "is the shape red or blue ?",
    "tell me the colour of the small shape",
    "what shape do you see ?",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A saved tiny LLaVA (model + processor) and a jsonl data set in its vocabulary with PNG images."""
    root = tmp_path_factory.mktemp("tiny")
    save_tiny("llava", root / "model")
    save_tiny_jsonl(root, QUESTIONS)
    return root


def _argv(tiny_dir, out, seed=3):
    return [
        "report",
        "--model",
        str(tiny_dir / "model"),
        "--data",
        f"jsonl:{tiny_dir / 'data.jsonl'}",
        "--n",
        "6",
        "--batch-size",
        "2",
        "--seed",
        str(seed),
        "--out",
        str(out),
    ]


def _results(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.suffix in (".json", ".safetensors")
    }


def _tensors(path: Path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        return fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}


def _same(a: Path, b: Path):
    """JSON and safetensors files identical byte for byte (safetensors' metadata is written sorted,
    mech.results.write_tensors, so the bytes no longer depend on the process); on a difference,
    the tensors and metadata are compared first, to say what differs."""
    ra, rb = _results(a), _results(b)
    assert sorted(ra) == sorted(rb)
    for name in ra:
        if name.endswith(".safetensors"):
            (ma, ta), (mb, tb) = _tensors(a / name), _tensors(b / name)
            assert ma == mb and sorted(ta) == sorted(tb), name
            for k in ta:
                same = ta[k].dtype == tb[k].dtype and torch.equal(
                    ta[k].nan_to_num(7.0), tb[k].nan_to_num(7.0)
                )
                assert same, (name, k)
        assert ra[name] == rb[name], f"{name} differs"
    assert not list(a.rglob("*.tmp")) and not list(b.rglob("*.tmp"))


@pytest.fixture(scope="module")
def reference(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    assert mech.cli.main(_argv(tiny_dir, out)) == 0
    return out


def test_same_seed_same_json(tiny_dir, reference, tmp_path):
    """eval, attention, patch and contrib (through ``mech report``) twice with one seed: identical files."""
    assert mech.cli.main(_argv(tiny_dir, tmp_path / "again")) == 0
    _same(reference, tmp_path / "again")
    names = set(_results(reference))
    assert {"eval.json", "attention.json", "patch.json", "contrib.json", "compare.json"} <= names
    assert json.loads((reference / "attention.json").read_text())["figures"] == [
        "attention_mass.png",
        "attention_heads.png",
        "attention_image.png",
    ]  # names, not paths of this run
    # the seed does matter: noise images differ, so the noise_image scores differ
    assert mech.cli.main(["eval"] + _argv(tiny_dir, tmp_path / "other", seed=4)[1:]) == 0
    ref, other = (json.loads((d / "eval.json").read_text()) for d in (reference, tmp_path / "other"))
    assert ref["scores"]["complete"] == other["scores"]["complete"]
    assert ref["scores"]["noise_image"] != other["scores"]["noise_image"]


_DELAYED = """
import sys, time
import mech.measure.evaluation.run as run, mech.curves as cc
eval_delay, contrib_delay = float(sys.argv[1]), float(sys.argv[2])
answer, contrib = run._answer_batch, cc.modality_contributions
run._answer_batch = lambda *a, **k: (time.sleep(eval_delay), answer(*a, **k))[1]
cc.modality_contributions = lambda *a, **k: (time.sleep(contrib_delay), contrib(*a, **k))[1]
from mech.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _env():  # one thread, as in this process (conftest), so the float reductions are the same
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )


def _kill_when(argv, ready, delays, timeout=120.0):
    """Start ``mech`` (with per-batch delays) and SIGKILL it as soon as ``ready()`` holds."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _DELAYED, *map(str, delays), *argv],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    t0 = time.monotonic()
    try:
        while not ready():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() - t0 < timeout
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_kill_9_during_report_then_rerun(tiny_dir, reference, tmp_path):
    out = tmp_path / "killed"
    argv = _argv(tiny_dir, out)
    parts = out / ".eval.parts"
    _kill_when(
        argv, lambda: len(list(parts.glob("*.safetensors"))) >= 2, (0.15, 0.0)
    )  # killed in eval, 2 of 3 batches done
    assert not (out / "eval.json").exists()
    _kill_when(
        argv, lambda: (out / ".contrib.parts" / "000000.safetensors").is_file(), (0.0, 0.4)
    )  # in contrib
    assert (out / "eval.json").is_file() and not (out / "contrib.json").exists()
    done = subprocess.run(
        [sys.executable, "-m", "mech.cli", *argv], env=_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    _same(reference, out)
