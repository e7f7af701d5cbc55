"""Batching and padding (issue 8): every instrument gives each sample of a padded batch exactly what it
gives that sample alone, with left and with right padding.

Oracle: the same instrument run on a batch of one (no padding at all). Three samples whose prompts
have different lengths, so the batch is padded; the answer position is ``groups.last()`` in both.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import mech
from mech.conditions import condition_inputs
from mech.measure.dla import direct_logit_attribution
from mech.measure.evaluation import evaluate
from mech.measure.evaluation.answering import score_batch
from mech.measure.knockout import attention_knockout
from mech.measure.patching import activation_patching
from mech.testing.tiny import IMAGE_SIZES, tiny_model
from mech.testing.tolerance import assert_close_scaled

FAMILIES = ("llava", "qwen2_5_vl", "qwen3_vl")
SIDES = ("left", "right")
QUESTIONS = (
    "what colour is the shape ?",
    "please tell me what colour is the big shape in the image , and is it a circle or a square ?",
    "which shape ?",
)


def _samples(family: str) -> list[dict]:
    out = []
    for i, q in enumerate(QUESTIONS):
        w, h = IMAGE_SIZES[family]
        img = Image.fromarray(np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
        out.append(
            dict(
                id=f"s{i}",
                question=q,
                images=[img],
                options=["red", "blue", "green"],
                answer="ABC"[i],
                prompt_style="bare",
            )
        )
    return out


@pytest.fixture(scope="module", params=FAMILIES)
def setup(request):
    m = mech.load(tiny_model(request.param))
    samples = _samples(request.param)
    vocab = m.arch.vocab_size
    answer = torch.tensor([vocab - 1, vocab - 2, vocab - 3])  # ordinary words, far from the special tokens
    cf = torch.tensor([vocab - 4, vocab - 5, vocab - 6])
    alone = [(condition_inputs(m, [s], "complete"), condition_inputs(m, [s], "white_image")) for s in samples]
    return m, samples, answer, cf, alone


def _batch(m, samples, side):
    clean = condition_inputs(m, samples, "complete", padding_side=side)
    corrupted = condition_inputs(m, samples, "white_image", padding_side=side)
    lengths = clean.groups.valid.sum(1)
    assert len(set(lengths.tolist())) == 3  # really padded
    pad_col = 0 if side == "left" else -1
    assert not bool(clean.groups.valid[:, pad_col].all())  # padding sits on the requested side
    return clean, corrupted


def _terms(m, alone) -> int:
    """Terms reduced per value along a forward: ``n_layers · (d_model + pos)``, ``pos`` the padded length
    (that of the longest sample)."""
    return m.arch.n_layers * (m.arch.d_model + max(c["input_ids"].shape[1] for c, _ in alone))


def _close(batched: torch.Tensor, single: torch.Tensor, what: str, n: int, scale: float | None = None):
    """Equal up to fp32 rounding of ``n``-term reductions (padding changes the kernels' shapes, so the
    batched and the single run round differently), at the magnitude of the values compared (or ``scale``)."""
    assert_close_scaled(batched.float(), single.float(), n=n, dtype=torch.float32, scale=scale, msg=what)


@pytest.mark.parametrize("side", SIDES)
def test_attention_mass(setup, side):
    m, samples, _, _, alone = setup
    terms = _terms(m, alone)
    clean, _ = _batch(m, samples, side)
    for query in ("last", "text"):
        am = mech.attention_mass(m, clean, query=query)
        for i, (c, _) in enumerate(alone):
            one = mech.attention_mass(m, c, query=query)
            _close(am.mass[i], one.mass[0], f"mass row {i} {query}", terms)
            _close(am.counts[i], one.counts[0], f"counts row {i}", terms)
            n = int(one.n_image_tokens[0])
            _close(am.spatial[i, :, :n], one.spatial[0], f"spatial row {i}", terms)


@pytest.mark.parametrize("side", SIDES)
def test_activation_patching(setup, side):
    m, samples, a, c, alone = setup
    terms = _terms(m, alone)
    clean, corrupted = _batch(m, samples, side)
    kw = dict(sites=["resid_post", "attn_out", "z"], positions=["image", "text", "last"], normalize=False)
    res = activation_patching(m, clean, corrupted, answer=a, counterfactual=c, **kw)
    for i, (ci, ki) in enumerate(alone):
        one = activation_patching(m, ci, ki, answer=a[i : i + 1], counterfactual=c[i : i + 1], **kw)
        _close(res.clean_metric[i], one.clean_metric[0], f"clean metric row {i}", terms)
        _close(res.corrupted_metric[i], one.corrupted_metric[0], f"corrupted metric row {i}", terms)
        for s in kw["sites"]:
            _close(res.patched[s][..., i], one.patched[s][..., 0], f"patched {s} row {i}", terms)


@pytest.mark.parametrize("side", SIDES)
def test_attention_knockout(setup, side):
    m, samples, a, _, alone = setup
    terms = _terms(m, alone)
    clean, _ = _batch(m, samples, side)
    edges = [("image", "last"), ("text", "last"), [("image", "text"), ("bos", "last")]]
    res = attention_knockout(m, clean, edges=edges, window=1, answer=a)
    for i, (ci, _) in enumerate(alone):
        one = attention_knockout(m, ci, edges=edges, window=1, answer=a[i : i + 1])
        _close(res.p_clean[i], one.p_clean[0], f"p_clean row {i}", terms)
        _close(res.p_knocked[..., i], one.p_knocked[..., 0], f"p_knocked row {i}", terms)
        # change = 100 · (p_knocked / p_clean − 1): the ratio's relative error, in percent of the ratio
        ratio = float((one.p_knocked[..., 0] / one.p_clean[0]).max())
        _close(
            res.change_per_sample[..., i],
            one.change_per_sample[..., 0],
            f"change row {i}",
            terms,
            scale=2 * 100 * ratio,
        )


@pytest.mark.parametrize("side", SIDES)
def test_dla(setup, side):
    m, samples, a, c, alone = setup
    terms = _terms(m, alone)
    clean, _ = _batch(m, samples, side)
    res = direct_logit_attribution(m, clean, a, c)
    _close(res.total(), res.logit_diff, "components sum to the logit difference", terms)
    ones = []
    for i, (ci, _) in enumerate(alone):
        ones.append(one := direct_logit_attribution(m, ci, a[i : i + 1], c[i : i + 1]))
        for field in ("attn", "attn_bias", "mlp", "embed", "logit_diff"):
            _close(getattr(res, field)[i], getattr(one, field)[0], f"DLA {field} row {i}", terms)
    joined = type(res).concat(ones)  # the contract's concat of single samples is the batched result
    assert joined.groups == res.groups
    for field in ("attn", "attn_bias", "mlp", "embed", "logit_diff", "mass"):
        _close(getattr(joined, field), getattr(res, field), f"DLA concat {field}", terms)


@pytest.mark.parametrize("side", SIDES)
def test_option_scoring(setup, side):
    m, samples, _, _, alone = setup
    terms = _terms(m, alone)
    clean, _ = _batch(m, samples, side)
    rows = score_batch(m, clean, samples, "option_text")
    for i, (ci, _) in enumerate(alone):
        one = score_batch(m, ci, [samples[i]], "option_text")[0]
        _close(torch.tensor(rows[i]["scores"]), torch.tensor(one["scores"]), f"option scores row {i}", terms)
        assert rows[i]["pred"] == one["pred"]


def test_evaluate_batch_size_invariant(setup):
    """``evaluate`` pads with the family's side: batches of 3 and of 1 give the same scores per input condition.

    Feature conditions are left out on purpose: ``visual_noise``/``visual_mean`` use the batch's
    embedding std/mean and one noise draw per batch (mech.conditions.feature_condition), so they depend
    on the batch composition by design."""
    m, samples, _, _, alone = setup
    terms = _terms(m, alone)
    kw = dict(
        conditions=("complete", "white_image", "no_image", "image_only", "noise_image"),
        progress=False,
        scoring="option_text",
    )
    batched, single = evaluate(m, samples, batch_size=3, **kw), evaluate(m, samples, batch_size=1, **kw)
    for cond in kw["conditions"]:
        _close(
            torch.tensor(batched["scores"][cond]),
            torch.tensor(single["scores"][cond]),
            f"evaluate {cond}",
            terms,
        )
        assert batched["predictions"][cond] == single["predictions"][cond]
