"""A command's JSON file as a typed, frozen object: what the report, the figures and a notebook read.

Inspect's ``EvalLog`` is the model: the file on disk is the serialisation, the program reads a typed
object. Each command declares its record once, as a frozen dataclass subclassing :class:`Record`
whose fields are the top-level keys of ``<command>.json`` with their types::

    @dataclass(frozen=True)
    class PatchRecord(Record):
        COMMAND = "patch"
        n: int
        clean_metric: float
        effect: Mapping[str, tuple[tuple[float | None, ...], ...]]
        ...

From the annotations, generic code (this module) gives :meth:`Record.from_json` (the JSON content,
checked: a missing required key or a value of the wrong kind raises :class:`~mech.errors.InputError`
naming the file's key and the fix), :meth:`Record.to_json` (its exact inverse: the same keys in the same
order, the same values, so ``json.dumps(rec.to_json())`` is the file's content byte for byte) and
:meth:`Record.read` (``<command>.json`` in a folder, or a path). Values are frozen: JSON lists become
tuples and objects read-only mappings, recursively, and convert back on the way out. A key the class
does not declare is kept in ``extra`` (a file written by a newer mech still reads, and round-trips).

Annotations understood: ``int``, ``float`` (an int in the file stays an int), ``str``, ``bool``,
``Any`` (any JSON, frozen), ``X | None``, ``tuple[X, ...]``, ``Mapping[str, X]`` and nested
:class:`Record` subclasses. A field with a default may be absent from the file; it is then left out of
:meth:`to_json` as well.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from mech.errors import InputError

__all__ = ["LOOP_KEYS", "CommandRecord", "Record", "Skipped", "freeze", "thaw"]

RecordT = TypeVar("RecordT", bound="Record")


def freeze(value: Any) -> Any:
    """JSON content, frozen: lists -> tuples, objects -> read-only mappings (recursively)."""
    if isinstance(value, Mapping):
        return types.MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The inverse of :func:`freeze` (records included): plain JSON content."""
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value


def _is_record(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Record)


def _convert(value: Any, tp: Any, where: str) -> Any:
    """``value`` (JSON content) as type ``tp``; InputError naming ``where`` when it is not one."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return freeze(value)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, where)
            except InputError as e:
                errors.append(str(e))
        raise InputError(errors[0] if len(errors) == 1 else f"{where}: {value!r:.80} is none of {tp}")
    if _is_record(tp):
        if not isinstance(value, Mapping):
            raise InputError(f"{where}: expected an object ({tp.__name__}), found {type(value).__name__}")
        return tp.from_json(value, where=where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where}: expected a list, found {type(value).__name__}")
        item = args[0] if args else Any
        return tuple(_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or tp in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise InputError(f"{where}: expected an object, found {type(value).__name__}")
        item = args[1] if len(args) == 2 else Any
        return types.MappingProxyType({k: _convert(v, item, f"{where}.{k}") for k, v in value.items()})
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{where}: expected a number, found {value!r:.80}")
        return value  # an int stays an int, so the file round-trips
    if tp in (int, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise InputError(f"{where}: expected {tp.__name__}, found {value!r:.80}")
        return value
    raise TypeError(f"{where}: a Record field may not be annotated {tp!r}")  # a programming error


@dataclasses.dataclass(frozen=True)
class Record:
    """Base of every command's typed JSON record (module docstring). Subclasses are
    ``@dataclass(frozen=True)`` and set ``COMMAND`` (the file is ``<COMMAND>.json``)."""

    COMMAND: ClassVar[str] = ""

    #: the file's keys this record does not declare (kept, so that it round-trips)
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict, kw_only=True, repr=False)
    #: the file's keys in its order (empty for a record made in Python)
    keys: tuple[str, ...] = dataclasses.field(default=(), kw_only=True, repr=False, compare=False)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._hints = None  # resolved on first use (the annotations are strings)

    @classmethod
    def _types(cls) -> dict[str, Any]:
        if cls.__dict__.get("_hints") is None:
            cls._hints = typing.get_type_hints(cls)
        return cls._hints

    @classmethod
    def _fields(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if f.name not in ("extra", "keys")]

    @classmethod
    def of(cls: type[RecordT], value: RecordT | Mapping[str, Any]) -> RecordT:
        """``value`` as this record: itself when it is one, else :meth:`from_json` of it (the edge where
        a function that reads the record also takes the JSON content).

        Raises:
            InputError: ``value`` is neither this record nor JSON content of it (the message names the key).
        """
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise InputError(
                f"expected a {cls.__name__} or the content of {cls.COMMAND or cls.__name__}.json, "
                f"got {type(value).__name__}; pass {cls.__name__}.read(folder) or the parsed file."
            )
        return cls.from_json(value)

    @classmethod
    def from_json(cls: type[RecordT], content: Mapping[str, Any], *, where: str | None = None) -> RecordT:
        """The record of ``content`` (a parsed ``<command>.json``, or a nested object of one).

        Raises:
            InputError: a required key is missing or a value is not of its declared type (the message
                names the key path, what was expected and the fix).
        """
        where = where or f"{cls.COMMAND or cls.__name__}.json"
        hints = cls._types()
        kwargs: dict[str, Any] = {}
        for f in cls._fields():
            if f.name in content:
                kwargs[f.name] = _convert(content[f.name], hints[f.name], f"{where}: {f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise InputError(
                    f"{where} has no {f.name!r}: it was not written by this mech's {cls.__name__} (keys: "
                    f"{', '.join(list(content)[:12])}); rerun the command that writes it."
                )
        declared = {f.name for f in cls._fields()}
        extra = {k: freeze(v) for k, v in content.items() if k not in declared}
        return cls(**kwargs, extra=types.MappingProxyType(extra), keys=tuple(content))

    def to_json(self) -> dict[str, Any]:
        """The JSON content: the keys of the file this record was read from, in its order (a record
        made in Python: its fields in declaration order, then ``extra``), values thawed."""
        declared = [f.name for f in self._fields()]
        order = self.keys or tuple(declared) + tuple(self.extra)
        out = {}
        for k in order:
            out[k] = thaw(getattr(self, k) if k in declared else self.extra[k])
        return out

    @classmethod
    def read(cls: type[RecordT], path: str | os.PathLike) -> RecordT:
        """The record in ``path``: a ``<COMMAND>.json`` file, or the folder holding one.

        Raises:
            InputError: no such file, not JSON, or not this command's record.
        """
        p = Path(path)
        if p.is_dir():
            p = p / f"{cls.COMMAND}.json"
        if not p.is_file():
            raise InputError(f"{p} does not exist; run mech {cls.COMMAND} --out {p.parent} first.")
        try:
            content = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{p} is not JSON ({e}); rerun mech {cls.COMMAND} into a fresh --out.") from e
        return cls.from_json(content, where=str(p))


@dataclasses.dataclass(frozen=True)
class Skipped(Record):
    """The ``skipped`` key of a command's JSON (:func:`mech.prepare.data.skipped_summary`): the data
    rows left out. ``count``: how many; ``reasons``: reason -> count; ``items``: one
    ``{"id", "reason"[, "stage"]}`` per row (``stage``: ``"data"`` or the command that left it out)."""

    count: int
    reasons: Mapping[str, int]
    items: tuple[Mapping[str, Any], ...]


#: the keys the run loop adds to every command's JSON (:func:`mech.runs.loop.run`)
LOOP_KEYS = ("skipped", "identity", "provenance")


@dataclasses.dataclass(frozen=True)
class CommandRecord(Record):
    """Base of a command's whole-file record: the command's own keys (the subclass's fields) and the run
    loop's, declared here once and absent from the same content made in memory (``mech.evaluate``'s
    result, ``KnockoutResult.to_json()``, a file ``RepairResult.save`` wrote):

    * ``skipped``: the data rows left out (:class:`Skipped`);
    * ``identity``: the run's identity (command, settings, the sample ids' hash;
      :func:`mech.runs.loop.identity`);
    * ``provenance``: the versions that wrote the file (:func:`mech.results.provenance`)."""

    skipped: Skipped | None = dataclasses.field(default=None, kw_only=True)
    identity: Mapping[str, Any] | None = dataclasses.field(default=None, kw_only=True)
    provenance: Mapping[str, Any] | None = dataclasses.field(default=None, kw_only=True)

    @classmethod
    def _fields(cls) -> list[dataclasses.Field]:
        """The command's fields, then the loop's (the order of a record made in Python)."""
        fields = super()._fields()
        return [f for f in fields if f.name not in LOOP_KEYS] + [f for f in fields if f.name in LOOP_KEYS]
