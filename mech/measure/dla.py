"""Modality-resolved direct logit attribution (DLA) at the answer position.

The residual stream at the answer position ``q`` of the last layer is a sum of writes:

    x_final = embed + Σ_l (attn_write_l + mlp_write_l)

Each attention write is split by the token group of the *attended values*: for head ``h``,
``z_h = Σ_k A_hqk v_hk`` and the sum over keys is cut into groups, ``z_h = Σ_g Σ_{k∈g} A_hqk v_hk``;
``o_proj`` is linear, so ``attn_out = Σ_g W_O z_g (+ bias)``. Each piece is then carried to the
logits the way the field does (Elhage et al. 2021, "A Mathematical Framework for Transformer
Circuits"; TransformerLens' ``cache.decompose_resid`` + ``apply_ln_to_stack``): through the final
norm **with its scale frozen** at the value of the clean run, and through the unembedding onto the
answer-minus-counterfactual direction ``W_U[answer] - W_U[counterfactual]``. Families with norms on
the attention/MLP output before the residual add (Gemma3's ``post_attention_layernorm``; the table's
``attn_post_norm`` / ``mlp_post_norm``) get those norms frozen the same way.

With frozen scales every map is linear, so the components sum exactly to the answer's logit
difference (before any final logit soft-capping) — the invariant the tests check.

The per-group attention values are computed inside the attention-function registry
(:mod:`mech.engines.attention_fn`): the layer output still comes from SDPA, and only the answer row
of the softmax is formed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mech.contract import Result
from mech.deprecation import renamed_keywords
from mech.engines.attention_fn import MassRecorder, recording
from mech.engines.hooks import hooks, site_hook
from mech.engines.unembed import unembed_at
from mech.errors import InputError
from mech.models.load import takes_model

__all__ = ["DLA", "Readout", "ValueSplitRecorder", "direct_logit_attribution", "final_norm", "frozen_readout"]


class ValueSplitRecorder(MassRecorder):
    """A :class:`MassRecorder` that also keeps ``z`` split by key group at the query rows:
    ``z[layer]`` ``[batch, head, group, d_head]`` = Σ over query rows (mean) of Σ_{k∈g} A_hqk v_hk."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.z: dict[int, torch.Tensor] = {}

    def reduce(self, layer: int, w: torch.Tensor, value: torch.Tensor | None) -> None:  # noqa: D102
        super().reduce(layer, w, value)
        groups_per_kv = w.shape[1] // value.shape[1]
        v = value.float().repeat_interleave(groups_per_kv, dim=1)  # [b, h, s, d]
        one_hot = self.one_hot.to(w.device)[:, -w.shape[-1] :]
        valid = self.query_valid.to(w.device).float()
        n = valid.sum(-1).clamp(min=1)
        self.z[layer] = torch.einsum("bhqs,bsg,bhsd,bq->bhgd", w, one_hot, v, valid) / n[:, None, None, None]


@dataclass(frozen=True, eq=False)
class DLA(Result):
    """Direct logit attribution of the answer-vs-counterfactual logit difference, in logits: a contract
    result (:class:`mech.contract.Result`; ``concat`` over samples, ``save``/``load``, ``frame``, ``==``).

    Attributes:
        attn: ``[batch, layer, group]``: attention writes split by the group of the attended values.
        attn_bias: ``[batch, layer]``: the ``o_proj`` bias (zero where there is none).
        mlp: ``[batch, layer]``: MLP writes.
        embed: ``[batch]``: the decoder input at the answer position.
        unembed_bias: ``[batch]``: ``b_U[answer] - b_U[counterfactual]`` (zero without a bias).
        logit_diff: ``[batch]``: the model's logit difference before final soft-capping, from the
            final norm's actual output (the components sum to it).
        groups: group names along the last axis of ``attn``.
        mass: ``[batch, layer, head, group]``: attention mass from the answer position, recorded in
            the same forward (equal to ``mech.attention_mass(m, inputs, query="last").mass``).
    """

    AXES = {
        "attn": ("batch", "layer", "group"),
        "attn_bias": ("batch", "layer"),
        "mlp": ("batch", "layer"),
        "embed": ("batch",),
        "unembed_bias": ("batch",),
        "logit_diff": ("batch",),
        "mass": ("batch", "layer", "head", "group"),
    }
    LABELS = {"group": "groups"}

    attn: torch.Tensor
    attn_bias: torch.Tensor
    mlp: torch.Tensor
    embed: torch.Tensor
    unembed_bias: torch.Tensor
    logit_diff: torch.Tensor
    groups: tuple[str, ...]
    mass: torch.Tensor

    def to_frame(self, components: bool = False):
        """Tidy ``pandas.DataFrame`` (:func:`mech.frames.tidy`). ``components=False``: one row per cell of
        ``attn``, columns ``sample, layer, group, attn`` (logits). ``components=True``: every component,
        columns ``sample, component, layer, group, logits`` with ``component`` in ``attn, attn_bias, mlp,
        embed, unembed_bias``; ``layer`` (nullable Int64) is ``<NA>`` for ``embed`` and ``unembed_bias``,
        ``group`` (Categorical) is NaN except for ``attn``. A sample's rows sum to :meth:`total`."""
        import pandas as pd

        from mech.frames import concat, tidy

        attn = tidy(self.attn, {"sample": None, "layer": None, "group": self.groups}, value="attn")
        if not components:
            return attn
        parts = {"attn": attn.rename(columns={"attn": "logits"})}
        for name in ("attn_bias", "mlp", "embed", "unembed_bias"):
            t = getattr(self, name)
            f = tidy(t, {"sample": None, "layer": None} if t.dim() == 2 else {"sample": None}, value="logits")
            if "layer" not in f:
                f.insert(1, "layer", pd.NA)
            f.insert(2, "group", pd.Categorical([None] * len(f), categories=attn["group"].cat.categories))
            parts[name] = f
        for f in parts.values():
            f["layer"] = f["layer"].astype("Int64")
        return concat(parts, "component")[["sample", "component", "layer", "group", "logits"]]

    def total(self) -> torch.Tensor:
        """``[batch]``: the sum of every component (equals ``logit_diff`` up to float error)."""
        return (
            self.attn.sum((1, 2)) + self.attn_bias.sum(1) + self.mlp.sum(1) + self.embed + self.unembed_bias
        )


def _ratio(after: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """Elementwise frozen scale of a norm without bias: ``norm(x) / x`` (0 where x == 0)."""
    return torch.where(before == 0, torch.zeros_like(before), after / torch.where(before == 0, 1.0, before))


def _weights(module: torch.nn.Module):
    """Context in which ``module``'s parameters are materialised on its execution device (accelerate
    offload keeps them on the meta device between forwards); a no-op without accelerate."""
    try:
        from accelerate.utils import align_module_device
    except ImportError:  # pragma: no cover - accelerate is a transformers extra
        import contextlib

        return contextlib.nullcontext()
    return align_module_device(module)


def _norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` for ``x`` ``[batch, d]`` on the norm's own device (a sharded model's norms may live
    on another GPU than the saved activations), returned in fp32 on ``x``'s device."""
    with _weights(norm):
        dev = next(norm.parameters(), x).device
        return norm(x.unsqueeze(1).to(dev)).squeeze(1).float().to(x.device)


def _frozen(norm: torch.nn.Module | None, total: torch.Tensor) -> torch.Tensor:
    if norm is None:
        return torch.ones_like(total)
    return _ratio(_norm(norm, total), total)


@dataclass(frozen=True)
class Readout:
    """The answer-vs-counterfactual readout of the residual stream at the answer position, with the
    final norm's scale **frozen** (Elhage et al. 2021; TransformerLens' ``apply_ln_to_stack``).

    Attributes:
        scale: ``[batch, d_model]``: ``ln_final(x) / x`` elementwise on the run it was frozen on (0
            where ``x == 0``), so ``x * scale == ln_final(x)`` on that run and every write is mapped linearly.
        direction: ``[batch, d_model]``: ``W_U[answer] - W_U[counterfactual]``.
        bias: ``[batch]``: ``b_U[answer] - b_U[counterfactual]`` (zero without an unembedding bias).

    Calling it on a write ``[batch, ..., d_model]`` gives its logits ``[batch, ...]`` (no bias added).
    """

    scale: torch.Tensor
    direction: torch.Tensor
    bias: torch.Tensor

    def __call__(self, write: torch.Tensor) -> torch.Tensor:
        shape = (write.shape[0],) + (1,) * (write.dim() - 2) + (write.shape[-1],)
        dev = write.device
        return (write.float() * self.scale.to(dev).view(shape) * self.direction.to(dev).view(shape)).sum(-1)


@renamed_keywords(answer_ids="answer", counterfactual_ids="counterfactual")
def frozen_readout(m, x_final: torch.Tensor, answer: torch.Tensor, counterfactual: torch.Tensor) -> Readout:
    """The :class:`Readout` frozen at ``x_final`` ``[batch, d_model]`` (the last layer's ``resid_post`` at
    the answer position, fp32), through the family table's ``ln_final`` and ``unembed`` (read once here,
    also under accelerate offload). ``answer`` / ``counterfactual``: LongTensor ``[batch]`` token ids."""
    ln_final = m.arch.module(m.model, "ln_final")
    scale = _ratio(_norm(ln_final, x_final), x_final)
    unembed = m.arch.module(m.model, "unembed")
    answer_ids, counterfactual_ids = torch.as_tensor(answer), torch.as_tensor(counterfactual)
    with _weights(unembed):  # weights read outside a forward: materialise them under accelerate offload
        w_u = unembed.weight.float()
        direction = (w_u[answer_ids.to(w_u.device)] - w_u[counterfactual_ids.to(w_u.device)]).to(
            x_final.device
        )
        b_u = getattr(unembed, "bias", None)
        ub = (
            (b_u[answer_ids.to(b_u.device)] - b_u[counterfactual_ids.to(b_u.device)])
            .float()
            .to(x_final.device)
            if b_u is not None
            else torch.zeros(x_final.shape[0], device=x_final.device)
        )
    return Readout(scale, direction, ub)


def final_norm(m, x: torch.Tensor) -> torch.Tensor:
    """``ln_final(x)`` for ``x`` ``[batch, d_model]`` on the norm's device, in fp32 on ``x``'s device (the
    model's actual, not frozen, final norm)."""
    return _norm(m.arch.module(m.model, "ln_final"), x)


@renamed_keywords(answer_ids="answer", counterfactual_ids="counterfactual")
@torch.no_grad()
@takes_model
def direct_logit_attribution(m, inputs, answer: torch.Tensor, counterfactual: torch.Tensor) -> DLA:
    """Modality-resolved DLA at the answer (last) position, one forward.

    Args:
        m: a :class:`~mech.MechModel` of a family whose images are decoder tokens.
        inputs: ``prepare`` or raw processor outputs ``[batch, pos]``.
        answer / counterfactual: LongTensor ``[batch]``: the answer token and the token it is
            compared with (e.g. the prior answer or the best wrong option). ``answer_ids=`` /
            ``counterfactual_ids=`` are their deprecated spellings (they warn).

    Returns:
        :class:`DLA`, every component in logits.

    Raises:
        UnsupportedArchitectureError: images not in the decoder sequence (Mllama).
        InputError: answer/counterfactual ids of the wrong shape or outside the vocabulary.
    """
    m.require_decoder_sequence("direct logit attribution")
    inputs = m.inputs(inputs)
    groups = inputs.groups
    batch = inputs["input_ids"].shape[0]
    answer_ids, counterfactual_ids = torch.as_tensor(answer), torch.as_tensor(counterfactual)
    for name, ids in (("answer", answer_ids), ("counterfactual", counterfactual_ids)):
        if ids.shape != (batch,) or ids.min() < 0 or ids.max() >= m.arch.vocab_size:
            raise InputError(
                f"{name} must be a LongTensor [batch={batch}] of token ids < {m.arch.vocab_size}; "
                f"got shape {tuple(ids.shape)}."
            )
    q = groups.last()
    rows = torch.arange(batch, device=q.device)
    L = m.arch.n_layers
    saved: dict[str, torch.Tensor] = {}

    def keep(x, hook):
        saved[hook.name] = x[rows, q].detach().float()

    names = ["hook_embed"] + [
        site_hook(s, l)
        for l in range(L)
        for s in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
    ]
    with (
        recording(
            m,
            q[:, None],
            torch.ones(batch, 1, dtype=torch.bool),
            groups.one_hot(),
            recorder_cls=ValueSplitRecorder,
        ) as rec,
        hooks(m, [(n, keep) for n in names]),
        unembed_at(m, q),
    ):
        m.model(**inputs)  # the logits are not read; the unembedding runs at the answer position only
    x_final = saved[site_hook("resid_post", L - 1)]
    ln_final = m.arch.module(m.model, "ln_final")
    readout = frozen_readout(m, x_final, answer_ids, counterfactual_ids)
    ub, to_logits = readout.bias, readout

    attn, attn_bias, mlp = [], [], []
    for l in range(L):
        o_proj = m.arch.module(m.model, "o_proj", l)
        z = rec.z[l].to(x_final.device)  # [b, h, g, d_head]
        with _weights(o_proj):
            w_o = o_proj.weight.to(z.device).float()
            bias = o_proj.bias.to(z.device).float() if o_proj.bias is not None else None
        pieces = torch.einsum("bhgd,ehd->bge", z, w_o.view(-1, z.shape[1], z.shape[3]))
        scale = _frozen(m.arch.module(m.model, "attn_post_norm", l), saved[site_hook("attn_out", l)])
        attn.append(to_logits(pieces * scale[:, None, :]))
        bias = bias if bias is not None else torch.zeros_like(scale[0])
        attn_bias.append(to_logits(bias.expand_as(scale) * scale))
        # the MLP's residual write (after any post-norm); deepstack injections touch visual positions
        # only, never the answer position, so the difference is the MLP's alone
        mlp.append(to_logits(saved[site_hook("resid_post", l)] - saved[site_hook("resid_mid", l)]))
    normalized = _norm(ln_final, x_final)
    logit_diff = (normalized * readout.direction).sum(-1) + ub.to(normalized.device)
    return DLA(
        torch.stack(attn, 1),
        torch.stack(attn_bias, 1),
        torch.stack(mlp, 1),
        to_logits(saved["hook_embed"]),
        ub.to(normalized.device),
        logit_diff,
        groups.names,
        torch.stack([rec.mass[l] for l in range(L)], 1),
    )
