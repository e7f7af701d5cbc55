"""The attention function that blocks attention edges, registered in transformers' attention registry.

:class:`EdgeBlocker` is an ``AttentionInterface`` function. In the layers where it is active (the
module's ``layer_idx`` inside a row's window) it edits the attention mask the model built, adding
``finfo(dtype).min`` (an additive mask) or clearing the entry (a boolean mask) for every blocked
(query, key) pair, and then calls the implementation the decoder was using (SDPA, or the family's
``eager_attention_forward``) with the edited mask. Nothing else changes: queries, keys, values,
scaling, soft-capping, sliding windows, bidirectional image blocks and padding all come from the
model's own code and its own mask. Grouped-query attention needs nothing special: the mask is
``[batch, 1, query, key]`` and broadcasts over heads.

When SDPA's fast path handed no 4-D mask (``attention_mask=None``: causal via ``is_causal`` or
full bidirectional attention, no padding), the mask is built here, as in
:meth:`mech.engines.attention_fn.MassRecorder._mask_rows`: causal (``is_causal`` from the call, else
the module's attribute) or full, as an additive float mask, then edited.

The diagonal (a position's own key) is kept unless a pair asks for it: a pair is
``(source, target)`` or ``(source, target, self_edge)``, and only where ``self_edge[r]`` is True is
the entry ``(q, q)`` of row ``r`` blocked too. Without it every query row keeps at least its own
position (always allowed by the causal mask), so no row becomes fully masked; blocking
``text -> text`` then removes every text-to-other-text edge but keeps self-attention, as Geva et al.
(2023, §3) block edges *from* other positions *to* the target. With it, a pair whose source and
target are one position (Zhang et al. 2025's ``Last->Last``: the answer position may not attend to
its own key; their ``set_block_attn_hooks_llava`` zeroes exactly the listed (target, source)
entries) blocks that entry and leaves the row its other keys.

:func:`blocking` registers a per-call name in ``AttentionInterface`` and ``AttentionMaskInterface``
(like :func:`mech.engines.attention_fn.recording`), switches only the decoder configs to it, and
restores the previous implementation and both registries in ``finally``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from mech.engines.attention_fn import inner_function, swap_attention
from mech.errors import ConfigError

__all__ = ["EdgeBlocker", "blocking"]


class EdgeBlocker:
    """An ``AttentionInterface`` function that blocks ``source -> target`` attention edges.

    Args:
        inner: name of the implementation the decoder used (``"sdpa"`` or ``"eager"``).
        pairs: list of ``(source, target)`` BoolTensors ``[rows, pos]``: key positions ``source[r]``
            are hidden from query positions ``target[r]`` (the union over pairs is blocked), a query's
            own key excepted; or ``(source, target, self_edge)`` with ``self_edge`` a BoolTensor
            ``[rows]`` (or a bool): where True, a query's own key is blocked too when the pair lists it.
        active: BoolTensor ``[rows, n_layers]``: whether row ``r`` is blocked in layer ``l``.

    Attributes:
        calls: ``layer -> number of calls`` in which at least one row was blocked (for tests).

    Raises:
        ConfigError: a flash-attention implementation (its mask is not a 4-D matrix that can be edited).
    """

    def __init__(self, inner: str, pairs: list[tuple], active: torch.Tensor):
        if inner.startswith("flash"):
            raise ConfigError(
                f"attention knockout edits the 4-D attention mask, which {inner!r} does not take; "
                "load the model with attn_implementation='sdpa' (or 'eager')."
            )
        self.inner = inner
        self.pairs = pairs
        self.active = active
        self.calls: dict[int, int] = {}
        self._fn: Callable | None = None
        self._block: dict[tuple, torch.Tensor] = {}

    def block(self, q_len: int, kv_len: int, device) -> torch.Tensor:
        """BoolTensor ``[rows, 1, q_len, kv_len]``: True where the edge is blocked (the diagonal only
        for pairs with ``self_edge``)."""
        key = (q_len, kv_len, str(device))
        if key not in self._block:
            rows = self.active.shape[0]
            out = torch.zeros(rows, q_len, kv_len, dtype=torch.bool, device=device)
            qpos = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
            diag = qpos == torch.arange(kv_len, device=device)[None, :]  # [q_len, kv_len]
            for pair in self.pairs:
                src, tgt = pair[0], pair[1]
                s = src.to(device)[:, -kv_len:]
                t = tgt.to(device)[:, -q_len:]
                edge = t[:, :, None] & s[:, None, :]
                own = pair[2] if len(pair) > 2 else False
                own = torch.as_tensor(own, dtype=torch.bool, device=device).expand(rows)
                out |= edge & ~(diag[None] & ~own[:, None, None])
            self._block[key] = out[:, None]
        return self._block[key]

    @staticmethod
    def base_mask(module, attention_mask, query, kv_len: int, kwargs) -> torch.Tensor:
        """The mask the implementation would apply, as a 4-D tensor (built when SDPA got ``None``)."""
        if attention_mask is not None and attention_mask.dim() == 4:
            return attention_mask[..., :kv_len]
        batch, q_len, device = query.shape[0], query.shape[2], query.device
        causal = kwargs.get("is_causal")
        causal = getattr(module, "is_causal", True) if causal is None else causal
        allowed = torch.ones(batch, 1, q_len, kv_len, dtype=torch.bool, device=device)
        if causal and q_len > 1:
            qpos = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
            allowed &= torch.arange(kv_len, device=device)[None, :] <= qpos
        if attention_mask is not None and attention_mask.dim() == 2:
            allowed &= attention_mask[:, None, None, -kv_len:].bool()
        neg = torch.finfo(query.dtype).min
        return torch.zeros(allowed.shape, dtype=query.dtype, device=device).masked_fill(~allowed, neg)

    def edited_mask(self, module, attention_mask, query, key, act: torch.Tensor, kwargs) -> torch.Tensor:
        """The mask with the blocked edges of the active rows removed."""
        q_len, kv_len = query.shape[2], key.shape[2]
        base = self.base_mask(module, attention_mask, query, kv_len, kwargs)
        blocked = self.block(q_len, kv_len, query.device) & act.to(query.device)[:, None, None, None]
        if base.dtype == torch.bool:
            return base & ~blocked
        return base.masked_fill(blocked, torch.finfo(base.dtype).min)

    def __call__(self, module, query, key, value, attention_mask, **kwargs):
        if self._fn is None:
            self._fn = inner_function(self.inner, module)
        layer = int(module.layer_idx)
        act = self.active[:, layer]
        if query.shape[0] != act.shape[0]:
            raise ConfigError(
                f"the knockout was set up for {act.shape[0]} rows but layer {layer} got a batch of "
                f"{query.shape[0]}; run the model on the inputs given to blocking()."
            )
        if bool(act.any()):
            attention_mask = self.edited_mask(module, attention_mask, query, key, act, kwargs)
            self.calls[layer] = self.calls.get(layer, 0) + 1
        return self._fn(module, query, key, value, attention_mask, **kwargs)


@contextlib.contextmanager
def blocking(m: Any, pairs: list[tuple], active: torch.Tensor) -> Iterator[EdgeBlocker]:
    """Run the decoder under an :class:`EdgeBlocker` for the duration of the block.

    A name ``mech_knockout_<n>`` is registered in ``AttentionInterface`` (the blocker) and in
    ``AttentionMaskInterface`` (the wrapped implementation's mask builder); the decoder configs'
    ``_attn_implementation`` is set to it (:func:`mech.engines.attention_fn.swap_attention`). On exit,
    exceptions included, the configs get their previous implementation back and both registrations are
    removed (only mech's own entries).

    Raises:
        ConfigError: the decoder configs disagree on their attention implementation; flash attention.
    """
    with swap_attention(m, lambda inner: EdgeBlocker(inner, pairs, active), "mech_knockout") as (_, blocker):
        try:
            yield blocker
        finally:
            blocker._block.clear()
