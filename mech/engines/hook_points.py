"""The immutable table of hook points that :mod:`mech.engines.hooks` resolves TransformerLens names against.

A :class:`HookRegistry` maps each hook *site* to its ``attach`` function; it is frozen (its tables
are read-only mappings) and is never changed in place. ``mech.engines.hooks.HOOK_POINTS`` is the built-in
one (the points of :mod:`mech.engines.hooks`' table); a module-level name that cannot be rebound. An
instrument that needs another point builds a new registry, scoped to its own calls::

    points = HOOK_POINTS.with_point("ln2.hook_normalized", attach_ln2)   # a new object
    logits, cache = mech.run_with_cache(m, inputs, ["blocks.0.ln2.hook_normalized"], points=points)

``attach(m, point, fn)`` registers torch hooks that call ``fn(x) -> replacement | None`` on the
activation and returns their handles (removed by the verbs in ``finally``). The verbs hand it the user's
hook already wrapped by :func:`bind`: called as ``hook(x, hook=point)`` like TransformerLens, and what it
returns checked against ``x``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch

from mech.errors import ConfigError, HookError

__all__ = ["LAYER_NAME", "AttachFn", "HookPoint", "HookRegistry", "bind"]

#: ``blocks.{layer}.{site}``: group 1 is the layer, group 2 the site
LAYER_NAME = re.compile(r"^blocks\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class HookPoint:
    """A resolved hook name: ``name`` (the canonical TransformerLens name, ``"blocks.3.hook_resid_post"``),
    ``layer`` (None for global points) and ``site`` (the per-layer suffix, e.g. ``"hook_resid_post"``, or
    the global name). It is what a hook function gets as ``hook`` (TransformerLens passes its ``HookPoint``
    module, whose ``.name`` is the same string)."""

    name: str
    site: str
    layer: int | None = None


#: ``attach(m, point, fn) -> handles``; ``fn(x)`` returns the replacement activation or None
AttachFn = Callable[[Any, HookPoint, Callable], list]


@dataclass(frozen=True)
class HookRegistry:
    """An immutable table of hook points.

    Attributes:
        per_layer: site -> attach function, for names ``blocks.{l}.{site}`` (read-only; its order is
            the order of :meth:`valid_names` within a layer).
        global_points: name -> attach function, for names without a layer (read-only).

    Assigning an attribute raises ``FrozenInstanceError`` and assigning an item of either table raises
    ``TypeError``; :meth:`with_point` returns a new registry instead.

    Raises (on construction):
        ConfigError: a name that is both a per-layer site and a global point, or an attach that is not callable.
    """

    per_layer: Mapping[str, AttachFn]
    global_points: Mapping[str, AttachFn]

    def __post_init__(self) -> None:
        per, glob = dict(self.per_layer), dict(self.global_points)
        both = sorted(set(per) & set(glob))
        if both:
            raise ConfigError(f"hook sites {both} are both per-layer and global; give each one kind")
        bad = sorted(k for k, v in {**per, **glob}.items() if not callable(v))
        if bad:
            raise ConfigError(f"hook sites {bad}: attach must be a callable attach(m, point, fn) -> handles")
        object.__setattr__(self, "per_layer", MappingProxyType(per))
        object.__setattr__(self, "global_points", MappingProxyType(glob))

    @property
    def sites(self) -> tuple[str, ...]:
        """The per-layer sites (suffixes after ``blocks.{l}.``)."""
        return tuple(self.per_layer)

    @property
    def globals(self) -> tuple[str, ...]:
        """The global hook names."""
        return tuple(self.global_points)

    def with_point(self, site: str, attach: AttachFn, *, per_layer: bool = True) -> HookRegistry:
        """A new registry with one more hook point; ``self`` is unchanged.

        Args:
            site: the suffix after ``blocks.{l}.`` (``per_layer``), else the whole global name.
            attach: ``attach(m, point, fn) -> handles`` (see the module docstring).

        Raises:
            ConfigError: ``site`` is already a hook point here (the message lists the existing ones), or is
                not a usable name.
        """
        if not isinstance(site, str) or not site or site.startswith("blocks."):
            raise ConfigError(
                f"hook site {site!r}: give the suffix after 'blocks.{{l}}.' (per_layer) or a global name"
            )
        if site in self.per_layer or site in self.global_points:
            raise ConfigError(
                f"hook site {site!r} exists already; existing: {', '.join(self.sites + self.globals)}"
            )
        if per_layer:
            return HookRegistry({**self.per_layer, site: attach}, self.global_points)
        return HookRegistry(self.per_layer, {**self.global_points, site: attach})

    def valid_names(self, n_layers: int) -> list[str]:
        """Every hook name for a model of ``n_layers`` layers: ``hook_embed`` first, then layer by
        layer in the order of ``per_layer`` (not the order the points run in), then the other global names."""
        first = [g for g in self.global_points if g == "hook_embed"]
        return (
            first
            + [f"blocks.{l}.{s}" for l in range(n_layers) for s in self.per_layer]
            + [g for g in self.global_points if g != "hook_embed"]
        )

    def resolve(self, name: str, n_layers: int) -> HookPoint:
        """Parse and check a hook name for a model of ``n_layers`` layers.

        Raises:
            ConfigError: unknown name or layer out of range; the message lists the valid forms.
        """
        if name in self.global_points:
            return HookPoint(name, name, None)
        hit = LAYER_NAME.match(name) if isinstance(name, str) else None
        if hit is None or hit.group(2) not in self.per_layer:
            raise ConfigError(
                f"unknown hook name {name!r}; valid: {', '.join(self.globals)} and blocks.{{l}}.<site> "
                f"with site in {', '.join(self.sites)} (l = 0..{n_layers - 1})"
            )
        layer = int(hit.group(1))
        if hit.group(1) != str(layer):
            raise ConfigError(f"hook {name!r}: write the layer as {layer} (blocks.{layer}.{hit.group(2)})")
        if layer >= n_layers:
            raise ConfigError(
                f"hook {name!r}: layer {layer} out of range; this model has layers 0..{n_layers - 1}"
            )
        return HookPoint(name, hit.group(2), layer)

    def attach_fn(self, point: HookPoint) -> AttachFn:
        """The attach function of a resolved ``point``.

        Raises:
            ConfigError: ``point`` was resolved against another registry and its site is not here.
        """
        table = self.per_layer if point.layer is not None else self.global_points
        if point.site not in table:
            raise ConfigError(
                f"hook {point.name!r} is not a point of this registry; resolve it with the same points="
            )
        return table[point.site]


def _fn_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def _keyword_call(fn: Any, point: HookPoint) -> bool:
    """Whether ``fn`` is called ``fn(x, hook=point)`` (True: TransformerLens' convention, which a
    ``def fn(x, hook)`` and a ``def fn(x, *, hook)`` both take) or ``fn(x, point)`` (False: a function
    whose second parameter has another name, ``lambda x, h: ...``).

    Raises:
        HookError: ``fn`` is not callable, or takes neither form.
    """
    if not callable(fn):
        raise HookError(
            f"the hook at {point.name!r} is a {type(fn).__name__}, not a function; pass (name, fn) "
            "pairs with fn(x, hook) -> tensor | None"
        )
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a callable without a readable signature: TransformerLens' call
        return True
    for keyword, args, kwargs in ((True, (None,), {"hook": None}), (False, (None, None), {})):
        try:
            sig.bind(*args, **kwargs)
            return keyword
        except TypeError:
            continue
    raise HookError(
        f"the hook {_fn_name(fn)}{sig} at {point.name!r} cannot be called as fn(x, hook=point); "
        "define it as def fn(x, hook): ... (hook is the HookPoint, hook.name its name)"
    )


def bind(fn: Any, point: HookPoint, axes: str = "") -> Callable[[torch.Tensor], torch.Tensor | None]:
    """The user's hook ``fn`` as the ``fn(x)`` an ``attach`` function calls: ``fn(x, hook=point)``, and what
    it returns checked against ``x``.

    The calling convention is TransformerLens' (``HookPoint.add_hook`` calls ``hook(module_output,
    hook=self)``, ``transformer_lens/hook_points.py``): ``def fn(x, hook)`` and ``def fn(x, *, hook)`` both
    work; a function whose second parameter has another name (``lambda x, h: ...``) is called
    positionally. The convention is read once here, at registration, not per call.

    What ``fn`` returns: None leaves the activation unchanged (as TransformerLens); a tensor replaces it
    and must have the shape, dtype and device of ``x`` (compared, nothing computed: the check costs no
    measurable time). mech does not cast: a hook returning float32 in a bf16 model (``x + v`` with a
    float32 ``v``) is refused with the fix (``.to(x.dtype)``), because a silent cast would change the
    precision of the numbers the user computed.

    Args:
        fn: ``fn(x, hook) -> tensor | None``.
        point: the resolved hook point (``hook.name`` is its canonical name).
        axes: the axes of ``x`` for the messages, e.g. ``"[batch, pos, d_model]"`` (empty: not named).

    Returns:
        ``call(x) -> replacement | None``.

    Raises:
        HookError: at registration, ``fn`` cannot be called so; at the forward, ``fn`` returned a
            non-tensor or a tensor of another shape, dtype or device (the message names the hook
            point, the expected and the returned value, and the fix).
    """
    keyword = _keyword_call(fn, point)

    def call(x: torch.Tensor) -> torch.Tensor | None:
        new = fn(x, hook=point) if keyword else fn(x, point)
        if new is None or new is x:  # untouched or edited in place: nothing to compare
            return new
        if (
            isinstance(new, torch.Tensor)
            and new.shape == x.shape
            and new.dtype == x.dtype
            and new.device == x.device
        ):
            return new
        raise _returned(fn, point, x, new, axes)

    return call


def _returned(fn: Any, point: HookPoint, x: torch.Tensor, new: Any, axes: str) -> HookError:
    """The error for a hook that returned ``new`` where ``x`` was expected."""
    where = f"hook {_fn_name(fn)} at {point.name!r}"
    fix = "return a tensor of the input's shape, dtype and device, or None to leave the activation unchanged"
    expected = f"{tuple(x.shape)} {axes}".rstrip()
    if not isinstance(new, torch.Tensor):
        return HookError(
            f"{where} returned a {type(new).__name__}; expected a tensor of the input's shape "
            f"{expected}; {fix}"
        )
    if new.shape != x.shape:
        return HookError(
            f"{where} returned shape {tuple(new.shape)}; expected the input's shape {expected}; {fix}"
        )
    if new.dtype != x.dtype:
        return HookError(
            f"{where} returned dtype {new.dtype}; expected the input's {x.dtype} (mech does not cast "
            "silently); return new.to(x.dtype)"
        )
    return HookError(
        f"{where} returned a tensor on {new.device}; expected the input's device {x.device}; "
        "return new.to(x.device)"
    )
