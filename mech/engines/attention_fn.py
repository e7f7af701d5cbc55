"""Attention mass through transformers' attention-function registry, without eager attention.

:class:`MassRecorder` is an ``AttentionInterface`` function. It wraps the function the decoder was
using (SDPA by default; flash attention on a GPU; the family's own ``eager_attention_forward`` for a
model loaded with ``attn_implementation="eager"``), lets it compute the layer output exactly as
before, and additionally computes the softmax weights **only for the query rows asked for**, in
fp32, reduced at once to per-group mass. No ``[seq, seq]`` matrix is ever formed: the transient
tensor is ``[batch, head, query, key]`` with ``query`` the handful of rows asked for, and what is
kept is ``[batch, head, group]`` plus ``[batch, key]`` (head- and query-mean weights, for heatmaps)
per layer.

The weights reproduce each family's ``eager_attention_forward``: ``softmax(q k^T * scaling
[softcapped: tanh(s / c) * c] + mask)`` over the key axis, with grouped-query attention (every
``num_key_value_groups`` query heads share one key head), the mask the model built for the wrapped
implementation (causal, bidirectional image blocks, sliding windows, padding), and attention sinks
(``s_aux``, GPT-OSS style: an extra logit column that takes mass and is dropped afterwards).

:func:`recording` switches the decoder (only the decoder: vision and audio encoders keep their own
implementation) to a per-call registered name and restores the previous implementation and both
registries in ``finally``.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from mech.errors import ConfigError

__all__ = ["MassRecorder", "decoder_configs", "inner_function", "recording", "swap_attention"]

_COUNTER = itertools.count()
_FLASH = "flash_attention"


def inner_function(name: str, module: torch.nn.Module) -> Callable:
    """The attention function the decoder would have called under implementation ``name``."""
    if name in (None, "eager"):
        fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if fn is None:
            raise ConfigError(
                f"{type(module).__name__} has no eager_attention_forward to wrap; load the model with "
                "attn_implementation='sdpa'."
            )
        return fn
    return ALL_ATTENTION_FUNCTIONS[name]


# The former private name, still imported by mech/engines/edge_blocker.py and mech/measure/patching/attribution_deeplift.py;
# remove once they import ``inner_function``.


class MassRecorder:
    """An ``AttentionInterface`` function that records per-group attention mass.

    Args:
        inner: name of the implementation the decoder used (``"sdpa"``, ``"eager"``, ``"flash_attention_2"``...).
        query_index: LongTensor ``[batch, n_query]``: positions of the query rows to record.
        query_valid: BoolTensor ``[batch, n_query]``: False on filler slots of rows with fewer queries.
        one_hot: FloatTensor ``[batch, pos, group]``: key-position group indicator (zero rows at padding).

    After the forward, ``mass[layer]`` is ``[batch, head, group]`` (mean over the valid query rows of
    each batch row) and ``keys[layer]`` is ``[batch, pos]`` (weights averaged over heads and valid
    query rows: the attention each key position receives).
    """

    def __init__(
        self, inner: str, query_index: torch.Tensor, query_valid: torch.Tensor, one_hot: torch.Tensor
    ):
        self.inner = inner
        self.query_index = query_index
        self.query_valid = query_valid
        self.one_hot = one_hot.float()
        self.mass: dict[int, torch.Tensor] = {}
        self.keys: dict[int, torch.Tensor] = {}
        self._fn: Callable | None = None
        self._rows: dict[tuple, tuple] = {}  # mask rows, shared by the layers that share a mask

    # --------------------------------------------------------------------- AttentionInterface entry
    def __call__(self, module, query, key, value, attention_mask, **kwargs):
        if self._fn is None:
            self._fn = inner_function(self.inner, module)
        out = self._fn(module, query, key, value, attention_mask, **kwargs)
        with torch.no_grad():
            self.record(module, query, key, attention_mask, value=value, **kwargs)
        return out

    # --------------------------------------------------------------------- the weights of the rows asked for
    def _mask_rows(
        self, module, attention_mask, idx: torch.Tensor, q_len: int, kv_len: int, device, kwargs
    ) -> torch.Tensor:
        """Additive fp32 mask ``[batch, 1 or head, n_query, kv]`` for the selected query rows."""
        neg = torch.finfo(torch.float32).min
        batch, nq = idx.shape
        if attention_mask is not None and attention_mask.dim() == 4:
            m = attention_mask[..., :kv_len].expand(batch, -1, -1, -1)
            rows = torch.gather(m, 2, idx[:, None, :, None].expand(batch, m.shape[1], nq, kv_len))
            if rows.dtype == torch.bool:
                return torch.zeros(rows.shape, device=device).masked_fill(~rows, neg)
            return rows.float().clamp(min=neg)
        # no 4-D mask: causal (is_causal) and, for flash attention, padding and sliding window from kwargs
        qpos = idx[:, None, :, None]
        kpos = torch.arange(kv_len, device=device)[None, None, None, :]
        causal = kwargs.get("is_causal")
        causal = getattr(module, "is_causal", True) if causal is None else causal
        allowed = torch.ones(batch, 1, nq, kv_len, dtype=torch.bool, device=device)
        if causal and q_len > 1:
            allowed &= kpos <= qpos + (kv_len - q_len if self.inner.startswith(_FLASH) else 0)
        window = kwargs.get("sliding_window") if self.inner.startswith(_FLASH) else None
        if window is not None:
            allowed &= (qpos - kpos) < window
        if attention_mask is not None and attention_mask.dim() == 2:
            allowed &= attention_mask[:, None, None, -kv_len:].bool()
        return torch.zeros(allowed.shape, device=device).masked_fill(~allowed, neg)

    def weights(self, module, query, key, attention_mask, **kwargs) -> torch.Tensor:
        """Softmax weights ``[batch, head, n_query, kv]`` (fp32) of the selected query rows."""
        batch, n_heads, q_len, d = query.shape
        n_kv, kv_len = key.shape[1], key.shape[2]
        groups = n_heads // n_kv
        idx = self.query_index.to(query.device).clamp(0, q_len - 1)
        nq = idx.shape[1]
        q = torch.gather(query, 2, idx[:, None, :, None].expand(batch, n_heads, nq, d)).float()
        q = q.view(batch, n_kv, groups, nq, d)
        scaling = kwargs.get("scaling")
        scaling = d**-0.5 if scaling is None else scaling
        scores = torch.einsum("bkgqd,bksd->bkgqs", q, key.float()) * scaling
        softcap = kwargs.get("softcap")
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        key_ = (
            id(attention_mask),
            kv_len,
            q_len,
            kwargs.get("sliding_window"),
            kwargs.get("is_causal"),
            getattr(module, "is_causal", True),
            query.device,
        )
        if key_ not in self._rows:
            # the cache keeps the mask object alive, so its id cannot be reused by another mask
            self._rows[key_] = (
                attention_mask,
                self._mask_rows(module, attention_mask, idx, q_len, kv_len, query.device, kwargs),
            )
        mask = self._rows[key_][1]
        mask = (
            mask.view(batch, 1, 1, nq, kv_len)
            if mask.shape[1] == 1
            else mask.view(batch, n_kv, groups, nq, kv_len)
        )
        scores = (scores + mask).view(batch, n_heads, nq, kv_len)
        sinks = kwargs.get("s_aux")
        if sinks is not None:
            sink = sinks.float().reshape(1, -1, 1, 1).expand(batch, n_heads, nq, 1)
            return torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
        return torch.softmax(scores, dim=-1)

    def record(self, module, query, key, attention_mask, value=None, **kwargs) -> None:
        """Form the selected rows' weights once and reduce them (:meth:`reduce`)."""
        w = self.weights(module, query, key, attention_mask, **kwargs)  # [b, h, q, s]
        self.reduce(int(module.layer_idx), w, value)

    def reduce(self, layer: int, w: torch.Tensor, value: torch.Tensor | None) -> None:
        """``mass[layer]`` and ``keys[layer]`` from the weights ``w`` ``[batch, head, query, key]``;
        subclasses also reduce ``value`` ``[batch, kv_head, key, d_head]`` (e.g. the DLA value split)."""
        kv_len = w.shape[-1]
        one_hot = self.one_hot.to(w.device)[:, -kv_len:]
        valid = self.query_valid.to(w.device).float()
        n = valid.sum(-1).clamp(min=1)
        per_query = torch.einsum("bhqs,bsg->bhqg", w, one_hot)
        self.mass[layer] = torch.einsum("bhqg,bq->bhg", per_query, valid) / n[:, None, None]
        self.keys[layer] = torch.einsum("bhqs,bq->bs", w, valid) / (n[:, None] * w.shape[1])


def _mask_function(inner: str) -> Callable:
    """The mask builder the wrapped implementation expects (eager for an eager model)."""
    return ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(
        inner or "eager", ALL_MASK_ATTENTION_FUNCTIONS["sdpa"]
    )


def decoder_configs(m: Any) -> list:
    """The distinct config objects the decoder's mask builder and attention modules read."""
    configs = [m.arch.module(m.model, "language_model").config]
    for layer in range(m.arch.n_layers):
        attn = m.arch.module(m.model, "attn", layer)
        if getattr(attn, "config", None) is not None:
            configs.append(attn.config)
    seen, out = set(), []
    for c in configs:
        if id(c) not in seen:
            seen.add(id(c))
            out.append(c)
    return out


@contextlib.contextmanager
def swap_attention(m: Any, make_fn: Callable[[str], Callable], prefix: str) -> Iterator[tuple[str, Callable]]:
    """Switch the decoder to ``make_fn(inner)``, registered under a per-call name, for the block.

    ``inner`` is the implementation the decoder configs agree on (``"eager"`` when unset). A name
    ``<prefix>_<n>`` is registered in ``AttentionInterface`` (the function) and in
    ``AttentionMaskInterface`` (the wrapped implementation's mask builder, so the function receives
    exactly the mask the wrapped function would have received); the decoder configs'
    ``_attn_implementation`` is set to it. On exit, exceptions included, the configs get their
    previous implementation back and both registrations are removed (only mech's own entries).

    Yields:
        ``(name, fn)``: the registered name and the function ``make_fn`` built.

    Raises:
        ConfigError: the decoder configs disagree on their attention implementation.
    """
    configs = decoder_configs(m)
    previous = [c._attn_implementation_internal for c in configs]
    if len({p or "eager" for p in previous}) != 1:
        raise ConfigError(
            f"the decoder's attention modules use different implementations {previous}; "
            "set one with model.set_attn_implementation('sdpa')."
        )
    inner = previous[0] or "eager"
    fn = make_fn(inner)
    name = f"{prefix}_{next(_COUNTER)}"
    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, _mask_function(inner))
    try:
        for c in configs:
            c._attn_implementation_internal = name
        yield name, fn
    finally:
        for c, p in zip(configs, previous):
            c._attn_implementation_internal = p
        AttentionInterface._global_mapping.pop(name, None)
        AttentionMaskInterface._global_mapping.pop(name, None)


@contextlib.contextmanager
def recording(
    m: Any,
    query_index: torch.Tensor,
    query_valid: torch.Tensor,
    one_hot: torch.Tensor,
    recorder_cls: type[MassRecorder] | None = None,
) -> Iterator[MassRecorder]:
    """Run the decoder under a :class:`MassRecorder` for the duration of the block.

    A name ``mech_mass_<n>`` is registered in ``AttentionInterface`` (the recorder) and in
    ``AttentionMaskInterface`` (the wrapped implementation's mask builder, so the recorder receives
    exactly the mask the wrapped function would have received); the decoder configs'
    ``_attn_implementation`` is set to it (:func:`swap_attention`). On exit, exceptions included, the
    configs get their previous implementation back and both registrations are removed (only mech's
    own entries).

    Raises:
        ConfigError: the decoder configs disagree on their attention implementation.
    """

    def make(inner: str) -> MassRecorder:
        return (recorder_cls or MassRecorder)(inner, query_index, query_valid, one_hot)

    with swap_attention(m, make, "mech_mass") as (_, recorder):
        try:
            yield recorder
        finally:
            recorder._rows.clear()
