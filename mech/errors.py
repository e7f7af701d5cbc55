"""One error family for everything mech refuses to do.

Every message names the fix: what was wrong, and what to pass instead. Catch ``MechError`` to
handle all of them; the subclasses exist so that tests and callers can tell the cases apart.
"""

from __future__ import annotations

from dataclasses import FrozenInstanceError


class MechError(Exception):
    """Base class of every error mech raises on purpose (bad input, unsupported model, ...)."""


class SpecError(MechError, ValueError):
    """A model or data spec that cannot be resolved (unknown scheme, missing path, bad name)."""


class UnsupportedArchitectureError(MechError, ValueError):
    """The model's architecture has no table in ``mech.models.families``."""


class InputError(MechError, ValueError):
    """Inputs that do not fit the model: image/placeholder mismatch, bad image file, shapes."""


class ProcessorError(MechError, ValueError):
    """A processor is needed (to prepare raw images and prompts) but none was given, or its saved files
    cannot be loaded."""


class ConfigError(MechError, ValueError):
    """An option outside its allowed values; the message lists the allowed ones."""


class DataError(MechError, ValueError):
    """A dataset file or row that cannot be read (schema, options, answers, image bytes)."""


class MissingDependencyError(ProcessorError, ImportError):
    """An optional package that one part needs is not installed (e.g. torchvision for a video
    processor). The message names the package and the ``pip install`` that fixes it; the other
    parts keep working."""


class RunConflictError(MechError, RuntimeError):
    """An output folder holds (or is writing) a run of the same command with other settings; pass
    another ``--out`` or ``--overwrite`` (:mod:`mech.runs.folder`)."""


class FrozenError(MechError, FrozenInstanceError, TypeError):
    """An attempt to change an immutable mech record in place (assigning or deleting an attribute
    or an item of :class:`mech.models.Inputs`, a :class:`mech.measure.patching.Metric`, a hook registry, or
    rebinding a table of :mod:`mech.engines.hooks`). The message names the method that builds a changed copy
    (e.g. ``inputs.replace(...)``). An ``AttributeError`` (as ``dataclasses.FrozenInstanceError``) and a
    ``TypeError`` (as item assignment on an immutable mapping)."""
