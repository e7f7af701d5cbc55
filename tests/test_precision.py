"""bf16 models (issue 8): mech accumulates attention mass and metrics in fp32.

Oracle: the same random weights in fp32 with eager ``output_attentions`` (mass) and plain Hugging
Face logits (logit difference). A bf16 forward differs from it by bf16 rounding of the activations
(~1e-2); what mech adds on top must not be bf16-sized: the mass rows sum to one to fp32 precision,
and results come back as fp32. The GPU variant (SDPA/flash on CUDA) is marked ``gpu`` and skipped
where no GPU is present.
"""

from __future__ import annotations

import copy

import pytest
import torch

import mech
from mech.testing.tiny import tiny_inputs, tiny_model


def _oracle_last_mass(m, inputs) -> torch.Tensor:
    """``[batch, layer, head, group]`` attention mass of the last position, eager fp32, by hand."""
    with torch.no_grad():
        out = m.model(**inputs, output_attentions=True, use_cache=False)
    last, one_hot = inputs.groups.last(), inputs.groups.one_hot()
    rows = torch.arange(len(last))
    return torch.stack(
        [torch.einsum("bhs,bsg->bhg", a[rows, :, last].float(), one_hot) for a in out.attentions], 1
    )


def _pair(family: str, device: str = "cpu"):
    model, proc = tiny_model(family, attn_implementation="eager")
    m32 = mech.load((model, proc))
    low = copy.deepcopy(model).to(device=device, dtype=torch.bfloat16)
    low.set_attn_implementation("sdpa")
    return m32, mech.load((low, proc)), proc


def _check(family: str, device: str) -> None:
    m32, m16, proc = _pair(family, device)
    raw = tiny_inputs(family, proc, batch=2)
    want = _oracle_last_mass(m32, m32.inputs(raw))
    inputs16 = m16.inputs(raw).to(device=device, dtype=torch.bfloat16)  # dtype: floating-point inputs only
    am = mech.attention_mass(m16, inputs16, query="last")
    assert am.mass.dtype == torch.float32
    valid = inputs16.groups.valid.any(-1)
    sums = am.mass.sum(-1)
    torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-5, rtol=0)  # fp32 softmax rows
    assert valid.all()
    err = (am.mass.cpu() - want).abs().max().item()
    assert err < 5e-2, err  # bf16 rounding of q/k only


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_bf16_attention_mass_is_accumulated_in_fp32(family):
    _check(family, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_bf16_attention_mass_on_cuda(family):
    _check(family, "cuda")
