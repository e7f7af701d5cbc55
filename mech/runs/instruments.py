"""One registration per instrument: its command's settings, its job, whether ``mech report`` runs it.

The registrations are :data:`mech.runs.settings.INSTRUMENTS` (beside the settings classes they name).
Everything that used to be a list of strings of its own derives from them: the commands
(:data:`mech.runs.settings.COMMANDS`), the jobs by command (:data:`mech.runs.jobs.JOBS`), the
report's steps and their order (:attr:`mech.runs.settings.ReportSettings.steps`) and the report's
sections (each job's ``section(result, prefix)``, :mod:`mech.report`). A job
(:class:`mech.runs.loop.Job`) holds the rest: ``samples``, ``measure`` (+ ``context``), ``assemble``
(the result's ``concat``, its files and figures), ``summary``, ``captions`` and ``section``.

Nothing here imports torch or a job (jobs are named ``"module:Class"`` and imported when run), so
``mech --help`` stays fast.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

__all__ = ["Instrument", "load_job"]


@dataclass(frozen=True)
class Instrument:
    """One instrument's registration.

    Attributes:
        settings: its frozen settings class (``settings.command`` names the command and its files:
            ``<command>.json``, ``.<command>.parts/``).
        job: ``"module:Class"`` of its :class:`mech.runs.loop.Job`, constructed with the settings;
            its static ``section(result_json, prefix) -> list[str]`` writes its part of ``report.md``.
        in_report: whether ``mech report`` runs it (in the registrations' order); an instrument
            outside the report whose ``<command>.json`` is in the report's folder still gets its
            section (``mech repair`` into the same folder).
    """

    settings: type
    job: str
    in_report: bool = False

    @property
    def command(self) -> str:
        return self.settings.command


def load_job(instrument: Instrument) -> type:
    """The job class of ``instrument`` (its module imported now)."""
    module, _, name = instrument.job.partition(":")
    return getattr(importlib.import_module(module), name)
