"""Named axes, declared once per result class and checked (:mod:`mech.contract`): which axis names a
tensor of a given shape gets, the check of every tensor field against its declaration, and equality
of result fields (tensors elementwise, NaN equal to NaN)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch

from mech.errors import InputError

__all__ = ["axes_of", "check_axes", "equal", "frozen_mapping", "tensor_values"]


def frozen_mapping(value: Mapping | None) -> Mapping:
    """A read-only view of a copy of ``value`` ({} for None): a frozen result's mappings cannot be
    changed in place either (``result.meta["x"] = 1`` raises ``TypeError``)."""
    return MappingProxyType(dict(value or {}))


def axes_of(declared: Sequence[str], shape: Sequence[int]) -> tuple[str, ...] | None:
    """The axis names ``declared`` (optional ones end in ``?``; a last ``"..."`` allows any number of
    unnamed trailing axes, named ``""``) give a tensor of ``shape``: all of them when the rank allows,
    else without the optional ones; None when neither rank matches."""
    if declared and declared[-1] == "...":  # leading named axes, then any number of unnamed ones
        head = tuple(declared[:-1])
        return head + ("",) * (len(shape) - len(head)) if len(shape) >= len(head) else None
    full = tuple(a.rstrip("?") for a in declared)
    required = tuple(a for a in declared if not a.endswith("?"))
    if len(shape) == len(full):
        return full
    if len(shape) == len(required):
        return required
    return None


def tensor_values(obj: Any, name: str) -> list[tuple[str, torch.Tensor]]:
    """``(label, tensor)`` for field ``name``: itself, or each value of a mapping (``name.key``)."""
    value = getattr(obj, name)
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [(name, value)]
    if isinstance(value, Mapping):
        return [(f"{name}.{k}", v) for k, v in value.items()]
    raise InputError(
        f"{type(obj).__name__}.{name} is a {type(value).__name__}; its declared axes "
        f"{obj.AXES[name]} need a tensor or a mapping of tensors"
    )


def check_axes(obj: Any) -> dict[str, int]:
    """Check ``obj``'s tensors against its class's ``AXES`` and ``LABELS`` (module docstring);
    returns axis name -> size.

    Raises:
        InputError: a tensor whose rank fits no declared axes, an axis whose size differs between
            fields or from its labels; the message names the field, the declared axes and the shape.
    """
    sizes: dict[str, tuple[int, str]] = {}
    cls = type(obj).__name__
    for name, declared in obj.AXES.items():
        for label, t in tensor_values(obj, name):
            if not isinstance(t, torch.Tensor):
                raise InputError(f"{cls}.{label} is a {type(t).__name__}, not a tensor with axes {declared}")
            axes = axes_of(declared, t.shape)
            if axes is None:
                raise InputError(
                    f"{cls}.{label} has shape {tuple(t.shape)}, but its declared axes are "
                    f"{tuple(declared)} ('?' = optional); build it with one size per axis"
                )
            for axis, size in zip(axes, t.shape):
                if not axis:
                    continue
                seen = sizes.setdefault(axis, (size, label))
                if seen[0] != size:
                    raise InputError(
                        f"{cls}.{label} has shape {tuple(t.shape)} with axes {axes}: axis "
                        f"{axis!r} is {size} long, but {seen[0]} in {seen[1]}; every field "
                        "must share one size per axis"
                    )
    for axis, field_name in getattr(obj, "LABELS", {}).items():
        labels = getattr(obj, field_name)
        if axis in sizes and labels is not None and len(labels) != sizes[axis][0]:
            raise InputError(
                f"{cls}.{sizes[axis][1]}: axis {axis!r} is {sizes[axis][0]} long, but "
                f"{field_name} has {len(labels)} labels ({list(labels)[:8]})"
            )
    return {a: s for a, (s, _) in sizes.items()}


def equal(a: Any, b: Any) -> bool:
    """Whether two field values are equal: tensors of one dtype and shape, elementwise (NaN equal to
    NaN, nothing else approximate); mappings with the same keys in the same order; sequences; NaN floats."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        if a.is_floating_point() or a.is_complex():
            nan_a, nan_b = a.isnan(), b.isnan()
            return bool(torch.equal(nan_a, nan_b)) and bool(torch.equal(a[~nan_a], b[~nan_b]))
        return bool(torch.equal(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return list(a) == list(b) and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b
