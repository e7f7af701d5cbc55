"""Logits only where they are read: the unembedding applied at one position per row.

An instrument that reads the answer position needs ``[batch, vocab]`` logits, but a plain forward
projects every position onto the vocabulary: ``[batch, pos, vocab]``, fp32 in most families
(Qwen2.5-VL: 151,936 entries, ~4.5 GiB for 8 × 2,000 tokens in bf16). transformers' own remedy is
the ``logits_to_keep`` keyword (an int keeps the last columns; generation passes 1), but not every
family's forward accepts it (Qwen2-Audio), and with right padding (PaliGemma) the answer position is
not the last column.

:func:`unembed_at` does the same for every family and any padding: a pre-hook on the family table's
``unembed`` module (``lm_head``) hands it only the hidden state at each row's position, so the
model's own unembedding, bias and final-logit soft-capping run on ``[batch, 1, d_model]`` and
``.logits`` comes back ``[batch, 1, vocab]``. The final norm still runs at every position (it is
``O(pos × d_model)``, and hook points on it see the whole sequence). The hook is mech's own and
removed in ``finally``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from mech.engines.hooks import find_hidden, with_hidden
from mech.errors import InputError

__all__ = ["answer_logits", "unembed_at"]


@contextlib.contextmanager
def unembed_at(m, positions: torch.Tensor) -> Iterator[None]:
    """Within the block, the model's unembedding sees only ``positions`` ``[batch]`` (one per row).

    Every forward of ``m.model`` inside the block returns ``.logits`` ``[batch, 1, vocab]``: row ``i``
    holds exactly what the full forward's ``logits[i, positions[i]]`` holds (same module, same
    soft-capping; the oracle in ``tests/test_logits_to_keep.py``). Gradients flow through the kept
    position as through the full logits.

    Args:
        m: a :class:`~mech.MechModel`.
        positions: LongTensor ``[batch]``, e.g. ``inputs.groups.last()`` (the answer position, the last
            non-padding token under either padding side).

    Raises:
        InputError: (at the forward) the unembedding got hidden states whose batch differs from
            ``len(positions)``.
    """
    positions = torch.as_tensor(positions).long().flatten()
    module = m.arch.module(m.model, "unembed")

    def pre(mod, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        hit = find_hidden(args, kwargs, m.arch.d_model)
        if hit is None:
            return None
        key, x = hit
        if x.shape[0] != len(positions):
            raise InputError(
                f"the unembedding got hidden states of batch {x.shape[0]}, but {len(positions)} answer "
                "positions were given; pass one position per row (inputs.groups.last())"
            )
        pos = positions.to(x.device)
        kept = x[torch.arange(len(pos), device=x.device), pos][:, None]
        return with_hidden(args, kwargs, key, kept)

    handle = module.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def answer_logits(
    m, inputs: Any, positions: torch.Tensor | None = None, **forward_kwargs: Any
) -> torch.Tensor:
    """Logits ``[batch, vocab]`` at one position per row from one forward of ``m.model(**inputs)``.

    Equal to ``m.model(**inputs).logits[arange(batch), positions]`` (HF logits, the oracle of the
    tests) without forming ``[batch, pos, vocab]``.

    Args:
        m: a :class:`~mech.MechModel`.
        inputs: ``prepare`` output (or raw processor output; its groups are computed).
        positions: LongTensor ``[batch]``; default: the answer position ``inputs.groups.last()``.
        **forward_kwargs: passed to the forward (e.g. ``use_cache=False``).

    Returns:
        logits ``[batch, vocab]`` in the model's dtype, with a graph when gradients are enabled.
    """
    inp = m.inputs(inputs)
    if positions is None:
        positions = inp.groups.last()
    kwargs = {k: v for k, v in inp.items() if k != "labels"}  # a loss would need every position
    with unembed_at(m, positions):
        return m.model(**kwargs, **forward_kwargs).logits[:, 0]
