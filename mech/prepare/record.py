"""The frozen record of one prepared batch: :class:`Inputs` (what ``model(**inputs)`` takes, plus its
token groups, prompts, condition and sample ids). Made by :mod:`mech.prepare.inputs`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch

from mech.errors import ConfigError, FrozenError, InputError
from mech.prepare.groups import TokenGroups

__all__ = ["RECORD_FIELDS", "Inputs"]

#: the attributes an :class:`Inputs` carries beside its tensors
RECORD_FIELDS = ("groups", "prompts", "condition", "ids")


def _frozen(what: str) -> FrozenError:
    return FrozenError(
        f"Inputs are frozen: cannot {what}. Build a changed copy with inputs.replace(...) "
        "(e.g. inputs.replace(pixel_values=new, condition='white_image')) or inputs.to(device)."
    )


def _device_of(args: tuple, kwargs: dict) -> torch.device | None:
    """The device among ``Tensor.to``-style arguments (BatchFeature.to's rule), or None."""
    for a in (*args, kwargs.get("device")):
        if isinstance(a, (str, torch.device)) or (isinstance(a, int) and not isinstance(a, bool)):
            return torch.device(a)
    return None


def _rebuild(data: dict, fields: dict) -> Inputs:
    return Inputs(data, **fields)


class Inputs(Mapping):
    """Frozen record of one batch: what ``model(**inputs)`` takes, plus what mech knows about its rows.

    A read-only mapping ``str -> tensor`` (``inputs["input_ids"]`` ``[batch, pos]``,
    ``attention_mask`` ``[batch, pos]``, the family's pixel/grid inputs), so ``model(**inputs)``,
    ``dict(inputs)`` and ``inputs.items()`` work unchanged. Attributes (not keys):

    * ``groups``: :class:`~mech.prepare.groups.TokenGroups` ``[batch, pos]`` (None until :func:`as_inputs`);
    * ``prompts``: per row, the user's prompt segments (tuple of tuples of str), or None;
    * ``condition``: the input condition the rows were made under (:data:`mech.conditions.CONDITIONS`;
      set by :func:`mech.conditions.condition_inputs`), or None when unknown;
    * ``ids``: the sample ids in row order (tuple, one per row), or None.

    Every one of them survives :func:`as_inputs` (``m.inputs(...)``). Nothing can be changed in place:
    assigning or deleting an item or attribute raises :class:`~mech.errors.FrozenError`; :meth:`replace`
    and :meth:`to` return changed copies (tensors are shared, not copied).

    Raises (on construction):
        InputError: a non-string key, or ``ids`` whose length is not the batch size.
        ConfigError: ``condition`` not a string (its name is checked where it is used:
            :func:`mech.conditions.resolve_condition`).
    """

    __slots__ = ("_data", "groups", "prompts", "condition", "ids")

    def __init__(
        self,
        data: Mapping[str, Any] = (),
        *,
        groups: TokenGroups | None = None,
        prompts: Sequence[Sequence[str] | str] | None = None,
        condition: str | None = None,
        ids: Sequence[Any] | None = None,
    ) -> None:
        data = dict(data)
        bad = [k for k in data if not isinstance(k, str)]
        if bad:
            raise InputError(f"input names must be strings (model(**inputs)); got {bad[:3]}")
        if condition is not None and not isinstance(condition, str):
            raise ConfigError(
                f"condition must be a condition name (mech.conditions.CONDITIONS) or None; "
                f"got {type(condition).__name__}"
            )
        if prompts is not None:
            prompts = tuple(p if isinstance(p, str) else tuple(p) for p in prompts)
        if ids is not None:
            ids = tuple(ids)
            ii = data.get("input_ids")
            if isinstance(ii, torch.Tensor) and ii.dim() == 2 and len(ids) != ii.shape[0]:
                raise InputError(
                    f"{len(ids)} sample ids for a batch of {ii.shape[0]} rows; pass one id per row."
                )
        for name, value in (
            ("_data", MappingProxyType(data)),
            ("groups", groups),
            ("prompts", prompts),
            ("condition", condition),
            ("ids", ids),
        ):
            object.__setattr__(self, name, value)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __setitem__(self, key: str, value: Any) -> None:
        raise _frozen(f"set inputs[{key!r}]")

    def __delitem__(self, key: str) -> None:
        raise _frozen(f"delete inputs[{key!r}]")

    def __setattr__(self, name: str, value: Any) -> None:
        raise _frozen(f"set inputs.{name}")

    def __delattr__(self, name: str) -> None:
        raise _frozen(f"delete inputs.{name}")

    def __reduce__(self):
        return _rebuild, (dict(self._data), self.fields())

    def __repr__(self) -> str:
        shapes = ", ".join(
            f"{k}: {tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}"
            for k, v in self._data.items()
        )
        return f"Inputs({{{shapes}}}, condition={self.condition!r}, ids={self.ids!r})"

    def fields(self) -> dict[str, Any]:
        """The record's attributes: ``{"groups", "prompts", "condition", "ids"}``."""
        return {k: getattr(self, k) for k in RECORD_FIELDS}

    def replace(self, **changes: Any) -> Inputs:
        """A copy with ``changes`` applied; ``self`` is unchanged.

        A change named ``groups``, ``prompts``, ``condition`` or ``ids`` sets that attribute; any other
        name sets that model input (a tensor; ``None`` removes it). Changing ``input_ids`` without
        ``groups`` drops the groups (:func:`as_inputs` recomputes them from the new ids).

        Raises:
            InputError, ConfigError: as the constructor.
        """
        fields, data = self.fields(), dict(self._data)
        for k, v in changes.items():
            if k in RECORD_FIELDS:
                fields[k] = v
            elif v is None:
                data.pop(k, None)
            else:
                data[k] = v
        if "input_ids" in changes and "groups" not in changes:
            fields["groups"] = None
        return Inputs(data, **fields)

    def to(self, *args: Any, **kwargs: Any) -> Inputs:
        """A copy with ``Tensor.to(*args, **kwargs)`` applied as ``BatchFeature.to`` does: floating-point
        tensors get every argument (device and dtype); other tensors (token ids, masks) and the groups
        only move to the device, if one is given."""
        device = _device_of(args, kwargs)

        def move(v: Any) -> Any:
            if not isinstance(v, torch.Tensor):
                return v
            if v.is_floating_point():
                return v.to(*args, **kwargs)
            return v.to(device=device) if device is not None else v

        fields = self.fields()
        if device is not None and fields["groups"] is not None:
            fields["groups"] = fields["groups"].to(device)
        return Inputs({k: move(v) for k, v in self._data.items()}, **fields)
