"""The jobs of the computing commands, by command (imported when run, so ``mech --help`` stays light)."""

from __future__ import annotations

import importlib
from types import MappingProxyType
from typing import Any

#: command -> "module:Job class"; each class takes the command's settings (:data:`mech.runs.settings.COMMANDS`)
JOBS = MappingProxyType({
    "eval": "mech.measure.evaluation.job:EvalJob",
    "attention": "mech.measure.attention.job:AttentionJob",
    "patch": "mech.measure.patching.job:PatchJob",
    "contrib": "mech.curves.job:ContribJob",
    "repair": "mech.measure.repair.job:RepairJob",
})


def job_for(settings: Any) -> Any:
    """The job running ``settings`` (its ``command`` picks the class)."""
    module, _, name = JOBS[settings.command].partition(":")
    return getattr(importlib.import_module(module), name)(settings)


def run_settings(settings: Any, **kwargs: Any) -> dict:
    """Run the command ``settings`` describe on the run loop (:func:`mech.runs.loop.run`)."""
    from mech.runs.loop import run

    return run(job_for(settings), **kwargs)
