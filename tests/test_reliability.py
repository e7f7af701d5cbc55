"""Reliability (issue 8): an exception inside any instrument leaves the model exactly as it was.
Same seed -> same JSON and ``kill -9`` + rerun: ``test_resume.py``; bad inputs: ``test_bad_inputs.py``.

The state checked after each injected exception (:func:`snapshot`): every module's hook dicts
(forward, pre, with-kwargs, always-called, backward) including a foreign hook registered here, the
global module hooks, every config's ``_attn_implementation``, the keys of transformers' attention and
mask registries, ``requires_grad`` and ``.grad`` of every parameter, train/eval flags, the
tokenizer's padding side, grad mode; and the logits, equal to those before to the last bit.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.masking_utils import AttentionMaskInterface
from transformers.modeling_utils import AttentionInterface

import mech
import mech.cli
import mech.measure.evaluation.run
import mech.results
from mech.conditions import condition_inputs, feature_condition
from mech.curves import modality_contributions
from mech.engines.attention_fn import MassRecorder
from mech.measure.dla import ValueSplitRecorder, direct_logit_attribution
from mech.measure.evaluation import evaluate
from mech.measure.knockout import EdgeBlocker, attention_knockout
from mech.measure.patching import activation_patching
from mech.measure.patching.attribution import attribution_patching
from mech.testing.tiny import tiny_model

HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_hooks",
    "_backward_pre_hooks",
)
GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
    "_global_forward_hooks_with_kwargs",
)


class Boom(Exception):  # the injected failure (deliberately not a MechError: nothing may swallow it)
    pass


def _configs(model) -> list:
    seen, out = set(), []
    stack = [model.config] + [getattr(mod, "config", None) for mod in model.modules()]
    while stack:
        c = stack.pop()
        if c is None or id(c) in seen or not hasattr(c, "_attn_implementation_internal"):
            continue
        seen.add(id(c))
        out.append(c)
        stack += [getattr(c, k, None) for k in getattr(c, "sub_configs", {})]
    return out


def snapshot(m) -> dict:
    import torch.nn.modules.module as tm

    return {
        "hooks": {
            name: {d: tuple(getattr(mod, d).items()) for d in HOOK_DICTS}
            for name, mod in m.model.named_modules()
        },
        "global_hooks": {g: tuple(getattr(tm, g).items()) for g in GLOBAL_HOOKS if hasattr(tm, g)},
        "attn": [(id(c), c._attn_implementation_internal) for c in _configs(m.model)],
        "registries": (
            sorted(AttentionInterface._global_mapping),
            sorted(AttentionMaskInterface._global_mapping),
        ),
        "requires_grad": [p.requires_grad for p in m.model.parameters()],
        "grads": [p.grad is None for p in m.model.parameters()],
        "training": [mod.training for mod in m.model.modules()],
        "padding_side": m.tokenizer.padding_side,
        "grad_mode": torch.is_grad_enabled(),
    }


class Bomb:
    """A foreign forward pre-hook on the last layer's MLP that raises :class:`Boom` at its ``at``-th call."""

    def __init__(self, m):
        self.at, self.calls = None, 0
        self.handle = m.arch.module(m.model, "mlp", m.arch.n_layers - 1).register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.calls += 1
        if self.at is not None and self.calls == self.at:
            raise Boom(f"injected at call {self.calls}")


@pytest.fixture(scope="module")
def env():
    m = mech.load(tiny_model("llava"))
    rng = np.random.default_rng(0)
    samples = [
        dict(
            id=f"s{i}",
            question=q,
            images=[Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))],
            options=["red", "blue", "green"],
            answer="ABC"[i],
            prompt_style="bare",
        )
        for i, q in enumerate(["what colour is the shape ?", "which shape is in the image ?", "what is it ?"])
    ]
    clean = condition_inputs(m, samples, "complete")
    corrupted = condition_inputs(m, samples, "white_image")
    # foreign hooks that must survive every failure: one on a module mech hooks, one with kwargs
    foreign = [
        m.arch.module(m.model, "layer", 0).register_forward_hook(lambda mod, a, out: None),
        m.arch.module(m.model, "attn", 1).register_forward_pre_hook(lambda mod, a, k: None, with_kwargs=True),
    ]
    bomb = Bomb(m)
    with torch.no_grad():
        logits = m.model(**clean).logits.clone()
    yield m, samples, clean, corrupted, bomb, logits
    for h in foreign + [bomb.handle]:
        h.remove()


a_ids, cf_ids = torch.tensor([100, 101, 102]), torch.tensor([110, 111, 112])

# instrument name -> run(m, samples, clean, corrupted, tmp_path); each registers hooks, attention
# functions, feature corruption or frozen parameters while the model runs
INSTRUMENTS = {
    "attention_mass": lambda m, s, c, k, t: mech.attention_mass(m, c, query="text"),
    "activation_patching": lambda m, s, c, k, t: activation_patching(
        m,
        c,
        c,
        sites=["resid_post", "attn_out", "z"],
        positions=["image", "last"],
        condition="visual_noise",
        answer=a_ids,
        counterfactual=cf_ids,
        normalize=False,
    ),
    "attention_knockout": lambda m, s, c, k, t: attention_knockout(
        m, c, edges=[("image", "last"), ("text", "last")], window=1
    ),
    "attribution_patching": lambda m, s, c, k, t: attribution_patching(
        m, c, k, sites=["resid_pre", "z"], answer=a_ids, counterfactual=cf_ids
    ),
    "dla": lambda m, s, c, k, t: direct_logit_attribution(m, c, a_ids, cf_ids),
    "modality_contributions": lambda m, s, c, k, t: modality_contributions(m, c, a_ids, cf_ids),
    "feature_condition": lambda m, s, c, k, t: _corrupted_forward(m, c),
    "run_with_cache": lambda m, s, c, k, t: mech.run_with_cache(m, c),
    "evaluate": lambda m, s, c, k, t: evaluate(
        m, s, conditions=("complete", "visual_noise", "white_image"), batch_size=2, progress=False
    ),
}


def _corrupted_forward(m, inputs):
    with torch.no_grad(), feature_condition(m, inputs, "visual_mean"):
        return m.model(**inputs).logits


def _check_restored(m, before, clean, logits):
    after = snapshot(m)
    for key in before:
        assert after[key] == before[key], f"{key} changed by the failed call"
    with torch.no_grad():
        assert torch.equal(m.model(**clean).logits, logits)


@pytest.mark.parametrize("name", list(INSTRUMENTS))
def test_exception_in_forward_restores_everything(env, name, tmp_path):
    """The bomb goes off at the first, a middle and the last MLP call of the instrument's runs."""
    m, samples, clean, corrupted, bomb, logits = env
    run = INSTRUMENTS[name]
    before = snapshot(m)
    bomb.at, bomb.calls = None, 0
    run(m, samples, clean, corrupted, tmp_path / "count")
    n = bomb.calls
    assert n >= 1
    _check_restored(m, before, clean, logits)
    try:
        for k in sorted({1, (n + 1) // 2, n}):
            bomb.at, bomb.calls = k, 0
            with pytest.raises(Boom):
                run(m, samples, clean, corrupted, tmp_path / f"k{k}")
            _check_restored(m, before, clean, logits)
    finally:
        bomb.at = None


def _raiser(*args, **kwargs):
    raise Boom("injected")


# (instrument, object, attribute): internal functions called while mech's hooks / attention functions
# / frozen parameters are in place
INTERNAL = [
    ("attention_mass", MassRecorder, "record"),
    ("dla", ValueSplitRecorder, "record"),
    ("attention_knockout", EdgeBlocker, "edited_mask"),
    ("activation_patching", "mech.engines.prefix", "run_from"),
    ("activation_patching", "mech.engines.prefix.H", "first_output"),
    ("attribution_patching", "mech.engines.unembed", "find_hidden"),  # inside the unembedding's pre-hook
    ("attribution_patching", "torch.autograd", "grad"),
    ("modality_contributions", "mech.engines.prefix", "run_from"),
    ("modality_contributions", ValueSplitRecorder, "record"),
    ("evaluate", "mech.measure.evaluation.answering", "feature_condition"),
    ("evaluate", "mech.measure.evaluation.run", "is_correct"),
    ("evaluate", "mech.measure.evaluation.run", "answer_rows"),
]


@pytest.mark.parametrize("name,target,attr", INTERNAL, ids=[f"{n}-{a}" for n, _, a in INTERNAL])
def test_exception_in_internal_function_restores_everything(env, name, target, attr, monkeypatch, tmp_path):
    m, samples, clean, corrupted, bomb, logits = env
    before = snapshot(m)
    if attr == "feature_condition":  # the corruption's own hook raises inside the forward
        import mech.measure.evaluation.answering as answering

        def bad(m_, inputs, condition, **kw):
            cm = feature_condition(m_, inputs, condition, **kw)
            if condition == "visual_noise":
                monkeypatch.setattr(torch.Tensor, "std", _raiser)
            return cm

        monkeypatch.setattr(answering, "feature_condition", bad)
    elif isinstance(target, str):
        monkeypatch.setattr(f"{target}.{attr}", _raiser)
    else:
        monkeypatch.setattr(target, attr, _raiser)
    with pytest.raises(Boom):
        INSTRUMENTS[name](m, samples, clean, corrupted, tmp_path)
    monkeypatch.undo()
    _check_restored(m, before, clean, logits)


def test_user_hook_raising(env):
    m, samples, clean, corrupted, bomb, logits = env
    before = snapshot(m)

    def hook(x, point):
        raise Boom(point.name)

    for names in (["blocks.1.hook_resid_mid"], ["blocks.0.attn.hook_z", "blocks.1.hook_resid_post"]):
        with pytest.raises(Boom):
            mech.run_with_hooks(
                m, clean, [("blocks.0.hook_resid_pre", lambda x, p: x)] + [(n, hook) for n in names]
            )
        _check_restored(m, before, clean, logits)
        with pytest.raises(Boom):  # caching hooks registered after the raising user hook
            mech.run_with_cache(m, clean, fwd_hooks=[(n, hook) for n in names])
        _check_restored(m, before, clean, logits)
    with pytest.raises(mech.MechError):  # a bad name after valid ones: nothing registered at all
        mech.run_with_hooks(m, clean, [("blocks.0.hook_resid_pre", hook), ("blocks.0.bogus", hook)])
    _check_restored(m, before, clean, logits)


def test_writer_raising_midway_leaves_no_file(env, monkeypatch, tmp_path):
    """A writer dying halfway (disk full) leaves neither the result file nor its temporary file, and a
    parts writer dying mid-run leaves parts a rerun resumes from to the uninterrupted result."""
    m, samples, clean, corrupted, bomb, logits = env
    before = snapshot(m)
    real_save = mech.results.save_file

    def half_then_fail(data, path, metadata=None):
        real_save(data, path, metadata=metadata)
        with open(path, "r+b") as fh:
            fh.truncate(os.path.getsize(path) // 2)
        raise Boom("disk full")

    monkeypatch.setattr(mech.results, "save_file", half_then_fail)
    monkeypatch.setattr(mech, "load", lambda *a, **k: m)
    out = tmp_path / "att"
    assert (
        mech.cli.main(
            ["attention", "--model", "tiny", "--data", "organism:shapes", "--n", "2", "--out", str(out)]
        )
        == mech.cli.BUG
    )  # an exception not mech's: one line, exit 3
    assert not out.exists() or not [p.name for p in out.iterdir() if p.suffix != ".png"]
    ok = mech.results.write_json(tmp_path / "r.json", {"a": 1})  # result files get the umask's permissions
    mask = os.umask(0)
    os.umask(mask)
    assert ok.stat().st_mode & 0o777 == 0o666 & ~mask
    monkeypatch.undo()
    _check_restored(m, before, clean, logits)

    # the run loop's parts writer dying midway (mech eval): the rerun resumes to the uninterrupted bytes
    from mech.measure.evaluation import EvalJob
    from mech.prepare.data import Dataset
    from mech.runs import EvalSettings, run

    class InMemory(EvalJob):
        def samples(self):
            return Dataset("mem", samples, default_style="bare", scoring="option_text")

    settings = EvalSettings(
        model="tiny",
        data="mem",
        n=3,
        conditions=("complete", "white_image"),
        batch_size=1,
        progress=False,
        out=str(tmp_path / "full"),
    )
    run(InMemory(settings), model=m)
    calls = {"n": 0}

    def second_fails(data, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:
            half_then_fail(data, path, metadata)
        real_save(data, path, metadata=metadata)

    monkeypatch.setattr(mech.results, "save_file", second_fails)
    killed = settings.replace(out=str(tmp_path / "killed"))
    with pytest.raises(Boom):
        run(InMemory(killed), model=m)
    monkeypatch.undo()
    _check_restored(m, before, clean, logits)
    assert not list((tmp_path / "killed").rglob("*.tmp")) and not (tmp_path / "killed" / "eval.json").exists()
    assert len(list((tmp_path / "killed" / ".eval.parts").glob("*.safetensors"))) == 1
    run(InMemory(killed), model=m)
    for name in ("eval.json", "eval.safetensors", "eval.md"):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "killed" / name).read_bytes(), name
