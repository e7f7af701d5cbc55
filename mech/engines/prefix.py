"""Patched runs that reuse the unchanged prefix and stack configurations along the batch axis.

Patching at layer ``l`` leaves layers ``< l`` unchanged, so the run patched into (the *target*:
corrupted for denoising, clean for noising) is evaluated once in full (:func:`capture`), recording
the input of every decoder layer, the keyword arguments each layer receives (attention mask,
rotary position embeddings, ...), and the features added between layers (Qwen3-VL deepstack:
``input(l+1) − output(l)`` at injection layers). A patched run then starts at its first changed
layer from the cached residual (:func:`run_from`): the vision tower, the embedding and the lower
layers are skipped, and only the answer position goes through the final norm and unembedding.
Several (layer, position group[, head]) configurations sharing a start layer are stacked along the
batch axis and evaluated in one call.

Cost unit: a *forward-equivalent* is ``n_layers`` decoder-layer evaluations of one batch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import Cache

from mech.engines import hooks as H
from mech.engines.hooks import site_hook
from mech.engines.unembed import unembed_at
from mech.errors import InputError

__all__ = ["RESIDUAL_INPUT", "Capture", "Config", "capture", "patched_logits", "run_from", "start_layer"]

#: sites whose replacement is the input of the first layer run (handled without a hook)
RESIDUAL_INPUT = ("resid_pre", "resid_post")


def start_layer(site: str, layer: int) -> int:
    """First decoder layer a patched run at (``site``, ``layer``) has to evaluate."""
    return layer + 1 if site == "resid_post" else layer


@dataclass
class Capture:
    """The target run: ``resid[l]`` input of layer ``l`` (``resid[n_layers]``: input of the final norm),
    ``layer_kwargs[l]``, ``inject[l]`` (features added after layer ``l``), ``last`` ``[batch]``, ``logits``
    ``[batch, vocab]`` (fp32, last position)."""

    resid: list[torch.Tensor]
    layer_kwargs: list[dict[str, Any]]
    inject: dict[int, torch.Tensor]
    last: torch.Tensor
    logits: torch.Tensor
    layer_evals: int = 0
    stats: dict[str, int] = field(default_factory=dict)


def capture(m, inputs, context=None) -> Capture:
    """One full forward of ``inputs`` recording what :func:`run_from` needs (see the module docstring).

    ``context``: optional context manager active during the forward (e.g. ``feature_condition``).
    """
    arch, model = m.arch, m.model
    n = arch.n_layers
    resid: list = [None] * (n + 1)
    kwargs: list = [None] * n
    outs: dict[int, torch.Tensor] = {}
    handles = []

    def pre(l):
        def hook(mod, args, kw):
            hit = H.find_hidden(args, kw, arch.d_model)
            if hit is None:
                raise InputError(
                    f"decoder layer {l} was called without a hidden-state input; "
                    "mech's prefix reuse cannot capture it"
                )
            resid[l] = hit[1].detach()
            if l < n:
                if args[1:] or hit[0] != 0 and args:
                    raise InputError(
                        f"decoder layer {l} got positional arguments besides the hidden states; "
                        "mech's prefix reuse needs keyword arguments"
                    )
                # A transformers Cache (whatever its keyword: past_key_values, cache, ...) is dropped, so
                # a replay never appends to the full run's cache.
                kwargs[l] = {k: (None if isinstance(v, Cache) else v) for k, v in kw.items() if k != hit[0]}

        return hook

    def post(l):
        def hook(mod, args, out):
            outs[l] = H.first_output(out).detach()

        return hook

    try:
        for l in range(n):
            layer = arch.module(model, "layer", l)
            handles.append(layer.register_forward_pre_hook(pre(l), with_kwargs=True))
            if l in arch.injection_layers:
                handles.append(layer.register_forward_hook(post(l)))
        handles.append(arch.module(model, "ln_final").register_forward_pre_hook(pre(n), with_kwargs=True))
        last = inputs.groups.last()
        with torch.no_grad(), unembed_at(m, last):  # logits at the answer position only: [batch, 1, vocab]
            with context if context is not None else contextlib.nullcontext():
                logits = model(**inputs, use_cache=False).logits
    finally:
        for h in handles:
            h.remove()
    inject = {l: resid[l + 1] - outs[l] for l in outs}
    return Capture(resid, kwargs, inject, last, logits[:, 0].float())


def _rows(value: Any, rows: torch.Tensor, batch: int) -> Any:
    """Select ``rows`` along the batch axis of every tensor in a layer's kwargs (size-1 axes broadcast)."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 or value.shape[0] == 1 and batch != 1:
            return value
        if value.shape[0] != batch:
            raise InputError(
                f"cannot find the batch axis of a layer argument of shape {tuple(value.shape)} "
                f"(batch {batch}); this family's layer call is not supported by prefix reuse"
            )
        return value[rows.to(value.device)]
    if isinstance(value, tuple):
        return tuple(_rows(v, rows, batch) for v in value)
    if isinstance(value, list):
        return [_rows(v, rows, batch) for v in value]
    return value


def run_from(m, cap: Capture, start: int, hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Evaluate layers ``start .. n_layers-1`` on ``hidden`` ``[n, pos, d_model]`` (row ``i`` belongs to
    sample ``rows[i]`` of the captured batch), then the final norm and unembedding at the answer position.

    Returns logits ``[n, vocab]`` (fp32). Hooks registered on the model's modules fire as usual.
    """
    arch, model = m.arch, m.model
    batch = cap.resid[0].shape[0]
    h = hidden
    for l in range(start, arch.n_layers):
        kw = {k: _rows(v, rows, batch) for k, v in cap.layer_kwargs[l].items()}
        h = H.first_output(arch.module(model, "layer", l)(h, **kw))
        if l in cap.inject:
            h = h + cap.inject[l][rows.to(h.device)]
        cap.layer_evals += len(rows)
    ar = torch.arange(len(rows), device=h.device)
    x = arch.module(model, "ln_final")(h[ar, cap.last.to(h.device)[rows.to(h.device)]])
    logits = arch.module(model, "unembed")(x).float()
    text = getattr(model.config, arch.table.text_config, None) if arch.table.text_config else model.config
    cap_value = getattr(text or model.config, "final_logit_softcapping", None)
    if cap_value:
        logits = torch.tanh(logits / cap_value) * cap_value
    return logits


@dataclass
class Config:
    """One patched run: ``layer``, alignment index ``group``, optional ``head`` (site ``z``)."""

    layer: int
    group: int
    head: int | None = None


def patched_logits(
    m,
    cap: Capture,
    site: str,
    configs: list[Config],
    alignments,
    source: dict[str, torch.Tensor],
    max_rows: int = 256,
) -> torch.Tensor:
    """Logits ``[config, batch, vocab]`` of the patched runs of ``configs`` (all at one layer).

    ``source[hook_name]`` holds the source run's activation ``[batch, pos, ...]`` at each patched layer.
    """
    if not configs:
        return torch.empty(0)
    layer = configs[0].layer
    assert all(c.layer == layer for c in configs)
    batch = cap.resid[0].shape[0]
    name = site_hook(site, layer)
    src = source[name]
    per = max(1, max_rows // batch)
    out = []
    for i in range(0, len(configs), per):
        chunk = configs[i : i + per]
        rows = torch.arange(batch).repeat(len(chunk))
        r_idx, t_idx, s_row, s_idx, h_idx = [], [], [], [], []
        for k, c in enumerate(chunk):
            for b, (tp, sp) in enumerate(alignments[c.group].pairs):
                r_idx += [k * batch + b] * len(tp)
                t_idx += tp.tolist()
                s_row += [b] * len(tp)
                s_idx += sp.tolist()
                h_idx += [c.head if c.head is not None else 0] * len(tp)
        dev = src.device
        r_idx, t_idx, s_row, s_idx, h_idx = (
            torch.tensor(v, dtype=torch.long, device=dev) for v in (r_idx, t_idx, s_row, s_idx, h_idx)
        )

        def patch(x, hook=None):
            x = x.clone()
            if site == "z":
                x[r_idx, t_idx, h_idx] = src[s_row, s_idx, h_idx].to(x.dtype)
            else:
                x[r_idx, t_idx] = src[s_row, s_idx].to(x.dtype)
            return x

        start = start_layer(site, layer)
        hidden = cap.resid[start][rows.to(cap.resid[start].device)]
        with torch.no_grad():
            if site in RESIDUAL_INPUT:
                out.append(run_from(m, cap, start, patch(hidden), rows))
            else:
                with H.hooks(m, [(name, patch)]):
                    out.append(run_from(m, cap, start, hidden, rows))
    return torch.cat(out).reshape(len(configs), batch, -1)
