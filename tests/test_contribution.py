"""Contribution estimators and the imbalance ratio (issue 7).

Oracles: the model's own logits (DLA components sum to the answer logit difference), eager
``output_attentions`` weights times hand-captured value vectors (the group split of attention),
and hand-computed ratios / bootstrap invariants.
"""

from __future__ import annotations

import pytest
import torch

import mech
from mech.contribution.dla import direct_logit_attribution
from mech.contribution.ratio import curves, imbalance
from mech.errors import InputError, UnsupportedArchitectureError
from mech.testing.tiny import FAMILIES, tiny_inputs, tiny_model

GROUPS = ("image", "text")


def _ids(m, batch):
    gen = torch.Generator().manual_seed(1)
    a = torch.randint(0, m.arch.vocab_size, (batch,), generator=gen)
    return a, (a + 1) % m.arch.vocab_size


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "mllama"])
def test_dla_components_sum_to_the_logit_difference(family):
    m = mech.load(tiny_model(family))
    inputs = m.inputs(tiny_inputs(family, m.processor, batch=2))
    a, b = _ids(m, 2)
    d = direct_logit_attribution(m, inputs, a, b)
    logits = m.logits(inputs)
    q = inputs.groups.last()
    rows = torch.arange(2)
    expected = logits[rows, q, a] - logits[rows, q, b]  # no final soft-capping in these families
    torch.testing.assert_close(d.total(), expected, atol=1e-4, rtol=0)
    assert d.attn.shape == (2, m.arch.n_layers, len(mech.GROUPS))
    assert torch.isfinite(d.attn).all()
    # the mass recorded in the same forward is attention_mass's, which is tested against eager
    torch.testing.assert_close(d.mass, mech.attention_mass(m, inputs, query="last").mass, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["llava", "gemma3"])
def test_dla_group_split_matches_eager_weights_times_values(family):
    """Hand-built oracle: eager attention weights x value vectors (captured from v_proj), split
    by the key's group, through o_proj, the (frozen) post-norm and the frozen final norm."""
    model, proc = tiny_model(family, attn_implementation="eager")
    m = mech.load((model, proc))
    inputs = m.inputs(tiny_inputs(family, proc, batch=2))
    a, b = _ids(m, 2)
    values, outs = {}, {}
    handles = []
    for l in range(m.arch.n_layers):
        attn = m.arch.module(model, "attn", l)
        handles.append(attn.v_proj.register_forward_hook(lambda mod, i, o, l=l: values.__setitem__(l, o.detach())))
        handles.append(attn.register_forward_hook(lambda mod, i, o, l=l: outs.__setitem__(l, o[0].detach())))
    try:
        with torch.no_grad():
            out = model(**inputs, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    q = inputs.groups.last()
    rows = torch.arange(2)
    one_hot = inputs.groups.one_hot()
    ln_final = m.arch.module(model, "ln_final")
    lm = m.arch.module(model, "language_model")
    seen = {}
    h = lm.layers[-1].register_forward_hook(lambda mod, i, o: seen.__setitem__("x", (o[0] if isinstance(o, tuple) else o).detach()))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        h.remove()
    x = seen["x"][rows, q]
    scale = ln_final(x.unsqueeze(1)).squeeze(1) / x
    w_u = m.arch.module(model, "unembed").weight
    direction = w_u[a] - w_u[b]
    d = direct_logit_attribution(m, inputs, a, b)
    for l in range(m.arch.n_layers):
        A = out.attentions[l][rows, :, q]  # [b, h, s]
        v = values[l].view(2, values[l].shape[1], m.arch.n_kv_heads, m.arch.d_head)
        v = v.repeat_interleave(m.arch.n_heads // m.arch.n_kv_heads, dim=2)  # [b, s, h, d]
        z = torch.einsum("bhs,bsg,bshd->bghd", A, one_hot, v).reshape(2, len(mech.GROUPS), -1)
        pieces = z @ m.arch.module(model, "o_proj", l).weight.T  # [b, g, d_model]
        post = m.arch.module(model, "attn_post_norm", l)
        if post is not None:
            total = outs[l][rows, q]
            pieces = pieces * (post(total.unsqueeze(1)).squeeze(1) / total)[:, None]
        expected = (pieces * scale[:, None] * direction[:, None]).sum(-1)
        torch.testing.assert_close(d.attn[:, l], expected, atol=1e-5, rtol=1e-4)


def test_dla_refuses_cross_attention_family():
    m = mech.load(tiny_model("mllama"))
    with pytest.raises(UnsupportedArchitectureError):
        direct_logit_attribution(m, m.inputs(tiny_inputs("mllama", m.processor)), torch.tensor([1]), torch.tensor([2]))


def test_dla_rejects_bad_token_ids():
    m = mech.load(tiny_model("llava"))
    inputs = m.inputs(tiny_inputs("llava", m.processor, batch=2))
    with pytest.raises(InputError, match="answer_ids"):
        direct_logit_attribution(m, inputs, torch.tensor([1]), torch.tensor([2, 3]))
    with pytest.raises(InputError, match="counterfactual_ids"):
        direct_logit_attribution(m, inputs, torch.tensor([1, 2]), torch.tensor([2, 10**9]))


def test_imbalance_ratio_by_hand():
    # 4 samples, 2 layers; text contributes 3x image on average
    per = torch.tensor([
        [[1.0, 3.0], [1.0, 3.0]],
        [[2.0, 6.0], [2.0, 6.0]],
        [[1.0, 3.0], [1.0, 3.0]],
        [[2.0, 6.0], [2.0, 6.0]],
    ])
    r = imbalance(per, GROUPS, pool="mean", n_boot=200)
    assert r.delta == pytest.approx(3.0)
    assert r.dominant == "text" and r.underutilized == "image"
    assert r.ci95[0] == pytest.approx(3.0) and r.ci95[1] == pytest.approx(3.0)  # every resample has ratio 3
    torch.testing.assert_close(r.per_layer, torch.tensor([3.0, 3.0]))
    # abs_sum pools |.| over layers; first takes layer 0
    per2 = torch.tensor([[[1.0, -2.0], [1.0, 4.0]], [[1.0, -2.0], [1.0, 4.0]]])
    assert imbalance(per2, GROUPS, pool="abs_sum").delta == pytest.approx(6.0 / 2.0)
    assert imbalance(per2, GROUPS, pool="first").delta == pytest.approx(2.0)
    assert curves(per2, GROUPS, cumulative=True)["text"] == pytest.approx([-2.0, 2.0])


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_n():
    gen = torch.Generator().manual_seed(0)
    small = torch.rand(20, 3, 2, generator=gen) + torch.tensor([0.5, 1.0])
    big = torch.rand(2000, 3, 2, generator=gen) + torch.tensor([0.5, 1.0])
    r_small, r_big = imbalance(small, GROUPS, pool="mean"), imbalance(big, GROUPS, pool="mean")
    for r in (r_small, r_big):
        assert r.ci95[0] <= r.delta <= r.ci95[1]
    assert (r_big.ci95[1] - r_big.ci95[0]) < (r_small.ci95[1] - r_small.ci95[0])


def test_imbalance_bad_input():
    with pytest.raises(InputError, match="sample, layer, group"):
        imbalance(torch.ones(3, 2), GROUPS, pool="mean")
    with pytest.raises(InputError, match="at least 2"):
        imbalance(torch.ones(1, 2, 2), GROUPS, pool="mean")
    with pytest.raises(InputError, match="audio"):
        imbalance(torch.ones(3, 2, 2), GROUPS, pool="mean", numerator="audio")


def test_modality_contributions_estimators_and_layer0_invariant():
    """Patching estimator: restoring every corrupted position of a group at layer 0 gives back the
    whole effect clean − corrupted, computed here by hand from two plain forwards."""
    from mech.conditions import corrupt_features
    from mech.contribution import Contributions, modality_contributions

    m = mech.load(tiny_model("llava"))
    inputs = m.inputs(tiny_inputs("llava", m.processor, batch=2))
    a, b = _ids(m, 2)
    c = modality_contributions(m, inputs, a, b)
    assert set(c.per_sample) == {"attention", "patching", "dla"}
    for x in c.per_sample.values():
        assert x.shape == (2, m.arch.n_layers, len(mech.GROUPS))
    torch.testing.assert_close(c.per_sample["attention"].sum(-1), torch.ones(2, m.arch.n_layers), atol=1e-5, rtol=0)
    q, rows = inputs.groups.last(), torch.arange(2)

    def ld(logits):
        return logits[rows, q, a] - logits[rows, q, b]

    clean = ld(m.logits(inputs))
    for g in ("image", "text"):
        with corrupt_features(m, inputs, "visual_noise", groups=(g,)):
            corrupted = ld(m.logits(inputs))
        got = c.per_sample["patching"][:, 0, mech.GROUPS.index(g)]
        torch.testing.assert_close(got, clean - corrupted, atol=1e-4, rtol=0)
    assert torch.isnan(c.per_sample["patching"][..., mech.GROUPS.index("bos")]).all()
    js = Contributions.concat([c, c]).to_json(n_boot=50)
    assert set(js["overall"]) == {"attention", "patching", "dla"}
    assert js["n"] == 4 and len(js["imbalance_ratio"]["dla"]) == m.arch.n_layers


@pytest.mark.xfail(strict=True, reason=(
    "open (issue 7): with the shipped organisms the estimators disagree. Measured n=256: attention "
    "0.55 vs 0.46, patching 0.89 vs 0.92 (overlapping), DLA 0.42 vs 0.09 (balanced vs text-biased). "
    "Corrupting the whole question also removes what is asked, which both organisms need; a "
    "resample (same-template) corruption is the planned fix. strict: this fails loudly once fixed."))
def test_organisms_text_biased_has_the_larger_imbalance_on_every_estimator():
    """Ground truth: the planted text bias shows as a larger Δ(text/image) on every estimator, with
    non-overlapping 95% bootstrap intervals (issue 7), over the model's own decisions."""
    from mech.conditions import condition_inputs
    from mech.contribution import ESTIMATORS, Contributions, modality_contributions
    from mech.organisms import organism_dir, shapes
    from mech.targets import decision_tokens

    try:
        organism_dir("balanced"), organism_dir("text-biased")
    except mech.MechError:
        pytest.skip("organisms not built")
    samples = shapes.generate(256, split="test", seed=0)
    deltas = {}
    for name in ("balanced", "text-biased"):
        m = mech.load(f"organism:{name}")
        parts = []
        for i in range(0, len(samples), 64):
            batch = samples[i:i + 64]
            clean = condition_inputs(m, batch, "complete")
            last = m.logits(clean)[torch.arange(len(batch)), clean.groups.last()].float()
            answer, cf = decision_tokens(m, batch, last)
            parts.append(modality_contributions(m, clean, answer, cf))
        c = Contributions.concat(parts)
        deltas[name] = {e: c.imbalance(e, n_boot=500) for e in ESTIMATORS}
    for e in ESTIMATORS:
        b, t = deltas["balanced"][e], deltas["text-biased"][e]
        assert t.delta > b.delta and t.ci95[0] > b.ci95[1], (e, b.to_json(), t.to_json())
