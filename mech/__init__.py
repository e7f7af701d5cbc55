"""mech: instruments for the mechanistic interpretability of modality bias in multimodal LLMs.

See docs/design.md for the path of the data: load -> prepare -> conditions -> engines -> measure ->
curves -> results -> runs -> figures -> report -> cli.
"""

from mech.measure.attention import AttentionMass, attention_mass
from mech.measure.patching.attribution import AtPResult, attribution_patching, compare_to_exact
from mech.errors import MechError
from mech.prepare.groups import GROUPS, TokenGroups
from mech.engines.hooks import run_with_cache, run_with_hooks
from mech.measure.knockout import KnockoutResult, attention_knockout
from mech.models import MechModel, load, supported
from mech.measure.patching import PatchingResult, activation_patching

__version__ = "0.1.0"


def token_groups(m: MechModel, inputs) -> TokenGroups:
    """Token groups of ``inputs`` (``prepare`` output or raw processor output).

    Returns :class:`TokenGroups`; ``groups.mask("image")`` is a BoolTensor ``[batch, pos]``.
    """
    return m.inputs(inputs).groups


__all__ = ["AtPResult", "AttentionMass", "GROUPS", "KnockoutResult", "MechError", "PatchingResult",
           "activation_patching", "attention_knockout", "attention_mass", "attribution_patching", "compare_to_exact",
           "run_with_cache", "run_with_hooks", "MechModel", "TokenGroups", "load", "supported", "token_groups", "__version__"]
