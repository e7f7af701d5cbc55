"""The peers' conventions, each re-computed by hand from its paper or released code (issue 18).

* Knockout, Zhang et al. 2025 (``InformationFlow.py``, ``methods.py``): one sample at a time, eager
  attention, the attention mask of every window layer replaced by ``tril(ones)`` with the listed
  (target, source) entries zeroed (additive ``finfo.min``), window ``[l - k//2, l - (-k//2))``
  clipped, ``(new - base) * 100 / base`` per sample, mean over the samples the model answers
  correctly (the decoded top token is the gold answer word).
* FastV (Chen et al. 2024, §3.2): system = every token before the image, instruction = every
  non-image token after it; λ = Σ attention over a type's tokens (head mean), ε = λ / |type|,
  from eager ``output_attentions``.
* MDI / AEI (*When Language Overrules*, eqs. 1-4) with each text side and aggregation, from eager
  ``output_attentions`` and hand-built position sets.
"""

from __future__ import annotations

import math

import pytest
import torch

import mech
from mech.errors import ConfigError, InputError
from mech.measure.attention import attention_mass
from mech.measure.knockout import attention_knockout
from mech.prepare.groups import FASTV_GROUPS, SPLIT_TEMPLATE_GROUPS, regroup
from mech.prepare.targets import answer_tokens
from mech.testing.tiny import tiny_inputs, tiny_model
from mech.testing.tolerance import dot_bound, softmax_rel_bound, unit_roundoff

N = 24


def _organism(name):
    from mech.organisms import organism_dir

    try:
        organism_dir(name)
    except mech.MechError:
        pytest.skip(f"organism {name} is not built yet")
    return mech.load(f"organism:{name}")


def _data(m, n=N):
    from mech.prepare.data import load_data

    data = load_data("organism:shapes", n=n)
    samples = list(data)
    return samples, m.prepare([s["images"] for s in samples], [data.prompt(s) for s in samples])


def _unpadded(inp, b):
    """Sample ``b`` alone, padding removed (Zhang et al. run one sample at a time)."""
    keep = inp["attention_mask"][b].bool()
    out = {
        k: v[b : b + 1][:, keep] if k in ("input_ids", "attention_mask") else v[b : b + 1]
        for k, v in inp.items()
        if isinstance(v, torch.Tensor)
    }
    return out, keep.nonzero().flatten()


def _zhang_prob(m_eager, ids, block, layers, token):
    """``(p(token), max |logit|)`` at the last position with Zhang et al.'s mask in ``layers``: tril(ones), the (target,
    source) entries of ``block`` zeroed, then (1 - mask) * finfo.min, in place of the model's mask."""
    length = ids["input_ids"].shape[1]

    def pre(mod, args, kwargs):
        dtype = kwargs["attention_mask"].dtype
        mask = torch.tril(
            torch.ones(length, length, dtype=dtype)
        )  # in the model's dtype: finfo.min is finite there
        for t, s in block:
            mask[t, s] = 0
        kwargs = dict(kwargs, attention_mask=((1.0 - mask) * torch.finfo(dtype).min)[None, None])
        return args, kwargs

    handles = [
        m_eager.arch.module(m_eager.model, "attn", l).register_forward_pre_hook(pre, with_kwargs=True)
        for l in layers
    ]
    try:
        with torch.no_grad():
            logits = m_eager.model(**ids).logits[0, -1].float()
    finally:
        for h in handles:
            h.remove()
    return logits.softmax(-1)[token], float(logits.abs().max())


@pytest.fixture(scope="module")
def text_biased64():
    """The text-biased organism in float64 (mech's SDPA model and the eager oracle), so that the two
    paths agree to float64 rounding and only mech's fp32 reading of the logits is left to bound."""
    m = _organism("text-biased")
    m.model.to(torch.float64)
    me = mech.load("organism:text-biased", attn_implementation="eager")
    me.model.to(torch.float64)
    samples, inp = _data(m)
    return m, me, samples, inp.to(torch.float64)


@pytest.fixture(scope="module")
def text_biased():
    m = _organism("text-biased")
    me = mech.load("organism:text-biased", attn_implementation="eager")
    samples, inp = _data(m)
    return m, me, samples, inp


def test_knockout_centred_only_correct_equals_zhang_oracle(text_biased64):
    m, me, samples, inp = text_biased64
    k, n = 9, m.arch.n_layers
    with torch.no_grad():
        logits = m.model(**inp).logits[torch.arange(N), inp.groups.last()]
    gold, _ = answer_tokens(m, samples, logits)
    edges = [("image", "last"), ("last", "last")]
    ko = attention_knockout(m, inp, edges=edges, window=k, only_correct=True, gold_ids=gold)
    assert ko.anchor == "center"  # the default
    windows = [(max(0, l - k // 2), min(n, l - (-k // 2))) for l in range(n)]
    assert ko.windows == windows
    ko_all = attention_knockout(m, inp, edges=edges, window=k)
    assert ko_all.n_kept == N and torch.allclose(ko_all.change_per_sample, ko.change_per_sample)

    diffs = torch.empty(n, len(edges), N)
    bounds = torch.empty(n, len(edges), N)  # [window, edge, sample]: rounding bound of each change, in pp
    correct = torch.empty(N, dtype=torch.bool)
    vocab, seq = m.arch.vocab_size, inp["input_ids"].shape[1]
    for b in range(N):
        ids, pos = _unpadded(inp, b)
        with torch.no_grad():
            out = me.model(**ids).logits[0, -1].float()
        first = int(out.argmax())  # greedy: the first generated token
        base = out.softmax(-1)[first]

        def rel_bound(zmax):
            """Relative bound on |mech's p − the oracle's p|: both read float64 logits (networks that differ
            by kernel only: a sum of d_model + seq terms per layer) as fp32 (u32·|z| each), then an fp32
            softmax over the vocabulary."""
            err = 2 * unit_roundoff(torch.float32) * zmax + n * dot_bound(
                m.arch.d_model + seq, torch.float64, zmax
            )
            return 2 * softmax_rel_bound(err, vocab, torch.float32)

        rel_base = rel_bound(float(out.abs().max()))
        correct[b] = m.tokenizer.decode([first]).strip().lower() == samples[b]["answer_text"].lower()
        last = len(pos) - 1
        image = (ids["input_ids"][0] == m.arch.modality_ids["image"]).nonzero().flatten().tolist()
        blocks = [[(last, s) for s in image], [(last, last)]]
        for li, layers in enumerate(windows):
            for e, block in enumerate(blocks):
                new, zmax = _zhang_prob(me, ids, block, range(*layers), first)
                rel = rel_bound(zmax)
                diffs[li, e, b] = (new - base) * 100.0 / base
                bounds[li, e, b] = 100.0 * float(new / base) * (rel + rel_base)  # new/base − 1
                assert abs(float(ko.p_knocked[li, e, b] - new)) <= rel * float(new), (b, li, e)
    assert 0 < int(correct.sum()) < N, "the test needs correct and wrong samples"
    assert ko.kept.tolist() == correct.tolist() and ko.n_kept == int(correct.sum())
    want = diffs[..., correct].mean(-1)
    bound = bounds[..., correct].mean(-1)  # percent points: the mean's error is at most the mean bound
    assert ((ko.change - want).abs() <= bound).all(), (ko.change - want, bound)
    assert float(bound.max()) < 0.1  # the bound is far below the differences between conventions (> 10 pp)
    # the conventions differ where they should: all samples vs correct ones, centred vs start windows
    assert (ko_all.change[:, 0] - ko.change[:, 0]).abs().max() > 10
    start = attention_knockout(
        m, inp, edges=edges[:1], window=k, anchor="start", only_correct=True, gold_ids=gold
    )
    assert (start.change[:, 0] - ko.change[:, 0]).abs().max() > 10
    # last -> last blocks something (it is not the diagonal-kept no-op)
    assert (ko.p_knocked[:, 1] - ko.p_clean).abs().max() > 1e-4
    js = ko.to_json()
    assert js["only_correct"] and js["n_kept"] == ko.n_kept and js["n"] == N


def test_only_correct_needs_gold_and_reports_empty(text_biased):
    m = text_biased[0]
    _, inp = _data(m, 4)
    with pytest.raises(ConfigError, match="gold_ids"):
        attention_knockout(m, inp, window=2, only_correct=True)
    with pytest.raises(InputError, match="BoolTensor"):
        attention_knockout(m, inp, window=2, only_correct=True, correct=torch.ones(3, dtype=torch.bool))
    with torch.no_grad():
        top = m.model(**inp).logits[torch.arange(4), inp.groups.last()].argmax(-1)
    vocab = m.model.get_output_embeddings().weight.shape[0]
    ko = attention_knockout(m, inp, window=2, only_correct=True, gold_ids=(top + 1) % vocab)
    assert ko.n_kept == 0 and torch.isnan(ko.change).all()
    js = ko.to_json()
    assert "no sample was kept" in js["note"] and all(v is None for v in js["change"]["image->last"])
    chosen = torch.tensor([True, False, True, False])
    ko = attention_knockout(m, inp, window=2, only_correct=True, correct=chosen)
    torch.testing.assert_close(ko.change, ko.change_per_sample[..., chosen].mean(-1))


def test_an_edge_set_that_empties_the_answer_row_is_refused(text_biased):
    m, _, _, inp = text_biased
    everything = [(g, "last") for g in ("image", "text", "template", "bos", "last")]
    with pytest.raises(ConfigError, match="hides every key"):
        attention_knockout(m, inp, edges=[everything], window=1)
    attention_knockout(m, inp, edges=[everything[:-1]], window=1, layers=[0])  # its own key kept: allowed


def _eager_rows(m, inp):
    """Head-mean attention of the last position, ``[layer, batch, pos]``, from eager output_attentions."""
    model = m.model
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            att = model(**inp, output_attentions=True, use_cache=False).attentions
    finally:
        model.set_attn_implementation(before)
    last = inp.groups.last()
    return torch.stack([a.float().mean(1)[torch.arange(a.shape[0]), last] for a in att])


def _fastv_sets(m, inp):
    """FastV's types by hand: system = valid positions before the first visual token; image; instruction."""
    ids, valid = inp["input_ids"], inp["attention_mask"].bool()
    visual = torch.zeros_like(valid)
    for tok in m.arch.modality_ids.values():
        visual |= ids == tok
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    first = torch.where(visual, pos, ids.shape[1]).min(1).values[:, None]
    return {
        "system": valid & ~visual & (pos < first),
        "image": visual,
        "instruction": valid & ~visual & (pos > first),
    }


@pytest.mark.parametrize("source", ["organism", "qwen2_5_vl"])
def test_fastv_allocation_and_efficiency_equal_the_equations(source):
    if source == "organism":
        m = _organism("balanced")
        _, inp = _data(m, 6)
    else:
        model, proc = tiny_model(source)
        m = mech.load((model, proc))
        inp = m.inputs(tiny_inputs(source, proc, batch=2))
        assert (inp["attention_mask"] == 0).any()
    rows = _eager_rows(m, inp)  # [layer, batch, pos]
    am = attention_mass(m, inp, scheme="fastv")
    assert am.groups == FASTV_GROUPS
    lam, eps = am.allocation(), am.efficiency()
    err = _mass_error(m, inp)  # SDPA and eager round differently; masses are at most 1
    for name, where in _fastv_sets(m, inp).items():
        g = am.groups.index(name)
        want = (rows * where[None].float()).sum(-1).T  # λ: [batch, layer]
        assert (lam[..., g] - want).abs().max() <= err, name
        count = where.sum(1).float()[:, None]
        assert ((eps[..., g] - want / count).abs() <= err / count).all(), name
        assert (am.counts[:, g] == where.sum(1)).all()
    assert (lam[..., am.groups.index("system")] > 0).all(), "FastV's system prompt holds the BOS sink"
    # the split scheme refines mech's groups: template_pre + template_post = template
    split, plain = attention_mass(m, inp, scheme="split_template"), attention_mass(m, inp)
    assert split.groups == SPLIT_TEMPLATE_GROUPS
    s, p = split.allocation(), plain.allocation()
    torch.testing.assert_close(s[..., 4] + s[..., 5], p[..., plain.groups.index("template")])
    for name in ("image", "text", "bos"):
        torch.testing.assert_close(s[..., split.groups.index(name)], p[..., plain.groups.index(name)])
    pre = regroup(inp.groups, "split_template").mask("template_pre")
    assert (pre <= _fastv_sets(m, inp)["system"]).all()
    with pytest.raises(ConfigError, match="scheme"):
        attention_mass(m, inp, scheme="llava")


def _mass_error(m, inp) -> float:
    """How far two fp32 evaluations of an attention mass (a sum of softmax weights, at most 1) through
    different kernels (SDPA and eager) can differ: the rounding bound of the reductions along the
    forward, ``n_layers · (d_model + pos)`` terms, at magnitude 1."""
    return dot_bound(m.arch.n_layers * (m.arch.d_model + inp["input_ids"].shape[1]), torch.float32, 1.0)


def _sides_by_hand(m, inp, text):
    ids, valid = inp["input_ids"], inp["attention_mask"].bool()
    image = ids == m.arch.modality_ids["image"]
    if text == "user":
        t = inp.groups.mask("text")
    elif text == "all_non_modality":
        t = valid & ~image
    else:  # the re-implementation's get_token_masks: not image, pad, BOS or EOS
        tok = m.tokenizer
        special = torch.zeros_like(valid)
        for i in (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id):
            if i is not None:
                special |= ids == i
        t = valid & ~image & ~special
    return t, image


@pytest.mark.parametrize("text", ["user", "all_non_modality", "user+template"])
def test_mdi_aei_options_equal_the_paper_equations(text):
    m = _organism("text-biased")
    _, inp = _data(m, 8)
    rows = _eager_rows(m, inp)  # [layer, batch, pos]
    am = attention_mass(m, inp)
    t, o = _sides_by_hand(m, inp, text)
    a_t, a_o = (rows * t[None].float()).sum(-1).T, (rows * o[None].float()).sum(-1).T  # [batch, layer]
    n_t, n_o = t.sum(1).float()[:, None], o.sum(1).float()[:, None]
    mdi = (a_t / n_t) / (a_o / n_o)
    aei_t = (a_t / (a_t + a_o)) / (n_t / (n_t + n_o))
    aei_o = (a_o / (a_t + a_o)) / (n_o / (n_t + n_o))
    # a ratio of two masses, each within _mass_error of the oracle's: relative error up to err/a per side
    rtol = 2 * _mass_error(m, inp) / float(torch.minimum(a_t, a_o).min()) + 4 * unit_roundoff(torch.float32)
    close = dict(rtol=rtol, atol=0)
    torch.testing.assert_close(am.mdi(text), mdi, **close)
    torch.testing.assert_close(am.aei(text)["text"], aei_t, **close)
    torch.testing.assert_close(am.aei(text)["non_text"], aei_o, **close)
    torch.testing.assert_close(am.mdi_summary(text, "mean_of_ratios"), mdi.mean(0), **close)
    ratio = (a_t.mean(0) / n_t.mean()) / (a_o.mean(0) / n_o.mean())
    torch.testing.assert_close(am.mdi_summary(text), ratio, **close)
    torch.testing.assert_close(am.aei_summary(text, "mean_of_ratios")["text"], aei_t.mean(0), **close)
    ratio_aei = (a_t.mean(0) / (a_t + a_o).mean(0)) / (n_t.mean() / (n_t + n_o).mean())
    torch.testing.assert_close(am.aei_summary(text)["text"], ratio_aei, **close)
    js = am.summary(text=text, aggregate="mean_of_ratios")
    assert js["mdi_text"] == text and js["mdi_aggregate"] == "mean_of_ratios"
    assert js["mdi"] == pytest.approx(mdi.mean(0).tolist(), rel=rtol)
    if text != "user":  # the conventions differ: counting the template as text lowers the text side's density
        assert (am.mdi(text) - am.mdi("user")).abs().max() > 1e-3


def test_mdi_option_errors():
    m = _organism("balanced")
    _, inp = _data(m, 2)
    am = attention_mass(m, inp, scheme="fastv")
    with pytest.raises(ConfigError, match="no 'text' group"):
        am.mdi()
    assert "mdi" not in am.summary() and not math.isnan(am.summary(text="all_non_modality")["mdi"][0])
    torch.testing.assert_close(am.mdi("all_non_modality"), attention_mass(m, inp).mdi("all_non_modality"))
    with pytest.raises(ConfigError, match="aggregate"):
        am.mdi_summary("all_non_modality", aggregate="median")
    with pytest.raises(ConfigError, match="text side"):
        am.mdi(("image",))
