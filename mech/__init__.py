"""mech: instruments for the mechanistic interpretability of modality bias in multimodal LLMs.

See docs/design.md for the path of the data: load -> prepare -> conditions -> engines -> measure ->
curves -> results -> runs -> figures -> report -> cli.

The public verbs are imported on first use (PEP 562), so ``import mech`` and ``mech --help`` do not
load torch or transformers until a verb is touched.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

__version__ = "0.1.0"

#: public name -> "module:attribute", in data-path order
_PUBLIC = {
    "load": "mech.models.load:load",
    "MechModel": "mech.models.load:MechModel",
    "supported": "mech.models.table:supported",
    "GROUPS": "mech.prepare.groups:GROUPS",
    "TokenGroups": "mech.prepare.groups:TokenGroups",
    "run_with_cache": "mech.engines.hooks:run_with_cache",
    "run_with_hooks": "mech.engines.hooks:run_with_hooks",
    "attention_mass": "mech.measure.attention:attention_mass",
    "AttentionMass": "mech.measure.attention:AttentionMass",
    "activation_patching": "mech.measure.patching:activation_patching",
    "PatchingResult": "mech.measure.patching:PatchingResult",
    "attribution_patching": "mech.measure.patching.attribution:attribution_patching",
    "compare_to_exact": "mech.measure.patching.attribution:compare_to_exact",
    "AtPResult": "mech.measure.patching.attribution:AtPResult",
    "attention_knockout": "mech.measure.knockout:attention_knockout",
    "KnockoutResult": "mech.measure.knockout:KnockoutResult",
    "repair": "mech.measure.repair:repair",
    "RepairResult": "mech.measure.repair:RepairResult",
    "MechError": "mech.errors:MechError",
}


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        if not name.startswith("_") and importlib.util.find_spec(f"mech.{name}") is not None:
            return importlib.import_module(f"mech.{name}")  # a subpackage, e.g. mech.models
        raise AttributeError(f"module 'mech' has no attribute {name!r}")
    module, _, attr = _PUBLIC[name].partition(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


def token_groups(m: Any, inputs: Any) -> Any:
    """Token groups of ``inputs`` (``prepare`` output or raw processor output).

    Returns :class:`~mech.prepare.groups.TokenGroups`; ``groups.mask("image")`` is a BoolTensor
    ``[batch, pos]``.
    """
    return m.inputs(inputs).groups


__all__ = [
    "AtPResult",
    "AttentionMass",
    "GROUPS",
    "KnockoutResult",
    "MechError",
    "PatchingResult",
    "RepairResult",
    "activation_patching",
    "attention_knockout",
    "attention_mass",
    "attribution_patching",
    "compare_to_exact",
    "repair",
    "run_with_cache",
    "run_with_hooks",
    "MechModel",
    "TokenGroups",
    "load",
    "supported",
    "token_groups",
    "__version__",
]
