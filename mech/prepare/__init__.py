"""Prepare: data specs -> samples -> frozen inputs with token groups; answer and option targets."""

#: the public modules; ``mmmu_pro`` (MMMU-Pro's official prompt), ``samples`` (the Dataset) and ``record``
#: (the Inputs record) are used through ``data`` and ``inputs``, which re-export what they define.
#: The everyday verbs are at the top level: ``mech.load_data``, ``mech.decision_tokens``, ...
__all__ = ["data", "fit", "groups", "images", "inputs", "spans", "targets"]
