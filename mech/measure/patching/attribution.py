"""Attribution patching, AtP (Nanda 2023, "Attribution Patching: Activation Patching At Industrial
Scale"; Kramár et al. 2024, "AtP*: An efficient and scalable method for localizing LLM behaviour to
components", eq. 3): a first-order Taylor estimate of every activation patch from one forward-backward.

For a site ``a`` (an activation at one layer) and a position group ``G``, denoising (clean
activations into the corrupted run) changes the metric ``M`` by approximately

    ΔM ≈ Σ_{p ∈ G} (a_clean[p] − a_corrupted[p]) · ∂M/∂a[p] |_corrupted run

(the dot product runs over ``d_model``; for ``z`` over ``d_head`` per head). Noising swaps the runs:
``(a_corrupted − a_clean) · ∂M/∂a |_clean run``. Positions are paired exactly as
:mod:`mech.measure.patching.align` pairs them (one to one for same-length conditions; text by common
subsequence, the answer position to the answer position for ``no_image``/``image_only``).

``method="deeplift"`` keeps the gradient at the target run but replaces every nonlinearity's local
derivative by the finite-difference multiplier between the two runs (DeepLIFT, Shrikumar et al. 2017),
so complete cuts sum exactly to the metric difference: see :mod:`mech.measure.patching.attribution_deeplift`.
``method="ig"`` replaces the gradient at the target run by its mean along the straight path between
the two runs' decoder inputs (integrated gradients, Sundararajan et al. 2017; EAP-IG, Hanna et al.
2024 §3): see :mod:`mech.measure.patching.attribution_grad`.

The metric, its targets (answer = the clean run's top token, counterfactual = the corrupted run's
top other token), and the normalisation are those of :mod:`mech.measure.patching.metrics`: the estimated
patched metric is ``target + ΔM`` and the normalized effect is
``(patched − corrupted) / (clean − corrupted)`` (denoising) or ``(clean − patched) / (clean −
corrupted)`` (noising), so ``AtPResult.effect`` is directly comparable with
``PatchingResult.effect`` (:func:`compare_to_exact`).

Cost (``method="atp"``): one forward of the source run (cached activations), one forward and one
backward of the target run. The backward computes gradients with respect to activations only (the
parameters are set ``requires_grad=False`` for the duration and restored in ``finally``; zero tensors
added at every site are the only leaves), so it costs about one forward in FLOPs: **3
forward-equivalents** in all, whatever the number of sites, layers and groups (``"deeplift"`` too);
``method="ig"``: ``2 + 2·ig_steps``. Known limits (Kramár et al. 2024, §3): the linear estimate fails where attention
saturates (softmax near one-hot) and where a patch crosses a nonlinearity far from its tangent; on
the shipped organisms the second dominates at the residual stream (numbers in
``benchmarks/bench_attribution.py``). The KL metric has zero gradient on the clean run, so noising
AtP with ``metric="kl"`` is identically zero.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch

from mech.engines import hooks as H
from mech.engines.unembed import unembed_at
from mech.measure.patching.attribution_deeplift import References, completeness, difference_run, metric_with_multipliers, reference_run
from mech.measure.patching.attribution_grad import METHODS, Method, check_method, decoder_inputs, enter, forward_equivalents
from mech.errors import ConfigError, InputError
from mech.measure.patching.align import Alignment
from mech.measure.patching.metrics import Metric, normalized_effect
from mech.measure.patching.setup import prepare
from mech.measure.patching.sites import hook_name

__all__ = ["attribution_patching", "AtPResult", "compare_to_exact", "pearson", "FORWARD_EQUIVALENTS", "METHODS"]

#: ``method="atp"``: source forward + target forward + activation-gradient backward (≈ one forward in FLOPs)
FORWARD_EQUIVALENTS = 3.0


@dataclass
class AtPResult:
    """What :func:`attribution_patching` estimated (shapes as :class:`mech.measure.patching.PatchingResult`).

    Attributes:
        effect: site -> estimated normalized patching effect ``[layer, group]`` (``z``: ``[layer, head, group]``);
            NaN for a group with no patched position.
        patched: site -> estimated metric of the patched runs ``[layer, group, batch]`` = target metric + ΔM.
        delta: site -> the estimate ΔM itself ``[layer, group, batch]``.
        clean_metric, corrupted_metric: ``[batch]`` metric of the two unpatched runs.
        groups, layers, direction, metric: as in :class:`mech.measure.patching.PatchingResult`.
        forward_equivalents: 3.0 for ``"atp"``, ``2 + 2·steps`` for ``"ig"``; ``meta["wall_s"]`` has
            per-pass wall times. ``method``: ``"atp"`` or ``"ig"``; ``meta["ig_steps"]`` for ``"ig"``.
        answer, counterfactual: LongTensor ``[batch]`` (CPU): the token ids this batch was scored
            against (as :class:`mech.measure.patching.PatchingResult`); None where the metric needs none.
    """

    effect: dict[str, torch.Tensor]
    patched: dict[str, torch.Tensor]
    delta: dict[str, torch.Tensor]
    clean_metric: torch.Tensor
    corrupted_metric: torch.Tensor
    groups: tuple[str, ...]
    layers: list[int]
    direction: str
    metric: str
    corruption: str | None
    forward_equivalents: float = FORWARD_EQUIVALENTS
    meta: dict[str, Any] = field(default_factory=dict)
    method: str = "atp"
    answer: torch.Tensor | None = None
    counterfactual: torch.Tensor | None = None

    def to_json(self) -> dict:
        """JSON-ready: ``effect.{site}.{group}`` per layer (``z``: per layer, per head), metrics, metadata."""
        name = {"atp": "attribution patching (AtP)", "ig": "attribution patching, integrated gradients (EAP-IG)",
                "deeplift": "attribution patching, DeepLIFT multipliers"}
        return {
            "method": name.get(self.method, self.method), "corruption": self.corruption, "direction": self.direction,
            "metric": self.metric, "clean_metric": float(self.clean_metric.mean()),
            "corrupted_metric": float(self.corrupted_metric.mean()), "layers": self.layers,
            "groups": list(self.groups),
            "effect": {s: {g: e[..., i].tolist() for i, g in enumerate(self.groups)} for s, e in self.effect.items()},
            "forward_equivalents": self.forward_equivalents, **self.meta,
        }

    def to_frame(self, per_sample: bool = False):
        """As :meth:`mech.measure.patching.PatchingResult.to_frame`; per sample also ``delta`` (after ``patched``)."""
        from mech.frames import patching_frame
        return patching_frame(self, per_sample)

    def tensors(self) -> dict[str, torch.Tensor]:
        """safetensors content: ``effect.{site}``, ``patched.{site}``, ``delta.{site}``, the two metrics."""
        out = {"clean_metric": self.clean_metric, "corrupted_metric": self.corrupted_metric}
        for s in self.effect:
            out.update({f"effect.{s}": self.effect[s], f"patched.{s}": self.patched[s], f"delta.{s}": self.delta[s]})
        return out


def grad_run(m, inputs, names: list[str], contexts: list = (), points=None) -> tuple[torch.Tensor, dict, dict]:
    """Forward of ``inputs`` with a zero leaf added at every hook name (resolved in ``points``, default
    :data:`~mech.engines.hooks.HOOK_POINTS`), under ``contexts`` (entered in order: a context manager, a
    factory of one, or None). Returns the answer position's logits ``[batch, vocab]`` (in the graph), the
    activations (detached) and the leaves. Parameters are frozen meanwhile (flags restored in ``finally``)."""
    acts: dict[str, torch.Tensor] = {}
    leaves: dict[str, torch.Tensor] = {}

    def add_leaf(x, hook):
        acts[hook.name] = x.detach()
        leaf = torch.zeros_like(x, requires_grad=True)
        leaves[hook.name] = leaf
        return x + leaf

    params = list(m.model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        with ExitStack() as stack:
            for c in contexts:
                enter(stack, c)
            stack.enter_context(torch.enable_grad())
            stack.enter_context(H.hooks(m, [(n, add_leaf) for n in names], points))
            stack.enter_context(unembed_at(m, inputs.groups.last()))  # the answer position's logits only
            last = m.model(**inputs).logits[:, 0].float()
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
    return last, acts, leaves


def _gradients(value: torch.Tensor, leaves: dict[str, torch.Tensor], names: list[str]) -> dict:
    """``d value.sum() / d leaf`` per hook name (None where the metric does not depend on it)."""
    return dict(zip(names, torch.autograd.grad(value.sum(), [leaves[n] for n in names], allow_unused=True)))


def _integrated_gradients(m, target, names: list[str], t_ctx, recorded: list, metric: Callable, steps: int,
                          wall: dict) -> dict:
    """Mean gradient of ``metric(last-position logits)`` at every hook name over ``steps`` runs of ``target``
    whose decoder inputs are moved ``α = (i + ½)/steps`` of the way to the source run's (``recorded``)."""
    if not recorded:
        raise InputError("the source run passed no floating-point input to the decoder, so there is no path to "
                         "integrate along; use method='atp'")
    total: dict = {n: None for n in names}
    for i in range(steps):
        t0 = time.perf_counter()
        alpha = (i + 0.5) / steps
        last, _, leaves = grad_run(m, target, names, [t_ctx, lambda a=alpha: decoder_inputs(m, recorded, a)])
        for n, g in _gradients(metric(last), leaves, names).items():
            if g is not None:
                total[n] = g / steps if total[n] is None else total[n] + g / steps
        wall[f"ig_step_{i}"] = time.perf_counter() - t0
    return total


def _pair_index(aligns: list[Alignment]) -> tuple[torch.Tensor, ...]:
    """Flat ``(row, target_pos, source_pos, group)`` LongTensors over every aligned pair."""
    r, t, s, g = [], [], [], []
    for gi, a in enumerate(aligns):
        for row, (tp, sp) in enumerate(a.pairs):
            r += [row] * len(tp)
            t += tp.tolist()
            s += sp.tolist()
            g += [gi] * len(tp)
    return tuple(torch.tensor(v, dtype=torch.long) for v in (r, t, s, g))


def attribution_patching(
    m,
    clean,
    corrupted,
    sites: str | Sequence[str] = ("resid_pre", "attn_out", "mlp_out"),
    positions: str | Sequence[str] | torch.Tensor = ("image", "text", "last"),
    *,
    method: Method = "atp",
    ig_steps: int = 1,
    direction: str = "denoising",
    metric: str | Metric = "logit_diff",
    answer: torch.Tensor | None = None,
    counterfactual: torch.Tensor | None = None,
    layers: Sequence[int] | None = None,
    condition: str | None = None,
    align_mode: str | None = None,
    normalize: bool = True,
    clean_context: Callable | None = None,
    corrupted_context: Callable | None = None,
    seed: int = 0,
) -> AtPResult:
    """Gradient estimates of patching every site, layer and position group at once.

    Args: as :func:`mech.activation_patching` (same names, same defaults for the metric targets):
        sites: one or several of :data:`mech.measure.patching.SITES`.
        positions: position group(s) of :data:`mech.measure.patching.POSITION_GROUPS` or a BoolTensor ``[batch, pos]``.
        method: ``"atp"`` (gradient at the target run; Nanda 2023, Kramár et al. 2024 eq. 3; 3
            forward-equivalents), ``"deeplift"`` (the target run's gradient with every nonlinearity's local
            derivative replaced by the finite-difference multiplier between the two runs; Shrikumar et al.
            2017; 3 forward-equivalents; :mod:`mech.measure.patching.attribution_deeplift`; needs runs of the same length)
            or ``"ig"`` (gradient averaged over ``ig_steps`` points of the straight
            path between the two runs' decoder inputs; Sundararajan et al. 2017, Hanna et al. 2024 §3;
            ``2 + 2·ig_steps`` forward-equivalents; needs two runs of the same length).
        ig_steps: points of the midpoint rule for ``"ig"`` (1 = the midpoint).
        direction: ``"denoising"`` (gradient on the corrupted run) or ``"noising"`` (on the clean run).
        metric: ``"logit_diff"`` (default), ``"prob"``, ``"kl"`` or a :class:`mech.measure.patching.Metric` (frozen;
            never changed, so one can serve many batches; the targets used come back in the result).
        condition: default: the corrupted inputs' own ``.condition`` (as :func:`mech.activation_patching`).

    Returns:
        :class:`AtPResult`; ``effect[site]`` ``[layer, group]`` (``z``: ``[layer, head, group]``).

    Raises:
        ConfigError: unknown site/metric/direction/position group/method (the message lists the allowed
            values); layers out of range; ``method="ig"`` on runs of different length; ``condition``
            contradicting the corrupted inputs' own.
        InputError: groups that do not match (``align="strict"``); UnsupportedArchitectureError: mllama.
        MechError: NaN metric; clean == corrupted metric with ``normalize=True``.
    """
    check_method(method, ig_steps)
    setup = prepare(m, "attribution_patching", clean, corrupted, sites, positions, direction=direction,
                    metric=metric, layers=layers, condition=condition, align_mode=align_mode,
                    clean_context=clean_context, corrupted_context=corrupted_context, seed=seed)
    site_list, metric_obj, aligns, layer_list = setup.sites, setup.metric, setup.aligns, setup.layers
    target, source, denoise, names = setup.target, setup.source, setup.denoise, setup.names
    if method != "atp" and setup.mode != "strict":
        raise ConfigError(f"method={method!r} compares the two runs position by position, which needs runs of the "
                          "same length (align='strict'); use method='atp' for no_image / image_only")
    refs = References()

    wall: dict[str, float] = {}
    recorded: list = []
    t0 = time.perf_counter()
    with ExitStack() as stack:
        enter(stack, setup.s_ctx)
        if method == "ig":
            stack.enter_context(decoder_inputs(m, recorded))
        if method == "deeplift":
            stack.enter_context(reference_run(m, refs))
        stack.enter_context(unembed_at(m, source.groups.last()))  # the answer position's logits only
        s_logits, cache = H.run_with_cache(m, source, names)
    s_last = s_logits[:, 0].float()
    wall["source_forward"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if method != "ig":
        rules = [lambda: difference_run(m, refs)] if method == "deeplift" else []
        t_last, acts, leaves = grad_run(m, target, names, [setup.t_ctx, *rules])
    else:
        with ExitStack() as stack:
            enter(stack, setup.t_ctx)
            stack.enter_context(unembed_at(m, target.groups.last()))
            t_logits, acts = H.run_with_cache(m, target, names)
        t_last = t_logits[:, 0].float()
    wall["target_forward"] = time.perf_counter() - t0
    clean_logits, corr_logits = (s_last, t_last.detach()) if denoise else (t_last.detach(), s_last)
    targets = metric_obj.resolve(clean_logits, corr_logits, answer, counterfactual)
    batch, rows = targets.batch, targets.rows()

    def score(lg: torch.Tensor) -> torch.Tensor:
        return metric_obj(lg, rows, targets)

    t0 = time.perf_counter()
    if method != "ig":
        value = score(t_last)
        if method == "deeplift":
            value = metric_with_multipliers(score, t_last, s_last)
        grads = _gradients(value, leaves, names)
        wall["target_backward"] = time.perf_counter() - t0
        target_m = value.detach().cpu()
    else:
        grads = _integrated_gradients(m, target, names, setup.t_ctx, recorded, score, ig_steps, wall)
        target_m = score(t_last).cpu()
    source_m = score(s_last).cpu()
    clean_m, corr_m = (source_m, target_m) if denoise else (target_m, source_m)

    r, t, s, g = _pair_index(aligns)
    heads = m.arch.n_heads
    deltas, effects, patched = {}, {}, {}
    empty = torch.tensor([a.count() == 0 for a in aligns])
    for site in site_list:
        per_layer = []
        for l in layer_list:
            name = hook_name(site, l)
            grad = grads[name]
            tgt, src = acts[name], cache[name]
            dev = tgt.device
            ri, ti, si = r.to(dev), t.to(dev), s.to(dev)
            shape = (len(aligns), batch) if site != "z" else (len(aligns), batch, heads)
            out = torch.zeros(shape, dtype=torch.float32)
            if len(ri) and grad is not None:
                diff = src.to(dev)[ri, si].float() - tgt[ri, ti].float()
                vals = (diff * grad[ri, ti].float()).sum(-1).cpu()  # [pairs] or [pairs, head]
                out.view(-1, *shape[2:]).index_add_(0, g * batch + r, vals)
            per_layer.append(out if site != "z" else out.permute(2, 0, 1))
        delta = torch.stack(per_layer)  # [layer, group, batch] or [layer, head, group, batch]
        deltas[site] = delta
        patched[site] = target_m + delta
        if normalize:
            eff = normalized_effect(patched[site], clean_m, corr_m, direction)
        else:
            eff = torch.full(delta.shape[:-1], float("nan"))
        eff[..., empty] = float("nan")
        effects[site] = eff
    fe = forward_equivalents(method, ig_steps)
    a_ids, cf_ids = (None if t is None else t.detach().long().cpu() for t in (targets.answer, targets.counterfactual))
    passes = {"forward": 2, "backward": 1} if method != "ig" else {"forward": 2 + ig_steps, "backward": ig_steps}
    meta = {"wall_s": wall, "passes": {**passes, "backward_scope": "activations only"},
            "align": setup.mode, "answer": None if a_ids is None else a_ids.tolist(),
            "counterfactual": None if cf_ids is None else cf_ids.tolist()}
    if method == "ig":
        meta["ig_steps"] = ig_steps
    if method == "deeplift":
        meta["local_gradient_ops"] = dict(refs.local)
        # resid_pre at every position is a complete cut above the layers that inject features (Qwen3-VL)
        cut = [hook_name("resid_pre", l) for l in layer_list if l > max(m.arch.injection_layers, default=-1)]
        if "resid_pre" in site_list and cut:
            full = torch.stack([((cache[n].to(acts[n].device).double() - acts[n].double()) * grads[n].double())
                                .sum((1, 2)).cpu() for n in cut])
            meta["completeness"] = completeness(full, source_m, target_m)
    return AtPResult(effects, patched, deltas, clean_m, corr_m, tuple(a.name for a in aligns), layer_list, direction,
                     metric_obj.name, setup.condition, fe, meta, method, a_ids, cf_ids)


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of the entries finite in both ``x`` and ``y`` (any equal shapes); NaN when
    fewer than two such entries or either has zero variance."""
    x, y = x.double().flatten(), y.double().flatten()
    keep = torch.isfinite(x) & torch.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 2:
        return float("nan")
    x, y = x - x.mean(), y - y.mean()
    den = (x.square().sum() * y.square().sum()).sqrt()
    return float((x * y).sum() / den) if den > 0 else float("nan")


COMPARE_ON = ("effect", "delta", "patched")


def compare_to_exact(atp: AtPResult, exact, on: str = "effect") -> dict[str, float]:
    """Pearson r between AtP and exact activation patching, per site and ``"overall"`` (all sites' entries).

    Args:
        atp: :class:`AtPResult`.
        exact: :class:`mech.measure.patching.PatchingResult` of the same inputs, sites, positions and direction.
        on: what is correlated (:data:`COMPARE_ON`):

            * ``"effect"`` — the normalized effects ``[layer, group]`` of the batch means, the grid a
              researcher reads (Heimersheim & Nanda 2024, eq. 1);
            * ``"delta"`` — per-sample metric changes ``ΔM`` ``[layer, group, batch]`` (AtP's ``delta``
              against exact ``patched − target metric``): the per-sample fidelity;
            * ``"patched"`` — per-sample patched metrics; both contain the same unpatched target metric,
              whose spread across samples inflates r: prefer ``"delta"``.

    Raises:
        ConfigError: ``on`` unknown; no site in common; the two results' axes differ.
    """
    if on not in COMPARE_ON:
        raise ConfigError(f"on={on!r}; allowed: {', '.join(COMPARE_ON)}")
    if on == "delta":
        target = exact.corrupted_metric if exact.direction == "denoising" else exact.clean_metric
        a_all, e_all = atp.delta, {s: p - target for s, p in exact.patched.items()}
    else:
        a_all, e_all = getattr(atp, on), getattr(exact, on)
    common = [s for s in a_all if s in e_all]
    if not common:
        raise ConfigError(f"no site in common: AtP has {sorted(a_all)}, exact patching has {sorted(e_all)}")
    if tuple(atp.groups) != tuple(exact.groups) or list(atp.layers) != list(exact.layers) or \
            atp.direction != exact.direction:
        raise ConfigError("the AtP and exact results differ in groups, layers or direction; run both with the same "
                          "positions, layers and direction")
    out = {s: pearson(a_all[s], e_all[s]) for s in common}
    out["overall"] = pearson(torch.cat([a_all[s].flatten() for s in common]),
                             torch.cat([e_all[s].flatten() for s in common]))
    return out
