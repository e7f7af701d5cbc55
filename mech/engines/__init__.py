"""Engines: how a forward is read or edited: TransformerLens-named hook points, the attention-function
swap (recorder, edge blocker), prefix reuse, and the bridges to TransformerLens and nnsight."""
