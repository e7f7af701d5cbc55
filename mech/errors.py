"""One error family for everything mech refuses to do.

Every message names the fix: what was wrong, and what to pass instead. Catch ``MechError`` to
handle all of them; the subclasses exist so that tests and callers can tell the cases apart.
"""

from __future__ import annotations


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
