"""mech.engines.hooks: TransformerLens hook names on tiny models, checked against hand-written torch hooks."""

import pytest
import torch

import mech
from mech.engines.hooks import run_with_cache, run_with_hooks, valid_names
from mech.errors import ConfigError
from mech.testing.tiny import tiny_inputs, tiny_model
from mech.testing.tolerance import assert_close_scaled, unembed_scale

FAMILIES = ["llava", "qwen2_5_vl", "qwen3_vl", "gemma3", "idefics3", "internvl"]


def _load(family):
    model, proc = tiny_model(family)
    m = mech.load((model, proc))
    return m, m.inputs(tiny_inputs(family, proc, batch=2))


def _oracle(m, inputs):
    """Activations read with hand-written register_forward_(pre_)hook calls."""
    got, handles = {}, []
    layers = m.arch.module(m.model, "layers")

    def keep(key, kind):
        def pre(mod, args, kwargs):
            got[key] = (args[0] if args else kwargs.get("hidden_states", kwargs.get("input"))).detach()

        def post(mod, args, out):
            got[key] = (out[0] if isinstance(out, tuple) else out).detach()

        return pre if kind == "pre" else post

    for l, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(keep(("in", l), "pre"), with_kwargs=True))
        handles.append(layer.register_forward_hook(keep(("out", l), "post")))
        handles.append(layer.self_attn.register_forward_hook(keep(("attn", l), "post")))
        handles.append(layer.mlp.register_forward_hook(keep(("mlp", l), "post")))
        handles.append(
            layer.self_attn.o_proj.register_forward_pre_hook(keep(("z", l), "pre"), with_kwargs=True)
        )
    handles.append(m.arch.module(m.model, "ln_final").register_forward_hook(keep("norm", "post")))
    try:
        with torch.no_grad():
            logits = m.model(**inputs).logits
    finally:
        for h in handles:
            h.remove()
    return logits, got


@pytest.mark.parametrize("family", FAMILIES)
def test_cache_matches_hand_written_hooks(family):
    m, inputs = _load(family)
    ref_logits, ref = _oracle(m, inputs)
    logits, cache = run_with_cache(m, inputs)
    n, heads, d_head = m.arch.n_layers, m.arch.n_heads, m.arch.d_head
    assert set(cache) == set(valid_names(m))
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)
    torch.testing.assert_close(cache["hook_embed"], ref[("in", 0)])
    torch.testing.assert_close(cache["ln_final.hook_normalized"], ref["norm"])
    for l in range(n):
        b = f"blocks.{l}."
        torch.testing.assert_close(cache[b + "hook_resid_pre"], ref[("in", l)])
        torch.testing.assert_close(cache[b + "hook_attn_out"], ref[("attn", l)])
        torch.testing.assert_close(cache[b + "hook_mlp_out"], ref[("mlp", l)])
        z = cache[b + "attn.hook_z"]
        assert z.shape == (*ref[("in", l)].shape[:2], heads, d_head)
        torch.testing.assert_close(z.flatten(-2), ref[("z", l)])
        nxt = ref[("in", l + 1)] if l + 1 < n else None
        post = cache[b + "hook_resid_post"]
        if nxt is not None:  # resid_post is what the next layer receives (deepstack included)
            torch.testing.assert_close(post, nxt)
        if l not in m.arch.injection_layers:
            torch.testing.assert_close(post, ref[("out", l)])
        # resid_mid: resid_pre + attn_out (Gemma3: + post_attention_layernorm(attn_out))
        layer = m.arch.module(m.model, "layer", l)
        attn = ref[("attn", l)]
        if hasattr(layer, "pre_feedforward_layernorm"):
            with torch.no_grad():
                attn = layer.post_attention_layernorm(attn)
        # one fp32 addition, done by the model and by hand: at most one rounding at |pre| + |attn|
        assert_close_scaled(
            cache[b + "hook_resid_mid"],
            ref[("in", l)] + attn,
            n=1,
            dtype=torch.float32,
            scale=float((ref[("in", l)].abs() + attn.abs()).max()),
        )


def test_deepstack_resid_post_is_next_layer_input():
    m, inputs = _load("qwen3_vl")
    assert m.arch.injection_layers == (0, 1)
    _, ref = _oracle(m, inputs)
    _, cache = run_with_cache(m, inputs, names=["blocks.0.hook_resid_post"])
    image = inputs.groups.mask("image")
    diff = (cache["blocks.0.hook_resid_post"] - ref[("out", 0)]).abs().amax(-1)
    assert float(diff[image].min()) > 0 and float(diff[~image].max()) == 0.0


@pytest.mark.parametrize("family", ["llava", "gemma3", "qwen3_vl"])
def test_run_with_hooks_matches_hand_written_patch(family):
    m, inputs = _load(family)
    l = 0
    layer = m.arch.module(m.model, "layer", l)
    # oracle: zero the text positions of layer 0's mlp output with a plain forward hook
    text = inputs.groups.mask("text")

    def zero(x):
        x = x.clone()
        x[text] = 0
        return x

    h = layer.mlp.register_forward_hook(lambda mod, a, out: zero(out))
    try:
        with torch.no_grad():
            ref = m.model(**inputs).logits
    finally:
        h.remove()
    seen = []

    def fn(x, hook):
        seen.append(hook.name)
        return zero(x)

    got = run_with_hooks(m, inputs, fwd_hooks=[(f"blocks.{l}.hook_mlp_out", fn)])
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    assert seen == [f"blocks.{l}.hook_mlp_out"]
    # None leaves the activation as it is
    plain = run_with_hooks(m, inputs, fwd_hooks=[("blocks.1.hook_resid_post", lambda x, hook: None)])
    torch.testing.assert_close(plain, m.logits(inputs), rtol=0, atol=0)


def _n_hooks(model):
    return sum(len(mod._forward_hooks) + len(mod._forward_pre_hooks) for mod in model.modules())


def test_hooks_removed_after_exception_and_others_kept():
    m, inputs = _load("llava")
    m.logits(inputs)  # transformers installs its own output-recording hooks at the first forward
    foreign = m.arch.module(m.model, "layer", 0).register_forward_hook(lambda *a: None)
    before = _n_hooks(m.model)

    def boom(x, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_with_hooks(
            m,
            inputs,
            fwd_hooks=[("blocks.0.hook_resid_mid", lambda x, h: x + 1), ("blocks.1.attn.hook_z", boom)],
        )
    assert _n_hooks(m.model) == before
    foreign.remove()


def test_resid_mid_replacement_carries_to_residual():
    """Adding v to resid_mid adds v to the MLP input and to the residual (hand-written oracle)."""
    m, inputs = _load("llava")
    layer = m.arch.module(m.model, "layer", 0)
    v = torch.randn(m.arch.d_model) * 0.1

    h1 = layer.post_attention_layernorm.register_forward_pre_hook(lambda mod, a: (a[0] + v,))
    h2 = layer.register_forward_hook(lambda mod, a, out: out + v)
    try:
        with torch.no_grad():
            ref = m.model(**inputs).logits
    finally:
        h1.remove()
        h2.remove()
    got = run_with_hooks(m, inputs, fwd_hooks=[("blocks.0.hook_resid_mid", lambda x, hook: x + v)])
    # v added at another point of the same sum: rounding through the layers and the unembedding
    assert_close_scaled(
        got,
        ref,
        n=m.arch.n_layers * (m.arch.d_model + inputs["input_ids"].shape[1]),
        dtype=torch.float32,
        scale=unembed_scale(m, inputs),
    )


def test_unknown_hook_name_lists_valid():
    m, inputs = _load("llava")
    with pytest.raises(ConfigError, match="hook_resid_post"):
        run_with_cache(m, inputs, names=["blocks.0.hook_nonsense"])
    with pytest.raises(ConfigError, match="out of range"):
        run_with_cache(m, inputs, names=["blocks.9.hook_resid_pre"])
