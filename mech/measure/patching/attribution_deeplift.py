"""``method="deeplift"`` of :func:`mech.attribution_patching`: AtP whose local gradients are replaced by
finite-difference multipliers between the two runs (DeepLIFT, Shrikumar, Greenside & Kundaje 2017,
"Learning Important Features Through Propagating Activation Differences", §3.3–3.5; the corrupted or
clean run is DeepLIFT's *reference*). Like RelP (Jafari et al. 2025, "Relevance Patching") it keeps
AtP's cost, two forwards and one backward, **3 forward-equivalents**, and changes only what the
backward propagates.

Every nonlinear operation ``y = f(x)`` of the decoder is given, in the target run, the multiplier
``m`` with ``Δy = m · Δx`` *exactly* for the pair of runs (``Δ`` = source run − target run):

* elementwise activations (SiLU, GELU, …): the secant ``(f(x_s) − f(x_t)) / (x_s − x_t)`` (the
  Rescale rule, DeepLIFT §3.5.2; the derivative where the two inputs are equal);
* products ``a · b`` (the gated MLP ``act(gate) · up``; ``q kᵀ`` and ``p v`` in attention):
  ``Δ(ab) = ā Δb + b̄ Δa`` with ``ā = (a_s + a_t)/2`` (exact; the Shapley split of a product);
* RMSNorm / LayerNorm: ``u · rsqrt(mean(u²) + ε)`` split into the quadratic ``mean(u²)`` (exact
  with the mean of the two runs), the secant of ``rsqrt`` and the product rule (``u = x`` or
  ``x − mean(x)``; the formula, and Gemma's ``1 + w`` weight, are recognised from the module's own
  output on the reference run);
* softmax over keys: ``log p = z − logsumexp(z)``; ``Δ logsumexp`` uses the mean of the two runs'
  probabilities plus the least-norm correction along ``Δz`` that makes it exact, and ``p = exp(log
  p)`` its secant; Gemma-2 score soft-capping ``c · tanh(z / c)`` its secant;
* the metric: the mean of its gradients at the two runs' logits plus the same exact correction.

Linear maps (projections, RoPE, residual adds, the unembedding) pass ``Δ`` unchanged. So every
*complete cut* of the network sums exactly to the metric difference ("summation-to-delta",
DeepLIFT eq. 1): the estimates of patching ``resid_pre`` at *all* positions of a layer add up to
``M(source) − M(target)``. :func:`completeness` measures that and the result's ``meta`` reports it.
For one group the estimate is first-order in the interactions between positions only; the organisms'
S-shaped responses to a whole image, which the gradient at one end misses, are followed exactly.

The forward values of the target run are the model's own (each rule adds a zero-valued tangent
``m · (x − x.detach())`` to the detached output), so the metric and cached activations are unchanged.
Operations without a rule (e.g. Gemma-2's final-logit soft-capping outside the decoder) keep their
local gradient and show as a completeness error. Needs runs of the same length (``align="strict"``)
and an ``sdpa``/``eager`` decoder; the target forward materialises the attention scores of both runs
(eager-attention memory).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mech.engines.attention_fn import inner_function, swap_attention
from mech.engines.edge_blocker import EdgeBlocker
from mech.errors import ConfigError

__all__ = ["References", "completeness", "difference_run", "metric_with_multipliers", "reference_run"]

_EPS_NAMES = ("variance_epsilon", "eps", "epsilon")


def _activation_classes() -> tuple[type, ...]:
    from transformers.activations import ACT2CLS

    found = {c[0] if isinstance(c, tuple) else c for c in ACT2CLS.values()}
    found |= {nn.SiLU, nn.GELU, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Mish, nn.SELU, nn.ELU, nn.LeakyReLU}
    return tuple(c for c in found if isinstance(c, type))


def _secant(f: Callable, x: torch.Tensor, xr: torch.Tensor, deriv: Callable) -> torch.Tensor:
    """``(f(xr) − f(x)) / (xr − x)``, ``deriv(x)`` where the two are equal. No tolerance: near-equal inputs
    lose precision to cancellation, but their contribution ``m · Δx`` stays within rounding of ``f``, while the
    derivative would be off by ``f''·Δx²/2`` (large for ``rsqrt`` of a small variance)."""
    d = xr - x
    same = d == 0
    return torch.where(same, deriv(x), (f(xr) - f(x)) / torch.where(same, torch.ones_like(d), d))


def _tangent(t: torch.Tensor) -> torch.Tensor:
    """Zero-valued, carries ``t``'s gradient path: the rules' ``Δx``."""
    return t - t.detach()


def _f(t: torch.Tensor) -> torch.Tensor:
    """``t`` in at least float32 (float64 stays float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _numeric_deriv(f: Callable) -> Callable:
    return lambda t: (f(t + 1e-3) - f(t - 1e-3)) / 2e-3


@dataclass
class References:
    """What the reference (source) run left for the rules of the target run, keyed by module name.

    ``norms``: name -> (kind ``"rms"``/``"rms1"``/``"layer"``, ε, input ``[.., d]``);
    ``acts``: name -> input; ``gates``: MLP name -> (activation output, up projection output);
    ``attn``: layer -> (q, k, v) as the attention function received them; ``local``: operations
    left to their local gradient (no rule recognised), with the reason.
    """

    norms: dict[str, tuple] = field(default_factory=dict)
    acts: dict[str, torch.Tensor] = field(default_factory=dict)
    gates: dict[str, tuple] = field(default_factory=dict)
    attn: dict[int, tuple] = field(default_factory=dict)
    local: dict[str, str] = field(default_factory=dict)
    current: dict[str, torch.Tensor] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ norms
def _norm_kind(mod: nn.Module, x: torch.Tensor, out: torch.Tensor) -> tuple[str, float] | None:
    """Which formula ``mod`` computes on ``x`` (checked against its own ``out``), or None."""
    w = getattr(mod, "weight", None)
    eps = next(
        (float(getattr(mod, n)) for n in _EPS_NAMES if isinstance(getattr(mod, n, None), (int, float))), 1e-6
    )
    if not isinstance(w, torch.Tensor) or w.dim() != 1 or w.shape[0] != x.shape[-1]:
        return None
    xf, o, wf = x.float(), out.float(), w.float()
    b = getattr(mod, "bias", None)
    rms = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    u = xf - xf.mean(-1, keepdim=True)
    ln = u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + eps)
    tol = (1e-2 if out.dtype in (torch.float16, torch.bfloat16) else 1e-4) * (o.abs().max() + 1)
    for kind, cand in (
        ("rms", wf * rms),
        ("rms1", (1 + wf) * rms),
        ("layer", wf * ln + (b.float() if isinstance(b, torch.Tensor) else 0)),
    ):
        if (cand - o).abs().max() <= tol:
            return kind, eps
    return None


def _norm_rule(kind: str, eps: float, w: torch.Tensor, x: torch.Tensor, xr: torch.Tensor) -> torch.Tensor:
    """Tangent of the norm output for input ``x`` (target, carrying Δ) and reference input ``xr``."""
    xf, xr = _f(x), _f(xr)
    u, ur = (xf, xr) if kind != "layer" else (xf - xf.mean(-1, keepdim=True), xr - xr.mean(-1, keepdim=True))
    du, ud = _tangent(u), u.detach()
    var, varr = ud.pow(2).mean(-1, keepdim=True), ur.pow(2).mean(-1, keepdim=True)
    rs = lambda t: torch.rsqrt(t + eps)  # noqa: E731
    ds = _secant(rs, var, varr, lambda t: -0.5 * (t + eps) ** -1.5) * ((ud + ur) * du).mean(-1, keepdim=True)
    dn = (rs(var) + rs(varr)) / 2 * du + (ud + ur) / 2 * ds
    scale = _f(w) + 1 if kind == "rms1" else _f(w)
    return scale * dn


# -------------------------------------------------------------------------------------- attention
class _Attention:
    """An ``AttentionInterface`` function: records ``q, k, v`` (reference run) or adds the exact-difference
    tangent to the wrapped implementation's output (target run)."""

    def __init__(self, inner: str, refs: References, record: bool):
        if inner.startswith("flash") or inner.startswith("paged"):
            raise ConfigError(
                f"method='deeplift' needs the attention scores, which {inner!r} does not form; load the "
                "model with attn_implementation='sdpa' or 'eager'"
            )
        self.inner, self.refs, self.record, self._fn = inner, refs, record, None

    def __call__(self, module, query, key, value, attention_mask, **kwargs):
        if self._fn is None:
            self._fn = inner_function(self.inner, module)
        layer = int(module.layer_idx)
        if self.record:
            self.refs.attn[layer] = (query.detach(), key.detach(), value.detach())
            return self._fn(module, query, key, value, attention_mask, **kwargs)
        if layer not in self.refs.attn:
            self.refs.local[f"attention.{layer}"] = "no reference run"
            return self._fn(module, query, key, value, attention_mask, **kwargs)
        out, weights = self._fn(
            module, query.detach(), key.detach(), value.detach(), attention_mask, **kwargs
        )
        d = self.tangent(module, query, key, value, attention_mask, self.refs.attn[layer], kwargs)
        return out + d.transpose(1, 2).to(out.dtype), weights

    @staticmethod
    def tangent(module, q, k, v, mask, ref: tuple, kwargs: dict) -> torch.Tensor:
        """``Δ out`` ``[batch, head, query, d_head]`` from the rules of the module docstring."""
        rep = q.shape[1] // k.shape[1]
        qr, kr, vr = (_f(t) for t in ref)
        kr, vr = kr.repeat_interleave(rep, 1), vr.repeat_interleave(rep, 1)
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        qd, kd, vd = _f(q.detach()), _f(k.detach()), _f(v.detach())
        scale = kwargs.get("scaling") or q.shape[-1] ** -0.5
        base = EdgeBlocker.base_mask(module, mask, q, k.shape[2], kwargs)
        allowed = base if base.dtype == torch.bool else base > torch.finfo(base.dtype).min / 2
        a = _f(allowed)
        z, zr = scale * qd @ kd.transpose(-1, -2), scale * qr @ kr.transpose(-1, -2)
        dz = scale * (
            _f(_tangent(q)) @ ((kd + kr) / 2).transpose(-1, -2)
            + ((qd + qr) / 2) @ _f(_tangent(k)).transpose(-1, -2)
        )
        cap = kwargs.get("softcap")
        if cap:
            capped = lambda t: cap * torch.tanh(t / cap)  # noqa: E731
            dz = _secant(capped, z, zr, lambda t: 1 - torch.tanh(t / cap) ** 2) * dz
            z, zr = capped(z), capped(zr)

        def logp(t):
            lse = torch.logsumexp(t.masked_fill(~allowed, -1e30), -1, keepdim=True)
            return torch.where(allowed, t - lse, torch.zeros_like(t)), lse

        (lp, lse), (lpr, lser) = logp(z), logp(zr)
        p, pr = torch.exp(lp) * a, torch.exp(lpr) * a
        pbar, big_dz = (p + pr) / 2, (zr - z) * a
        n2 = big_dz.pow(2).sum(-1, keepdim=True)
        corr = (lser - lse) - (pbar * big_dz).sum(-1, keepdim=True)
        w = (pbar + torch.where(n2 > 1e-12, corr / n2.clamp_min(1e-12), torch.zeros_like(n2)) * big_dz) * a
        dlp = (dz - (w * dz).sum(-1, keepdim=True)) * a
        dp = _secant(torch.exp, lp, lpr, torch.exp) * a * dlp
        return dp @ ((vd + vr) / 2) + pbar @ _f(_tangent(v))


# ---------------------------------------------------------------------------------------- modules
def _modules(m) -> Iterator[tuple[str, nn.Module]]:
    return m.arch.module(m.model, "language_model").named_modules()


def _gated(m) -> list[tuple[str, nn.Module, nn.Module, nn.Module]]:
    """``(mlp name, act, up, down)`` per decoder layer whose MLP has the table's gate paths."""
    out = []
    act_p, up_p, down_p = m.arch.table.mlp_gate or (None, None, None)
    if act_p is None:
        return out
    for layer in range(m.arch.n_layers):
        mlp = m.arch.module(m.model, "mlp", layer)
        parts = [getattr(mlp, p, None) for p in (act_p, up_p, down_p)]
        if all(isinstance(p, nn.Module) for p in parts):
            out.append((f"mlp.{layer}", *parts))
    return out


def reference_run(m, refs: References) -> contextlib.AbstractContextManager[References]:
    """Record, during one forward of the source run, what :func:`difference_run` needs. Hooks and the
    attention implementation are restored in ``finally`` (only what was added here)."""
    return _installed(m, refs, lambda handles: _register_reference(m, refs, handles), record=True)


def _capture_gate(refs: References, name: str, act: nn.Module, up: nn.Module) -> list:
    """Hooks keeping this forward's activation and up-projection outputs of one gated MLP in ``refs.current``."""
    return [
        act.register_forward_hook(lambda mod, a, out: refs.current.__setitem__(name + ".a", out)),
        up.register_forward_hook(lambda mod, a, out: refs.current.__setitem__(name + ".b", out)),
    ]


def _register_reference(m, refs: References, handles: list) -> None:
    acts = _activation_classes()

    def norm_hook(name):
        def hook(mod, args, out):
            kind = _norm_kind(mod, args[0], out)
            if kind is None:
                refs.local[name] = "normalisation formula not recognised"
            else:
                refs.norms[name] = (*kind, args[0].detach())

        return hook

    for name, mod in _modules(m):
        w = getattr(mod, "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() == 1 and not list(mod.children()):
            handles.append(mod.register_forward_hook(norm_hook(name)))
        elif isinstance(mod, acts):
            handles.append(
                mod.register_forward_hook(
                    lambda mod, args, out, name=name: refs.acts.__setitem__(name, args[0].detach())
                )
            )
    for name, act, up, down in _gated(m):
        handles += _capture_gate(refs, name, act, up)

        def down_hook(mod, args, n=name):
            a, b = refs.current.pop(n + ".a", None), refs.current.pop(n + ".b", None)
            if (
                a is None
                or b is None
                or a.shape != args[0].shape
                or not torch.allclose(a * b, args[0], rtol=1e-3, atol=1e-5)
            ):
                refs.local[n] = "MLP input is not act(gate) · up"
            else:
                refs.gates[n] = (a.detach(), b.detach())

        handles.append(down.register_forward_pre_hook(down_hook))


def difference_run(m, refs: References) -> contextlib.AbstractContextManager[References]:
    """Apply the rules (module docstring) during one forward of the target run, whose values stay the
    model's. Hooks and the attention implementation are restored in ``finally``.

    Raises:
        ConfigError: flash attention (no scores to difference).
    """
    return _installed(m, refs, lambda handles: _register_difference(m, refs, handles), record=False)


def _register_difference(m, refs: References, handles: list) -> None:
    def norm_hook(name):
        def hook(mod, args, out):
            kind, eps, xr = refs.norms[name]
            if xr.shape != args[0].shape:
                raise ConfigError(
                    f"method='deeplift' needs two runs of the same shape; {name} got {tuple(args[0].shape)} "
                    f"and {tuple(xr.shape)}"
                )
            return out.detach() + _norm_rule(kind, eps, mod.weight, args[0], xr).to(out.dtype)

        return hook

    def act_hook(name):
        def hook(mod, args, out):
            x, xr = args[0], refs.acts[name]
            f = mod.forward
            mult = _secant(lambda t: _f(f(t)), _f(x.detach()), _f(xr), _numeric_deriv(lambda t: _f(f(t))))
            return out.detach() + (mult * _f(_tangent(x))).to(out.dtype)

        return hook

    for name, mod in _modules(m):
        if name in refs.norms:
            handles.append(mod.register_forward_hook(norm_hook(name)))
        elif name in refs.acts:
            handles.append(mod.register_forward_hook(act_hook(name)))
    for name, act, up, down in _gated(m):
        if name not in refs.gates:
            continue
        handles += _capture_gate(refs, name, act, up)

        def down_hook(mod, args, n=name):
            a, b = refs.current.pop(n + ".a"), refs.current.pop(n + ".b")
            ar, br = refs.gates[n]
            h = args[0]
            dh = (a.detach() + ar) / 2 * _tangent(b) + (b.detach() + br) / 2 * _tangent(a)
            return (h.detach() + dh.to(h.dtype), *args[1:])

        handles.append(down.register_forward_pre_hook(down_hook))


@contextlib.contextmanager
def _installed(m, refs: References, register: Callable[[list], None], record: bool) -> Iterator[References]:
    """Register the rule or recording hooks (``register`` appends their handles) and swap in the attention
    function; on exit, exceptions included, remove exactly those handles and restore the attention."""
    handles: list = []
    try:
        register(handles)
        with swap_attention(m, lambda inner: _Attention(inner, refs, record=record), "mech_deeplift"):
            yield refs
    finally:
        for h in handles:
            h.remove()
        refs.current.clear()


def metric_with_multipliers(
    metric: Callable[[torch.Tensor], torch.Tensor], target: torch.Tensor, source: torch.Tensor
) -> torch.Tensor:
    """``metric(target)`` ``[batch]`` whose gradient w.r.t. the logits ``target`` ``[batch, vocab]`` is the
    exact-difference multiplier: the mean of the gradients at ``target`` and ``source`` plus the least-norm
    correction along ``Δ = source − target`` that makes ``multiplier · Δ = metric(source) − metric(target)``."""
    t, s = _f(target.detach()), _f(source.detach())

    def grad_at(x):
        x = x.clone().requires_grad_(True)
        with torch.enable_grad():
            val = metric(x)
            return val.detach(), torch.autograd.grad(val.sum(), x)[0]

    (vt, gt), (vs, gs) = grad_at(t), grad_at(s)
    delta = s - t
    w = (gt + gs) / 2
    n2 = delta.pow(2).sum(-1, keepdim=True)
    corr = (vs - vt)[:, None] - (w * delta).sum(-1, keepdim=True)
    w = w + torch.where(n2 > 1e-12, corr / n2.clamp_min(1e-12), torch.zeros_like(n2)) * delta
    return vt + (w * _f(_tangent(target))).sum(-1)


def completeness(
    delta_all: torch.Tensor, source_metric: torch.Tensor, target_metric: torch.Tensor
) -> dict[str, Any]:
    """Summation-to-delta check (DeepLIFT eq. 1) of the estimates of patching ``resid_pre`` at *every*
    position of a layer, ``delta_all`` ``[layer, batch]`` (metric units), against the actual metric
    difference ``source − target`` ``[batch]``.

    Returns:
        ``{"max_abs_error": float, "relative_error": float}``: the largest absolute gap and that gap over
        the mean ``|source − target|`` (0 up to rounding when every operation has a rule).
    """
    actual = source_metric - _f(target_metric)
    gap = (_f(delta_all) - actual[None]).abs()
    scale = float(actual.abs().mean()) or 1.0
    return {
        "max_abs_error": float(gap.max()) if gap.numel() else 0.0,
        "relative_error": float(gap.max()) / scale if gap.numel() else 0.0,
    }
