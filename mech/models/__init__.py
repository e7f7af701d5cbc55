"""Loading and the per-family architecture tables."""

from mech.models.families import TABLES
from mech.models.load import MechModel, load
from mech.models.schema import ArchitectureTable
from mech.models.table import Architecture, resolve, supported, table_for
from mech.prepare.inputs import Inputs, as_inputs, load_image, prepare

__all__ = [
    "TABLES",
    "Architecture",
    "ArchitectureTable",
    "Inputs",
    "MechModel",
    "as_inputs",
    "load",
    "load_image",
    "prepare",
    "resolve",
    "supported",
    "table_for",
]
