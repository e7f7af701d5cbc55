"""Logits only where they are read (issue 23, item 3).

Oracle: the plain Hugging Face forward's full logits ``[batch, pos, vocab]`` gathered at the answer
position, on a tiny model of every family, in padded batches on both padding sides. The instruments
that read only the answer position are checked two ways: no forward inside them projects more than
one position per row onto the vocabulary (a hook on the unembedding sees every call), and the logits
they report equal the oracle.
"""

from __future__ import annotations

import pytest
import torch

import mech
from mech.curves import modality_contributions
from mech.engines.prefix import capture
from mech.engines.unembed import answer_logits, unembed_at
from mech.errors import InputError
from mech.measure.dla import direct_logit_attribution
from mech.testing.tiny import FAMILIES, tiny_inputs, tiny_model
from mech.testing.tolerance import dot_bound, unit_roundoff


def _tolerance(m, inputs, dtype: torch.dtype) -> float:
    """How far two evaluations of the unembedding (one position's, the whole sequence's: other BLAS paths)
    can differ: a dot product of ``d_model`` terms whose absolute values sum to at most
    ``max ‖W_U row‖ · max ‖final normed hidden‖`` (Cauchy–Schwarz), plus the bias."""
    import mech

    with torch.no_grad():
        _, cache = mech.run_with_cache(m, inputs, ["ln_final.hook_normalized"])
    h = float(cache["ln_final.hook_normalized"].norm(dim=-1).max())
    unembed = m.arch.module(m.model, "unembed")
    w = float(unembed.weight.detach().norm(dim=-1).max())
    return dot_bound(
        m.arch.d_model + 1,
        dtype,
        w * h + (float(unembed.bias.detach().abs().max()) if unembed.bias is not None else 0),
    )


def _oracle(m, inputs) -> torch.Tensor:
    with torch.no_grad():
        full = m.model(**inputs).logits
    last = inputs.groups.last()
    return full[torch.arange(len(last)), last]


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("family", FAMILIES)
def test_answer_logits_equal_full_logits_at_the_answer_position(family, side):
    model, proc = tiny_model(family)
    m = mech.load((model.to(torch.float64), proc))
    inputs = m.inputs(tiny_inputs(family, proc, batch=3, padding_side=side)).to(torch.float64)
    last = inputs.groups.last()
    assert len(set(inputs.groups.valid.sum(1).tolist())) == 3  # really padded
    if side == "right":
        assert not bool((last == last.max()).all())  # the answer position is not one column
    oracle = _oracle(m, inputs)
    with torch.no_grad():
        got = answer_logits(m, inputs)
    assert got.shape == oracle.shape == (3, m.arch.vocab_size)
    torch.testing.assert_close(got, oracle, rtol=0, atol=_tolerance(m, inputs, oracle.dtype))
    # gradients flow through the kept position as through the full logits
    with torch.enable_grad():
        emb = m.arch.module(m.model, "embed")
        seen = []

        def keep(mod, args, out):
            out.retain_grad()
            seen.append(out)

        handle = emb.register_forward_hook(keep)
        try:
            answer_logits(m, inputs)[:, 0].sum().backward()
        finally:
            handle.remove()
    assert seen and seen[0].grad is not None and bool(seen[0].grad.abs().sum() > 0)


def test_unembed_at_refuses_a_batch_mismatch():
    m = mech.load(tiny_model("llava"))
    inputs = m.inputs(tiny_inputs("llava", m.processor, batch=2))
    with pytest.raises(InputError, match="one position per row"), torch.no_grad():
        with unembed_at(m, torch.tensor([3])):
            m.model(**inputs)
    # and nothing stays registered: the next forward gives full logits
    assert m.logits(inputs).shape[1] == inputs["input_ids"].shape[1]


@pytest.fixture(scope="module", params=["llava", "qwen2_5_vl", "gemma3"])
def padded(request):
    model, proc = tiny_model(request.param)
    m = mech.load((model.to(torch.float64), proc))
    side = "right" if request.param == "gemma3" else "left"
    clean = m.inputs(tiny_inputs(request.param, proc, batch=2, padding_side=side)).to(torch.float64)
    return m, clean


class _Widths:
    """Every output of the unembedding during a block: its number of positions per row."""

    def __init__(self, m):
        self.module, self.widths = m.arch.module(m.model, "unembed"), []

    def __enter__(self):
        self.handle = self.module.register_forward_hook(
            lambda mod, a, out: self.widths.append(1 if out.dim() == 2 else out.shape[1])
        )
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_instruments_unembed_only_the_answer_position(padded):
    m, clean = padded
    corrupted = clean  # corrupted by visual_noise in the forward, same tokens
    vocab = m.arch.vocab_size
    answer, cf = torch.tensor([vocab - 1, vocab - 2]), torch.tensor([vocab - 3, vocab - 4])
    runs = {
        "attention_mass": lambda: mech.attention_mass(m, clean),
        "activation_patching": lambda: mech.activation_patching(
            m,
            clean,
            corrupted,
            sites="resid_post",
            positions="image",
            answer=answer,
            counterfactual=cf,
            normalize=False,
            condition="visual_noise",
        ),
        "attribution_patching": lambda: mech.attribution_patching(
            m,
            clean,
            corrupted,
            sites="resid_pre",
            positions="image",
            answer=answer,
            counterfactual=cf,
            normalize=False,
            condition="visual_noise",
        ),
        "attention_knockout": lambda: mech.attention_knockout(m, clean, answer=answer, window=1),
        "direct_logit_attribution": lambda: direct_logit_attribution(m, clean, answer, cf),
        "modality_contributions": lambda: modality_contributions(m, clean, answer, cf, removal="noise"),
    }
    for name, run in runs.items():
        with _Widths(m) as w:
            run()
        assert w.widths and set(w.widths) == {1}, (name, w.widths)


def test_capture_logits_equal_the_oracle(padded):
    m, clean = padded
    oracle = _oracle(m, clean)
    fp32 = 2 * unit_roundoff(torch.float32) * float(oracle.abs().max())  # capture reads them as fp32
    torch.testing.assert_close(
        capture(m, clean).logits, oracle.float(), rtol=0, atol=fp32 + _tolerance(m, clean, oracle.dtype)
    )


def test_patching_metrics_equal_the_oracle(padded):
    """Clean and corrupted logit differences of activation patching against the full HF logits."""
    m, clean = padded
    vocab = m.arch.vocab_size
    answer, cf = torch.tensor([vocab - 1, vocab - 2]), torch.tensor([vocab - 3, vocab - 4])
    from mech.conditions import feature_condition

    p = mech.activation_patching(
        m,
        clean,
        clean,
        sites="resid_post",
        positions="image",
        answer=answer,
        counterfactual=cf,
        normalize=False,
        condition="visual_noise",
    )
    with torch.no_grad(), feature_condition(m, clean, "visual_noise", seed=0):
        corr = m.model(**clean).logits
    last = clean.groups.last()
    ar = torch.arange(2)
    full_clean = _oracle(m, clean)
    for got, full in ((p.clean_metric, full_clean), (p.corrupted_metric, corr[ar, last])):
        want = (full[ar, answer] - full[ar, cf]).float()
        # mech reads the logits as fp32: two roundings to fp32 of logits up to max|full|, then the difference
        fp32 = 4 * unit_roundoff(torch.float32) * float(full.abs().max())
        torch.testing.assert_close(
            got.float(), want, rtol=0, atol=fp32 + 2 * _tolerance(m, clean, full.dtype)
        )
