"""TransformerLens hook names and verbs over the untouched Hugging Face model, on every family.

``run_with_cache`` and ``run_with_hooks`` speak TransformerLens' hook names; each name is resolved
through the family table (:mod:`mech.models.families`) to a forward hook or pre-hook on the real
module, so no model code is re-implemented and every family works the same way.

Hook points (``l`` = decoder layer, shapes for one batch of ``inputs``):

========================== ====================================================================
name                       definition (what is read; a replacement takes effect there)
========================== ====================================================================
``hook_embed``             decoder input after the modality merge: the ``inputs_embeds`` the
                           language model receives ``[batch, pos, d_model]`` (equals
                           ``blocks.0.hook_resid_pre``; rotary families have no separate
                           positional embedding)
``blocks.l.hook_resid_pre``  input of decoder layer ``l`` ``[batch, pos, d_model]``
``blocks.l.hook_resid_mid``  residual after the attention add = input of the pre-MLP norm (table
                           ``ln2``). Llama/Qwen/InternVL/Idefics: ``resid_pre + attn_out``.
                           Gemma3 (extra post-attention norm): ``resid_pre +
                           post_attention_layernorm(attn_out)``. Replacing it replaces both the
                           MLP input and the residual carried to ``resid_post`` (the difference is
                           added to the layer output), as in TransformerLens.
``blocks.l.hook_resid_post`` what decoder layer ``l+1`` receives (the final norm for the last
                           layer). Usually the layer output; at Qwen3-VL deepstack layers
                           (``arch.injection_layers``) the layer output *plus* the visual features
                           added at visual positions, read as the next layer's input.
``blocks.l.hook_attn_out``   output of the attention module (after ``o_proj``; before Gemma3's
                           post-attention norm)
``blocks.l.hook_mlp_out``    output of the MLP module (before Gemma3's post-feedforward norm)
``blocks.l.attn.hook_z``     per-head attention output before ``o_proj``: the input of
                           ``o_proj`` viewed as ``[batch, pos, head, d_head]``
``ln_final.hook_normalized`` output of the final norm ``[batch, pos, d_model]``
========================== ====================================================================

The table of hook points is one immutable :class:`~mech.engines.hook_points.HookRegistry`,
:data:`HOOK_POINTS` (``PER_LAYER``/``GLOBAL`` list its names); none of these module names can be
rebound (:class:`~mech.errors.FrozenError`). An instrument that needs another point passes a registry
of its own to the verbs, ``points=HOOK_POINTS.with_point(site, attach)`` (a new object; nothing global
changes). Hooks are plain ``torch`` hooks registered for one forward and removed in ``finally`` (only the
handles mech added), so nothing stays registered afterwards, exceptions included.

A hook function is called ``fn(x, hook=point)`` as in TransformerLens; what it returns is checked
(:func:`mech.engines.hook_points.bind`): None leaves the activation, a tensor must have ``x``'s shape, dtype
and device, anything else is a :class:`~mech.errors.HookError` naming the hook point, the expected and
the returned shape and the fix. The attach functions per site live in :mod:`mech.engines.hook_sites`.

Engine note: nnsight 0.8.1 works on these models (``NNsight(model).trace(**inputs)``, module
``.output``/``.inputs``/``.skip``), but its trace body must touch modules in execution order
(``OutOfOrderError`` otherwise) and is re-parsed from source, which does not fit a name-driven verb
taking arbitrary user callables in any order; scoped ``torch`` hooks are used here instead.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

import torch

from mech.engines.hook_points import LAYER_NAME, HookPoint, HookRegistry, bind
from mech.engines.hook_sites import (  # noqa: F401  (re-exported: instruments read hidden states through them)
    GLOBAL_ATTACH,
    PER_LAYER_ATTACH,
    SITE_AXES,
    find_hidden,
    first_output,
    o_proj,
    with_hidden,
)
from mech.errors import ConfigError, FrozenError, HookError
from mech.models.load import takes_model

__all__ = [
    "GLOBAL",
    "HOOK_POINTS",
    "PER_LAYER",
    "SITE_HOOKS",
    "ActivationCache",
    "HookFn",
    "attach",
    "hooks",
    "resolve",
    "run_with_cache",
    "run_with_hooks",
    "site_hook",
    "valid_names",
]

#: ``fn(x, hook) -> replacement | None``, called ``fn(x, hook=point)`` (:func:`mech.engines.hook_points.bind`)
HookFn = Callable[..., "torch.Tensor | None"]


def _points(points: HookRegistry | None) -> HookRegistry:
    if points is None:
        return HOOK_POINTS
    if not isinstance(points, HookRegistry):
        raise ConfigError(
            f"points must be a mech.engines.hook_points.HookRegistry (e.g. HOOK_POINTS.with_point(...)); "
            f"got {type(points).__name__}"
        )
    return points


@takes_model
def valid_names(m, points: HookRegistry | None = None) -> list[str]:
    """Every hook name of model ``m`` (of ``points``, default :data:`HOOK_POINTS`), layer by layer in the table's order of sites."""
    return _points(points).valid_names(m.arch.n_layers)


@takes_model
def resolve(m, name: str, points: HookRegistry | None = None) -> HookPoint:
    """Parse and check a hook name against ``points`` (default :data:`HOOK_POINTS`).

    Raises:
        ConfigError: unknown name or layer out of range; the message lists the valid forms.
    """
    return _points(points).resolve(name, m.arch.n_layers)


#: the built-in hook points (the table of the module docstring), read-only and never rebound
HOOK_POINTS = HookRegistry(per_layer=PER_LAYER_ATTACH, global_points=GLOBAL_ATTACH)
PER_LAYER = HOOK_POINTS.sites
GLOBAL = HOOK_POINTS.globals
#: the one site -> hook-point table: patching, attribution and DLA name their sites by it
SITE_HOOKS = MappingProxyType(
    {
        "resid_pre": "hook_resid_pre",
        "resid_mid": "hook_resid_mid",
        "resid_post": "hook_resid_post",
        "attn_out": "hook_attn_out",
        "mlp_out": "hook_mlp_out",
        "z": "attn.hook_z",
    }
)


def site_hook(site: str, layer: int) -> str:
    """TransformerLens hook name of ``site`` (a key of :data:`SITE_HOOKS`) at ``layer``, e.g.
    ``site_hook("resid_post", 3) == "blocks.3.hook_resid_post"``.

    Raises:
        ConfigError: unknown site (the message lists :data:`SITE_HOOKS`).
    """
    if site not in SITE_HOOKS:
        raise ConfigError(
            f"unknown site {site!r}; allowed: {', '.join(SITE_HOOKS)} "
            "(z = per-head attention output before o_proj)"
        )
    return f"blocks.{layer}.{SITE_HOOKS[site]}"


def _pairs(fwd_hooks: Iterable[tuple[str, HookFn]]) -> list[tuple[Any, Any]]:
    if isinstance(fwd_hooks, (str, Mapping)) or not isinstance(fwd_hooks, Iterable):
        raise HookError(f"fwd_hooks must be a list of (name, fn) pairs; got a {type(fwd_hooks).__name__}")
    pairs = list(fwd_hooks)
    bad = [p for p in pairs if not (isinstance(p, (tuple, list)) and len(p) == 2)]
    if bad:
        raise HookError(
            f"fwd_hooks must be (name, fn) pairs, e.g. [('blocks.3.hook_resid_post', fn)]; got {bad[0]!r}"
        )
    return pairs


@takes_model
def attach(m, name: str | HookPoint, fn: HookFn, points: HookRegistry | None = None) -> list:
    """Register ``fn(x, hook) -> x | None`` at hook ``name`` (of ``points``, default :data:`HOOK_POINTS`),
    called ``fn(x, hook=point)`` and its return checked (:func:`mech.engines.hook_points.bind`); returns
    the torch handles, which the caller removes (prefer the scoped :func:`hooks`).

    Raises:
        ConfigError: an unknown hook name.
        HookError: ``fn`` cannot be called as ``fn(x, hook=point)``; in the forward, ``fn`` returned a
            non-tensor or another shape, dtype or device than its input.
    """
    reg = _points(points)
    point = name if isinstance(name, HookPoint) else reg.resolve(name, m.arch.n_layers)
    return reg.attach_fn(point)(m, point, bind(fn, point, SITE_AXES.get(point.site, "")))


@takes_model
@contextmanager
def hooks(m, fwd_hooks: Iterable[tuple[str, HookFn]], points: HookRegistry | None = None):
    """Context manager: the hooks are registered inside and removed on exit, exceptions included.

    Each ``fn`` is called ``fn(x, hook=point)`` and what it returns is checked
    (:func:`mech.engines.hook_points.bind`). Only the handles registered here are removed; hooks added by
    others stay untouched. ``points``: the hook-point registry names are resolved against (default
    :data:`HOOK_POINTS`).

    Raises:
        ConfigError: an unknown hook name (every name and function is checked before any is registered).
        HookError: not ``(name, fn)`` pairs, or a function that cannot be called as ``fn(x, hook=point)``
            (before anything is registered); in the forward, a function returned a non-tensor or another
            shape, dtype or device than its input (the message names the hook point and both shapes).
    """
    reg = _points(points)
    calls = []  # validate all before registering any
    for name, fn in _pairs(fwd_hooks):
        point = reg.resolve(name, m.arch.n_layers)
        calls.append((point, bind(fn, point, SITE_AXES.get(point.site, ""))))
    handles: list = []
    try:
        for point, call in calls:
            handles += reg.attach_fn(point)(m, point, call)
        yield handles
    finally:
        for h in handles:
            h.remove()


def _logits(m, inputs) -> torch.Tensor:
    return m.model(**m.inputs(inputs)).logits


@takes_model
def run_with_hooks(
    m, inputs, fwd_hooks: Sequence[tuple[str, HookFn]] = (), *, points: HookRegistry | None = None
) -> torch.Tensor:
    """One forward of ``m.model(**inputs)`` with TransformerLens-style forward hooks.

    Args:
        m: a :class:`~mech.MechModel` (or anything :func:`mech.load` accepts; a raw Hugging Face model is
            refused with the fix, :func:`mech.models.load.as_model`).
        inputs: ``prepare`` output or raw processor output.
        fwd_hooks: ``(name, fn)`` pairs; ``fn`` is called ``fn(x, hook=point)`` as in TransformerLens
            (``def fn(x, hook)`` and ``def fn(x, *, hook)`` both work): ``x`` is the activation (shape per
            the table in this module's docstring), ``hook`` the :class:`HookPoint` (``.name``, the canonical
            name; ``.layer``). It returns a replacement of ``x``'s shape, dtype and device, or None to
            leave it. Several hooks at one name run in order.
        points: the hook-point registry (default :data:`HOOK_POINTS`; extra points: ``HOOK_POINTS.with_point``).

    Returns:
        logits ``[batch, pos, vocab]`` (no gradient).

    Raises:
        ConfigError: an unknown hook name (the message lists the valid ones).
        HookError: a hook that cannot be called so, or that returned a non-tensor or another shape, dtype
            or device (the message names the hook point, the expected and the returned shape, and the fix).
        SpecError: ``m`` is a raw Hugging Face model (the message gives ``m = mech.load((model, processor))``).
    """
    with torch.no_grad(), hooks(m, fwd_hooks, points):
        return _logits(m, inputs)


class ActivationCache(dict):
    """``name -> tensor`` from :func:`run_with_cache` (a plain dict with TransformerLens' accessors)."""

    def stack(self, site: str, layers: Sequence[int] | None = None) -> torch.Tensor:
        """``[layer, ...]``: ``blocks.{l}.{site}`` stacked over ``layers`` (default: every cached one)."""
        keys = [k for k in self if k.endswith("." + site) and LAYER_NAME.match(k)]
        if layers is not None:
            keys = [f"blocks.{l}.{site}" for l in layers]
        if not keys:
            raise ConfigError(f"no cached activations for site {site!r}; cached: {', '.join(self)}")
        return torch.stack([self[k] for k in keys])


@takes_model
def run_with_cache(
    m,
    inputs,
    names: Sequence[str] | Callable[[str], bool] | None = None,
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
    *,
    points: HookRegistry | None = None,
) -> tuple[torch.Tensor, ActivationCache]:
    """One forward that records activations at TransformerLens hook names.

    Args:
        m: a :class:`~mech.MechModel` (as in :func:`run_with_hooks`).
        names: hook names (one name as a string), a filter ``name -> bool`` over :func:`valid_names`, or
            None for all.
        fwd_hooks: optional hooks applied in the same run (registered before the caching hooks, so
            the cache sees their replacements).
        points: the hook-point registry (default :data:`HOOK_POINTS`).

    Returns:
        ``(logits [batch, pos, vocab], cache)``; ``cache[name]`` is detached, on the model's device,
        e.g. ``cache["blocks.3.hook_resid_post"]`` ``[batch, pos, d_model]``.

    Raises:
        ConfigError: an unknown hook name.
        HookError, SpecError: as :func:`run_with_hooks`.
    """
    if isinstance(names, str):
        names = [names]
    if names is None:
        names = valid_names(m, points)
    elif callable(names):
        names = [n for n in valid_names(m, points) if names(n)]
    cache = ActivationCache()

    def save(x, hook):
        cache[hook.name] = x.detach()

    with torch.no_grad(), hooks(m, _pairs(fwd_hooks) + [(n, save) for n in names], points):
        logits = _logits(m, inputs)
    return logits, ActivationCache({n: cache[n] for n in names if n in cache})


_FROZEN = ("HOOK_POINTS", "PER_LAYER", "GLOBAL")


class _Module(types.ModuleType):
    """This module, with :data:`HOOK_POINTS`, ``PER_LAYER`` and ``GLOBAL`` read-only."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FROZEN:
            raise FrozenError(
                f"mech.engines.hooks.{name} cannot be rebound; pass points=HOOK_POINTS.with_point(site, attach) "
                "to the verbs for extra hook points"
            )
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if name in _FROZEN:
            raise FrozenError(f"mech.engines.hooks.{name} cannot be deleted")
        super().__delattr__(name)


sys.modules[__name__].__class__ = _Module
