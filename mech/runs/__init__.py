"""Runs: frozen settings per command, one run loop (batches, shards, resume, parts store, folder
identity, atomic writes), and the jobs that plug into it.

``run(job)`` runs a :class:`Job`; ``run_settings(settings)`` runs the job of a command's settings
(``EvalSettings``, ``AttentionSettings``, ``PatchSettings``, ``ContribSettings``); ``report`` and
``merge`` compose them. The settings import nothing heavy; the loop (torch) loads on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from mech.runs.settings import InspectSettings, MergeSettings, ReportSettings, Settings

_LAZY = {
    # the instruments' settings: defined in their ``instrument`` modules, found by discovery
    "AttentionSettings": "mech.runs.settings",
    "ContribSettings": "mech.runs.settings",
    "EvalSettings": "mech.runs.settings",
    "PatchSettings": "mech.runs.settings",
    "RepairSettings": "mech.runs.settings",
    "COMMANDS": "mech.runs.jobs",
    "JOBS": "mech.runs.jobs",
    "job_for": "mech.runs.jobs",
    "run_settings": "mech.runs.jobs",
    "Job": "mech.runs.loop",
    "identity": "mech.runs.loop",
    "run": "mech.runs.loop",
    "merge": "mech.runs.merge",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'mech.runs' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = [
    "COMMANDS",
    "JOBS",
    "AttentionSettings",
    "ContribSettings",
    "EvalSettings",
    "InspectSettings",
    "Job",
    "MergeSettings",
    "PatchSettings",
    "RepairSettings",
    "ReportSettings",
    "Settings",
    "identity",
    "job_for",
    "merge",
    "run",
    "run_settings",
]
