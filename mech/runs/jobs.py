"""The jobs of the computing commands, by command (imported when run, so ``mech --help`` stays light)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from mech.errors import ConfigError
from mech.runs.instruments import Instrument, load_job
from mech.runs.settings import INSTRUMENTS

#: command -> "module:Job class", from each instrument's registration (:data:`mech.runs.settings.INSTRUMENTS`)
JOBS = MappingProxyType({i.command: i.job for i in INSTRUMENTS})


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
