"""mech.measure.patching.attribution (AtP and its integrated-gradients variant) against exact activation patching, plus invariants.

* First order: when the corrupted run is the clean run plus ``eps``·noise on the visual embeddings,
  activation patching is linear in the patched difference up to O(eps²), so AtP (and IG) must equal
  exact patching (``mech.measure.patching.activation_patching``) up to O(eps) in normalized effect: the error
  must be small and shrink linearly with ``eps`` (float64 model).
* Completeness (integrated gradients, Sundararajan et al. 2017, Prop. 1): patching the decoder input
  at every position is the whole clean run, so IG's estimate there must converge to exact patching
  as the steps grow, for a corruption large enough that AtP is far off.
* The IG path: at α = 1 / α = 0 the interpolated run's logits equal plain Hugging Face logits of the
  source / target run (Qwen3-VL: deepstack features included).
* Pearson r against ``numpy.corrcoef``.
* Nothing changed afterwards: parameter ``requires_grad`` flags, no ``.grad``, no hooks, grad mode.
* Organisms (when trained): AtP and IG against exact patching, white_image and visual_mean.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import mech
from mech.conditions import feature_condition
from mech.errors import ConfigError
from mech.measure.patching import PatchingResult, activation_patching
from mech.measure.patching.attribution import attribution_patching, compare_to_exact, pearson
from mech.measure.patching.attribution_grad import decoder_inputs
from mech.testing.tiny import tiny_float64, tiny_inputs, tiny_model

SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z")
POSITIONS = ("image", "text", "last", "all")


def _max_err(m, inp, eps, direction, methods):
    # deepstack families (qwen3_vl) refuse visual feature noise (the image also enters after early
    # layers); the question's embeddings are noised there instead, through the same layers
    groups = ("text",) if m.arch.injection_layers else ("image", "video")
    ctx = lambda: feature_condition(m, inp, "visual_noise", noise_scale=eps, seed=1, groups=groups)  # noqa: E731
    exact = activation_patching(
        m, inp, inp, sites=list(SITES), positions=POSITIONS, direction=direction, corrupted_context=ctx
    )
    out = {}
    for method in methods:
        est = attribution_patching(
            m,
            inp,
            inp,
            sites=SITES,
            positions=POSITIONS,
            direction=direction,
            corrupted_context=ctx,
            method=method,
        )
        errs = []
        for s in SITES:
            a, e = est.effect[s], exact.effect[s]
            assert torch.equal(torch.isnan(a), torch.isnan(e)), s
            keep = ~torch.isnan(e)
            errs.append((a[keep] - e[keep]).abs().max().item())
        out[method] = (max(errs), est)
    return out, exact


@pytest.mark.parametrize(
    "family,direction,methods",
    [
        ("llava", "denoising", ("atp", "ig", "deeplift")),
        ("llava", "noising", ("atp", "deeplift")),
        ("qwen2_5_vl", "denoising", ("atp",)),
        ("qwen3_vl", "noising", ("atp", "ig", "deeplift")),
    ],
)
def test_atp_equals_exact_to_first_order(family, direction, methods):
    m, inp = tiny_float64(family)
    # eps below ~1e-2 hits the float32 floor of the patching metric (logits are cast to fp32), so the
    # first-order property is checked as the error shrinking linearly with eps: 3x eps -> ~3x error
    # (a wrong gradient or pairing would leave an O(1) error that does not shrink)
    small, exact = _max_err(m, inp, 1e-2, direction, methods)
    large, _ = _max_err(m, inp, 3e-2, direction, methods)
    assert max(exact.effect[s].nan_to_num().abs().max().item() for s in SITES) > 0.5  # not trivially zero
    for method in methods:
        (err_small, est), (err_large, _) = small[method], large[method]
        assert err_small < 0.05, (method, err_small)
        assert 2.0 < err_large / err_small < 4.5, (method, err_small, err_large)
        r = compare_to_exact(est, exact)
        assert r["overall"] > 0.99, (method, r)


def _white(m, inp):
    cor = inp.replace(
        pixel_values=torch.full_like(inp["pixel_values"], 1.5)
    )  # a constant image: a large corruption
    return m.inputs(cor)


@pytest.mark.parametrize("family,direction", [("llava", "denoising"), ("qwen2_5_vl", "noising")])
def test_ig_completeness_at_the_decoder_input(family, direction):
    """resid_pre of layer 0 at every position is the whole decoder input, so exact patching there gives
    the other run (normalized effect 1); IG's midpoint sums converge to it (Sundararajan et al. 2017,
    completeness), while plain AtP, a one-point estimate of this large change, stays far off."""
    m, clean = tiny_float64(family)
    corrupted = _white(m, clean)
    kw = dict(sites="resid_pre", positions="all", layers=[0], direction=direction)
    exact = activation_patching(
        m, clean, corrupted, sites="resid_pre", positions="all", layers=[0], direction=direction
    )
    target = exact.effect["resid_pre"].item()
    assert abs(target - 1.0) < 1e-6
    err = {
        k: abs(
            attribution_patching(m, clean, corrupted, method="ig", ig_steps=k, **kw)
            .effect["resid_pre"]
            .item()
            - target
        )
        for k in (1, 2, 8)
    }
    atp_err = abs(attribution_patching(m, clean, corrupted, **kw).effect["resid_pre"].item() - target)
    assert err[8] < err[2] < err[1], err
    assert err[8] < 0.01, err
    assert atp_err > 0.2 and atp_err > 20 * err[8], (atp_err, err)  # the change is far from linear


@pytest.mark.parametrize("family", ["llava", "qwen3_vl"])
def test_ig_path_ends_at_the_two_runs(family):
    """The interpolated run at α = 1 is the source run and at α = 0 the target run (plain HF logits as
    the oracle); Qwen3-VL's deepstack features are interpolated with the embeddings."""
    model, proc = tiny_model(family)
    m = mech.load((model, proc))
    clean = m.inputs(tiny_inputs(family, proc, batch=2))
    corrupted = _white(m, clean)
    with torch.no_grad():
        ref_clean, ref_corr = model(**clean).logits, model(**corrupted).logits
        recorded: list = []
        with decoder_inputs(m, recorded):
            model(**clean)
        ends = {}
        for a in (0.0, 0.5, 1.0):
            with decoder_inputs(m, recorded, a):
                ends[a] = model(**corrupted).logits
    assert len(recorded) == (3 if family == "qwen3_vl" else 1)  # embeddings (+ 2 deepstack feature sets)
    assert (ref_clean - ref_corr).abs().max() > 1e-2
    torch.testing.assert_close(ends[1.0], ref_clean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ends[0.0], ref_corr, atol=1e-5, rtol=1e-5)
    assert (ends[0.5] - ref_clean).abs().max() > 1e-3 and (ends[0.5] - ref_corr).abs().max() > 1e-3


def test_pearson_against_numpy():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(50), rng.standard_normal(50)
    y = 0.6 * x + y
    assert abs(pearson(torch.tensor(x), torch.tensor(y)) - np.corrcoef(x, y)[0, 1]) < 1e-12
    xn = torch.tensor(x).clone()
    xn[3] = float("nan")
    keep = np.arange(50) != 3
    assert abs(pearson(xn, torch.tensor(y)) - np.corrcoef(x[keep], y[keep])[0, 1]) < 1e-12
    assert np.isnan(pearson(torch.ones(5), torch.arange(5.0)))

    def res(effect, cls_kwargs):  # one sample: patched and delta [layer, group, 1]
        per = {k: v[..., None] for k, v in effect.items()}
        return PatchingResult(
            effect=effect,
            patched=per,
            clean_metric=torch.zeros(1),
            corrupted_metric=torch.ones(1),
            groups=("image", "text"),
            layers=[0, 1],
            direction="denoising",
            metric="logit_diff",
            corruption=None,
            align="strict",
            patched_positions={},
            forward_equivalents=3.0,
            n_patched_runs=0,
            method="atp",
            delta=per,
            **cls_kwargs,
        )

    a = {"resid_pre": torch.tensor(x[:4]).view(2, 2), "mlp_out": torch.tensor(x[4:8]).view(2, 2)}
    e = {"resid_pre": torch.tensor(y[:4]).view(2, 2), "mlp_out": torch.tensor(y[4:8]).view(2, 2)}
    r = compare_to_exact(res(a, {}), res(e, {}))
    assert abs(r["resid_pre"] - np.corrcoef(x[:4], y[:4])[0, 1]) < 1e-12
    assert abs(r["overall"] - np.corrcoef(x[:8], y[:8])[0, 1]) < 1e-12
    with pytest.raises(ConfigError):
        compare_to_exact(res(a, {}), res(e, {}), on="weights")


@pytest.mark.parametrize("method,steps", [("atp", 1), ("ig", 2), ("deeplift", 1)])
def test_two_forwards_one_backward_and_state_restored(method, steps):
    model, proc = tiny_model("llava")
    m = mech.load((model, proc))
    inp = m.inputs(tiny_inputs("llava", proc, batch=2))
    frozen = next(iter(model.model.multi_modal_projector.parameters()))
    frozen.requires_grad_(False)  # a user's frozen parameter must stay frozen, the others trainable
    flags = [p.requires_grad for p in model.parameters()]

    def registered():  # transformers installs its own output-capturing hooks: compare with before
        return [(len(mod._forward_hooks), len(mod._forward_pre_hooks)) for mod in model.modules()]

    with torch.no_grad():
        model(**inp)
    before = registered()
    calls = []
    h = model.register_forward_hook(lambda mod, a, o: calls.append(1))
    try:
        grad_mode = torch.is_grad_enabled()
        ctx = lambda: feature_condition(m, inp, "visual_noise", seed=1)  # noqa: E731
        res = attribution_patching(
            m, inp, inp, sites=SITES, corrupted_context=ctx, method=method, ig_steps=steps
        )
    finally:
        h.remove()
    # atp, deeplift: one forward of each run, never re-run; ig: the two runs plus one forward per step
    n_fwd, n_bwd = (2 + steps, steps) if method == "ig" else (2, 1)
    assert len(calls) == n_fwd
    assert res.forward_equivalents == n_fwd + n_bwd and res.meta["passes"] == {
        "forward": n_fwd,
        "backward": n_bwd,
        "backward_scope": "activations only",
    }
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert torch.is_grad_enabled() == grad_mode
    assert registered() == before
    assert res.effect["z"].shape == (m.arch.n_layers, m.arch.n_heads, 3)
    assert res.effect["resid_pre"].shape == (m.arch.n_layers, 3)


def test_validation():
    model, proc = tiny_model("llava")
    m = mech.load((model, proc))
    inp = m.inputs(tiny_inputs("llava", proc))
    with pytest.raises(ConfigError):
        attribution_patching(m, inp, inp, sites="resid_final")
    with pytest.raises(ConfigError):
        attribution_patching(m, inp, inp, direction="sideways")
    with pytest.raises(ConfigError):
        attribution_patching(m, inp, inp, layers=[7])
    with pytest.raises(ConfigError, match="allowed: atp, ig, deeplift"):
        attribution_patching(m, inp, inp, method="atp*")
    for bad in (0, 1.5, True):
        with pytest.raises(ConfigError, match="ig_steps"):
            attribution_patching(m, inp, inp, method="ig", ig_steps=bad)
    with pytest.raises(ConfigError, match="allowed: effect, delta, patched"):
        compare_to_exact(None, None, on="weights")


def test_ig_refuses_runs_of_different_length():
    model, proc = tiny_model("llava")
    m = mech.load((model, proc))
    clean = m.inputs(tiny_inputs("llava", proc, batch=2))
    no_image = m.inputs(tiny_inputs("llava", proc, batch=2, n_images=0))
    assert no_image["input_ids"].shape[1] < clean["input_ids"].shape[1]
    attribution_patching(
        m, clean, no_image, condition="no_image", sites="resid_pre", positions="last"
    )  # atp works
    with pytest.raises(ConfigError, match="same length"):
        attribution_patching(m, clean, no_image, condition="no_image", method="ig")


ORGANISMS = Path(mech.__file__).parent / "organisms"


@pytest.mark.skipif(
    not (ORGANISMS / "balanced" / "model.safetensors").exists(), reason="organism weights not trained yet"
)
@pytest.mark.parametrize("name", ["balanced", "text-biased"])
def test_organism_atp_correlates_with_exact_resid_patching(name):
    """AtP, IG and DeepLIFT multipliers against exact patching on the organisms, white image and
    mean-ablated visual features (denoising), Pearson r over the [layer, group] effect grid of the batch
    means (issue 6 must-show: r ≥ 0.9 at no more than 3 forward-equivalents).

    Plain AtP (3 forward-equivalents): r ≥ 0.9 at the attention outputs, the components it
    linearises well (Nanda 2023); at resid_pre it is 0.59–0.78 (n = 64), so overall 0.65–0.82: the
    metric along these large patches (a whole image; the answer position's residual at cosine
    0.3–0.6) is S-shaped or convex, and the gradient at the corrupted end under-estimates it.
    IG at its midpoint (4 forward-equivalents) measured overall 0.93–0.97. DeepLIFT multipliers (3
    forward-equivalents) measured overall 0.99–1.00 and resid_pre 0.99–1.00; mlp_out 0.87–0.89."""
    if not (ORGANISMS / name / "model.safetensors").exists():
        pytest.skip(f"{name} not trained")
    from mech.conditions import condition_inputs, feature_condition
    from mech.organisms import shapes

    m = mech.load(f"organism:{name}")
    samples = [dict(s, images=[s["image"]]) for s in shapes.generate(64, split="test", seed=0)]
    clean = condition_inputs(m, samples, "complete")
    sites = ["resid_pre", "attn_out", "mlp_out"]
    for corruption in ("white_image", "visual_mean"):
        corrupted = condition_inputs(m, samples, corruption if corruption == "white_image" else "complete")
        ctx = (lambda: feature_condition(m, clean, corruption)) if corruption == "visual_mean" else None
        kw = dict(sites=sites, positions=("image", "text", "last"), corrupted_context=ctx)
        exact = activation_patching(
            m, clean, corrupted, sites=sites, positions=kw["positions"], corrupted_context=ctx
        )
        r = compare_to_exact(attribution_patching(m, clean, corrupted, **kw), exact)
        r_ig = compare_to_exact(attribution_patching(m, clean, corrupted, method="ig", **kw), exact)
        dl = attribution_patching(m, clean, corrupted, method="deeplift", **kw)
        r_dl = compare_to_exact(dl, exact)
        assert dl.forward_equivalents <= 3.0
        assert r_dl["overall"] >= 0.9 and r_dl["resid_pre"] >= 0.9, (corruption, r_dl)
        assert r_dl["overall"] > r["overall"] + 0.1, (corruption, r, r_dl)
        assert r["attn_out"] >= 0.9, (corruption, r)
        assert r["overall"] >= 0.6, (corruption, r)  # the residual sites pull it down; see the docstring
        assert r_ig["overall"] >= 0.9, (corruption, r_ig)
        assert r_ig["resid_pre"] > r["resid_pre"] + 0.1, (corruption, r, r_ig)
