"""The command line derived from the settings dataclasses (:mod:`mech.runs.settings`).

Every field becomes ``--field-name`` (``positional`` in its metadata: a positional argument), its
type from the annotation (``int``, ``str``, ``bool`` as ``--flag/--no-flag``, ``tuple[...]`` as
several values), its choices from the ``Literal``, its help and default from the field. Parsing
gives the settings object itself: values are checked once, by the dataclass. A field's deprecated
name (``renamed`` of the class, :func:`mech.deprecation.renamed_fields`) stays a hidden option that
warns (``--ablation`` -> ``--removal``).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from mech.deprecation import warn_renamed
from mech.runs.settings import allowed

__all__ = ["add_settings", "settings_from"]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class _Renamed(argparse.Action):
    """A deprecated option: warns (:class:`~mech.deprecation.MechDeprecationWarning`) naming the new
    option, then stores its value where the new option does."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        warn_renamed(option_string or self.option_strings[0], self.new, stacklevel=2)
        setattr(namespace, self.dest, values)


def _scalar(tp: Any) -> Any:
    """``int`` / ``str`` / ``bool`` / a Literal under ``X | None`` and ``tuple[X, ...]``."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return str
    if origin is not None:
        args = [a for a in typing.get_args(tp) if a is not type(None) and a is not Ellipsis]
        return _scalar(args[0]) if args else str
    return tp


def _is_tuple(tp: Any) -> bool:
    if typing.get_origin(tp) is tuple:
        return True
    return any(_is_tuple(a) for a in typing.get_args(tp) if typing.get_origin(tp) is not typing.Literal)


def add_settings(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one argument per field of the dataclass ``cls`` to ``parser``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, meta = hints[f.name], dict(f.metadata)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kwargs: dict[str, Any] = {"help": meta.get("help", "")}
        if meta.get("positional"):
            parser.add_argument(f.name, **kwargs)
            continue
        flag = _flag(f.name)
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, **kwargs)
            continue
        # allowed values are shown here and checked by the dataclass (a ConfigError listing them, exit 1)
        choices = allowed(tp)
        kwargs["type"] = _scalar(tp)
        if choices is not None:
            kwargs["metavar"] = "{" + ",".join(map(str, choices)) + "}"
        if _is_tuple(tp):
            kwargs["nargs"] = meta.get("nargs", "+")
            kwargs["metavar"] = f.name.upper()
            if choices is not None:
                kwargs["help"] += f" (from: {' '.join(map(str, choices))})"
        parser.add_argument(flag, default=default, dest=f.name, **kwargs)
    for old, new in getattr(cls, "renamed", {}).items():
        if hints[new] is bool or _is_tuple(hints[new]):
            raise TypeError(
                f"{cls.__name__}.renamed: a hidden alias of a flag or a list ({new}) is not supported"
            )
        parser.add_argument(
            _flag(old),
            dest=new,
            action=_Renamed,
            new=_flag(new),
            type=_scalar(hints[new]),
            help=argparse.SUPPRESS,
            default=argparse.SUPPRESS,
        )


def settings_from(cls: type, namespace: argparse.Namespace) -> Any:
    """The settings object of ``cls`` from parsed arguments (checked by its ``__post_init__``)."""
    return cls(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls)})
