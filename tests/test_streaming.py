"""Streaming of ``mech attention`` and ``mech patch`` (issue 8): every finished batch goes to
``<out>/.<command>.parts/``; a run that crashes after k batches and is rerun writes files identical
to an uninterrupted run, recomputing only the unfinished batches; and no batch result is kept in
memory once it is on disk.

Oracle: the uninterrupted run of the same command (JSON byte for byte, tensors bit for bit), and
for attention the in-memory ``mech.attention_mass`` over the whole data set.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import mech
import mech.cli
import mech.measure.attention
import mech.measure.patching
from mech.testing.tiny import save_tiny

N, BATCH = 7, 2  # 4 batches, the last one smaller
BATCHES = 4


class Boom(RuntimeError):
    pass


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny("llava", tmp_path_factory.mktemp("stream") / "model")


def _argv(command, model_dir, out, *extra):
    return [
        command,
        "--model",
        str(model_dir),
        "--data",
        "organism:shapes",
        "--n",
        str(N),
        "--batch-size",
        str(BATCH),
        "--out",
        str(out),
        *extra,
    ]


def _tensors(path: Path):
    with safe_open(str(path), "pt") as fh:
        return fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}


def same_files(a: Path, b: Path, command: str) -> None:
    """``<command>.json`` identical byte for byte; ``<command>.safetensors`` identical tensors and metadata."""
    assert (a / f"{command}.json").read_bytes() == (b / f"{command}.json").read_bytes()
    (ma, ta), (mb, tb) = _tensors(a / f"{command}.safetensors"), _tensors(b / f"{command}.safetensors")
    assert ma == mb and sorted(ta) == sorted(tb)
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k].nan_to_num(7.0), tb[k].nan_to_num(7.0)), k


@pytest.fixture(scope="module")
def reference(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    for command in ("attention", "patch"):
        assert mech.cli.main(_argv(command, model_dir, out)) == 0
    return out


# command -> (module attribute computing one batch, what the command's parts hold per batch)
TARGETS = {
    "attention": (mech.measure.attention, "attention_mass"),
    "patch": (mech.measure.patching, "activation_patching"),
}


@pytest.mark.parametrize("command", ["attention", "patch"])
def test_crash_after_k_batches_then_rerun_gives_identical_files(
    command, model_dir, reference, tmp_path, monkeypatch
):
    module, name = TARGETS[command]
    real, calls = getattr(module, name), {"n": 0}

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Boom("killed after two batches")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, crash_on_third)
    assert mech.cli.main(_argv(command, model_dir, tmp_path)) == mech.cli.BUG  # one line, exit 3 (not ours)
    parts = tmp_path / f".{command}.parts"
    assert sorted(p.name for p in parts.glob("*.safetensors")) == ["000000.safetensors", "000001.safetensors"]
    assert not (tmp_path / f"{command}.json").exists() and not (tmp_path / f"{command}.safetensors").exists()

    calls["n"] = -100  # no more crashes; count what the rerun computes
    assert mech.cli.main(_argv(command, model_dir, tmp_path)) == 0
    assert calls["n"] == -100 + BATCHES - 2  # only the two unfinished batches
    same_files(reference, tmp_path, command)
    assert not list(tmp_path.rglob("*.tmp"))


def test_other_settings_do_not_reuse_the_parts(model_dir, reference, tmp_path, capsys):
    """A run with other settings (here: another batch size) refuses the folder of another run, and
    with --overwrite replaces it: its parts are cleared, never mixed in."""
    assert (
        mech.cli.main(
            _argv("attention", model_dir, tmp_path)[:-4] + ["--batch-size", "3", "--out", str(tmp_path)]
        )
        == 0
    )
    assert len(list((tmp_path / ".attention.parts").glob("*.safetensors"))) == 3
    capsys.readouterr()
    assert mech.cli.main(_argv("attention", model_dir, tmp_path)) == 1
    err = capsys.readouterr().err
    assert "other settings" in err and "batch_size: 3 there" in err and "--overwrite" in err
    assert len(list((tmp_path / ".attention.parts").glob("*.safetensors"))) == 3  # untouched
    assert mech.cli.main(_argv("attention", model_dir, tmp_path) + ["--overwrite"]) == 0
    assert len(list((tmp_path / ".attention.parts").glob("*.safetensors"))) == BATCHES
    same_files(reference, tmp_path, "attention")


def test_attention_parts_equal_one_in_memory_run(model_dir, reference):
    """Oracle: one ``attention_mass`` call over all samples, padded as one batch (padding invariance
    makes the per-sample mass equal up to float rounding)."""
    from mech.conditions import condition_inputs
    from mech.prepare.data import load_data

    m = mech.load(str(model_dir))
    whole = mech.attention_mass(m, condition_inputs(m, list(load_data("organism:shapes", n=N)), "complete"))
    _, t = _tensors(reference / "attention.safetensors")
    torch.testing.assert_close(t["mass"], whole.mass, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(t["counts"], whole.counts)


@pytest.mark.parametrize("command", ["attention", "patch"])
def test_finished_batches_are_not_kept_in_memory(command, model_dir, tmp_path, monkeypatch):
    """When batch k is computed, no result of batches < k - 1 is still referenced (the old
    implementation kept a list of every batch's result until the end)."""
    module, name = TARGETS[command]
    real, results, alive = getattr(module, name), [], []

    def tracked(*args, **kwargs):
        alive.append(sum(r() is not None for r in results))
        out = real(*args, **kwargs)
        results.append(weakref.ref(out))
        return out

    monkeypatch.setattr(module, name, tracked)
    assert mech.cli.main(_argv(command, model_dir, tmp_path)) == 0
    assert len(alive) == BATCHES and max(alive) <= 1, alive
