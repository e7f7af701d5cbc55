"""mech: instruments for the mechanistic interpretability of modality bias in multimodal LLMs.

The everyday verbs live here, at the top level; a notebook needs only ``mech`` and ``mech.figures``::

    import mech
    from mech.figures import mass_curves

    m = mech.load("organism:balanced")                      # a MechModel
    data = mech.load_data("organism:shapes", n=32)          # a Dataset of sample dicts
    inputs = mech.condition_inputs(m, data.samples, "complete")  # frozen Inputs [batch, pos]
    am = mech.attention_mass(m, inputs, query="last")       # AttentionMass [batch, layer, head, group]
    fig = mass_curves(am)

Load: ``load``, ``load_data``. Prepare: ``condition_inputs``, ``token_groups``, ``decision_tokens`` (the
model's own decision) and ``answer_tokens`` (the gold answer). Measure: ``attention_mass``,
``activation_patching``, ``attribution_patching``, ``attention_knockout``, ``direct_logit_attribution``,
``modality_contributions``, ``evaluate``, ``repair``; hooks: ``run_with_cache``, ``run_with_hooks``.
``help(mech.<verb>)`` gives each one's shapes, units, errors and sources. See docs/design.md for the path
of the data: load -> prepare -> conditions -> engines -> measure -> curves -> results -> runs -> figures ->
report -> cli.

The public verbs are imported on first use (PEP 562), so ``import mech`` and ``mech --help`` do not
load torch or transformers until a verb is touched.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

__version__ = "0.1.0"

#: public name -> "module:attribute", in data-path order: load a model and data, prepare inputs under a
#: condition, choose the logit difference to explain, measure, evaluate. The everyday verbs are
#: ``load``, ``load_data``, ``condition_inputs``, ``decision_tokens`` / ``answer_tokens``,
#: ``attention_mass``, ``activation_patching``, ``attribution_patching``, ``attention_knockout``,
#: ``direct_logit_attribution``, ``modality_contributions``, ``evaluate`` and ``repair``; each
#: returns a result whose class is public here too. Figures are in :mod:`mech.figures`.
_PUBLIC = {
    # load
    "load": "mech.models.load:load",
    "MechModel": "mech.models.load:MechModel",
    "supported": "mech.models.table:supported",
    # prepare: data, conditions, token groups, targets
    "load_data": "mech.prepare.data:load_data",
    "condition_inputs": "mech.conditions:condition_inputs",
    "GROUPS": "mech.prepare.groups:GROUPS",
    "TokenGroups": "mech.prepare.groups:TokenGroups",
    "decision_tokens": "mech.prepare.targets:decision_tokens",
    "answer_tokens": "mech.prepare.targets:answer_tokens",
    # engines
    "run_with_cache": "mech.engines.hooks:run_with_cache",
    "run_with_hooks": "mech.engines.hooks:run_with_hooks",
    # measure
    "attention_mass": "mech.measure.attention:attention_mass",
    "AttentionMass": "mech.measure.attention:AttentionMass",
    "activation_patching": "mech.measure.patching:activation_patching",
    "PatchingResult": "mech.measure.patching:PatchingResult",
    "attribution_patching": "mech.measure.patching.attribution:attribution_patching",
    "compare_to_exact": "mech.measure.patching.attribution:compare_to_exact",
    "AtPResult": "mech.measure.patching.attribution:AtPResult",
    "attention_knockout": "mech.measure.knockout:attention_knockout",
    "KnockoutResult": "mech.measure.knockout:KnockoutResult",
    "direct_logit_attribution": "mech.measure.dla:direct_logit_attribution",
    "DLA": "mech.measure.dla:DLA",
    "evaluate": "mech.measure.evaluation.run:evaluate",
    "repair": "mech.measure.repair:repair",
    "RepairResult": "mech.measure.repair:RepairResult",
    # curves
    "modality_contributions": "mech.curves:modality_contributions",
    "Contributions": "mech.curves:Contributions",
    # results: a command's JSON file as its typed record
    "read_record": "mech.runs.jobs:read_record",
    # errors
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

    Raises:
        SpecError: ``m`` is a raw Hugging Face model (the message gives ``mech.load((model, processor))``).
    """
    from mech.models.load import as_model

    return as_model(m, "token_groups").inputs(inputs).groups


__all__ = [
    "DLA",
    "GROUPS",
    "AtPResult",
    "AttentionMass",
    "Contributions",
    "KnockoutResult",
    "MechError",
    "MechModel",
    "PatchingResult",
    "RepairResult",
    "TokenGroups",
    "__version__",
    "activation_patching",
    "answer_tokens",
    "attention_knockout",
    "attention_mass",
    "attribution_patching",
    "compare_to_exact",
    "condition_inputs",
    "decision_tokens",
    "direct_logit_attribution",
    "evaluate",
    "load",
    "load_data",
    "modality_contributions",
    "read_record",
    "repair",
    "run_with_cache",
    "run_with_hooks",
    "supported",
    "token_groups",
]
