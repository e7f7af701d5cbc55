"""Where attribution patching takes its gradient (:func:`mech.attribution_patching`, ``method=``).

* ``"atp"`` — at the target run (the corrupted run for denoising): the first-order Taylor estimate
  of Nanda 2023 and Kramár et al. 2024, eq. 3. Cost: 3 forward-equivalents.
* ``"deeplift"`` — at the target run, with every nonlinearity's local derivative replaced by the
  finite-difference multiplier between the two runs (DeepLIFT, Shrikumar et al. 2017), so complete
  cuts sum exactly to the metric difference: :mod:`mech.measure.patching.attribution_deeplift`. Cost: 3.
* ``"ig"`` — integrated gradients along the straight line between the two runs' *decoder inputs*
  (Sundararajan et al. 2017, eq. 1 with the Riemann midpoint rule; applied to patching as EAP-IG,
  Hanna, Pezzelle & Belinkov 2024, "Have Faith in Faithfulness", §3, "EAP-IG-inputs"): the
  gradient at every site is averaged over ``steps`` runs whose decoder inputs are
  ``x_target + α (x_source − x_target)`` at ``α = (i + ½) / steps``, and multiplied by the patch
  ``a_source − a_target`` as in AtP. Cost: the two unpatched forwards plus one forward and one
  backward per step, **2 + 2·steps forward-equivalents** (4 at ``steps=1``).

Why ``"ig"`` exists: on the shipped organisms the patches of interest are large (restoring a whole
image; the answer position's residual at cosine ≈ 0.3–0.6 to the corrupted one), and the metric
along such a patch is S-shaped or convex, not linear, so the gradient at the corrupted end
under-estimates the residual-stream effects (measured in ``benchmarks/bench_attribution.py``).
Two fixes that keep the cost at 3 were measured on the organisms and not adopted: the AtP* fix for
attention saturation (Kramár et al. 2024 §3.1.1: recompute the patched layer's softmax exactly for
the patched queries and keys) moved r at ``resid_pre`` by −0.02 to 0.00 (the error is not in the
patched layer's attention); freezing the normalisation denominators in the backward (the
linearisation of Ameisen et al. 2025, "Circuit Tracing") raised white-image r overall to 0.89/0.97
but left mean-ablated features at 0.67–0.72 on the text-biased organism and lowered ``attn_out``.

"Decoder inputs" are every floating-point tensor the decoder (table path ``language_model``)
receives: ``inputs_embeds`` (token embeddings with the encoder features merged in) and, for
Qwen3-VL, the ``deepstack_visual_embeds`` added after early layers. Entries equal in both runs stay
as they are. The path therefore needs two runs of the same length (``align="strict"``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Literal

import torch

from mech.engines import hooks as H
from mech.engines.unembed import unembed_at
from mech.errors import ConfigError, InputError

Method = Literal["atp", "ig", "deeplift"]
METHODS: tuple[str, ...] = ("atp", "ig", "deeplift")


def check_method(method: str, steps: int) -> None:
    """Raises ConfigError for a method outside :data:`METHODS` or ``steps`` < 1 (an int)."""
    if method not in METHODS:
        raise ConfigError(
            f"unknown attribution method {method!r}; allowed: {', '.join(METHODS)} "
            "(atp = gradient at the target run; ig = integrated gradients over the decoder inputs; deeplift = "
            "finite-difference multipliers between the two runs)"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"ig_steps={steps!r}; pass an int >= 1 (1 = the midpoint, 4 forward-equivalents)")


def forward_equivalents(method: str, steps: int = 1) -> float:
    """Cost in forward-equivalents: 3 for ``"atp"`` and ``"deeplift"`` (two forwards, one activation
    backward ≈ one forward in FLOPs); ``2 + 2·steps`` for ``"ig"``."""
    return 2.0 + 2.0 * steps if method == "ig" else 3.0


def enter(stack: ExitStack, factory) -> None:
    """Enter ``factory`` (a context manager, a factory of one, or None) on ``stack``."""
    ctx = factory() if callable(factory) else factory
    if ctx is not None:
        stack.enter_context(ctx)


def _floats(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() else []
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _floats(o)]
    if isinstance(obj, dict):
        return [t for k in sorted(obj) for t in _floats(obj[k])]
    return []


def _replace(obj: Any, new: Iterator[torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        return next(new) if obj.is_floating_point() else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_replace(o, new) for o in obj)
    if isinstance(obj, dict):
        out = dict(obj)
        for k in sorted(obj):
            out[k] = _replace(obj[k], new)
        return out
    return obj


@contextmanager
def decoder_inputs(m, store: list, alpha: float | None = None):
    """Pre-hook on the decoder: record its floating-point inputs into ``store`` (``alpha`` None), or
    replace each input ``x`` by ``x + alpha·(s − x)`` where it differs from ``s``, the recorded input at
    the same place in ``store``. Only the hook added here is removed, in ``finally``.

    Raises:
        ConfigError: the two runs' decoder inputs differ in structure or shape (runs of different
            length, e.g. ``no_image``): integrated gradients needs ``align="strict"`` inputs.
    """

    def hook(module, args, kwargs):
        found = _floats((args, kwargs))
        if alpha is None:
            store[:] = [t.detach() for t in found]
            return None
        shapes = [tuple(t.shape) for t in found], [tuple(t.shape) for t in store]
        if shapes[0] != shapes[1]:
            raise ConfigError(
                f"method='ig' interpolates the decoder inputs of the two runs, but their shapes differ "
                f"({shapes[1]} vs {shapes[0]}); use inputs of the same length or method='atp'"
            )
        mixed = iter(
            [
                torch.where(s.to(x.device) == x, x, x + alpha * (s.to(x.device, x.dtype) - x))
                for x, s in zip(found, store)
            ]
        )
        return _replace(args, mixed), _replace(kwargs, mixed)

    handle = m.arch.module(m.model, "language_model").register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield store
    finally:
        handle.remove()


__all__ = [
    "METHODS",
    "Method",
    "check_method",
    "decoder_inputs",
    "enter",
    "forward_equivalents",
    "grad_run",
    "gradients",
    "integrated_gradients",
]


def grad_run(
    m, inputs, names: list[str], contexts: list = (), points=None
) -> tuple[torch.Tensor, dict, dict]:
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


def gradients(value: torch.Tensor, leaves: dict[str, torch.Tensor], names: list[str]) -> dict:
    """``d value.sum() / d leaf`` per hook name (None where the metric does not depend on it)."""
    return dict(zip(names, torch.autograd.grad(value.sum(), [leaves[n] for n in names], allow_unused=True)))


def integrated_gradients(
    m, target, names: list[str], t_ctx, recorded: list, metric: Callable, steps: int, wall: dict
) -> dict:
    """Mean gradient of ``metric(last-position logits)`` at every hook name over ``steps`` runs of ``target``
    whose decoder inputs are moved ``α = (i + ½)/steps`` of the way to the source run's (``recorded``)."""
    if not recorded:
        raise InputError(
            "the source run passed no floating-point input to the decoder, so there is no path to "
            "integrate along; use method='atp'"
        )
    total: dict = {n: None for n in names}
    for i in range(steps):
        t0 = time.perf_counter()
        alpha = (i + 0.5) / steps
        last, _, leaves = grad_run(m, target, names, [t_ctx, lambda a=alpha: decoder_inputs(m, recorded, a)])
        for n, g in gradients(metric(last), leaves, names).items():
            if g is not None:
                total[n] = g / steps if total[n] is None else total[n] + g / steps
        wall[f"ig_step_{i}"] = time.perf_counter() - t0
    return total
