"""Engines: how a forward is read or edited: TransformerLens-named hook points, the attention-function
swap (recorder, edge blocker), prefix reuse, and the bridges to TransformerLens and nnsight."""

#: the public modules (the verbs built on them are at the top level: ``mech.run_with_hooks``, ...)
__all__ = [
    "attention_fn",
    "edge_blocker",
    "hook_points",
    "hook_sites",
    "hooks",
    "nnsight_remote",
    "prefix",
    "transformerlens",
    "unembed",
]
