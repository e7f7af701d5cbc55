"""Every instrument's registration, and what derives from them: the commands, the jobs by command, the
report's steps (imported when run, so ``mech --help`` stays light).

The registrations are the discovered ones (:func:`mech.runs.instruments.discover`: an ``instrument``
module under ``mech/measure/`` or ``mech/curves/``, the built-in commands' included), in their ``order``.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import MappingProxyType
from typing import Any

from mech.errors import ConfigError
from mech.runs import settings as S
from mech.runs.instruments import Instrument, discover, load_job

__all__ = [
    "COMMANDS",
    "INSTRUMENTS",
    "JOBS",
    "STEPS",
    "instrument",
    "job_class",
    "job_for",
    "read_record",
    "run_settings",
]

#: every registration, in their ``order`` (then their module's name): the report's steps and sections run so
INSTRUMENTS: tuple[Instrument, ...] = tuple(sorted(discover(), key=lambda i: i.order))

#: command -> "module:Job class", from each instrument's registration
JOBS = MappingProxyType({i.command: i.job for i in INSTRUMENTS})

#: the settings classes ``mech report`` runs, in order: the instruments registered ``in_report``
STEPS: tuple[type, ...] = tuple(i.settings for i in INSTRUMENTS if i.in_report)

#: command -> settings class: every instrument's, then the commands that compose them (report, inspect,
#: merge); the command line is derived from it (:mod:`mech.cli`)
COMMANDS: dict[str, type] = {
    **{i.command: i.settings for i in INSTRUMENTS},
    **{c: cls for c, cls in S.COMMANDS.items() if c not in JOBS},
}

_names = [i.command for i in INSTRUMENTS]
_clash = {c for c in _names if _names.count(c) > 1} | (set(_names) & set(S.COMMANDS))
if _clash:
    raise ConfigError(
        f"two registrations run mech {', '.join(sorted(_clash))} (an instrument module repeats "
        "another's or a composing command); give its settings class a command of its own."
    )


def instrument(command: str) -> Instrument:
    """The registration of ``command``.

    Raises:
        ConfigError: no instrument runs that command (the message lists them).
    """
    for i in INSTRUMENTS:
        if i.command == command:
            return i
    raise ConfigError(f"no instrument runs mech {command}; instruments: {', '.join(JOBS)}")


def job_class(command: str) -> type:
    """The job class of ``command`` (imported now)."""
    return load_job(instrument(command))


def job_for(settings: Any) -> Any:
    """The job running ``settings`` (its ``command`` picks the class)."""
    return job_class(settings.command)(settings)


def run_settings(settings: Any, **kwargs: Any) -> dict:
    """Run the command ``settings`` describe on the run loop (:func:`mech.runs.loop.run`)."""
    from mech.runs.loop import run

    return run(job_for(settings), **kwargs)


def read_record(path: str | os.PathLike) -> Any:
    """The typed record (:class:`mech.contract.record.Record`) of a command's JSON file: ``eval.json`` gives
    an ``EvalRecord``, ``contrib.json`` a ``ContribRecord``, ... (the instrument whose command names the
    file reads it with its job's ``record``).

    Raises:
        InputError: no such file, a file no instrument writes (the message lists theirs), or content that
            is not that command's record (the message names the key).
    """
    from mech.errors import InputError

    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p} is a folder; pass one of its files, e.g. {p / 'contrib.json'}")
    if p.suffix != ".json" or p.stem not in JOBS:
        files = ", ".join(f"{c}.json" for c in JOBS)
        raise InputError(f"{p.name} is not a file an instrument writes; read one of: {files}")
    return job_class(p.stem).record.read(p)
