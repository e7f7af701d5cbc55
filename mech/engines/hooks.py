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

Engine note: nnsight 0.8.1 works on these models (``NNsight(model).trace(**inputs)``, module
``.output``/``.inputs``/``.skip``), but its trace body must touch modules in execution order
(``OutOfOrderError`` otherwise) and is re-parsed from source, which does not fit a name-driven verb
taking arbitrary user callables in any order; scoped ``torch`` hooks are used here instead.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

import torch

from mech.errors import ConfigError, FrozenError, InputError
from mech.engines.hook_points import LAYER_NAME, HookPoint, HookRegistry

HookFn = Callable[[torch.Tensor, "HookPoint"], "torch.Tensor | None"]


def _points(points: HookRegistry | None) -> HookRegistry:
    if points is None:
        return HOOK_POINTS
    if not isinstance(points, HookRegistry):
        raise ConfigError(f"points must be a mech.engines.hook_points.HookRegistry (e.g. HOOK_POINTS.with_point(...)); "
                          f"got {type(points).__name__}")
    return points


def valid_names(m, points: HookRegistry | None = None) -> list[str]:
    """Every hook name of model ``m`` (of ``points``, default :data:`HOOK_POINTS`), in execution order per layer."""
    return _points(points).valid_names(m.arch.n_layers)


def resolve(m, name: str, points: HookRegistry | None = None) -> HookPoint:
    """Parse and check a hook name against ``points`` (default :data:`HOOK_POINTS`).

    Raises:
        ConfigError: unknown name or layer out of range; the message lists the valid forms.
    """
    return _points(points).resolve(name, m.arch.n_layers)


def first_output(out: Any) -> torch.Tensor:
    """The hidden states of a module's output: ``out[0]`` for a tuple or list, else ``out``."""
    return out[0] if isinstance(out, (tuple, list)) else out


def _with_first(out: Any, new: torch.Tensor) -> Any:
    if isinstance(out, tuple):
        return (new,) + tuple(out[1:])
    if isinstance(out, list):
        return [new] + list(out[1:])
    return new


def _is_hidden(value: Any, d_model: int | None) -> bool:
    return (isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() == 3
            and (d_model is None or value.shape[-1] == d_model))


def find_hidden(args: tuple, kwargs: dict, d_model: int | None = None) -> tuple[int | str, torch.Tensor] | None:
    """The hidden-state argument of a module call, recognised by type, never by keyword name.

    The first positional argument that is a floating-point tensor ``[batch, pos, d_model]``; else
    the one keyword argument that is (the decoder's ``inputs_embeds``, a layer's ``hidden_states``;
    attention masks, position ids, rotary tables and caches are not such tensors). ``d_model=None``
    accepts any last axis. Returns ``(index or keyword, tensor)``, or None when there is none.

    Raises:
        InputError: several keyword arguments look like hidden states.
    """
    for i, v in enumerate(args):
        if _is_hidden(v, d_model):
            return i, v
    found = [(k, v) for k, v in kwargs.items() if _is_hidden(v, d_model)]
    if len(found) > 1:
        raise InputError(f"several arguments look like hidden states [batch, pos, d_model] "
                         f"({', '.join(str(k) for k, _ in found)}); mech cannot tell which to hook")
    return found[0] if found else None


def with_hidden(args: tuple, kwargs: dict, where: int | str, new: torch.Tensor) -> tuple[tuple, dict]:
    """``(args, kwargs)`` with the argument found by :func:`find_hidden` replaced by ``new``."""
    if isinstance(where, int):
        return tuple(args[:where]) + (new,) + tuple(args[where + 1:]), kwargs
    return args, {**kwargs, where: new}


def _hidden_pre_hook(module: torch.nn.Module, fn: Callable, d_model: int | None = None) -> Any:
    """Pre-hook on the hidden-state input of ``module`` (:func:`find_hidden`)."""

    def hook(mod, args, kwargs):
        hit = find_hidden(args, kwargs, d_model)
        if hit is None:
            raise InputError(f"{type(mod).__name__} was called without a hidden-state input; cannot hook it")
        new = fn(hit[1])
        return None if new is None else with_hidden(args, kwargs, hit[0], new)

    return module.register_forward_pre_hook(hook, with_kwargs=True)


def _output_hook(module: torch.nn.Module, fn: Callable) -> Any:
    def hook(mod, args, out):
        new = fn(first_output(out))
        return None if new is None else _with_first(out, new)

    return module.register_forward_hook(hook)


def _attach_resid_pre(m, p: HookPoint, fn: Callable) -> list:
    return [_hidden_pre_hook(m.arch.module(m.model, "layer", p.layer), fn)]


def _attach_resid_post(m, p: HookPoint, fn: Callable) -> list:
    arch = m.arch
    if p.layer in arch.injection_layers:
        if p.layer + 1 < arch.n_layers:
            return [_hidden_pre_hook(arch.module(m.model, "layer", p.layer + 1), fn)]
        return [_hidden_pre_hook(arch.module(m.model, "ln_final"), fn)]
    return [_output_hook(arch.module(m.model, "layer", p.layer), fn)]


def _attach_resid_mid(m, p: HookPoint, fn: Callable) -> list:
    state: dict[str, torch.Tensor] = {}

    def on_ln2(x):
        new = fn(x)
        if new is not None:
            state["delta"] = new - x
        return new

    def on_layer(out):
        delta = state.pop("delta", None)
        return None if delta is None else first_output(out) + delta

    return [_hidden_pre_hook(m.arch.module(m.model, "ln2", p.layer), on_ln2),
            _output_hook(m.arch.module(m.model, "layer", p.layer), on_layer)]


def _attach_module_out(part: str) -> Callable:
    def attach(m, p: HookPoint, fn: Callable) -> list:
        return [_output_hook(m.arch.module(m.model, part, p.layer), fn)]

    return attach


def o_proj(m, layer: int) -> torch.nn.Module:
    """The attention output projection of ``layer`` (the table's ``o_proj`` path).

    Raises:
        ConfigError: the table's path does not exist on this model.
    """
    try:
        return m.arch.module(m.model, "o_proj", layer)
    except AttributeError as exc:
        raise ConfigError(f"{m.arch.model_type}: no output projection at the table's o_proj path "
                          f"{m.arch.table.o_proj!r}; attn.hook_z needs it (fix the family table)") from exc


def _attach_z(m, p: HookPoint, fn: Callable) -> list:
    heads, d_head = m.arch.n_heads, m.arch.d_head

    def on_input(x):
        z = x.reshape(*x.shape[:-1], heads, d_head)
        new = fn(z)
        return None if new is None else new.reshape(x.shape)

    return [_hidden_pre_hook(o_proj(m, p.layer), on_input)]


def _attach_embed(m, p: HookPoint, fn: Callable) -> list:
    return [_hidden_pre_hook(m.arch.module(m.model, "layer", 0), fn)]


def _attach_ln_final(m, p: HookPoint, fn: Callable) -> list:
    return [_output_hook(m.arch.module(m.model, "ln_final"), fn)]


#: the built-in hook points (the table of the module docstring), read-only and never rebound
HOOK_POINTS = HookRegistry(
    per_layer={"hook_resid_pre": _attach_resid_pre, "hook_resid_mid": _attach_resid_mid,
               "hook_resid_post": _attach_resid_post, "hook_attn_out": _attach_module_out("attn"),
               "hook_mlp_out": _attach_module_out("mlp"), "attn.hook_z": _attach_z},
    global_points={"hook_embed": _attach_embed, "ln_final.hook_normalized": _attach_ln_final})
PER_LAYER = HOOK_POINTS.sites
GLOBAL = HOOK_POINTS.globals
#: the one site -> hook-point table: patching, attribution and DLA name their sites by it
SITE_HOOKS = MappingProxyType({"resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid",
                               "resid_post": "hook_resid_post", "attn_out": "hook_attn_out",
                               "mlp_out": "hook_mlp_out", "z": "attn.hook_z"})


def site_hook(site: str, layer: int) -> str:
    """TransformerLens hook name of ``site`` (a key of :data:`SITE_HOOKS`) at ``layer``, e.g.
    ``site_hook("resid_post", 3) == "blocks.3.hook_resid_post"``.

    Raises:
        ConfigError: unknown site (the message lists :data:`SITE_HOOKS`).
    """
    if site not in SITE_HOOKS:
        raise ConfigError(f"unknown site {site!r}; allowed: {', '.join(SITE_HOOKS)} "
                          "(z = per-head attention output before o_proj)")
    return f"blocks.{layer}.{SITE_HOOKS[site]}"


def attach(m, name: str | HookPoint, fn: HookFn, points: HookRegistry | None = None) -> list:
    """Register ``fn(x, hook) -> x | None`` at hook ``name`` (of ``points``, default :data:`HOOK_POINTS`);
    returns the torch handles to remove.

    Raises:
        ConfigError: an unknown hook name.
    """
    reg = _points(points)
    point = name if isinstance(name, HookPoint) else reg.resolve(name, m.arch.n_layers)
    return reg.attach_fn(point)(m, point, lambda x: fn(x, point))


@contextmanager
def hooks(m, fwd_hooks: Iterable[tuple[str, HookFn]], points: HookRegistry | None = None):
    """Context manager: the hooks are registered inside and removed on exit, exceptions included.

    Only the handles registered here are removed; hooks added by others stay untouched. ``points``:
    the hook-point registry names are resolved against (default :data:`HOOK_POINTS`).

    Raises:
        ConfigError: an unknown hook name (checked for every hook before any is registered).
    """
    reg = _points(points)
    resolved = [(reg.resolve(n, m.arch.n_layers), fn) for n, fn in fwd_hooks]  # validate all before registering any
    handles: list = []
    try:
        for point, fn in resolved:
            handles += attach(m, point, fn, reg)
        yield handles
    finally:
        for h in handles:
            h.remove()


def _logits(m, inputs) -> torch.Tensor:
    return m.model(**m.inputs(inputs)).logits


def run_with_hooks(m, inputs, fwd_hooks: Sequence[tuple[str, HookFn]] = (), *,
                   points: HookRegistry | None = None) -> torch.Tensor:
    """One forward of ``m.model(**inputs)`` with TransformerLens-style forward hooks.

    Args:
        m: a :class:`~mech.MechModel`.
        inputs: ``prepare`` output or raw processor output.
        fwd_hooks: ``(name, fn)`` pairs; ``fn(x, hook)`` gets the activation (shape per the table in
            this module's docstring) and a :class:`HookPoint` (``.name``, ``.layer``) and returns a
            replacement of the same shape, or None to leave it. Several hooks at one name run in order.
        points: the hook-point registry (default :data:`HOOK_POINTS`; extra points: ``HOOK_POINTS.with_point``).

    Returns:
        logits ``[batch, pos, vocab]`` (no gradient).

    Raises:
        ConfigError: an unknown hook name (the message lists the valid ones).
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


def run_with_cache(m, inputs, names: Sequence[str] | Callable[[str], bool] | None = None,
                   fwd_hooks: Sequence[tuple[str, HookFn]] = (), *,
                   points: HookRegistry | None = None) -> tuple[torch.Tensor, ActivationCache]:
    """One forward that records activations at TransformerLens hook names.

    Args:
        names: hook names, a filter ``name -> bool`` over :func:`valid_names`, or None for all.
        fwd_hooks: optional hooks applied in the same run (registered before the caching hooks, so
            the cache sees their replacements).
        points: the hook-point registry (default :data:`HOOK_POINTS`).

    Returns:
        ``(logits [batch, pos, vocab], cache)``; ``cache[name]`` is detached, on the model's device,
        e.g. ``cache["blocks.3.hook_resid_post"]`` ``[batch, pos, d_model]``.

    Raises:
        ConfigError: an unknown hook name.
    """
    if names is None:
        names = valid_names(m, points)
    elif callable(names):
        names = [n for n in valid_names(m, points) if names(n)]
    cache = ActivationCache()

    def save(x, hook):
        cache[hook.name] = x.detach()

    with torch.no_grad(), hooks(m, list(fwd_hooks) + [(n, save) for n in names], points):
        logits = _logits(m, inputs)
    return logits, ActivationCache({n: cache[n] for n in names if n in cache})


_FROZEN = ("HOOK_POINTS", "PER_LAYER", "GLOBAL")


class _Module(types.ModuleType):
    """This module, with :data:`HOOK_POINTS`, ``PER_LAYER`` and ``GLOBAL`` read-only."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FROZEN:
            raise FrozenError(f"mech.engines.hooks.{name} cannot be rebound; pass points=HOOK_POINTS.with_point(site, attach) "
                              "to the verbs for extra hook points")
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if name in _FROZEN:
            raise FrozenError(f"mech.engines.hooks.{name} cannot be deleted")
        super().__delattr__(name)


sys.modules[__name__].__class__ = _Module
