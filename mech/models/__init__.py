"""Loading and the per-family architecture tables."""

from mech.models import families as _families  # noqa: F401  (registers the tables)
from mech.prepare.inputs import Inputs, as_inputs, load_image, prepare
from mech.models.load import MechModel, load
from mech.models.table import REGISTRY, Architecture, ArchitectureTable, register, resolve, supported, table_for

__all__ = ["Architecture", "ArchitectureTable", "Inputs", "MechModel", "REGISTRY", "as_inputs", "load", "load_image",
           "prepare", "register", "resolve", "supported", "table_for"]
