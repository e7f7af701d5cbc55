"""Tolerances of the tests, derived from the dtype's precision and the size of what is compared.

Two computations of the same quantity (mech's and an oracle's) may take different kernels (SDPA or
eager attention, one position's unembedding or the whole sequence's, AVX-512 or AVX2 or no vector
unit: ``ATEN_CPU_CAPABILITY``), so they agree only up to rounding. A tolerance is then a bound on
rounding, never a number tuned on one machine: Higham's ``γ_n = n·u / (1 − n·u)`` (u = eps / 2, the
unit roundoff) bounds the relative error of a sum or dot product of ``n`` terms (*Accuracy and Stability
of Numerical Algorithms*, 2nd ed., §3.1), times the magnitude of the terms.
"""

from __future__ import annotations

import torch

__all__ = [
    "assert_close_scaled",
    "dot_bound",
    "gamma",
    "probability_rel_bound",
    "softmax_rel_bound",
    "unembed_scale",
    "unit_roundoff",
]


def unit_roundoff(dtype: torch.dtype) -> float:
    """``u = eps / 2`` of ``dtype`` (fp32: 5.96e-8; fp64: 1.11e-16)."""
    return torch.finfo(dtype).eps / 2


def gamma(n: int, dtype: torch.dtype) -> float:
    """Higham's ``γ_n = n·u / (1 − n·u)``: the relative error bound of a sum of ``n`` terms in ``dtype``."""
    nu = n * unit_roundoff(dtype)
    if nu >= 1:
        raise ValueError(f"n={n} terms exceed what {dtype} can bound (n·u = {nu:.2g} ≥ 1)")
    return nu / (1 - nu)


def dot_bound(n: int, dtype: torch.dtype, magnitude: float) -> float:
    """How far two evaluations of a length-``n`` dot product (or sum) in ``dtype`` can differ when the
    sum of the terms' absolute values is at most ``magnitude``: ``2·γ_n·magnitude`` (each is within
    ``γ_n·magnitude`` of the exact value)."""
    return 2 * gamma(n, dtype) * float(magnitude)


def softmax_rel_bound(logit_error: float, vocab: int, dtype: torch.dtype) -> float:
    """Relative error bound of ``softmax(z)[i]`` evaluated in ``dtype`` from logits each within
    ``logit_error`` of the exact ones: ``|Δ log p| ≤ 2·max|Δz|`` (a shift of every logit cancels), plus
    the evaluation itself (``exp``, a sum of ``vocab`` terms, a division: ``γ_{vocab + 2}``)."""
    return 2 * float(logit_error) + gamma(vocab + 2, dtype)


def assert_close_scaled(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    n: int,
    dtype: torch.dtype = torch.float32,
    scale: float | None = None,
    msg: str | None = None,
) -> None:
    """Assert ``|actual − expected| ≤ dot_bound(n, dtype, scale)`` elementwise: two computations of the
    same values whose last ``n``-term reductions (e.g. ``n_layers · (d_model + pos)`` along a forward)
    ran in ``dtype`` through different kernels. ``scale``: the magnitude the reductions worked at;
    default the largest ``|value|`` of the two tensors (NaN where both are NaN counts as equal)."""
    actual, expected = actual.double(), expected.double()
    if scale is None:
        both = torch.cat([actual.flatten(), expected.flatten()])
        finite = both[torch.isfinite(both)]
        scale = float(finite.abs().max()) if finite.numel() else 0.0
    torch.testing.assert_close(
        actual,
        expected,
        rtol=0,
        atol=dot_bound(n, dtype, scale),
        equal_nan=True,
        msg=None if msg is None else lambda text: f"{msg}: {text}",
    )


def unembed_scale(m, inputs) -> float:
    """``max ‖W_U row‖₂ · max ‖final normed hidden‖₂ + max |b_U|`` over ``inputs``' positions: by
    Cauchy–Schwarz, a bound on the sum of the absolute terms of any logit's dot product, the magnitude
    at which the unembedding rounds (``m``: a :class:`~mech.MechModel`)."""
    from mech.engines.hooks import run_with_cache

    with torch.no_grad():
        _, cache = run_with_cache(m, inputs, ["ln_final.hook_normalized"])
        h = float(cache["ln_final.hook_normalized"].float().norm(dim=-1).max())
        unembed = m.arch.module(m.model, "unembed")
        w = float(unembed.weight.float().norm(dim=-1).max())
        b = float(unembed.bias.float().abs().max()) if getattr(unembed, "bias", None) is not None else 0.0
    return w * h + b


def probability_rel_bound(m, inputs, dtype: torch.dtype = torch.float32) -> float:
    """Relative bound on how far two ``dtype`` evaluations of a next-token probability through different
    kernels can differ: the logits through ``n_layers · (d_model + pos)``-term reductions at
    :func:`unembed_scale`, then the softmax (:func:`softmax_rel_bound`), for each of the two."""
    terms = m.arch.n_layers * (m.arch.d_model + inputs["input_ids"].shape[1])
    return 2 * softmax_rel_bound(dot_bound(terms, dtype, unembed_scale(m, inputs)), m.arch.vocab_size, dtype)
