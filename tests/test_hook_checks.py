"""Hooks check what they are given (issue 25, item 4): the calling convention ``fn(x, hook=point)`` of
TransformerLens, what a hook returns, a raw Hugging Face model given to a verb, and that nothing stays
registered after any of these failures (counted on every module of the model)."""

import pytest
import torch

import mech
from mech.engines.hooks import HOOK_POINTS, hooks, run_with_cache, run_with_hooks, valid_names
from mech.errors import ConfigError, HookError, MechError, SpecError
from mech.testing.tiny import tiny_inputs, tiny_model

POST = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def llava():
    model, proc = tiny_model("llava")
    m = mech.load((model, proc))
    inputs = m.inputs(tiny_inputs("llava", proc, batch=2))
    m.logits(inputs)  # transformers installs its own output-recording hooks at the first forward
    return m, inputs


def _n_hooks(model):
    return sum(len(mod._forward_hooks) + len(mod._forward_pre_hooks) for mod in model.modules())


def _refused(m, inputs, fwd_hooks, match, error=HookError):
    """``run_with_hooks`` raises ``error`` matching ``match``, and every hook mech added is gone."""
    before = _n_hooks(m.model)
    with pytest.raises(error, match=match) as info:
        run_with_hooks(m, inputs, fwd_hooks=fwd_hooks)
    assert _n_hooks(m.model) == before  # the scoping invariant, after a failing hook
    return str(info.value)


def test_wrong_shape_names_point_and_both_shapes(llava):
    m, inputs = llava
    b, p, d = inputs["input_ids"].shape + (m.arch.d_model,)
    msg = _refused(m, inputs, [(POST, lambda x, hook: x[..., :-1])], "returned shape")
    assert POST in msg and f"({b}, {p}, {d - 1})" in msg and f"({b}, {p}, {d}) [batch, pos, d_model]" in msg
    assert "or None" in msg  # the fix
    z = "blocks.0.attn.hook_z"
    msg = _refused(m, inputs, [(z, lambda x, hook: x.flatten(-2))], "returned shape")
    assert z in msg and f"({b}, {p}, {m.arch.n_heads}, {m.arch.d_head}) [batch, pos, head, d_head]" in msg


@pytest.mark.parametrize("value", [(0,), 1.0, "x", [None]], ids=["tuple", "float", "str", "list"])
def test_non_tensor_names_the_type(llava, value):
    m, inputs = llava
    msg = _refused(m, inputs, [("blocks.0.hook_mlp_out", lambda x, hook: value)], type(value).__name__)
    assert "blocks.0.hook_mlp_out" in msg and "or None" in msg


def test_wrong_dtype_and_device_are_refused_not_cast(llava):
    m, inputs = llava
    msg = _refused(m, inputs, [(POST, lambda x, hook: x.double())], "dtype torch.float64")
    assert "torch.float32" in msg and ".to(x.dtype)" in msg
    msg = _refused(m, inputs, [(POST, lambda x, hook: torch.empty_like(x, device="meta"))], "on meta")
    assert ".to(x.device)" in msg


def test_none_leaves_the_activation(llava):
    m, inputs = llava
    seen = []

    def look(x, hook):
        seen.append(hook.name)

    got = run_with_hooks(m, inputs, fwd_hooks=[(n, look) for n in valid_names(m)])
    torch.testing.assert_close(got, m.logits(inputs), rtol=0, atol=0)
    assert sorted(seen) == sorted(valid_names(m))  # every point fired, once


def test_keyword_only_hook_and_canonical_name(llava):
    m, inputs = llava
    seen = []

    def tl_style(x, *, hook):  # TransformerLens calls hook(x, hook=point)
        seen.append(hook)
        return x

    def positional(x, h, /):  # a second parameter of another name still works (called positionally)
        seen.append(h)

    got = run_with_hooks(
        m, inputs, fwd_hooks=[(POST, tl_style), (POST, positional), (POST, lambda x, h: None)]
    )
    torch.testing.assert_close(got, m.logits(inputs), rtol=0, atol=0)
    assert [h.name for h in seen] == [POST, POST] and seen[0].layer == 1 and seen[0].site == "hook_resid_post"
    with pytest.raises(ConfigError, match=r"blocks\.1\.hook_resid_post"):
        run_with_hooks(m, inputs, fwd_hooks=[("blocks.01.hook_resid_post", tl_style)])


def test_unusable_functions_refused_before_anything_is_registered(llava):
    m, inputs = llava
    ok = (POST, lambda x, hook: x)
    _refused(m, inputs, [ok, ("blocks.0.hook_mlp_out", lambda x: x)], "def fn\\(x, hook\\)")
    _refused(m, inputs, [ok, ("blocks.0.hook_mlp_out", lambda x, *, other: x)], "hook_mlp_out")
    _refused(m, inputs, [ok, ("blocks.0.hook_mlp_out", 3)], "not a function")
    _refused(m, inputs, {POST: ok[1]}, "list of \\(name, fn\\) pairs")
    _refused(m, inputs, [(POST, ok[1], "extra")], "pairs")
    with pytest.raises(HookError):
        run_with_cache(m, inputs, names=[POST], fwd_hooks=[(POST,)])


def test_raw_hf_model_refused_with_the_fix(llava):
    m, inputs = llava
    before = _n_hooks(m.model)
    raw = m.model
    verbs = [
        lambda: mech.run_with_hooks(raw, inputs, fwd_hooks=[(POST, lambda x, hook: x)]),
        lambda: mech.run_with_cache(raw, inputs, names=[POST]),
        lambda: mech.attention_mass(raw, inputs),
        lambda: mech.activation_patching(raw, inputs, inputs),
        lambda: mech.attribution_patching(raw, inputs, inputs),
        lambda: mech.attention_knockout(raw, inputs),
        lambda: valid_names(raw),
        lambda: hooks(raw, [(POST, lambda x, hook: x)]).__enter__(),
    ]
    for verb in verbs:
        with pytest.raises(
            SpecError, match=r"LlavaForConditionalGeneration.*m = mech\.load\(\(model, processor\)\)"
        ):
            verb()
    assert _n_hooks(m.model) == before
    with pytest.raises(MechError, match="got a int"):
        mech.run_with_hooks(3, inputs)
    # the fix works: the pair is wrapped by the same verb (mech.load accepts it)
    torch.testing.assert_close(
        mech.run_with_hooks((raw, m.processor), inputs), m.logits(inputs), rtol=0, atol=0
    )


@pytest.mark.parametrize("family", ["llava", "gemma3", "qwen2_5_vl"])
def test_constant_added_to_resid_post_matches_hand_written_hook(family):
    """Oracle: ``x + c`` at ``blocks.L.hook_resid_post`` is the layer output plus ``c``, read and
    written by a plain ``register_forward_hook`` on decoder layer L; the same additions, so equal exactly."""
    model, proc = tiny_model(family)
    m = mech.load((model, proc))
    inputs = m.inputs(tiny_inputs(family, proc, batch=2))
    layer = next(l for l in range(m.arch.n_layers) if l not in m.arch.injection_layers)
    c = 0.25

    def plain(mod, args, out):
        return (out[0] + c,) + tuple(out[1:]) if isinstance(out, tuple) else out + c

    h = m.arch.module(m.model, "layer", layer).register_forward_hook(plain)
    try:
        with torch.no_grad():
            ref = m.model(**inputs).logits
    finally:
        h.remove()
    got = run_with_hooks(m, inputs, fwd_hooks=[(f"blocks.{layer}.hook_resid_post", lambda x, hook: x + c)])
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    assert not torch.equal(got, m.logits(inputs))  # the constant did change the logits


def test_extra_registry_points_are_checked_too(llava):
    """A point added with ``with_point`` gets the same calling convention and checks."""
    m, inputs = llava
    from mech.measure.repair.edits import POINTS

    name = "blocks.0.mlp.hook_post"
    assert name not in valid_names(m) and name in POINTS.valid_names(m.arch.n_layers)
    before = _n_hooks(m.model)
    with pytest.raises(HookError, match=r"blocks\.0\.mlp\.hook_post.*returned shape"):
        run_with_hooks(m, inputs, fwd_hooks=[(name, lambda x, *, hook: x[..., :1])], points=POINTS)
    assert _n_hooks(m.model) == before and HOOK_POINTS.resolve(POST, m.arch.n_layers).name == POST
