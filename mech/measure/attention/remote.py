"""Attention mass through nnsight, for models that run elsewhere: NDIF (``remote=True``).

The measurement of :func:`mech.attention_mass` (query positions, then an :class:`AttentionMass` with
density, spatial map and grid, :func:`mech.measure.attention.assemble_mass`) over the nnsight trace of
:func:`mech.engines.nnsight_remote.trace_attention_mass` instead of mech's own attention recorder,
which a remote server does not allow (how the trace reads the attention, what is and is not tested:
:mod:`mech.engines.nnsight_remote`)::

    m = mech.engines.nnsight_remote.load_remote("Qwen/Qwen2.5-VL-7B-Instruct")  # config + processor only
    am = attention_mass_nnsight(m, m.prepare(images, prompts), remote=True)  # needs NDIF_API_KEY
"""

from __future__ import annotations

from typing import Any

import torch

from mech.engines.nnsight_remote import trace_attention_mass
from mech.measure.attention import AttentionMass, assemble_mass, query_positions

__all__ = ["attention_mass_nnsight"]


def attention_mass_nnsight(
    m: Any, inputs: Any, query: Any = "last", *, remote: bool | str = False
) -> AttentionMass:
    """:func:`mech.attention_mass` as an nnsight trace (module docstring), locally or on NDIF.

    Args:
        m: :func:`mech.engines.nnsight_remote.load_remote` output (for ``remote=True``), or a locally
            loaded :class:`mech.MechModel`.
        inputs: ``m.prepare(...)`` output or raw processor outputs ``[batch, pos]``.
        query: ``"last"``, ``"answer"``, ``"text"`` or a BoolTensor ``[batch, pos]`` (as
            :func:`mech.attention_mass`).
        remote: False (run here), True (NDIF; needs nnsight's API key), ``"local"`` (serialize as
            for NDIF, run here), or a host URL.

    Returns:
        :class:`mech.measure.attention.AttentionMass` with ``mass [batch, layer, head, group]`` in fp32,
        equal to :func:`mech.attention_mass`'s (tests/test_remote.py).

    Raises:
        UnsupportedArchitectureError: cross-attention families (Mllama).
        ConfigError: unknown ``query``; an attention forward without ``attention_interface``.
        InputError: a row without query positions.
    """
    m.require_decoder_sequence("attention_mass_nnsight")
    inp = m.inputs(inputs)
    index, valid, label = query_positions(inp.groups, query)
    index, valid = index.cpu(), valid.cpu()
    one_hot = inp.groups.one_hot(torch.float32).cpu()  # [batch, pos, group]
    mass, keys = trace_attention_mass(m, inp, index, valid, one_hot, remote=remote)
    return assemble_mass(m, inp, mass, keys, label, valid)
