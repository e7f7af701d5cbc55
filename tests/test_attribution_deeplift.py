"""``attribution_patching(method="deeplift")`` (mech.measure.patching.attribution_deeplift) against exact activation
patching and plain Hugging Face forwards.

* Complete cuts: patching ``resid_pre`` / ``resid_mid`` / ``resid_post`` at *every* position of a layer
  turns the target run into the source run, so exact patching (``mech.activation_patching``) gives the
  whole metric difference there. DeepLIFT's multipliers must reproduce it at every layer
  (summation-to-delta, Shrikumar et al. 2017 eq. 1) on every decoder family, for a corruption (a
  constant image) far outside AtP's linear range. A missed or wrong rule for any nonlinear operation
  breaks this. Qwen3-VL: exactly above its feature-injection layers, where the cut is complete.
* First order: for an ``eps``-small corruption the estimates equal exact patching up to O(eps), like
  AtP (``tests/test_attribution.py``, which runs the shared first-order test with ``"deeplift"``).
* The target run's values are the model's: logits under the rules equal plain HF logits; hooks and the
  attention implementation are restored afterwards, exceptions included.
* The organisms' must-show (r ≥ 0.9 against exact patching at 3 forward-equivalents) is in
  ``tests/test_attribution.py``.
"""

from __future__ import annotations

import pytest
import torch

import mech
from mech.conditions import feature_condition
from mech.errors import ConfigError
from mech.measure.patching import activation_patching
from mech.measure.patching.attribution import attribution_patching
from mech.measure.patching.attribution_deeplift import References, difference_run, reference_run
from mech.testing.tiny import tiny_float64, tiny_inputs, tiny_model

CUTS = ["resid_pre", "resid_mid", "resid_post"]
FAMILIES = [
    "llava",
    "llava_next",
    "llava_onevision",
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "gemma3",
    "internvl",
    "idefics3",
    "smolvlm",
    "paligemma",
    "qwen2_audio",
]


def _runs(family: str):
    m, clean = tiny_float64(family)
    # the question's embeddings + 3 std of Gaussian noise (Meng et al. 2022): a large change on every
    # family (tiny Gemma3's image embeddings are all zero: its projector is initialised to zero)
    return m, clean, clean, lambda: feature_condition(m, clean, "visual_noise", seed=1, groups=("text",))


@pytest.mark.parametrize("family", FAMILIES)
def test_complete_cuts_equal_exact_patching(family):
    m, clean, corrupted, ctx = _runs(family)
    direction = "noising" if family in ("qwen2_vl", "paligemma") else "denoising"
    kw = dict(positions="all", direction=direction, normalize=False, corrupted_context=ctx)
    exact = activation_patching(m, clean, corrupted, sites=CUTS, **kw)
    est = attribution_patching(m, clean, corrupted, sites=CUTS, method="deeplift", **kw)
    target = exact.corrupted_metric if direction == "denoising" else exact.clean_metric
    change = (exact.clean_metric - exact.corrupted_metric).abs()
    assert change.min() > 1e-3, "the corruption must change the metric"
    first = max(m.arch.injection_layers, default=-1) + 1
    for site in CUTS:
        # exact patched metric - target metric [layer, 1, batch] vs the estimate's ΔM
        want = (exact.patched[site] - target)[first:]
        got = est.delta[site][first:]
        assert torch.allclose(got, want, atol=1e-5 * (1 + float(change.max())), rtol=1e-4), (site, got, want)
    assert est.meta["completeness"]["relative_error"] < 1e-4
    assert est.meta["local_gradient_ops"] == {}


def test_first_layers_of_qwen3_vl_are_not_a_complete_cut():
    """Below Qwen3-VL's injection layers the injected visual features stay the target run's in exact
    patching, so all positions of resid_pre there do not give the whole difference: the test above
    would fail there, which shows it can."""
    m, clean, _, _ = _runs("qwen3_vl")
    corrupted = m.inputs(dict(clean, pixel_values=torch.full_like(clean["pixel_values"], 1.5)))
    exact = activation_patching(
        m, clean, corrupted, sites="resid_pre", positions="all", layers=[0], normalize=False
    )
    assert (exact.patched["resid_pre"] - exact.clean_metric).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["llava", "gemma3"])
def test_target_run_keeps_the_models_values_and_state(family):
    model, proc = tiny_model(family)
    m = mech.load((model, proc))
    clean = m.inputs(tiny_inputs(family, proc, batch=2))
    corrupted = m.inputs(dict(clean, pixel_values=torch.full_like(clean["pixel_values"], 1.5)))
    impl = model.config.get_text_config()._attn_implementation
    with torch.no_grad():
        plain = model(**corrupted).logits  # the first forward adds transformers' own output-capture hooks
    n_hooks = sum(len(mod._forward_hooks) + len(mod._forward_pre_hooks) for mod in model.modules())
    refs = References()
    with torch.no_grad(), reference_run(m, refs):
        model(**clean)
    assert refs.norms and refs.acts and refs.gates and refs.attn and not refs.local
    with torch.enable_grad(), difference_run(m, refs):
        ruled = model(**corrupted).logits
    torch.testing.assert_close(ruled.detach(), plain, atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="boom"), difference_run(m, refs):
        raise RuntimeError("boom")
    assert model.config.get_text_config()._attn_implementation == impl
    assert sum(len(mod._forward_hooks) + len(mod._forward_pre_hooks) for mod in model.modules()) == n_hooks


def test_bad_input():
    model, proc = tiny_model("llava")
    m = mech.load((model, proc))
    clean = m.inputs(tiny_inputs("llava", proc))
    no_image = m.inputs(tiny_inputs("llava", proc, n_images=0))
    with pytest.raises(ConfigError, match="same length"):
        attribution_patching(m, clean, no_image, condition="no_image", method="deeplift")
    cfg = model.config.get_text_config()
    old = cfg._attn_implementation_internal
    try:
        cfg._attn_implementation_internal = "flash_attention_2"
        model.config._attn_implementation_internal = "flash_attention_2"
        with pytest.raises(ConfigError, match="sdpa"):
            attribution_patching(
                m,
                clean,
                clean,
                method="deeplift",
                corrupted_context=lambda: __import__("contextlib").nullcontext(),
            )
    finally:
        cfg._attn_implementation_internal = old
        model.config._attn_implementation_internal = old
