"""One result contract for every instrument: named axes declared once, and everything else derived.

An instrument's result is a frozen dataclass that subclasses :class:`Result` and declares, once, the
named axes of its tensor fields (penzai's named axes, einops' named shapes), e.g.::

    @dataclass(frozen=True, eq=False)
    class PatchingResult(Result):
        AXES = {"patched": ("layer", "head?", "group", "batch"), "clean_metric": ("batch",), ...}
        LABELS = {"layer": "layers", "group": "groups"}

A field is a tensor, a mapping of name -> tensor (one per site or estimator; the axes hold for each
value), or None. An axis ending in ``?`` is optional (``head`` exists only for site ``z``). From that
declaration, generic code (this module, not each class) gives:

* the check at construction: every tensor has the declared rank, an axis has one size across every
  field (``batch`` is the same samples everywhere) and the length of its labels (``LABELS``: the
  ``layer`` axis is as long as ``layers``); otherwise a :class:`~mech.errors.InputError` naming the
  field, the declared axes and the shape;
* :meth:`Result.concat`: the result on the union of samples, from results on parts of them, by
  concatenating every field along :data:`SAMPLE` and combining the other fields by ``COMBINE``
  (``"equal"``, the default: the parts must agree; ``"sum"``; ``"mean"`` of the parts; ``"first"``: the
  first part's, e.g. one image's patch grid;
  ``"concat"``: per-sample lists or mappings of them); fields without a ``batch`` axis (means over
  samples) are recomputed by the class's :meth:`Result.summarize`;
* :meth:`Result.tensors`, :meth:`Result.save` / :meth:`Result.load` (safetensors with the other
  fields as JSON metadata; no pickle), :meth:`Result.parts` / :meth:`Result.from_parts` (the same
  pair in memory: what the run loop's parts store keeps per batch) and :meth:`Result.to_record` /
  :meth:`Result.from_record` (all of it as plain JSON; ``to_json`` is the command's summary, means
  over samples, and does not round-trip);
* :meth:`Result.frame`: the tidy ``pandas.DataFrame`` of any tensor field, its axes as columns;
* ``==`` (:meth:`Result.equals`: tensors equal elementwise, NaN equal to NaN, dtypes equal).

Each class writes its own ``to_json`` (the keys of the command's JSON file, which the existing
commands keep byte for byte) and ``to_frame`` (the frame a researcher reads, built from ``frame``-like
tidy frames of its fields).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import torch

from mech.contract.axes import axes_of, check_axes, equal, frozen_mapping, tensor_values
from mech.errors import ConfigError, InputError

__all__ = ["SAMPLE", "Result", "axes_of", "check_axes", "frozen_mapping"]

#: the axis along which results of parts of the samples are concatenated
SAMPLE = "batch"
#: metadata key under which :meth:`Result.parts` keeps the non-tensor fields
FIELDS_KEY = "fields"

R = TypeVar("R", bound="Result")


def _combine_meta(values: list[Any], where: str, sums: tuple[str, ...]) -> Any:
    """Per-part metadata into one: lists concatenated (a list is per sample), equal values kept,
    mappings merged key by key; numbers under a key in ``sums`` (e.g. wall times) summed."""
    first = values[0]
    if all(isinstance(v, (list, tuple)) for v in values):  # per sample: concatenated even when equal
        return [x for v in values for x in v]
    if all(equal(v, first) for v in values):
        return first
    if all(isinstance(v, Mapping) for v in values) and all(list(v) == list(first) for v in values):
        return {k: _combine_meta([v[k] for v in values], f"{where}.{k}", sums) for k in first}
    if where.split(".")[-1] in sums or any(where.startswith(f"meta.{s}.") for s in sums):
        if all(isinstance(v, (int, float)) for v in values):
            return sum(values)
    raise ConfigError(
        f"the parts differ in {where} ({values[:3]}...), which is neither per-sample (a list) "
        "nor summed; concatenate results of one measurement (same settings) only"
    )


class Result:
    """Base of every instrument's frozen result (module docstring). Subclasses are
    ``@dataclass(frozen=True, eq=False)`` and set ``AXES`` (field -> axis names), optionally
    ``LABELS`` (axis -> the field holding its labels), ``COMBINE`` (non-tensor field ->
    ``"equal" | "sum" | "mean" | "first" | "concat"``) and ``META_SUMS`` (meta keys summed over parts)."""

    AXES: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    LABELS: ClassVar[Mapping[str, str]] = {}
    COMBINE: ClassVar[Mapping[str, str]] = {}
    META_SUMS: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, dict):  # a frozen result holds no mutable mapping
                object.__setattr__(self, f.name, frozen_mapping(v))
        check_axes(self)

    # ---- equality ---------------------------------------------------------------------------
    def equals(self, other: Any) -> bool:
        """Same class and every field equal (tensors elementwise with NaN == NaN and the same dtype)."""
        return type(self) is type(other) and all(
            equal(getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self)
        )

    def __eq__(self, other: Any) -> bool:
        return self.equals(other)

    __hash__ = object.__hash__

    # ---- tensors, save, load ------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor by name: ``field`` or ``field.key`` for a mapping of tensors (CPU)."""
        return {label: t for name in self.AXES for label, t in tensor_values(self, name)}

    def parts(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """``(tensors, metadata)``: :meth:`tensors` and the other fields (JSON-able), with the key
        order of every mapping of tensors; :meth:`from_parts` inverts it."""
        from mech.results import json_ready

        fields = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in self.AXES:
                fields[f.name] = (
                    None if v is None else {"keys": list(v)} if isinstance(v, Mapping) else {"tensor": True}
                )
            else:
                fields[f.name] = json_ready(v)
        # one JSON string: its key order survives write_tensors' canonical (sorted) metadata
        return Result.tensors(self), {FIELDS_KEY: json.dumps(fields, allow_nan=False)}

    @classmethod
    def from_parts(cls: type[R], tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> R:
        """The result :meth:`parts` gave ``(tensors, metadata)`` for.

        Raises:
            InputError: the metadata is not of this class (the message names the fix).
        """
        fields = metadata.get(FIELDS_KEY)
        fields = json.loads(fields) if isinstance(fields, str) else fields
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(fields, Mapping) or set(fields) != names:
            raise InputError(
                f"these tensors were not written by {cls.__name__}.save (fields "
                f"{sorted(fields or [])}, expected {sorted(names)}); load them with the class "
                "that wrote them"
            )
        kw = {}
        for name, v in fields.items():
            if name in cls.AXES:
                kw[name] = (
                    None
                    if v is None
                    else tensors[name]
                    if "tensor" in v
                    else {k: tensors[f"{name}.{k}"] for k in v["keys"]}
                )
            else:
                kw[name] = v
        return cls(**cls.coerce(kw))

    @classmethod
    def coerce(cls, fields: dict[str, Any]) -> dict[str, Any]:
        """Fields read back from JSON into their Python types (JSON has lists, not tuples); the
        default turns every field whose default or annotation is a tuple into one. Override for more."""
        for f in dataclasses.fields(cls):
            if f.name in fields and isinstance(fields[f.name], list) and "tuple" in str(f.type).split("|")[0]:
                fields[f.name] = tuple(fields[f.name])
        return fields

    def to_record(self) -> dict[str, Any]:
        """Everything in plain JSON (lossless, unlike the command's summary ``to_json``): the other
        fields as :meth:`parts` keeps them and every tensor as ``{"dtype", "shape", "data"}`` (NaN as
        the string ``"nan"``, infinities as ``"inf"``/``"-inf"``); :meth:`from_record` inverts it."""
        tensors, metadata = self.parts()

        def enc(x: float) -> Any:
            return x if math.isfinite(x) else str(x)

        data = {}
        for k, t in tensors.items():
            flat = t.detach().cpu().flatten().tolist()
            data[k] = {
                "dtype": str(t.dtype).removeprefix("torch."),
                "shape": list(t.shape),
                "data": [enc(x) if isinstance(x, float) else x for x in flat],
            }
        return {"class": type(self).__name__, FIELDS_KEY: json.loads(metadata[FIELDS_KEY]), "tensors": data}

    @classmethod
    def from_record(cls: type[R], record: Mapping[str, Any]) -> R:
        """The result :meth:`to_record` gave ``record`` for.

        Raises:
            InputError: the record is of another class.
        """
        if record.get("class") != cls.__name__:
            raise InputError(
                f"this record is of {record.get('class')!r}, not {cls.__name__}; read it with "
                f"{record.get('class')}.from_record"
            )
        tensors = {}
        for k, v in record["tensors"].items():
            vals = [float(x) if isinstance(x, str) else x for x in v["data"]]
            tensors[k] = torch.tensor(vals, dtype=getattr(torch, v["dtype"])).reshape(v["shape"])
        return cls.from_parts(tensors, record)

    def save(self, path: str | os.PathLike) -> os.PathLike:
        """Write :meth:`parts` to ``path`` (safetensors, atomically; :func:`mech.results.write_tensors`)."""
        from mech.results import write_tensors

        tensors, metadata = self.parts()
        return write_tensors(path, tensors, metadata)

    @classmethod
    def load(cls: type[R], path: str | os.PathLike) -> R:
        """The result :meth:`save` wrote to ``path``."""
        from mech.results import read_metadata, read_tensors

        return cls.from_parts(read_tensors(path), read_metadata(path))

    # ---- tidy frames ------------------------------------------------------------------------------
    def frame(self, name: str):
        """Tidy ``pandas.DataFrame`` of tensor field ``name`` from its declared axes
        (:func:`mech.frames.tidy`): one column per axis, labelled by ``LABELS`` (else the index; an
        unnamed trailing axis is ``axis<k>``), then the values in a column ``name``; a mapping of
        tensors gets a first column ``key`` (a Categorical in the mapping's order).

        Raises:
            ConfigError: ``name`` is not a tensor field (the message lists them).
        """
        from mech.frames import concat, tidy

        if name not in self.AXES:
            raise ConfigError(
                f"{type(self).__name__} has no tensor field {name!r}; fields: {', '.join(self.AXES)}"
            )

        def one(t: torch.Tensor):
            axes = axes_of(self.AXES[name], t.shape)
            labels = {
                a or f"axis{k}": (getattr(self, self.LABELS[a]) if a in self.LABELS else None)
                for k, a in enumerate(axes)
            }
            return tidy(t, labels, value=name)

        value = getattr(self, name)
        if isinstance(value, Mapping):
            return concat({k: one(t) for k, t in value.items()}, "key")
        return one(value)

    # ---- the union of parts -------------------------------------------------------------------
    def summarize(self: R) -> R:
        """This result with its fields without a ``batch`` axis (means over samples) recomputed from
        the per-sample ones; :meth:`concat` calls it. The default has none to recompute."""
        return self

    @classmethod
    def concat(cls: type[R], parts: Sequence[R]) -> R:
        """The result on the union of the parts' samples, in order (module docstring).

        Raises:
            ConfigError: no parts; parts of another class; parts that differ in a field that must be
                equal (other settings, groups or layers).
        """
        parts = list(parts)
        if not parts:
            raise ConfigError(f"{cls.__name__}.concat got no parts; pass at least one result")
        if any(type(p) is not cls for p in parts):
            raise ConfigError(
                f"{cls.__name__}.concat got {sorted({type(p).__name__ for p in parts})}; "
                "concatenate results of one instrument"
            )
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            vals = [getattr(p, f.name) for p in parts]
            if f.name in cls.AXES:
                kw[f.name] = cls.concat_field(f.name, vals)
                continue
            how = cls.COMBINE.get(f.name, "equal")
            if how == "sum":
                kw[f.name] = sum(vals)
            elif how == "mean":
                kw[f.name] = sum(vals) / len(vals)
            elif how == "first":
                kw[f.name] = vals[0]
            elif how == "concat" or f.name == "meta":
                kw[f.name] = _combine_meta(vals, f.name, cls.META_SUMS)
            elif all(equal(v, vals[0]) for v in vals):
                kw[f.name] = vals[0]
            else:
                raise ConfigError(
                    f"{cls.__name__}.concat: the parts differ in {f.name} ({vals[:3]}); "
                    "concatenate results of one measurement (same settings) only"
                )
        return cls(**kw).summarize()

    @classmethod
    def concat_field(cls, name: str, values: list[Any]) -> Any:
        """Field ``name`` of the union: tensors concatenated along :data:`SAMPLE`; a field without
        one keeps the first part's value (:meth:`summarize` recomputes it)."""
        first = values[0]
        if first is None:
            return None
        declared = cls.AXES[name]

        def cat(ts: list[torch.Tensor]) -> torch.Tensor:
            axes = axes_of(declared, ts[0].shape)
            return torch.cat(ts, axes.index(SAMPLE)) if SAMPLE in axes else ts[0]

        if isinstance(first, Mapping):
            return {k: cat([v[k] for v in values]) for k in first}
        return cat(values)
