"""Data-parallel runs (issue 8, :mod:`mech.runs.shards`): shards ``K/N`` of ``mech attention``,
``mech patch`` and ``mech eval`` write into one output directory, and the results assembled from
them equal a single-process run (JSON byte for byte, tensors bit for bit); ``torchrun``'s
variables select the shard; ``mech merge`` assembles without computing; bad shard specs are
refused with the fix.

Oracle: the single-process run of the same command.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import mech
import mech.cli
import mech.curves
import mech.measure.attention
import mech.measure.evaluation.run
import mech.measure.patching
from mech.errors import ConfigError
from mech.runs import shards as parallel
from mech.testing.tiny import save_tiny, save_tiny_jsonl

QUESTIONS = [
    "what colour is the shape ?",
    "which shape is in the image ?",
    "what is the big shape ?",
    "is the shape red or blue ?",
    "tell me the colour of the small shape",
    "what shape do you see ?",
    "what colour is the big shape ?",
]
FILES = {
    "attention": ("attention.json", "attention.safetensors"),
    "patch": ("patch.json", "patch.safetensors"),
    "eval": ("eval.json", "eval.safetensors", "eval.md"),
    "contrib": ("contrib.json", "contrib.safetensors"),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A saved tiny LLaVA and a 7-row jsonl data set in its vocabulary (4 batches of 2)."""
    root = tmp_path_factory.mktemp("par")
    save_tiny("llava", root / "model")
    save_tiny_jsonl(root, QUESTIONS)
    return root


def _argv(command, root, out, *extra):
    argv = [
        command,
        "--model",
        str(root / "model"),
        "--data",
        f"jsonl:{root / 'data.jsonl'}",
        "--n",
        "7",
        "--batch-size",
        "2",
        "--out",
        str(out),
        *extra,
    ]
    return argv + (
        ["--conditions", "complete,white_image,noise_image", "--no-progress"] if command == "eval" else []
    )


def _run(argv) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        rc = mech.cli.main(argv)
    return rc, buf.getvalue()


def same_files(a: Path, b: Path, command: str) -> None:
    for name in FILES[command]:
        if name.endswith(".safetensors"):
            with safe_open(str(a / name), "pt") as fa, safe_open(str(b / name), "pt") as fb:
                assert fa.metadata() == fb.metadata() and sorted(fa.keys()) == sorted(fb.keys())
                for k in fa.keys():
                    assert torch.equal(fa.get_tensor(k).nan_to_num(7.0), fb.get_tensor(k).nan_to_num(7.0)), (
                        name,
                        k,
                    )
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.fixture(scope="module")
def single(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    for command in FILES:
        assert _run(_argv(command, root, out))[0] == 0
    return out


COMPUTE = {
    "attention": (mech.measure.attention, "attention_mass"),
    "patch": (mech.measure.patching, "activation_patching"),
    "eval": (mech.measure.evaluation.run, "_answer_batch"),
    "contrib": (mech.curves, "modality_contributions"),
}


@pytest.mark.parametrize("command", list(FILES))
def test_two_shards_equal_one_process(command, root, single, tmp_path, monkeypatch):
    """Shard 1/2 first (it reports what is missing and writes no result), then 0/2, which finds every
    batch done and writes files identical to the single-process run. Each computed only its own batches."""
    module, name = COMPUTE[command]
    real, seen = getattr(module, name), []

    def count(*args, **kwargs):
        seen.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, count)
    per_batch = 3 if command == "eval" else 1  # eval: one call per condition
    rc, printed = _run(_argv(command, root, tmp_path, "--shard", "1/2"))
    assert rc == 0 and "2 of 4 batches are done, 2 missing (shards 0/2)" in printed, printed
    assert not (tmp_path / FILES[command][0]).exists()
    assert len(seen) == 2 * per_batch  # batches 1 and 3
    rc, printed = _run(_argv(command, root, tmp_path, "--shard", "0/2"))
    assert rc == 0 and len(seen) == 4 * per_batch, printed
    same_files(single, tmp_path, command)
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("*assembling"))


def test_torchrun_environment_selects_the_shard(root, single, tmp_path, monkeypatch):
    """RANK/WORLD_SIZE as torchrun sets them; here three ranks, run in the order 2, 0, 1."""
    for rank in (2, 0, 1):
        monkeypatch.setenv("WORLD_SIZE", "3")
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        rc, printed = _run(_argv("patch", root, tmp_path))
        assert rc == 0, printed
        assert ("missing" in printed) == (rank != 1), printed
    same_files(single, tmp_path, "patch")
    monkeypatch.setenv("RANK", "0")  # a command that does not shard refuses to run under the launcher
    rc, printed = _run(_argv("report", root, tmp_path / "r"))
    # the sharded commands are named (knockout, discovered, among them)
    launch = printed.split("launch mech ", 1)[-1].split(" with torchrun", 1)[0].split(" / ")
    assert rc == 1 and {"eval", "attention", "patch", "contrib", "knockout"} <= set(launch), printed


def test_torchrun_with_two_processes(root, single, tmp_path):
    """The real launcher: two concurrent processes on one output directory (mech's arguments after
    ``--``, else torchrun takes ``--n`` for its own ``--nnodes``)."""
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONPATH=str(Path(__file__).resolve().parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TQDM_DISABLE"):  # the progress bars name the shards
        env.pop(var, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "mech.cli",
        "--",
        *_argv("attention", root, tmp_path),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(shard 0/2)" in done.stdout + done.stderr and "(shard 1/2)" in done.stdout + done.stderr
    same_files(single, tmp_path, "attention")


def test_merge_assembles_without_computing(root, single, tmp_path, monkeypatch):
    """Every shard done, results deleted (as if the last shard died while assembling): `mech merge`
    writes them again, loading no model; a missing batch is an error naming it."""
    for command in FILES:
        for k in (0, 1):
            assert _run(_argv(command, root, tmp_path, "--shard", f"{k}/2"))[0] == 0
        for name in FILES[command]:
            (tmp_path / name).unlink()
    for module, name in COMPUTE.values():
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("mech merge computed a batch"))
    load = mech.load
    loaded = []
    monkeypatch.setattr(mech, "load", lambda *a, **k: loaded.append(a[0]) or load(*a, **k))
    rc, printed = _run(["merge", str(tmp_path)])
    assert rc == 0, printed
    assert loaded == []  # every command assembles from its parts alone
    for command in FILES:
        same_files(single, tmp_path, command)
    (tmp_path / ".patch.parts" / "000002.safetensors").unlink()
    rc, printed = _run(["merge", str(tmp_path)])
    assert rc == 1 and "1 of 4 patch batches are missing (batches 2)" in printed, printed
    rc, printed = _run(["merge", str(tmp_path / "nothing")])
    assert rc == 1 and "no such directory" in printed
    (tmp_path / "empty").mkdir()
    rc, printed = _run(["merge", str(tmp_path / "empty")])
    from mech.runs.jobs import JOBS

    assert rc == 1 and f"no run of mech {', '.join(JOBS)} is recorded there" in printed
    assert "eval, attention, patch, contrib" in printed


def test_a_held_claim_leaves_the_assembly_to_its_holder(root, tmp_path):
    assert _run(_argv("attention", root, tmp_path, "--shard", "0/2"))[0] == 0
    (tmp_path / ".attention.parts" / "assembling").touch()  # another shard is writing the results
    rc, printed = _run(_argv("attention", root, tmp_path, "--shard", "1/2"))
    assert rc == 0 and "another shard is writing the results" in printed
    assert not (tmp_path / "attention.json").exists()
    assert _run(_argv("attention", root, tmp_path))[0] == 0  # one process assembles regardless
    assert (tmp_path / "attention.json").is_file()


@pytest.mark.parametrize(
    "value, phrase",
    [
        ("2/2", "0 <= K < N"),
        ("1", "pass K/N"),
        ("a/b", "pass K/N"),
        ("0/0", "0 <= K < N"),
        ("-1/2", "pass K/N"),
    ],
)
def test_bad_shard_is_refused_with_the_fix(value, phrase, root, tmp_path):
    rc, printed = _run(_argv("attention", root, tmp_path, f"--shard={value}"))
    assert rc == 1 and phrase in printed, printed
    assert not tmp_path.exists() or not list(tmp_path.rglob("*.json"))


def test_shard_selection_and_environment():
    assert [k for k in range(7) if parallel.parse_shard("1/3").mine(k)] == [1, 4]
    cover = [[k for k in range(10) if parallel.Shard(r, 4).mine(k)] for r in range(4)]
    assert sorted(sum(cover, [])) == list(range(10))  # the shards partition the batches
    assert not parallel.MERGE.mine(0) and parallel.WHOLE.mine(5)
    assert parallel.from_env({}) is None and parallel.from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    env = parallel.from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (env.rank, env.world, env.local_rank, env.source) == (3, 4, 1, "env")
    for bad in ({"WORLD_SIZE": "two", "RANK": "0"}, {"WORLD_SIZE": "2"}, {"WORLD_SIZE": "2", "RANK": "2"}):
        with pytest.raises(ConfigError, match="WORLD_SIZE|RANK"):
            parallel.from_env(bad)

    assert parallel.resolve(None, environ={"WORLD_SIZE": "2", "RANK": "1"}) == parallel.Shard(
        1, 2, None, "env"
    )
    # an explicit --shard wins over the environment
    assert parallel.resolve(
        "0/3", environ={"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    ) == parallel.Shard(0, 3, 1, "--shard")
    # a command that does not shard (a step inside mech report) computes every batch
    assert parallel.resolve(None, sharded=False, environ={"WORLD_SIZE": "2", "RANK": "1"}) == parallel.WHOLE


def test_local_rank_picks_the_gpu(monkeypatch):
    shard = parallel.Shard(3, 4, local_rank=1, source="env")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert parallel.device(None, None, shard) is None  # no CUDA: unchanged
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert parallel.device(None, None, shard) == "cuda:1"
    assert parallel.device("cuda:0", None, shard) == "cuda:0"  # an explicit device wins
    assert parallel.device(None, "auto", shard) is None  # accelerate places the model itself


def test_mech_load_passes_device_map(root, monkeypatch):
    import transformers

    cls = transformers.LlavaForConditionalGeneration
    real, seen = cls.from_pretrained.__func__, {}

    def spy(klass, *args, **kwargs):
        seen.update(kwargs)
        return real(klass, *args, **kwargs)

    monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    mech.load(str(root / "model"), device_map="auto")
    assert seen["device_map"] == "auto"


@pytest.fixture(scope="module")
def dispatched(root, tmp_path_factory):
    """The tiny LLaVA dispatched by accelerate (what ``device_map`` does across GPUs; here CPU plus
    decoder layer 1 offloaded to disk, whose weights accelerate's hooks load at each call), and
    the same model loaded plainly."""
    import transformers

    pytest.importorskip("accelerate")
    where = root / "model"
    plain = mech.load(str(where))
    placement = {
        "model.vision_tower": "cpu",
        "model.multi_modal_projector": "cpu",
        "lm_head": "cpu",
        "model.language_model.embed_tokens": "cpu",
        "model.language_model.layers.0": "cpu",
        "model.language_model.layers.1": "disk",
        "model.language_model.norm": "cpu",
        "model.language_model.rotary_emb": "cpu",
    }
    model = transformers.LlavaForConditionalGeneration.from_pretrained(
        where, device_map=placement, offload_folder=str(tmp_path_factory.mktemp("offload"))
    ).eval()
    assert sum(hasattr(x, "_hf_hook") for x in model.modules()) > 0
    assert any(p.device.type == "meta" for p in model.parameters())  # layer 1 lives on disk
    from mech.prepare.data import load_data

    return mech.load((model, plain.processor)), plain, list(load_data(f"jsonl:{root / 'data.jsonl'}", n=3))


A, C = torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10])


def test_instruments_under_accelerate_dispatch_hooks(dispatched):
    """Every instrument gives the plain model's numbers under accelerate's hooks. Several GPUs are
    not testable on this machine."""
    from mech.conditions import condition_inputs
    from mech.measure.knockout import attention_knockout
    from mech.measure.patching.attribution import attribution_patching

    hooked, plain, samples = dispatched
    got, want = {}, {}
    for m, res in ((hooked, got), (plain, want)):
        clean, corrupted = (
            condition_inputs(m, samples, "complete"),
            condition_inputs(m, samples, "white_image"),
        )
        res["logits"] = m.logits(clean)
        res["mass"] = mech.attention_mass(m, clean).mass
        pe = mech.activation_patching(
            m, clean, corrupted, sites=("resid_post", "z"), answer=A, counterfactual=C
        )
        res.update({f"patch.{k}": v for k, v in pe.patched.items()})
        res["knockout"] = attention_knockout(m, clean, window=1, answer=A).change_per_sample
        res["atp"] = attribution_patching(m, clean, corrupted, answer=A, counterfactual=C).patched["attn_out"]
        res["cache"] = mech.run_with_cache(m, clean, ["blocks.1.hook_resid_post"])[1][
            "blocks.1.hook_resid_post"
        ]
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-5, msg=k)
    assert (
        sum(hasattr(x, "_hf_hook") for x in hooked.model.modules()) > 0
    )  # accelerate's hooks are left in place


def test_dla_under_accelerate_offload(dispatched):
    from mech.conditions import condition_inputs
    from mech.measure.dla import direct_logit_attribution

    hooked, plain, samples = dispatched
    got = direct_logit_attribution(hooked, condition_inputs(hooked, samples, "complete"), A, C)
    want = direct_logit_attribution(plain, condition_inputs(plain, samples, "complete"), A, C)
    torch.testing.assert_close(got.attn, want.attn)
