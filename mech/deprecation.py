"""Older spellings that keep working for one release (:data:`mech.words.RENAMED`), with a warning.

* :func:`renamed_keywords` — a function's keyword renamed: ``f(old=x)`` warns and calls ``f(new=x)``.
* :func:`renamed_fields` — a settings dataclass's field renamed: ``Cls(old=x)`` warns and builds
  ``Cls(new=x)``; reading ``obj.old`` warns and returns ``obj.new``.
* :func:`renamed_function` — a function renamed: the old name warns and calls the new one.
* :func:`renamed_attributes` — a module constant renamed: ``module.OLD`` warns and gives ``module.NEW``.

Each warning is a :class:`MechDeprecationWarning` (a :class:`DeprecationWarning`, so Python shows it
where the call is written in ``__main__`` or a notebook; ``mech`` on the command line prints it as one
line) naming the new spelling. Passing both the old and the new spelling raises
:class:`~mech.errors.ConfigError`. Torch-free.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from mech.errors import ConfigError

__all__ = [
    "MechDeprecationWarning",
    "renamed_attributes",
    "renamed_fields",
    "renamed_function",
    "renamed_keywords",
    "translate",
    "warn_renamed",
]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T", bound=type)


class MechDeprecationWarning(DeprecationWarning):
    """An older spelling of mech's API or command line was used; the message names the new one."""


def warn_renamed(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new`` (both as the user writes them)."""
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release; use {new}",
        MechDeprecationWarning,
        stacklevel=stacklevel,
    )


def translate(where: str, kwargs: dict[str, Any], renames: Mapping[str, str], *, stacklevel: int = 4) -> dict:
    """``kwargs`` with each old keyword of ``renames`` (old -> new) replaced by its new one, warning once
    per old keyword used. Raises ConfigError when a call passes both spellings of one keyword."""
    out = dict(kwargs)
    for old, new in renames.items():
        if old not in out:
            continue
        if new in out:
            raise ConfigError(f"{where}: pass {new}= only ({old}= is its deprecated spelling), not both.")
        warn_renamed(f"{where}({old}=...)", f"{new}=...", stacklevel=stacklevel)
        out[new] = out.pop(old)
    return out


def renamed_keywords(**renames: str) -> Callable[[F], F]:
    """Decorator: the function accepts each old keyword (``old="new"``) for one release, with a warning.

    The signature shown (``inspect.signature``, ``help``) is the new one."""

    def wrap(fn: F) -> F:
        where = fn.__name__

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            if renames.keys() & kwargs.keys():
                kwargs = translate(where, kwargs, renames)
            return fn(*args, **kwargs)

        call.renamed = dict(renames)  # type: ignore[attr-defined]
        return call  # type: ignore[return-value]

    return wrap


def renamed_fields(**renames: str) -> Callable[[T], T]:
    """Class decorator (above ``@dataclass``): ``Cls(old=...)`` builds ``Cls(new=...)`` with a warning;
    ``obj.old`` reads ``obj.new`` with a warning. ``Cls.renamed`` holds the old -> new mapping (the
    command line adds each old option as a hidden alias that warns, :mod:`mech.runs.args`)."""

    def wrap(cls: T) -> T:
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            if renames.keys() & kwargs.keys():
                kwargs = translate(type(self).__name__, kwargs, renames)
            init(self, *args, **kwargs)

        cls.__init__ = __init__  # type: ignore[misc]
        for old, new in renames.items():
            setattr(cls, old, _old_attribute(cls.__name__, old, new))
        cls.renamed = {**getattr(cls, "renamed", {}), **renames}  # type: ignore[attr-defined]
        return cls

    return wrap


def _old_attribute(owner: str, old: str, new: str) -> property:
    def get(self: Any) -> Any:
        warn_renamed(f"{owner}.{old}", f"{owner}.{new}")
        return getattr(self, new)

    return property(get, doc=f"Deprecated spelling of ``{new}``.")


def renamed_attributes(module: str, **renames: str) -> Callable[[str], Any]:
    """A module's ``__getattr__`` (PEP 562) under which each old name (``old="new"``) warns and gives the
    module's ``new``; any other missing name raises AttributeError as usual."""

    def __getattr__(name: str) -> Any:
        if name not in renames:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warn_renamed(f"{module}.{name}", f"{module}.{renames[name]}")
        return getattr(sys.modules[module], renames[name])

    return __getattr__


def renamed_function(fn: F, old: str) -> F:
    """``fn`` under its old name ``old``: every call warns, then calls ``fn`` (a context manager stays one)."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        warn_renamed(old, fn.__name__)
        return fn(*args, **kwargs)

    call.__name__ = call.__qualname__ = old
    call.__doc__ = f"Deprecated name of :func:`{fn.__module__}.{fn.__name__}` (removed in the next release)."
    return call  # type: ignore[return-value]
