"""mech.measure.knockout.attention_knockout against a hand-written eager oracle, plus invariants.

Oracle: the same weights loaded with ``attn_implementation="eager"``; a forward pre-hook on each
window layer's ``self_attn`` edits ``kwargs["attention_mask"]`` (the 4-D additive mask eager
attention adds before the softmax) by explicit loops over rows, target and source positions; a full
forward (no prefix reuse, no registry) gives the answer probability. A query's own key is blocked only
by the source ``"last"`` (Zhang et al.'s ``Last->Last``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import mech
import mech.measure.knockout as K
from mech.engines.attention_fn import decoder_configs
from mech.errors import ConfigError
from mech.measure.knockout import attention_knockout, blocking
from mech.testing.tiny import tiny_inputs, tiny_model
from mech.testing.tolerance import probability_rel_bound

EDGES = [
    ("image", "last"),
    ("text", "last"),
    ("image", "text"),
    ("text", "text"),
    [("image", "last"), ("bos", "last")],
    ("last", "last"),
]


def _load(family, attn="sdpa"):
    model, proc = tiny_model(family, attn_implementation=attn)
    return mech.load((model, proc)), proc


def _positions(groups, name, row):
    if name == "last":
        return [int(groups.last()[row])]
    return groups.positions(name, row).tolist()


def _oracle(m_eager, inp, edge_set, layers, answer):
    """Answer probability ``[batch]`` with the edges blocked by editing eager's mask by hand."""
    groups = inp.groups
    edge_set = [edge_set] if isinstance(edge_set, tuple) else edge_set

    def pre(mod, args, kwargs):
        mask = kwargs.get("attention_mask")
        assert mask is not None and mask.dim() == 4 and mask.dtype.is_floating_point, (
            "eager gets a 4-D float mask"
        )
        mask = mask.clone().expand(groups.labels.shape[0], -1, -1, -1).clone()
        neg = torch.finfo(mask.dtype).min
        for b in range(mask.shape[0]):
            for s, t in edge_set:
                for q in _positions(groups, t, b):
                    for k in _positions(groups, s, b):
                        if k != q or s == "last":  # only the source "last" blocks a query's own key
                            mask[b, :, q, k] = neg
        return args, {**kwargs, "attention_mask": mask}

    handles = [
        m_eager.arch.module(m_eager.model, "attn", l).register_forward_pre_hook(pre, with_kwargs=True)
        for l in layers
    ]
    try:
        with torch.no_grad():
            logits = m_eager.model(**inp).logits
    finally:
        for h in handles:
            h.remove()
    last = logits[torch.arange(logits.shape[0]), groups.last()].float()
    return last.softmax(-1)[torch.arange(len(answer)), answer]


def _registries():
    return set(ALL_ATTENTION_FUNCTIONS._global_mapping), set(ALL_MASK_ATTENTION_FUNCTIONS._global_mapping)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize(
    "family", ["llava", "qwen2_5_vl", "gemma3", "qwen3_vl", "internvl", "idefics3", "paligemma"]
)
def test_knockout_equals_eager_oracle(family, batch):
    m, proc = _load(family)
    me, _ = _load(family, "eager")
    inp = m.inputs(tiny_inputs(family, proc, batch=batch))
    if batch == 2:
        assert (inp["attention_mask"] == 0).any(), "the batch must contain padding"
    n = m.arch.n_layers
    for window, anchor in [(1, "start"), (2, "start"), (3, "center")]:
        res = attention_knockout(m, inp, edges=EDGES, window=window, anchor=anchor, max_rows=4)
        with torch.no_grad():
            clean = me.model(**inp).logits[torch.arange(batch), inp.groups.last()].float().softmax(-1)
        rel = probability_rel_bound(m, inp)  # SDPA (mech) and eager (the oracle) round differently
        want = clean[torch.arange(batch), res.answer]
        assert ((res.p_clean - want).abs() <= rel * want).all(), (res.p_clean, want, rel)
        for wi, l in enumerate(res.layers):
            lo, hi = (
                (l, min(n, l + window))
                if anchor == "start"
                else (max(0, l - window // 2), min(n, l + (window + 1) // 2))
            )
            assert res.windows[wi] == (lo, hi)
            for ei, edge in enumerate(EDGES):
                want = _oracle(me, inp, edge, range(lo, hi), res.answer)
                err = ((res.p_knocked[wi, ei] - want).abs() / want).max().item()
                assert err <= rel, (family, window, anchor, l, edge, err, rel)
        expect = 100 * (res.p_knocked - res.p_clean) / res.p_clean
        assert torch.allclose(res.change_per_sample, expect)
        assert torch.allclose(res.change, expect.mean(-1))
    # the knockout changes something somewhere (the oracle comparison is not vacuous)
    assert res.change.abs().max() > 1e-3


def test_empty_edge_changes_nothing_and_restores():
    m, proc = _load("llava")
    inp = m.inputs(tiny_inputs("llava", proc, batch=2))
    before = _registries()
    impl = [c._attn_implementation_internal for c in decoder_configs(m)]
    res = attention_knockout(m, inp, edges=[("video", "last"), ("audio", "text")], window=2)
    assert (res.n_source == 0).all()
    rel = probability_rel_bound(m, inp)  # the knocked runs are stacked: other shapes, other rounding
    assert ((res.p_knocked - res.p_clean).abs() <= rel * res.p_clean).all()
    assert res.change.abs().max() <= 100 * rel  # percent
    assert _registries() == before
    assert [c._attn_implementation_internal for c in decoder_configs(m)] == impl


def test_restored_after_exception(monkeypatch):
    m, proc = _load("qwen2_5_vl")
    inp = m.inputs(tiny_inputs("qwen2_5_vl", proc))
    before = _registries()
    impl = [c._attn_implementation_internal for c in decoder_configs(m)]
    pairs = [(inp.groups.mask("image"), inp.groups.mask("text"))]
    with pytest.raises(RuntimeError, match="boom"):
        with blocking(m, pairs, torch.ones(1, m.arch.n_layers, dtype=torch.bool)):
            assert _registries() != before
            raise RuntimeError("boom")
    assert _registries() == before
    assert [c._attn_implementation_internal for c in decoder_configs(m)] == impl

    def fail(*a, **k):
        raise RuntimeError("boom in forward")

    monkeypatch.setattr(K, "run_from", fail)
    with pytest.raises(RuntimeError, match="boom in forward"):
        attention_knockout(m, inp, edges=[("image", "last")], window=1)
    assert _registries() == before
    assert [c._attn_implementation_internal for c in decoder_configs(m)] == impl
    assert all(
        not l._forward_pre_hooks and not l._forward_hooks
        for l in (m.arch.module(m.model, "layer", i) for i in range(m.arch.n_layers))
    )


def test_blocker_is_called_only_in_the_window():
    m, proc = _load("qwen3_vl")  # 3 layers
    inp = m.inputs(tiny_inputs("qwen3_vl", proc))
    pairs = [(inp.groups.mask("image"), inp.groups.mask("text"))]
    active = torch.tensor([[False, True, False]])
    with torch.no_grad(), blocking(m, pairs, active) as blocker:
        m.model(**inp)
    assert blocker.calls == {1: 1}


def test_validation():
    m, proc = _load("llava")
    inp = m.inputs(tiny_inputs("llava", proc))
    for edges in ([("pixels", "last")], [("last", "pixels")], ["image"], []):
        with pytest.raises(ConfigError):
            attention_knockout(m, inp, edges=edges, window=1)
    # a source "last" is allowed; for earlier queries the answer position is a future key: nothing changes
    res = attention_knockout(m, inp, edges=[("last", "text")], window=1)
    rel = probability_rel_bound(m, inp)
    assert ((res.p_knocked - res.p_clean).abs() <= rel * res.p_clean).all() and res.anchor == "center"
    with pytest.raises(ConfigError, match="gold_ids"):
        attention_knockout(m, inp, window=1, only_correct=True)
    with pytest.raises(ConfigError, match="anchor"):
        attention_knockout(m, inp, window=1, anchor="middle")
    with pytest.raises(ConfigError, match="window"):
        attention_knockout(m, inp, window=0)
    with pytest.raises(ConfigError, match="out of range"):
        attention_knockout(m, inp, window=1, layers=[5])


ORGANISMS = Path(mech.__file__).parent / "organisms"


@pytest.mark.skipif(
    not all((ORGANISMS / n / "model.safetensors").exists() for n in ("balanced", "text-biased")),
    reason="organism weights not trained yet",
)
def test_organisms_image_edges_matter_more_for_balanced():
    """Blocking every edge out of the image in all layers hurts the balanced organism's answer more."""
    from mech.organisms import shapes

    drops = {}
    samples = shapes.generate(16, split="test", seed=0)
    for name in ("balanced", "text-biased"):
        m = mech.load(f"organism:{name}")
        inp = m.prepare([s["image"] for s in samples], [s["question"] for s in samples])
        res = attention_knockout(
            m,
            inp,
            edges=[[("image", "text"), ("image", "last"), ("image", "template")]],
            window=m.arch.n_layers,
            layers=[0],
        )
        drops[name] = -float(res.change[0, 0])
    assert drops["balanced"] > drops["text-biased"], drops
