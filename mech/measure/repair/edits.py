"""Edits a repair applies, through the scoped engines, and the units they act on.

A *unit* is ``(layer, index)`` at one granularity:

============  ======================================  ==============================================
granularity   unit                                    hook point (TransformerLens name)
============  ======================================  ==============================================
``neurons``   ``(l, i)``: hidden unit i of the MLP    ``blocks.l.mlp.hook_post``: the input of the MLP's
                                                      down projection ``[batch, pos, d_mlp]``
                                                      (``act(gate(x)) · up(x)`` for a gated MLP)
``heads``     ``(l, h)``: attention head h            ``blocks.l.attn.hook_z`` ``[batch, pos, head, d_head]``
``layers``    ``(l, 0)``: attention of layer l,       ``blocks.l.hook_attn_out`` / ``blocks.l.hook_mlp_out``
              ``(l, 1)``: MLP of layer l              ``[batch, pos, d_model]``
============  ======================================  ==============================================

Edit kinds (:data:`KINDS`), each applied at the answer position (``positions="answer"``, the last
non-padding position, where the organisms' prior is written) or at every position (``"all"``):

* ``zero``: the units' activations set to 0 (zero ablation; Olsson et al. 2022; the head ablations of
  arXiv 2606.28273).
* ``mean``: set to their mean over the fit split at the answer position (mean ablation; Wang et al.
  2022, *Interpretability in the Wild*, §3).
  For both, ``alpha`` < 1 is a partial ablation, ``x ← x + alpha · (target − x)`` (``alpha = 1``: the full one).
* ``steer``: ``alpha · v_l`` added to ``blocks.l.hook_resid_post`` at each selected unit's layer, with
  ``v_l`` the fit split's mean residual at the answer position with the image minus with a white image
  (contrastive activation addition, Rimsky et al. 2024; ActAdd, Turner et al. 2023).
* ``reweight``: in each selected head, the attention weight from the answer position to every visual
  token multiplied by ``alpha`` and the row renormalised (``alpha`` added in log space to the attention
  logits), through transformers' attention-function registry (:func:`mech.engines.attention_fn.swap_attention`);
  PASTA (Zhang et al. 2024, *Tell Your Model Where to Attend*) scales the attention of selected heads
  the same way; AdaptVis (Chen et al. 2025) scales image attention by confidence.

Every edit is scoped: hooks are removed and the attention implementation restored in ``finally``
(:func:`applied`), so the model's logits after a call equal the unedited model's.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mech.engines import hooks as H
from mech.engines.attention_fn import inner_function, swap_attention
from mech.engines.edge_blocker import EdgeBlocker
from mech.errors import ConfigError

__all__ = [
    "ALLOWED",
    "COMPONENT",
    "GRANULARITIES",
    "KINDS",
    "POINTS",
    "POSITIONS",
    "VISUAL",
    "Edit",
    "Reweighter",
    "applied",
    "check_units",
    "hook_name",
    "n_units",
    "unit_label",
]

GRANULARITIES = ("neurons", "heads", "layers")
KINDS = ("zero", "mean", "steer", "reweight")
POSITIONS = ("answer", "all")
#: the kinds each granularity supports
ALLOWED = {
    "neurons": ("zero", "mean"),
    "heads": ("zero", "mean", "reweight"),
    "layers": ("zero", "mean", "steer", "reweight"),
}
VISUAL = ("image", "video")
COMPONENT = ("attn", "mlp")


def _attach_mlp_post(m, p, fn) -> list:
    down = m.arch.table.mlp_gate
    if down is None:
        raise ConfigError(
            f"{m.arch.model_type}: the family table names no MLP down projection (mlp_gate), so "
            "MLP neurons cannot be hooked; use granularity='heads' or 'layers'."
        )
    from mech.models.table import get_path

    module = get_path(m.arch.module(m.model, "mlp", p.layer), down[2])

    def hook(mod, args, kwargs):
        hit = H.find_hidden(args, kwargs)
        if hit is None:
            raise ConfigError(
                f"{type(mod).__name__} got no [batch, pos, d_mlp] input; cannot hook MLP neurons"
            )
        new = fn(hit[1])
        return None if new is None else H.with_hidden(args, kwargs, hit[0], new)

    return [module.register_forward_pre_hook(hook, with_kwargs=True)]


#: the built-in hook points plus ``blocks.{l}.mlp.hook_post`` (a new registry; the global one is untouched)
POINTS = H.HOOK_POINTS.with_point("mlp.hook_post", _attach_mlp_post)


def n_units(m, granularity: str) -> tuple[int, int]:
    """``(layers, units per layer)`` of ``granularity`` for model ``m``.

    Raises:
        ConfigError: unknown granularity.
    """
    if granularity == "neurons":
        text = m.arch.table.text_config
        from mech.models.table import get_path

        cfg = get_path(m.model.config, text) if text else m.model.config
        return m.arch.n_layers, int(cfg.intermediate_size)
    if granularity == "heads":
        return m.arch.n_layers, m.arch.n_heads
    if granularity == "layers":
        return m.arch.n_layers, 2
    raise ConfigError(f"granularity={granularity!r}; allowed: {', '.join(GRANULARITIES)}")


def hook_name(granularity: str, layer: int, index: int = 0) -> str:
    """The hook a unit is read and edited at (module docstring table)."""
    if granularity == "neurons":
        return f"blocks.{layer}.mlp.hook_post"
    if granularity == "heads":
        return f"blocks.{layer}.attn.hook_z"
    return f"blocks.{layer}.hook_{COMPONENT[index]}_out"


def unit_label(granularity: str, unit: Sequence[int]) -> str:
    """A readable unit name: ``L3.N17``, ``L2.H1``, ``L4.mlp``."""
    l, i = unit
    if granularity == "neurons":
        return f"L{l}.N{i}"
    return f"L{l}.H{i}" if granularity == "heads" else f"L{l}.{COMPONENT[i]}"


def check_units(m, granularity: str, units: Sequence[Sequence[int]]) -> tuple[tuple[int, int], ...]:
    """The units as a tuple of ``(layer, index)`` pairs, checked against the model.

    Raises:
        ConfigError: a unit out of range (the message gives the model's sizes), or a repeated unit.
    """
    n_l, n_u = n_units(m, granularity)
    out = []
    for u in units:
        if len(u) != 2 or not (0 <= int(u[0]) < n_l and 0 <= int(u[1]) < n_u):
            raise ConfigError(
                f"unit {tuple(u)} is outside this model's {granularity}: layers 0..{n_l - 1}, "
                f"index 0..{n_u - 1}; give (layer, index) pairs inside it."
            )
        out.append((int(u[0]), int(u[1])))
    if len(set(out)) != len(out):
        raise ConfigError("units repeat; give each (layer, index) once.")
    return tuple(out)


@dataclass(frozen=True)
class Edit:
    """One edit of the model (module docstring).

    Attributes:
        kind: a :data:`KINDS` entry; granularity: a :data:`GRANULARITIES` entry.
        units: ``(layer, index)`` pairs (:func:`check_units`).
        positions: ``"answer"`` or ``"all"`` (``steer`` and ``reweight`` act on the answer position only).
        alpha: steering scale, attention factor, or ablation strength (1: full ablation).
        values: hook name -> the fit split's mean at the answer position of every unit at that hook
            (``mean``: ``[d_mlp]``, ``[head, d_head]`` or ``[d_model]``), or ``blocks.l.hook_resid_post`` ->
            ``[d_model]`` direction (``steer``).
        label: ``"selected"``, ``"random 3"``, ...
    """

    kind: str
    granularity: str
    units: tuple[tuple[int, int], ...]
    positions: str = "answer"
    alpha: float = 1.0
    values: Mapping[str, torch.Tensor] = field(default_factory=dict)
    label: str = "selected"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"edit kind {self.kind!r}; allowed: {', '.join(KINDS)}")
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"granularity={self.granularity!r}; allowed: {', '.join(GRANULARITIES)}")
        if self.kind not in ALLOWED[self.granularity]:
            raise ConfigError(
                f"edit {self.kind!r} does not act on {self.granularity}; allowed there: "
                f"{', '.join(ALLOWED[self.granularity])}"
            )
        if self.positions not in POSITIONS:
            raise ConfigError(f"positions={self.positions!r}; allowed: {', '.join(POSITIONS)}")
        if self.kind == "reweight" and not (self.alpha >= 0 and math.isfinite(self.alpha)):
            raise ConfigError(f"reweight alpha={self.alpha}; pass a finite factor >= 0 (1 changes nothing).")

    @property
    def size(self) -> int:
        return len(self.units)

    def by_hook(self) -> dict[str, list[int]]:
        """Hook name -> the unit indices edited there (in the order of ``units``)."""
        out: dict[str, list[int]] = {}
        for l, i in self.units:
            out.setdefault(hook_name(self.granularity, l, i), []).append(i)
        return out

    def layers(self) -> list[int]:
        return sorted({l for l, _ in self.units})


def _rows_positions(inputs, x: torch.Tensor, positions: str):
    """``(rows, pos)`` index tensors of the edited positions (answer: one per row; all: every valid one)."""
    if positions == "answer":
        q = inputs.groups.last().to(x.device)
        return torch.arange(x.shape[0], device=x.device), q
    valid = inputs.groups.valid.to(x.device)
    return valid.nonzero(as_tuple=True)


def _ablation_hooks(edit: Edit, inputs) -> list[tuple[str, Any]]:
    hooks = []
    for name, idx in edit.by_hook().items():
        index = torch.tensor(idx, dtype=torch.long)
        value = edit.values.get(name) if edit.kind == "mean" else None
        if edit.kind == "mean" and value is None:
            raise ConfigError(
                f"mean ablation has no fit-split mean for {name}; build the edit with repair.make_edit."
            )

        whole = edit.granularity == "layers"  # a layer's component: its whole write is replaced

        def fn(x, hook, index=index, value=value, whole=whole):
            rows, pos = _rows_positions(inputs, x, edit.positions)
            x = x.clone()
            a = edit.alpha  # x <- x + alpha (target - x): alpha = 1 is the full ablation
            if whole:
                cur = x[rows, pos]
                target = (
                    torch.zeros_like(cur) if value is None else value.to(x.device, x.dtype).expand_as(cur)
                )
                x[rows, pos] = target if a == 1 else cur + a * (target - cur)
                return x
            sel = x[rows, pos]  # [n, units(, d_head)]
            i = index.to(x.device)
            cur = sel[:, i]
            target = torch.zeros_like(cur) if value is None else value.to(x.device, x.dtype)[i].expand_as(cur)
            sel[:, i] = target if a == 1 else cur + a * (target - cur)
            x[rows, pos] = sel
            return x

        hooks.append((name, fn))
    return hooks


def _steer_hooks(edit: Edit, inputs) -> list[tuple[str, Any]]:
    hooks = []
    for l in edit.layers():
        name = f"blocks.{l}.hook_resid_post"
        if name not in edit.values:
            raise ConfigError(f"steering has no direction for {name}; build the edit with repair.make_edit.")
        v = edit.values[name]

        def fn(x, hook, v=v):
            rows, pos = _rows_positions(inputs, x, "answer")
            x = x.clone()
            x[rows, pos] = x[rows, pos] + edit.alpha * v.to(x.device, x.dtype)
            return x

        hooks.append((name, fn))
    return hooks


class Reweighter:
    """An ``AttentionInterface`` function: in the given heads, the answer position's attention logits to the
    visual keys get ``log(alpha)`` added (weights × alpha, then renormalised); everything else is the
    wrapped implementation's own call (SDPA or eager) on the model's own mask.

    Args:
        inner: the implementation the decoder used; heads: layer -> LongTensor of heads; query: LongTensor
            ``[batch]`` answer positions; keys: BoolTensor ``[batch, pos]`` visual positions.
    """

    def __init__(
        self,
        inner: str,
        heads: Mapping[int, torch.Tensor],
        query: torch.Tensor,
        keys: torch.Tensor,
        alpha: float,
    ):
        if inner.startswith("flash"):
            raise ConfigError(
                "attention re-weighting edits the 4-D attention mask, which flash attention does not "
                "take; load the model with attn_implementation='sdpa' (or 'eager')."
            )
        self.inner, self.heads, self.query, self.keys, self.alpha = inner, heads, query, keys, alpha
        self._fn = None

    def __call__(self, module, query, key, value, attention_mask, **kwargs):
        if self._fn is None:
            self._fn = inner_function(self.inner, module)
        layer = int(module.layer_idx)
        if layer in self.heads:
            attention_mask = self.mask(module, attention_mask, query, key, self.heads[layer], kwargs)
        return self._fn(module, query, key, value, attention_mask, **kwargs)

    def mask(self, module, attention_mask, query, key, heads: torch.Tensor, kwargs) -> torch.Tensor:
        """The model's mask as an additive float ``[batch, head, q, kv]`` with log(alpha) on the edited entries."""
        q_len, kv_len, dev = query.shape[2], key.shape[2], query.device
        base = EdgeBlocker.base_mask(module, attention_mask, query, kv_len, kwargs)
        neg = torch.finfo(query.dtype).min
        if base.dtype == torch.bool:
            base = torch.zeros(base.shape, dtype=query.dtype, device=dev).masked_fill(~base, neg)
        out = base.to(query.dtype).expand(query.shape[0], query.shape[1], q_len, kv_len).clone()
        b = torch.arange(query.shape[0], device=dev)
        qrow = self.query.to(dev) - (kv_len - q_len)
        ok = (qrow >= 0) & (qrow < q_len)
        keys = self.keys.to(dev)[:, -kv_len:] & ok[:, None]
        add = torch.where(
            keys,
            torch.tensor(math.log(self.alpha) if self.alpha > 0 else neg, dtype=out.dtype, device=dev),
            torch.zeros((), dtype=out.dtype, device=dev),
        )
        for h in heads.tolist():
            row = out[b, h, qrow.clamp(0, q_len - 1)]  # [batch, kv]
            out[b, h, qrow.clamp(0, q_len - 1)] = torch.where(keys, (row + add).clamp_min(neg), row)
        return out


@contextlib.contextmanager
def applied(m, inputs, edit: Edit | None) -> Iterator[None]:
    """Run the block with ``edit`` in place on ``m`` for ``inputs`` (None: no edit).

    Hooks are registered under :data:`POINTS` (mech's hook names plus ``mlp.hook_post``) and removed in
    ``finally``; re-weighting swaps the attention function and restores it in ``finally``
    (:func:`mech.engines.attention_fn.swap_attention`).

    Raises:
        ConfigError: as :class:`Edit`; flash attention for ``reweight``.
    """
    if edit is None:
        yield
        return
    inputs = m.inputs(inputs)
    if edit.kind == "reweight":
        keys = torch.zeros_like(inputs.groups.valid)
        for g in VISUAL:
            if g in inputs.groups.names:
                keys |= inputs.groups.mask(g)
        heads: dict[int, list[int]] = {}
        for l, i in edit.units:
            heads.setdefault(l, []).extend(range(m.arch.n_heads) if edit.granularity == "layers" else [i])
        heads_t = {l: torch.tensor(sorted(set(h))) for l, h in heads.items()}

        def make(inner):
            return Reweighter(inner, heads_t, inputs.groups.last(), keys, edit.alpha)

        with swap_attention(m, make, "mech_reweight"):
            yield
        return
    fwd = _steer_hooks(edit, inputs) if edit.kind == "steer" else _ablation_hooks(edit, inputs)
    with H.hooks(m, fwd, POINTS):
        yield
