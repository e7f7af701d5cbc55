"""Measure: one instrument each (attention mass, activation and attribution patching, knockout, DLA,
probing, the missing-modality evaluation), each returning a result."""
