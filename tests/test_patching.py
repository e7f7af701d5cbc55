"""mech.activation_patching against hand-written register_forward_hook patching, TransformerLens and invariants."""

import numpy as np
import pytest
import torch
from PIL import Image

import mech
from mech.errors import ConfigError, InputError, MechError
from mech.measure.patching import activation_patching
from mech.testing.tiny import IMAGE_SIZES, tiny_model

PROMPTS = ["what colour is the shape ?", "please what colour is the shape on the left ?"]


def _setup(family, attn="sdpa"):
    model, proc = tiny_model(family, attn_implementation=attn)
    m = mech.load((model, proc))
    size = IMAGE_SIZES[family]
    rng = np.random.default_rng(0)
    # Gemma3's processor rejects a flat image list for a batch in m.prepare (reported); one row there
    prompts = PROMPTS[:1] if family == "gemma3" else PROMPTS
    imgs = [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in prompts]
    white = [Image.new("RGB", size, (255, 255, 255)) for _ in prompts]
    clean, corrupted = m.inputs(m.prepare(imgs, prompts)), m.inputs(m.prepare(white, prompts))
    if family == "gemma3":
        # the tiny Gemma3's logits do not depend on the image (reported); corrupt one word instead
        corrupted = m.inputs(m.prepare(imgs, [p.replace("shape", "colour") for p in prompts]))
    return m, clean, corrupted


def _last(logits, inputs):
    return logits[torch.arange(logits.shape[0]), inputs.groups.last()].float()


def _targets(m, clean, corrupted):
    c, k = _last(m.logits(clean), clean), _last(m.logits(corrupted), corrupted)
    a = c.argmax(-1)
    k[torch.arange(len(a)), a] = -torch.inf
    return a, k.argmax(-1)


def _module_for(m, site, layer):
    """(module, kind) where the hand-written hook goes."""
    L = m.arch.module(m.model, "layer", layer)
    if site == "resid_pre":
        return L, "pre"
    if site == "resid_post":
        if layer in m.arch.injection_layers:
            nxt = layer + 1
            return (
                m.arch.module(m.model, "layer", nxt)
                if nxt < m.arch.n_layers
                else m.arch.module(m.model, "ln_final")
            ), "pre"
        return L, "post"
    if site == "attn_out":
        return L.self_attn, "post"
    if site == "mlp_out":
        return L.mlp, "post"
    return L.self_attn.o_proj, "pre"  # z


def _oracle(m, target, source, site, layer, mask, a, c, head=None):
    """Hand-written patching: read the source activation, write it into the target run at ``mask``."""
    mod, kind = _module_for(m, site, layer)
    store = {}

    def get(args, kwargs, out):
        if kind == "pre":
            return args[0] if args else next(v for k, v in kwargs.items() if k in ("hidden_states", "input"))
        return out[0] if isinstance(out, tuple) else out

    def read_pre(md, args, kwargs):
        store["x"] = get(args, kwargs, None).detach().clone()

    def read_post(md, args, out):
        store["x"] = get(args, None, out).detach().clone()

    h = (
        mod.register_forward_pre_hook(read_pre, with_kwargs=True)
        if kind == "pre"
        else mod.register_forward_hook(read_post)
    )
    try:
        with torch.no_grad():
            m.model(**source)
    finally:
        h.remove()
    src = store["x"]

    def patched(x):
        x = x.clone()
        if site == "z":
            d = m.arch.d_head
            sl = slice(head * d, (head + 1) * d)
            x[..., sl][mask] = src[..., sl][mask]
        else:
            x[mask] = src[mask]
        return x

    def write_pre(md, args, kwargs):
        if args:
            return (patched(args[0]),) + args[1:], kwargs
        key = "hidden_states" if "hidden_states" in kwargs else "input"
        return args, {**kwargs, key: patched(kwargs[key])}

    def write_post(md, args, out):
        return (patched(out[0]),) + tuple(out[1:]) if isinstance(out, tuple) else patched(out)

    h = (
        mod.register_forward_pre_hook(write_pre, with_kwargs=True)
        if kind == "pre"
        else mod.register_forward_hook(write_post)
    )
    try:
        with torch.no_grad():
            lg = _last(m.model(**target).logits, target)
    finally:
        h.remove()
    ar = torch.arange(len(a))
    return lg[ar, a] - lg[ar, c]


GROUPS = ("image", "text", "last")


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl", "qwen3_vl", "gemma3", "idefics3"])
def test_denoising_equals_hand_written_hooks(family):
    m, clean, corrupted = _setup(family)
    a, c = _targets(m, clean, corrupted)
    sites = ["resid_pre", "resid_post", "attn_out", "mlp_out", "z"]
    res = activation_patching(m, clean, corrupted, sites=sites, positions=GROUPS, answer=a, counterfactual=c)
    g = corrupted.groups
    masks = {
        "image": g.mask("image"),
        "text": g.mask("text"),
        "last": torch.nn.functional.one_hot(g.last(), g.labels.shape[1]).bool(),
    }
    for site in sites:
        for layer in range(m.arch.n_layers):
            for gi, name in enumerate(GROUPS):
                if site == "z":
                    for head in (0, m.arch.n_heads - 1):
                        want = _oracle(m, corrupted, clean, site, layer, masks[name], a, c, head)
                        torch.testing.assert_close(
                            res.patched[site][layer, head, gi], want, rtol=1e-5, atol=1e-5
                        )
                else:
                    want = _oracle(m, corrupted, clean, site, layer, masks[name], a, c)
                    torch.testing.assert_close(res.patched[site][layer, gi], want, rtol=1e-5, atol=1e-5)
    assert res.effect["resid_post"].shape == (m.arch.n_layers, 3)
    assert res.effect["z"].shape == (m.arch.n_layers, m.arch.n_heads, 3)


def test_noising_equals_hand_written_hooks_and_effect_definition():
    m, clean, corrupted = _setup("llava")
    a, c = _targets(m, clean, corrupted)
    res = activation_patching(
        m,
        clean,
        corrupted,
        sites="resid_pre",
        positions=["image"],
        direction="noising",
        answer=a,
        counterfactual=c,
    )
    for layer in range(m.arch.n_layers):
        want = _oracle(m, clean, corrupted, "resid_pre", layer, clean.groups.mask("image"), a, c)
        torch.testing.assert_close(res.patched["resid_pre"][layer, 0], want, rtol=1e-5, atol=1e-5)
    cm, km = res.clean_metric.mean(), res.corrupted_metric.mean()
    pm = res.patched["resid_pre"][:, 0].mean(-1)
    torch.testing.assert_close(res.effect["resid_pre"][:, 0], (cm - pm) / (cm - km))  # 1 = full damage


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl", "gemma3", "idefics3", "qwen3_vl"])
def test_invariants_clean_to_clean_and_full_resid_pre(family):
    m, clean, corrupted = _setup(family)
    a, c = _targets(m, clean, corrupted)
    same = activation_patching(
        m,
        clean,
        clean,
        sites=["resid_pre", "resid_post", "attn_out", "mlp_out", "resid_mid"],
        positions=["all", "image", "last"],
        answer=a,
        counterfactual=c,
        normalize=False,
    )
    for vals in same.patched.values():
        torch.testing.assert_close(vals, same.corrupted_metric.expand_as(vals), rtol=0, atol=1e-5)
    full = activation_patching(
        m, clean, corrupted, sites="resid_pre", positions="all", layers=[0], answer=a, counterfactual=c
    )
    if m.arch.injection_layers:
        # Qwen3-VL: the corrupted run's deepstack features still enter after layers 0..k-1, so the
        # layer-0 residual alone cannot recover the clean run; patching resid_post of the last
        # injection layer (everything after the injections) does.
        k = max(m.arch.injection_layers)
        full = activation_patching(
            m, clean, corrupted, sites="resid_post", positions="all", layers=[k], answer=a, counterfactual=c
        )
        torch.testing.assert_close(full.patched["resid_post"][0, 0], full.clean_metric, rtol=1e-5, atol=1e-5)
        return
    torch.testing.assert_close(full.patched["resid_pre"][0, 0], full.clean_metric, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full.effect["resid_pre"][0, 0], torch.tensor(1.0), rtol=1e-5, atol=1e-5)


def test_prob_and_kl_metrics_by_hand():
    m, clean, corrupted = _setup("llava")
    a, c = _targets(m, clean, corrupted)
    lc, lk = _last(m.logits(clean), clean), _last(m.logits(corrupted), corrupted)
    pr = activation_patching(
        m, clean, corrupted, sites="resid_pre", positions="all", layers=[0], metric="prob", answer=a
    )
    torch.testing.assert_close(pr.corrupted_metric, lk.softmax(-1)[torch.arange(2), a])
    torch.testing.assert_close(
        pr.patched["resid_pre"][0, 0], lc.softmax(-1)[torch.arange(2), a], rtol=1e-5, atol=1e-6
    )
    kl = activation_patching(m, clean, corrupted, sites="resid_pre", positions="all", layers=[0], metric="kl")
    want = torch.nn.functional.kl_div(
        lk.log_softmax(-1), lc.log_softmax(-1), log_target=True, reduction="none"
    ).sum(-1)
    torch.testing.assert_close(kl.corrupted_metric, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kl.patched["resid_pre"][0, 0], torch.zeros(2), rtol=0, atol=1e-5)


def test_no_image_alignment_records_positions_and_matches_oracle():
    m, clean, _ = _setup("llava")
    no_image = m.inputs(m.prepare([None, None], PROMPTS))
    a, c = _targets(m, clean, no_image)
    res = activation_patching(
        m,
        clean,
        no_image,
        sites="resid_pre",
        positions=["image", "text", "last"],
        condition="no_image",
        answer=a,
        counterfactual=c,
    )
    assert res.align == "group"
    assert torch.isnan(res.effect["resid_pre"][:, 0]).all()  # no image positions in the no_image run
    text = res.patched_positions["text"]
    for row in range(2):
        tp = no_image.groups.positions("text", row).tolist()
        sp = clean.groups.positions("text", row).tolist()
        assert [t for t, _ in text[row]] == tp and [s for _, s in text[row]] == sp
        assert res.patched_positions["last"][row] == [
            [int(no_image.groups.last()[row]), int(clean.groups.last()[row])]
        ]
    # oracle: hand-written hooks with the recorded pairs at layer 1
    layer = 1
    store = {}
    L = m.arch.module(m.model, "layer", layer)
    h = L.register_forward_pre_hook(
        lambda md, args, kw: store.__setitem__("x", args[0].clone()), with_kwargs=True
    )
    with torch.no_grad():
        m.model(**clean)
    h.remove()

    def write(md, args, kw):
        x = args[0].clone()
        for row in range(2):
            for t, s in text[row]:
                x[row, t] = store["x"][row, s]
        return (x,) + args[1:], kw

    h = L.register_forward_pre_hook(write, with_kwargs=True)
    with torch.no_grad():
        lg = _last(m.model(**no_image).logits, no_image)
    h.remove()
    torch.testing.assert_close(
        res.patched["resid_pre"][layer, 1],
        lg[torch.arange(2), a] - lg[torch.arange(2), c],
        rtol=1e-5,
        atol=1e-5,
    )


def test_transformer_lens_get_act_patch_resid_pre_llava():
    pytest.importorskip("transformer_lens")
    import pandas as pd
    from transformer_lens.patching import get_act_patch_resid_pre

    from mech.engines.transformerlens import WithInputs, boot_bridge

    m, clean, corrupted = _setup("llava", attn="eager")
    row = 1  # the longer prompt: no padding (TL's patching passes tokens only, no attention mask)
    clean1 = m.inputs({k: v[row : row + 1] for k, v in clean.items()})
    corr1 = m.inputs({k: v[row : row + 1] for k, v in corrupted.items()})
    assert bool(clean1["attention_mask"].all())
    a, c = _targets(m, clean1, corr1)
    bridge = boot_bridge(m)
    _, clean_cache = bridge.run_with_cache(clean1["input_ids"], pixel_values=clean1["pixel_values"])
    P = clean1["input_ids"].shape[1]
    pos = [int(clean1.groups.positions("image", 0)[3]), int(clean1.groups.positions("text", 0)[1]), P - 1]
    df = pd.DataFrame([(l, p) for l in range(m.arch.n_layers) for p in pos], columns=["layer", "pos"])
    tl = get_act_patch_resid_pre(
        WithInputs(bridge, pixel_values=corr1["pixel_values"]),
        corr1["input_ids"],
        clean_cache,
        lambda lg: lg[0, -1, a[0]] - lg[0, -1, c[0]],
        index_axis_names=None,
        index_df=df,
    )
    masks = [torch.nn.functional.one_hot(torch.tensor([p]), P).bool() for p in pos]
    res = activation_patching(
        m, clean1, corr1, sites="resid_pre", positions=masks, answer=a, counterfactual=c
    )
    torch.testing.assert_close(res.patched["resid_pre"][:, :, 0].flatten(), tl.float(), rtol=1e-5, atol=1e-5)


def test_tl_boot_never_pip_installs(monkeypatch):
    pytest.importorskip("transformer_lens")
    import subprocess

    import transformer_lens.model_bridge.sources.transformers.helpers as helpers

    from mech.engines.transformerlens import no_runtime_install

    def refuse(*a, **k):
        raise AssertionError(f"subprocess called: {a}")

    monkeypatch.setattr(subprocess, "check_call", refuse)
    original = helpers._ensure_torchvision
    with no_runtime_install():
        assert helpers._ensure_torchvision() is False
    assert helpers._ensure_torchvision is original


def test_bad_inputs():
    m, clean, corrupted = _setup("llava")
    a, c = _targets(m, clean, corrupted)
    shorter = m.inputs(m.prepare([None, None], PROMPTS))
    with pytest.raises(InputError, match="align='group'"):
        activation_patching(m, clean, shorter, answer=a, counterfactual=c)
    swapped = m.inputs({k: v.flip(0) for k, v in corrupted.items()})
    with pytest.raises(InputError, match="do not match"):
        activation_patching(m, clean, swapped, answer=a, counterfactual=c)
    with pytest.raises(ConfigError, match="resid_pre, resid_mid, resid_post"):
        activation_patching(m, clean, corrupted, sites="resid_middle", answer=a, counterfactual=c)
    with pytest.raises(ConfigError, match="valid"):
        activation_patching(m, clean, corrupted, positions="pixels", answer=a, counterfactual=c)
    with pytest.raises(ConfigError, match="logit_diff"):
        activation_patching(m, clean, corrupted, metric="accuracy")
    with pytest.raises(MechError, match="undefined"):
        activation_patching(m, clean, clean, answer=a, counterfactual=c)
    with torch.no_grad():
        m.model.lm_head.weight[int(a[1])] = float("nan")
    with pytest.raises(MechError, match=r"not finite \(NaN/inf\) for sample rows \[.*1\]"):
        activation_patching(m, clean, corrupted, answer=a, counterfactual=c)


def _organism(name):
    from mech.organisms import organism_dir

    try:
        organism_dir(name)
    except MechError:
        pytest.skip(f"organism {name} is not built yet")
    return mech.load(f"organism:{name}")


def test_organisms_image_positions_restore_more_in_balanced():
    """Denoising from the white-image run, image positions of resid_pre at layer 0 (everything the
    image brings; the balanced organism moves it into the text positions within layer 0, so
    resid_post would miss it). Ground truth per question type: on the five templates where the
    text bias was planted, restoring the image gives back much more of the answer in the balanced
    organism; on the two shape templates, which both organisms read from the image, it does not."""
    from mech.conditions import condition_inputs
    from mech.organisms import shapes
    from mech.organisms.train import TEXT_BIASED_TEMPLATES
    from mech.prepare.targets import answer_tokens

    out = {}
    for name in ("balanced", "text-biased"):
        m = _organism(name)
        samples = shapes.generate(96, split="test", seed=1)
        clean, corrupted = (
            condition_inputs(m, samples, "complete"),
            condition_inputs(m, samples, "white_image"),
        )
        a, c = answer_tokens(m, samples, _last(m.logits(clean), clean))
        res = activation_patching(
            m,
            clean,
            corrupted,
            sites="resid_pre",
            positions="image",
            answer=a,
            counterfactual=c,
            normalize=False,
            layers=[0],
        )
        restored = res.patched["resid_pre"][0, 0] - res.corrupted_metric  # [batch], logits
        planted = torch.tensor([s["template"] in TEXT_BIASED_TEMPLATES for s in samples])
        out[name] = (float(restored[planted].mean()), float(restored[~planted].mean()))
    (bal_planted, bal_shape), (tb_planted, tb_shape) = out["balanced"], out["text-biased"]
    assert bal_planted > 2 * max(tb_planted, 0.0) + 0.5, out  # measured 7.6 vs 2.3 logits
    assert tb_shape > 0.5 * bal_shape, out  # both read the image there (measured 8.1 vs 6.8)


def test_cmd_patch_writes_contract_files(tmp_path):
    from mech.results import read_json, read_tensors
    from mech.runs import PatchSettings, run_settings

    model, proc = tiny_model("llava")
    model.save_pretrained(tmp_path / "model")
    proc.save_pretrained(tmp_path / "model")
    out = run_settings(
        PatchSettings(
            model=str(tmp_path / "model"),
            data="organism:shapes",
            n=6,
            out=str(tmp_path / "out"),
            batch_size=4,
            progress=False,
        )
    )
    js = read_json(tmp_path / "out" / "patch.json")
    for key in ("corruption", "direction", "metric", "clean_metric", "corrupted_metric", "effect"):
        assert key in js
    assert (js["corruption"], js["direction"], js["metric"]) == ("white_image", "denoising", "logit_diff")
    assert set(js["effect"]) == {"resid_post", "attn_out", "mlp_out"}
    assert set(js["effect"]["resid_post"]) == {"image", "text", "last"}
    assert len(js["effect"]["resid_post"]["image"]) == model.config.text_config.num_hidden_layers
    t = read_tensors(tmp_path / "out" / "patch.safetensors")
    assert t["patched.resid_post"].shape[-1] == 6 and out["n"] == 6
    assert (tmp_path / "out" / "patch_resid_post.png").is_file()
