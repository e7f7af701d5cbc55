"""Correctness on the benchmark's device (``benchmarks/gpu.py``): mech's numbers in bf16 against fp32.

On a truncated real-width model of each family (the published config with the decoder cut to a few layers;
in ``--dry-run`` the scaled-down config), built in fp32 and copied to bf16 (the same weights, rounded):

* ``attention_mass_oracle``: ``mech.attention_mass(query="last").mass`` (SDPA + mech's recorder) against
  the oracle, eager ``output_attentions=True`` summed over each group's keys (float64), of the same model:
  max |difference| over ``[layer, head, group]``; ``attention_mass_bf16_vs_fp32``: the bf16 model's mech mass
  against the fp32 model's oracle.
* ``dla_completeness``: ``mech.measure.dla.direct_logit_attribution``: max over samples of
  |Σ components − logit difference| / Σ |components| (the components must sum to the logit difference).
* ``decomposition_completeness``: ``mech.curves.decomposition.decompose`` with Gaussian-noise removal
  (no donor needed): |Σ φ − (decision − rest)| / (Σ |φ| + |decision| + |rest|).

Tolerance, a first-order error model rather than a number tuned on one machine: each of the ``L`` layers may
add one rounding ``u`` of the dtype (bf16 2^-8, fp32 2^-24) to what is compared, plus the worst case of one
fp32 sum over ``n`` terms (``n·2^-24``; n = keys for the mass, d_model for the readouts):
``tol = (L + 1)·u + n·2^-24``.
"""

from __future__ import annotations

import copy

import torch
from gpu_models import build, images_for, synthetic
from gpu_rows import eager_text

U = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8}
NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}


def _eager_mass(m, inputs) -> torch.Tensor:
    """Oracle ``[layer, head, group]`` (float64): eager attention weights of the last query row, summed
    over each group's key positions."""
    with eager_text(m), torch.no_grad():
        att = m.model(**inputs, use_cache=False, logits_to_keep=1, output_attentions=True).attentions
    one_hot = inputs.groups.one_hot()[0].double().to(att[0].device)  # [key, group]
    return torch.stack([a[0, :, -1].double() @ one_hot for a in att]).cpu()


def _tol(m, dtype, n: int) -> float:
    return (m.arch.n_layers + 1) * U[dtype] + n * U[torch.float32]


def _check(label, name, dtype, value, tol, n_visual, **extra) -> dict:
    ok = value is not None and value == value and value <= tol
    return {
        "model": label,
        "check": name,
        "dtype": NAMES[dtype],
        "value": value,
        "tolerance": tol,
        "passed": bool(ok),
        "visual_tokens": n_visual,
        **extra,
    }


def checks(family: str, cfg, device: str, n_visual: int, label: str) -> list[dict]:
    """The checks above for one family at about ``n_visual`` image tokens; a list of check dicts
    (``model``, ``check``, ``dtype``, ``value``, ``tolerance``, ``passed``, ``visual_tokens``)."""
    import mech
    from mech.curves.decomposition import decompose, noise_removals
    from mech.measure.dla import direct_logit_attribution

    m32, _ = build(family, cfg, device, torch.float32)
    m16 = mech.load((copy.deepcopy(m32.model).to(torch.bfloat16), None))
    images = images_for(family, cfg, n_visual)
    raw = synthetic(family, cfg, [images])
    n_tok = images.tokens(family, cfg)
    inputs32 = m32.inputs(raw)
    keys = int(inputs32["input_ids"].shape[1])
    d_model = m32.arch.d_model
    oracle32 = _eager_mass(m32, inputs32)
    with torch.no_grad():
        top = m32.model(**inputs32, use_cache=False, logits_to_keep=1).logits[:, -1].float().topk(2).indices
    answer, cf = top[:, 0].cpu(), top[:, 1].cpu()
    out = []
    for m, dtype in ((m32, torch.float32), (m16, torch.bfloat16)):
        inputs = m.inputs(raw)
        mass = mech.attention_mass(m, inputs, query="last").mass[0].double().cpu()
        oracle = oracle32 if dtype == torch.float32 else _eager_mass(m, inputs)
        out.append(
            _check(
                label,
                "attention_mass_oracle",
                dtype,
                float((mass - oracle).abs().max()),
                _tol(m, dtype, keys),
                n_tok,
                keys=keys,
            )
        )
        if dtype == torch.bfloat16:
            out.append(
                _check(
                    label,
                    "attention_mass_bf16_vs_fp32",
                    dtype,
                    float((mass - oracle32).abs().max()),
                    _tol(m, dtype, keys),
                    n_tok,
                    keys=keys,
                )
            )
        d = direct_logit_attribution(m, inputs, answer, cf)
        parts = (
            d.attn.abs().sum((1, 2))
            + d.attn_bias.abs().sum(1)
            + d.mlp.abs().sum(1)
            + d.embed.abs()
            + d.unembed_bias.abs()
        ).double()
        rel = ((d.total() - d.logit_diff).double().abs() / parts.clamp(min=1e-30)).max()
        out.append(
            _check(
                label,
                "dla_completeness",
                dtype,
                float(rel),
                _tol(m, dtype, d_model),
                n_tok,
                logit_diff=float(d.logit_diff[0]),
            )
        )
        dec = decompose(m, inputs, answer, cf, noise_removals(m, inputs, ("image", "text"), seed=0))
        scale = (
            dec.attn.abs().sum((1, 2))
            + dec.mlp.abs().sum((1, 2))
            + dec.embed.abs().sum(-1)
            + dec.decision.abs()
            + dec.rest.abs()
        ).double()
        rel = (dec.residual().double().abs() / scale.clamp(min=1e-30))[dec.rows].max()
        out.append(
            _check(
                label,
                "decomposition_completeness",
                dtype,
                float(rel),
                _tol(m, dtype, d_model),
                n_tok,
                mech_completeness=dec.completeness(),
            )
        )
    del m32, m16
    return out
