"""Measure: one instrument each (attention mass, activation and attribution patching, knockout, DLA,
probing, the missing-modality evaluation), each returning a result."""

#: one module per instrument (its verb and result class are at the top level: ``mech.attention_mass``, ...)
__all__ = ["attention", "dla", "evaluation", "knockout", "patching", "probing", "repair"]
