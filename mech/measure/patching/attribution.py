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
corrupted)`` (noising), so the estimated ``effect`` is directly comparable with
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
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch

from mech.engines import hooks as H
from mech.engines.unembed import unembed_at
from mech.errors import ConfigError
from mech.measure.patching import PatchingResult
from mech.measure.patching.align import Alignment
from mech.measure.patching.attribution_deeplift import (
    References,
    completeness,
    difference_run,
    metric_with_multipliers,
    reference_run,
)
from mech.measure.patching.attribution_grad import (
    METHODS,
    Method,
    check_method,
    decoder_inputs,
    enter,
    forward_equivalents,
    grad_run,
    gradients,
    integrated_gradients,
)
from mech.measure.patching.compare import COMPARE_ON, compare_to_exact, pearson  # noqa: F401  (re-exported)
from mech.measure.patching.metrics import Metric, normalized_effect
from mech.measure.patching.setup import prepare
from mech.measure.patching.sites import hook_name
from mech.models.load import takes_model

__all__ = [
    "FORWARD_EQUIVALENTS",
    "METHODS",
    "AtPResult",
    "attribution_patching",
    "compare_to_exact",
    "pearson",
]

#: ``method="atp"``: source forward + target forward + activation-gradient backward (≈ one forward in FLOPs)
FORWARD_EQUIVALENTS = 3.0


@dataclass(frozen=True, eq=False, init=False)
class AtPResult(PatchingResult):
    """Deprecated (one release): :func:`attribution_patching` returns a
    :class:`mech.measure.patching.PatchingResult` with ``method="atp" | "ig" | "deeplift"`` and ``delta``.
    Constructing this class warns (``DeprecationWarning``) and builds that result from the old
    positional order ``(effect, patched, delta, clean_metric, corrupted_metric, groups, layers,
    direction, metric, corruption, forward_equivalents, meta, method, answer, counterfactual)``."""

    def __init__(
        self,
        effect,
        patched,
        delta,
        clean_metric,
        corrupted_metric,
        groups,
        layers,
        direction,
        metric,
        corruption,
        forward_equivalents=FORWARD_EQUIVALENTS,
        meta=None,
        method="atp",
        answer=None,
        counterfactual=None,
    ):
        warnings.warn(
            "AtPResult is deprecated: attribution_patching returns a PatchingResult with "
            "method='atp' (build one with PatchingResult(..., method=..., delta=...))",
            DeprecationWarning,
            stacklevel=2,
        )
        meta = dict(meta or {})
        PatchingResult.__init__(
            self,
            effect=effect,
            patched=patched,
            clean_metric=clean_metric,
            corrupted_metric=corrupted_metric,
            groups=groups,
            layers=layers,
            direction=direction,
            metric=metric,
            corruption=corruption,
            align=meta.pop("align", "strict"),
            patched_positions={},
            forward_equivalents=forward_equivalents,
            n_patched_runs=0,
            meta=meta,
            answer=answer,
            counterfactual=counterfactual,
            method=method,
            delta=delta,
        )


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


@takes_model
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
) -> PatchingResult:
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
        :class:`mech.measure.patching.PatchingResult` with ``method`` and ``delta``; ``effect[site]`` ``[layer, group]`` (``z``: ``[layer, head, group]``).

    Raises:
        ConfigError: unknown site/metric/direction/position group/method (the message lists the allowed
            values); layers out of range; ``method="ig"`` on runs of different length; ``condition``
            contradicting the corrupted inputs' own.
        InputError: groups that do not match (``align="strict"``); UnsupportedArchitectureError: mllama.
        MechError: NaN metric; clean == corrupted metric with ``normalize=True``.
    """
    check_method(method, ig_steps)
    setup = prepare(
        m,
        "attribution_patching",
        clean,
        corrupted,
        sites,
        positions,
        direction=direction,
        metric=metric,
        layers=layers,
        condition=condition,
        align_mode=align_mode,
        clean_context=clean_context,
        corrupted_context=corrupted_context,
        seed=seed,
    )
    site_list, metric_obj, aligns, layer_list = setup.sites, setup.metric, setup.aligns, setup.layers
    target, source, denoise, names = setup.target, setup.source, setup.denoise, setup.names
    if method != "atp" and setup.mode != "strict":
        raise ConfigError(
            f"method={method!r} compares the two runs position by position, which needs runs of the "
            "same length (align='strict'); use method='atp' for no_image / image_only"
        )
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
        grads = gradients(value, leaves, names)
        wall["target_backward"] = time.perf_counter() - t0
        target_m = value.detach().cpu()
    else:
        grads = integrated_gradients(m, target, names, setup.t_ctx, recorded, score, ig_steps, wall)
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
    a_ids, cf_ids = (
        None if t is None else t.detach().long().cpu() for t in (targets.answer, targets.counterfactual)
    )
    passes = (
        {"forward": 2, "backward": 1} if method != "ig" else {"forward": 2 + ig_steps, "backward": ig_steps}
    )
    meta: dict = {"wall_s": wall, "passes": {**passes, "backward_scope": "activations only"}}
    if method == "ig":
        meta["ig_steps"] = ig_steps
    if method == "deeplift":
        meta["local_gradient_ops"] = dict(refs.local)
        # resid_pre at every position is a complete cut above the layers that inject features (Qwen3-VL)
        cut = [hook_name("resid_pre", l) for l in layer_list if l > max(m.arch.injection_layers, default=-1)]
        if "resid_pre" in site_list and cut:
            full = torch.stack(
                [
                    ((cache[n].to(acts[n].device).double() - acts[n].double()) * grads[n].double())
                    .sum((1, 2))
                    .cpu()
                    for n in cut
                ]
            )
            meta["completeness"] = completeness(full, source_m, target_m)
    return PatchingResult(
        effect=effects,
        patched=patched,
        clean_metric=clean_m,
        corrupted_metric=corr_m,
        groups=tuple(a.name for a in aligns),
        layers=layer_list,
        direction=direction,
        metric=metric_obj.name,
        corruption=setup.condition,
        align=setup.mode,
        patched_positions={},
        forward_equivalents=fe,
        n_patched_runs=0,
        meta=meta,
        answer=a_ids,
        counterfactual=cf_ids,
        method=method,
        delta=deltas,
        normalized=normalize,
    )
