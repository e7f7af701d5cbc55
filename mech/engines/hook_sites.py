"""Where each built-in hook point sits on the untouched Hugging Face model: one ``attach`` function per
site kind, resolved through the family table (:mod:`mech.models.families`).

An ``attach(m, point, fn)`` registers plain ``torch`` hooks that call ``fn(x) -> replacement | None``
on the activation ``x`` and returns their handles; :mod:`mech.engines.hooks` builds its
:data:`~mech.engines.hooks.HOOK_POINTS` registry from :data:`PER_LAYER_ATTACH` and :data:`GLOBAL_ATTACH`,
and wraps every user function with :func:`mech.engines.hook_points.bind` (the calling convention and
the checks of what it returns) before it reaches an ``attach``. The definitions of the points (what
is read, where a replacement takes effect) are the table in :mod:`mech.engines.hooks`' docstring.

What a layer receives is recognised by type, never by keyword name (:func:`find_hidden`): transformers
renames its keywords between releases.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import torch

from mech.engines.hook_points import HookPoint
from mech.errors import ConfigError, InputError

__all__ = [
    "GLOBAL_ATTACH",
    "PER_LAYER_ATTACH",
    "SITE_AXES",
    "find_hidden",
    "first_output",
    "o_proj",
    "with_hidden",
]


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
    return (
        isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and value.dim() == 3
        and (d_model is None or value.shape[-1] == d_model)
    )


def find_hidden(
    args: tuple, kwargs: dict, d_model: int | None = None
) -> tuple[int | str, torch.Tensor] | None:
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
        raise InputError(
            f"several arguments look like hidden states [batch, pos, d_model] "
            f"({', '.join(str(k) for k, _ in found)}); mech cannot tell which to hook"
        )
    return found[0] if found else None


def with_hidden(args: tuple, kwargs: dict, where: int | str, new: torch.Tensor) -> tuple[tuple, dict]:
    """``(args, kwargs)`` with the argument found by :func:`find_hidden` replaced by ``new``."""
    if isinstance(where, int):
        return tuple(args[:where]) + (new,) + tuple(args[where + 1 :]), kwargs
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

    return [
        _hidden_pre_hook(m.arch.module(m.model, "ln2", p.layer), on_ln2),
        _output_hook(m.arch.module(m.model, "layer", p.layer), on_layer),
    ]


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
        raise ConfigError(
            f"{m.arch.model_type}: no output projection at the table's o_proj path "
            f"{m.arch.table.o_proj!r}; attn.hook_z needs it (fix the family table)"
        ) from exc


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


#: per-layer site -> attach (read-only); this order is the order of ``valid_names`` within a layer, not the
#: order the points run in (``attn.hook_z`` runs before ``hook_attn_out``)
PER_LAYER_ATTACH = MappingProxyType(
    {
        "hook_resid_pre": _attach_resid_pre,
        "hook_resid_mid": _attach_resid_mid,
        "hook_resid_post": _attach_resid_post,
        "hook_attn_out": _attach_module_out("attn"),
        "hook_mlp_out": _attach_module_out("mlp"),
        "attn.hook_z": _attach_z,
    }
)
#: global hook name -> attach (read-only)
GLOBAL_ATTACH = MappingProxyType({"hook_embed": _attach_embed, "ln_final.hook_normalized": _attach_ln_final})
#: the axes of the activation a hook function gets, per built-in site (in error messages)
SITE_AXES = MappingProxyType(
    {
        **{s: "[batch, pos, d_model]" for s in (*PER_LAYER_ATTACH, *GLOBAL_ATTACH)},
        "attn.hook_z": "[batch, pos, head, d_head]",
    }
)
