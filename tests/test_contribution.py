"""Contribution estimators and the imbalance ratio (issue 7).

Oracles: the model's own logits (DLA components sum to the answer logit difference), eager
``output_attentions`` weights times hand-captured value vectors (the group split of attention),
and hand-computed ratios / bootstrap invariants.
"""

from __future__ import annotations

import pytest
import torch

import mech
from mech.curves.ratio import curves, imbalance
from mech.errors import ConfigError, InputError, UnsupportedArchitectureError
from mech.measure.dla import direct_logit_attribution
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
        handles.append(
            attn.v_proj.register_forward_hook(lambda mod, i, o, l=l: values.__setitem__(l, o.detach()))
        )
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
    h = lm.layers[-1].register_forward_hook(
        lambda mod, i, o: seen.__setitem__("x", (o[0] if isinstance(o, tuple) else o).detach())
    )
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
        direct_logit_attribution(
            m, m.inputs(tiny_inputs("mllama", m.processor)), torch.tensor([1]), torch.tensor([2])
        )


def test_dla_rejects_bad_token_ids():
    m = mech.load(tiny_model("llava"))
    inputs = m.inputs(tiny_inputs("llava", m.processor, batch=2))
    with pytest.raises(InputError, match="answer must be"):
        direct_logit_attribution(m, inputs, torch.tensor([1]), torch.tensor([2, 3]))
    with pytest.raises(InputError, match="counterfactual must be"):
        direct_logit_attribution(m, inputs, torch.tensor([1, 2]), torch.tensor([2, 10**9]))


def test_imbalance_ratio_by_hand():
    # 4 samples, 2 layers; text contributes 3x image on average
    per = torch.tensor(
        [
            [[1.0, 3.0], [1.0, 3.0]],
            [[2.0, 6.0], [2.0, 6.0]],
            [[1.0, 3.0], [1.0, 3.0]],
            [[2.0, 6.0], [2.0, 6.0]],
        ]
    )
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
    from mech.conditions import feature_condition
    from mech.curves import Contributions, modality_contributions

    m = mech.load(tiny_model("llava"))
    inputs = m.inputs(tiny_inputs("llava", m.processor, batch=2))
    a, b = _ids(m, 2)
    c = modality_contributions(m, inputs, a, b, removal="noise")
    assert set(c.per_sample) == {"attention", "patching", "dla", "decomposition"}
    for x in c.per_sample.values():
        assert x.shape == (2, m.arch.n_layers, len(mech.GROUPS))
    torch.testing.assert_close(
        c.per_sample["attention"].sum(-1), torch.ones(2, m.arch.n_layers), atol=1e-5, rtol=0
    )
    q, rows = inputs.groups.last(), torch.arange(2)

    def ld(logits):
        return logits[rows, q, a] - logits[rows, q, b]

    clean = ld(m.logits(inputs))
    for g in ("image", "text"):
        with feature_condition(m, inputs, "visual_noise", groups=(g,)):
            corrupted = ld(m.logits(inputs))
        got = c.per_sample["patching"][:, 0, mech.GROUPS.index(g)]
        torch.testing.assert_close(got, clean - corrupted, atol=1e-4, rtol=0)
    assert torch.isnan(c.per_sample["patching"][..., mech.GROUPS.index("bos")]).all()
    js = Contributions.concat([c, c]).to_json(n_boot=50)
    assert set(js["overall"]) == {"attention", "patching", "dla", "decomposition"}
    assert js["n"] == 4 and len(js["imbalance_ratio"]["dla"]) == m.arch.n_layers


def test_resample_features_equals_the_forward_of_the_mixed_sample():
    """Oracle: resampling a group from a donor equals a plain forward on a hand-built sample that has
    the donor's question (text) or the donor's image, with everything else kept. The organisms' tokenizer
    has one token per word, so a donor question of another length is, by hand, its words repeated or
    truncated to the sample's word count."""
    from mech.conditions import condition_inputs, resample_features
    from mech.curves import modality_contributions
    from mech.curves.donors import content_key, donor_batch, pair_donors
    from mech.prepare.data import load_data

    m = mech.load("organism:balanced")
    samples = load_data("organism:shapes", n=24, seed=3)
    rows = list(range(8))
    for g in ("image", "text"):
        donors = pair_donors(samples, g, seed=0)
        for i, d in enumerate(donors):  # never the same content; the same question kind where one differs
            assert d is not None and d != i and content_key(samples[d], g) != content_key(samples[i], g)
            if any(
                content_key(x, g) != content_key(samples[i], g) and x["pair_key"] == samples[i]["pair_key"]
                for x in samples
            ):
                assert samples[d]["pair_key"] == samples[i]["pair_key"]
        donor_inputs, ok, reason = donor_batch(m, samples, donors, rows, g)
        assert ok.all() and (reason == 0).all()
        mixed = []
        for i in rows:
            src = samples[donors[i]]
            if g == "image":
                mixed.append({**samples[i], "images": src["images"]})
            else:
                own, theirs = samples[i]["question"].split(), src["question"].split()
                mixed.append(
                    {**samples[i], "question": " ".join(theirs[k % len(theirs)] for k in range(len(own)))}
                )
        clean = condition_inputs(m, [samples[i] for i in rows], "complete")
        with resample_features(m, clean, donor_inputs, groups=(g,), rows=ok, fit=True):
            got = m.logits(clean)
        want = m.logits(condition_inputs(m, mixed, "complete"))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # donors from inside the batch (row indices, no extra pass) give the forward of the mixed samples too
    from mech.curves.donors import batch_donors

    index, ok = batch_donors(clean, "image", seed=5)
    assert ok.all() and (index != torch.arange(len(rows))).all()
    with resample_features(m, clean, index, groups=("image",), rows=ok):
        got = m.logits(clean)
    mixed = [{**samples[i], "images": samples[rows[int(index[k])]]["images"]} for k, i in enumerate(rows)]
    torch.testing.assert_close(got, m.logits(condition_inputs(m, mixed, "complete")), atol=1e-5, rtol=0)
    # the patching estimator's layer-0 value is the total effect of that swap; rows without donor are NaN
    q = clean.groups.last()
    a, b = _ids(m, len(rows))
    text_donors = donor_batch(m, samples, pair_donors(samples, "text", seed=0), rows, "text")[:2]
    image_donors = donor_batch(m, samples, pair_donors(samples, "image", seed=0), rows, "image")[:2]
    c = modality_contributions(
        m, clean, a, b, estimators=("patching",), donors={"text": text_donors, "image": image_donors}
    )
    r = torch.arange(len(rows))
    full = m.logits(clean)[r, q]
    with resample_features(m, clean, image_donors[0], groups=("image",), rows=image_donors[1]):
        swapped = m.logits(clean)[r, q]
    want = (full[r, a] - full[r, b]) - (swapped[r, a] - swapped[r, b])
    want[~image_donors[1]] = float("nan")
    torch.testing.assert_close(
        c.per_sample["patching"][:, 0, mech.GROUPS.index("image")], want, atol=1e-4, rtol=0, equal_nan=True
    )


def test_pair_donors_never_takes_identical_content_where_another_exists():
    """Invariants of the pairing, checked by brute force over hand-built samples: a donor differs in content
    (prompt text; image pixels), has an image for the image group, shares pair_key and length where such a
    donor exists, and is None only when every other usable sample has the same content."""
    from PIL import Image

    from mech.curves.donors import pair_donors

    def im(c, size=(8, 8)):
        return Image.new("RGB", size, (c, 0, 0))

    samples = [
        {"id": 0, "question": "how many", "pair_key": "n", "images": [im(1)]},
        {"id": 1, "question": "how many", "pair_key": "n", "images": [im(1)]},  # same words and pixels as 0
        {"id": 2, "question": "what color is it", "pair_key": "c", "images": [im(2, (8, 12))]},
        {"id": 3, "question": "what shape is it", "pair_key": "c", "images": [im(3, (8, 12)), im(4)]},
        {"id": 4, "question": "is it red", "pair_key": "c", "images": []},  # no image to give
        {"id": 5, "question": "what size", "pair_key": "z", "images": [im(5)]},
    ]
    text = [" ".join(s["question"].split()) for s in samples]
    for seed in range(5):
        t, i = pair_donors(samples, "text", seed=seed), pair_donors(samples, "image", seed=seed)
        for k, d in enumerate(t):
            assert d is not None and text[d] != text[k]
        assert t[2] == 3 and t[3] == 2  # same pair_key and word count exist: taken
        assert t[0] in (5,) and t[1] in (5,)  # no other "n" question differs: same word count first
        for k, d in enumerate(i):
            assert d is not None and samples[d]["images"] and d != k
        assert i[0] != 1 and i[1] != 0  # identical pixels are never a donor while others differ
    same = [{"id": k, "question": "q", "images": [im(1)]} for k in range(3)]
    assert pair_donors(same, "text") == [None] * 3 and pair_donors(same, "image") == [None] * 3


def test_text_donor_of_another_length_is_repeated_or_truncated():
    """Oracle: a text donor with fewer or more words than the sample equals the plain forward of the sample
    whose question is the donor's words repeated / truncated to its own word count (one token per word);
    the flag ``same`` is False and the patching estimate exists for every row."""
    from mech.conditions import condition_inputs, resample_features
    from mech.curves import modality_contributions
    from mech.curves.decomposition import resample_removals
    from mech.curves.donors import donor_batch
    from mech.prepare.data import load_data

    m = mech.load("organism:balanced")
    samples = load_data("organism:shapes", n=40, seed=1)
    words = [len(s["question"].split()) for s in samples]
    rows = list(range(6))
    donors = [
        next(j for j in range(len(samples)) if words[j] != words[i]) if i in rows else None
        for i in range(len(samples))
    ]
    assert {words[i] < words[donors[i]] for i in rows} == {True, False}  # both directions are exercised
    donor_inputs, ok, reason = donor_batch(m, samples, donors, rows, "text")
    assert ok.all() and (reason == 0).all()
    clean = condition_inputs(m, [samples[i] for i in rows], "complete")
    mixed = []
    for i in rows:
        theirs = samples[donors[i]]["question"].split()
        mixed.append({**samples[i], "question": " ".join(theirs[k % len(theirs)] for k in range(words[i]))})
    want = m.logits(condition_inputs(m, mixed, "complete"))
    with resample_features(m, clean, donor_inputs, groups=("text",), rows=ok, fit=True):
        torch.testing.assert_close(m.logits(clean), want, atol=1e-5, rtol=0)
    rem = resample_removals(m, clean, ("text",), {"text": (donor_inputs, ok)}, fit=True)
    with rem["text"].applied(m, clean):
        torch.testing.assert_close(m.logits(clean), want, atol=1e-5, rtol=0)
    assert not rem["text"].same.any()
    with pytest.raises(InputError, match="fit=True"):  # without fit, another length is refused
        resample_removals(m, clean, ("text",), {"text": (donor_inputs, ok)})
    a, b = _ids(m, len(rows))
    c = modality_contributions(m, clean, a, b, estimators=("patching",), donors={"text": (donor_inputs, ok)})
    assert not torch.isnan(c.per_sample["patching"][:, :, mech.GROUPS.index("text")]).any()


def test_resample_bad_donors_and_missing_donors():
    from mech.conditions import condition_inputs, resample_features
    from mech.curves import modality_contributions
    from mech.prepare.data import load_data

    m = mech.load("organism:balanced")
    samples = load_data("organism:shapes", n=40, seed=1)
    lengths = [len(s["question"].split()) for s in samples]
    i, j = next((i, j) for i in range(40) for j in range(40) if lengths[i] != lengths[j])
    a, b = condition_inputs(m, [samples[i]], "complete"), condition_inputs(m, [samples[j]], "complete")
    with pytest.raises(InputError, match="pair_donors"):
        with resample_features(m, a, b, groups=("text",)):
            pass
    x, y = _ids(m, 1)
    alone = modality_contributions(m, a, x, y, estimators=("patching",))  # a batch of one has no donor
    assert torch.isnan(alone.per_sample["patching"]).all()
    with pytest.raises(ConfigError, match="resample, noise"):
        modality_contributions(m, a, x, y, removal="gaussian")


@pytest.fixture(scope="module")
def organism_deltas():
    """Δ(text/image) of the three shipped organisms, n=256 held-out items, the model's own decisions,
    removal by resample ablation with data-set-wide donors paired by content (what ``mech contrib`` does);
    ``deltas[name]["same"]``: the identical-donor share per group."""
    from mech.curves import ESTIMATORS, PATCHED_GROUPS, Contributions
    from mech.curves.donors import contributions_for_rows, pair_donors
    from mech.organisms import organism_dir
    from mech.prepare.data import load_data

    try:
        organism_dir("image-biased"), organism_dir("balanced"), organism_dir("text-biased")
    except mech.MechError:
        pytest.skip("organisms not built")
    samples = load_data("organism:shapes", n=256)
    pairs = {g: pair_donors(samples, g) for g in PATCHED_GROUPS}
    deltas = {}
    for name in ("image-biased", "balanced", "text-biased"):
        m = mech.load(f"organism:{name}")
        parts = []
        for i in range(0, len(samples), 64):
            rows = range(i, min(i + 64, len(samples)))
            parts.append(contributions_for_rows(m, samples, rows, pairs)[0])
        c = Contributions.concat(parts)
        deltas[name] = {e: c.imbalance(e, n_boot=500) for e in ESTIMATORS}
        deltas[name]["same"] = {g: float(c.components[f"same.{g}"].mean()) for g in PATCHED_GROUPS}
    return deltas


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["patching", "decomposition"])
def test_organisms_removal_estimators_order_the_planted_biases(organism_deltas, estimator):
    """Ground truth (issues 7, 22): the causal estimators order Δ(text/image) image-biased < balanced <
    text-biased with non-overlapping 95% bootstrap intervals, on every sample, with no identical donor
    (the content-paired donors of mech.curves.donors; the older word-count buckets gave 46% identical text
    donors). The decomposition credits MLP writes to the modality they depend on, so unlike DLA it ranks
    the organisms as patching does."""
    i, b, t = (organism_deltas[k][estimator] for k in ("image-biased", "balanced", "text-biased"))
    assert i.delta < b.delta < t.delta, (i.to_json(), b.to_json(), t.to_json())
    assert i.ci95[1] < b.ci95[0] and b.ci95[1] < t.ci95[0], (i.to_json(), b.to_json(), t.to_json())
    assert i.dominant == "image" and t.dominant == "text"
    for name in ("image-biased", "balanced", "text-biased"):
        assert max(organism_deltas[name]["same"].values()) <= 0.05, organism_deltas[name]["same"]
        assert organism_deltas[name][estimator].n == 256  # every sample estimated


@pytest.mark.parametrize(
    "estimator",
    [
        pytest.param(
            e,
            marks=pytest.mark.xfail(
                strict=True,
                reason=(
                    "open (issue 7), a finding rather than a bug: measured n=256 (balanced vs text-biased) attention "
                    "0.55 [0.53, 0.58] vs 0.46 [0.44, 0.47]; DLA 0.42 [0.36, 0.50] vs 0.09 [0.09, 0.10]. The text-biased "
                    "organism still looks at the image after layer 0 (docs/organisms.md), and its prior answers are written "
                    "by MLPs (2.7 of 2.7 logits on the planted templates), which modality-resolved DLA cannot assign "
                    "to a group. strict: turns red if an estimator starts to separate."
                ),
            ),
        )
        for e in ("attention", "dla")
    ],
)
def test_organisms_position_resolved_estimators(organism_deltas, estimator):
    b, t = organism_deltas["balanced"][estimator], organism_deltas["text-biased"][estimator]
    assert t.delta > b.delta and t.ci95[0] > b.ci95[1], (estimator, b.to_json(), t.to_json())
