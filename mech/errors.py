"""One error family for everything mech refuses to do.

Every message names the fix: what was wrong, and what to pass instead. Catch ``MechError`` to
handle all of them; the subclasses exist so that tests and callers can tell the cases apart.
"""

from __future__ import annotations

from dataclasses import FrozenInstanceError

__all__ = [
    "ConfigError",
    "DataError",
    "DeviceError",
    "FrozenError",
    "HookError",
    "InputError",
    "Interrupted",
    "LockError",
    "MechError",
    "MissingDependencyError",
    "ModelFileError",
    "OutputError",
    "ProcessorError",
    "RunConflictError",
    "SpecError",
    "UnsupportedArchitectureError",
    "UsageError",
    "WriteError",
]


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


class OutputError(ConfigError):
    """``--out`` cannot hold results: it (or a parent) is a file, or it cannot be written."""


class DeviceError(ConfigError):
    """A ``--device`` or ``--device-map`` that this machine cannot run on (no CUDA, fewer GPUs, no
    MPS, an unknown device string); the message names the devices that are there."""


class UsageError(ConfigError):
    """A command line that does not parse (an unknown option, a missing or malformed value); the
    command line exits with 2 for it, as argparse does."""


class ModelFileError(SpecError):
    """A model folder whose files cannot be read: no config, no weights, a truncated or corrupt
    weights file. The message names the folder and how to get complete files."""


class WriteError(MechError, OSError):
    """A result or batch could not be written (disk full, permission lost). Nothing partial is left:
    the file is complete or absent, finished batches are kept, and the same command resumes."""


class LockError(RunConflictError):
    """Another process holds an output folder's lock for longer than the wait allows."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; its message says what was finished and that the same command resumes.
    A ``KeyboardInterrupt``, so code that lets Ctrl-C through still does."""


class FrozenError(MechError, FrozenInstanceError, TypeError):
    """An attempt to change an immutable mech record in place (assigning or deleting an attribute
    or an item of :class:`mech.models.Inputs`, a :class:`mech.measure.patching.Metric`, a hook registry, or
    rebinding a table of :mod:`mech.engines.hooks`). The message names the method that builds a changed copy
    (e.g. ``inputs.replace(...)``). An ``AttributeError`` (as ``dataclasses.FrozenInstanceError``) and a
    ``TypeError`` (as item assignment on an immutable mapping)."""


class HookError(MechError, TypeError):
    """A hook function that mech cannot call, or that returned what cannot replace the activation: not
    a tensor, another shape, dtype or device than the activation it was given. The message names the
    hook point, the expected and the returned value, and the fix (return a tensor of the input's
    shape, dtype and device, or None to leave the activation unchanged). A ``TypeError``, as calling a
    function with the wrong arguments is."""
