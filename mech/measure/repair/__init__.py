"""Repair: from an explanation of modality bias to an edit, checked on a held-out split (docs/repair.md).

``repair(m, fit, held_out, ...)`` ranks units (MLP neurons, heads, layer components) by an explanation
on the fit split, edits the top k through the scoped engines (zero or mean ablation, steering, attention
re-weighting) and evaluates on held-out samples against same-size random edits. See
:mod:`mech.measure.repair.core`.
"""

from mech.measure.repair.core import assemble, predict, repair
from mech.measure.repair.edits import ALLOWED, GRANULARITIES, KINDS, POINTS, Edit, applied
from mech.measure.repair.plan import Plan, make_plan, planted_categories, random_edit
from mech.measure.repair.record import RepairRecord
from mech.measure.repair.result import RepairResult
from mech.measure.repair.select import SOURCES, Selection

__all__ = [
    "ALLOWED",
    "GRANULARITIES",
    "KINDS",
    "POINTS",
    "SOURCES",
    "Edit",
    "Plan",
    "RepairRecord",
    "RepairResult",
    "Selection",
    "applied",
    "assemble",
    "make_plan",
    "planted_categories",
    "predict",
    "random_edit",
    "repair",
]
