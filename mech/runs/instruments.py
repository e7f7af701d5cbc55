"""One registration per instrument: its command's settings, its job, whether ``mech report`` runs it.

Every registration is *discovered* (:func:`discover`): a module named ``instrument`` anywhere under
``mech/measure/`` or ``mech/curves/`` that defines ``INSTRUMENT = Instrument(...)`` (beside the settings
class it names) registers its command, with nothing to edit elsewhere; the built-in commands (eval,
attention, patch, contrib, repair) register so too. Everything that used to be a list of strings of its own
derives from them (:mod:`mech.runs.jobs`): the commands (:data:`mech.runs.jobs.COMMANDS`), the jobs by
command (:data:`mech.runs.jobs.JOBS`), the report's steps and their order
(:data:`mech.runs.jobs.STEPS`) and the report's sections (each job's ``section(result, prefix)``,
:mod:`mech.report`). A job (:class:`mech.runs.loop.Job`) holds the rest: ``samples``, ``measure`` (+
``context``), ``assemble`` (the result's ``concat``, its files and figures), ``summary``, ``captions``
and ``section``.

Nothing here imports torch or a job (jobs are named ``"module:Class"`` and imported when run), so
``mech --help`` stays fast. An ``instrument`` module is loaded from its file *without* its package's
``__init__`` (which may import torch: the instrument's verb), so at module level it may import only
light modules (the run layer's settings, this module, :mod:`mech.words`, :mod:`mech.errors`); its job's
heavy imports sit inside the job's methods. ``tests/test_run_layer.py`` checks that ``mech --help``
loads no torch.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from mech.errors import ConfigError

__all__ = ["Instrument", "discover", "load_job"]

#: the packages searched for ``instrument`` modules (:func:`discover`)
SEARCHED = ("mech.measure", "mech.curves")


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
        order: where it comes among the instruments (smaller first): the report's steps and sections, and
            the commands in ``mech --help``, follow it (ties: by module name). The built-ins take 10-50.
    """

    settings: type
    job: str
    in_report: bool = False
    order: int = 100

    @property
    def command(self) -> str:
        return self.settings.command


def load_job(instrument: Instrument) -> type:
    """The job class of ``instrument`` (its module imported now)."""
    module, _, name = instrument.job.partition(":")
    return getattr(importlib.import_module(module), name)


def _load_light(name: str, path: Path):
    """Module ``name`` from ``path``, executed without importing its parent packages (whose
    ``__init__`` may import torch); the module already imported when it is."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses and typing look their module up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:  # as an ordinary import does
        setattr(sys.modules[parent], child, module)
    return module


@functools.cache  # one file walk per process: the run layer's tables and the settings' old names share it
def discover(searched: tuple[str, ...] = SEARCHED) -> tuple[Instrument, ...]:
    """The instruments registered by an ``instrument`` module under the ``searched`` packages, in the
    order of their module names (a file walk: no package ``__init__`` below ``mech`` is run).

    Each such module defines ``INSTRUMENT``, an :class:`Instrument` whose settings class has a
    ``command`` of its own.

    Raises:
        ConfigError: an ``instrument`` module without an ``INSTRUMENT`` registration, or two
            registrations of one command.
    """
    root = Path(__file__).resolve().parents[1]  # the mech package
    found: list[Instrument] = []
    for package in searched:
        base = root.joinpath(*package.split(".")[1:])
        for path in sorted(base.rglob("instrument.py")):
            rel = path.relative_to(root.parent).with_suffix("")
            if not all(
                (root.parent / Path(*rel.parts[:i]) / "__init__.py").is_file()
                for i in range(1, len(rel.parts))
            ):
                continue  # not inside a package (a stray folder)
            name = ".".join(rel.parts)
            inst = getattr(_load_light(name, path), "INSTRUMENT", None)
            if not isinstance(inst, Instrument):
                raise ConfigError(
                    f"{path} is an instrument module but defines no INSTRUMENT = Instrument(Settings, "
                    "'module:Job', in_report=...); add it, or rename the module."
                )
            found.append(inst)
    commands = [i.command for i in found]
    twice = sorted({c for c in commands if commands.count(c) > 1})
    if twice or "" in commands:
        what = (
            f"register mech {', '.join(twice)} twice"
            if twice
            else "register a settings class without a command"
        )
        raise ConfigError(f"instrument modules {what}; give each settings class a command of its own.")
    return tuple(found)
