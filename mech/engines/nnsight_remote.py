"""Attention mass through nnsight, for models that run elsewhere: NDIF (``remote=True``).

mech's own recorder (:mod:`mech.engines.attention_fn`) registers an attention function in the
process that runs the model, which a remote server does not allow. Here the measurement is written
as an nnsight trace instead: for every decoder layer it reads the query and key states handed to
the attention function (nnsight's ``.source`` view of the attention module's forward, operation
``attention_interface_<k>``: after rotary embeddings and any q/k norms, so family-independent),
forms the softmax weights of the chosen query rows only (fp32, with the layer's own attention mask),
and reduces them at once to per-group mass. Only torch runs inside the trace body, so it ships to
NDIF as it is (mech need not be installed there). Memory: O(layers × heads × queries × positions).

    m = mech.engines.nnsight_remote.load_remote("Qwen/Qwen2.5-VL-7B-Instruct")   # config + processor only, no weights
    inputs = m.prepare(images, prompts)
    am = mech.measure.attention.remote.attention_mass_nnsight(m, inputs, remote=True)  # needs NDIF_API_KEY

This module is the engine (:func:`trace_attention_mass`: the trace, reduced to per-group mass); the
measurement, with query positions and the result, is :mod:`mech.measure.attention.remote`.
``attention_mass_nnsight(m, inputs, remote=False)`` on a locally loaded model runs the same trace
here (equal to :func:`mech.attention_mass`); ``remote="local"`` serializes the request exactly as
for NDIF and runs it here with mech hidden, nnsight's offline check of a remote run. What is not
tested here (no network): the request reaching NDIF, the model being hosted there (NDIF hosts a
list of models: ``nnsight.ndif.is_model_running(repo_id)``), and the server's transformers naming
the attention call the same way.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from mech.errors import ConfigError
from mech.models.load import MechModel

__all__ = ["RemoteModel", "load_remote", "trace_attention_mass", "wrapped"]


def _task(arch: Any) -> str:
    """The transformers pipeline task nnsight builds the wrapper for (only used to name it)."""
    return "image-text-to-text" if "image" in arch.modality_ids else "any-to-any"


@dataclass
class RemoteModel(MechModel):
    """A :class:`MechModel` whose ``model`` holds no weights (meta device): the architecture for
    ``prepare`` and token groups, and the nnsight wrapper in ``meta["nnsight"]`` for remote traces.
    Inputs stay on the CPU (they travel with the request)."""

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")


def load_remote(repo_id: str, *, processor: Any = None, **kwargs: Any) -> RemoteModel:
    """Build ``nnsight``'s ``TransformersModel(repo_id)`` without weights, and the mech view of it.

    Args:
        repo_id: a Hugging Face id hosted on NDIF (a local directory works for everything but
            ``remote=True``, which names the model by its hub id).
        processor: the model's processor (default: loaded from ``repo_id``).
        kwargs: passed to ``TransformersModel`` (e.g. ``revision``).

    Raises:
        SpecError, UnsupportedArchitectureError: as :func:`mech.load`.
    """
    import transformers
    from nnsight.modeling.transformers import TransformersModel

    from mech.models.load import resolve_dir
    from mech.models.table import resolve

    where = resolve_dir(str(repo_id))
    processor = processor or transformers.AutoProcessor.from_pretrained(where)
    tok = getattr(processor, "tokenizer", processor)
    arch = resolve(transformers.AutoConfig.from_pretrained(where), tok)
    lm = TransformersModel(where, task=_task(arch), processor=processor, tokenizer=tok, **kwargs)
    return RemoteModel(lm._module, processor, arch, spec=str(repo_id), meta={"nnsight": lm})


@contextlib.contextmanager
def wrapped(m: MechModel):
    """The nnsight wrapper of ``m``: ``m.meta["nnsight"]`` for a :class:`RemoteModel`; for a
    locally loaded model, a ``TransformersModel`` over ``m.model`` for the duration of the block
    (nnsight installs an instance ``forward`` on every module; they are removed afterwards, and
    only those nnsight added)."""
    if "nnsight" in m.meta:
        yield m.meta["nnsight"]
        return
    from nnsight.modeling.transformers import TransformersModel

    mods = list(m.model.modules())
    had = [{k for k in ("forward", "__nnsight__") if k in mod.__dict__} for mod in mods]
    try:
        yield TransformersModel(m.model, task=_task(m.arch), processor=m.processor, tokenizer=m.tokenizer)
    finally:
        for mod, keep in zip(mods, had):
            for k in ("forward", "__nnsight__"):
                if k not in keep:
                    mod.__dict__.pop(k, None)


def _envoy(lm: Any, path: str) -> Any:
    for part in path.split("."):
        lm = getattr(lm, part)
    return lm


def _attention_call(attn: Any) -> str:
    """Name of the operation that calls the attention function inside ``attn``'s forward."""
    names = [n for n in attn.source.names if n.startswith("attention_interface_")]
    if not names:
        raise ConfigError(
            "this family's attention forward does not call transformers' attention_interface; "
            "measure attention mass locally with mech.attention_mass."
        )
    return max(names, key=lambda n: int(n.rsplit("_", 1)[1]))


def trace_attention_mass(
    m: MechModel,
    inp: Any,
    index: torch.Tensor,
    valid: torch.Tensor,
    one_hot: torch.Tensor,
    *,
    remote: bool | str = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention weights of the query rows, reduced to token groups inside one nnsight trace (module
    docstring): the engine under :func:`mech.measure.attention.remote.attention_mass_nnsight`.

    Args:
        m: :func:`load_remote` output (for ``remote=True``), or a locally loaded model.
        inp: ``m.inputs(...)``: prepared inputs ``[batch, pos]`` with their token groups.
        index: LongTensor ``[batch, n]``, the query positions of each row (on the CPU);
        valid: BoolTensor ``[batch, n]``, which of them are real (as
            :func:`mech.engines.attention_fn.recording` takes them).
        one_hot: float32 ``[batch, pos, group]``, each position's token group (on the CPU).
        remote: False (run here), True (NDIF; needs nnsight's API key), ``"local"`` (serialize as
            for NDIF, run here), or a host URL.

    Returns:
        ``(mass [batch, layer, head, group], keys [batch, layer, pos])`` in fp32 on the CPU: the mean over
        the valid query rows of the softmax weights summed per group, and per key position (mean over heads).

    Raises:
        ConfigError: an attention forward without ``attention_interface``.
    """
    groups = inp.groups
    pos = torch.arange(groups.labels.shape[1])
    # fallback when a layer gets no mask (SDPA's causal path): causal, padding excluded -> [b, n, 1, k]
    allowed = ((pos[None, None, :] <= index[:, :, None]) & groups.valid.cpu()[:, None, :])[:, :, None, :]
    n_layers, arch = m.arch.n_layers, m.arch
    with wrapped(m) as lm, torch.no_grad():
        layers = _envoy(lm, arch.table.layers)
        op = _attention_call(getattr(layers[0], arch.table.attn))
        attn_name = arch.table.attn
        with lm.trace(**dict(inp), remote=remote) if remote else lm.trace(**dict(inp)):
            masses, keys = [], []
            for layer in range(n_layers):
                args, kwargs = getattr(getattr(layers[layer], attn_name).source, op).inputs
                q, k = args[1], args[2]  # [b, heads, pos, d], [b, kv_heads, pos, d]
                mask = args[4] if len(args) > 4 else kwargs.get("attention_mask")
                scaling = kwargs.get("scaling") or q.shape[-1] ** -0.5
                rows = torch.arange(q.shape[0], device=q.device)[:, None]
                qr = q[rows, :, index.to(q.device)].float()  # [b, n, heads, d]
                kk = k.float().repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # [b, heads, pos, d]
                s = torch.einsum("bnhd,bhkd->bnhk", qr, kk) * scaling
                if mask is None:
                    s = s.masked_fill(~allowed.to(s.device), float("-inf"))
                else:
                    mr = mask.expand(q.shape[0], -1, -1, -1)[rows, :, index.to(q.device)]  # [b, n, 1|h, k]
                    mr = mr[..., : s.shape[-1]]
                    s = s.masked_fill(~mr, float("-inf")) if mr.dtype == torch.bool else s + mr.float()
                w = s.softmax(-1)
                v = valid.to(w.device).float()
                nv = v.sum(1)
                mass = torch.einsum("bnhk,bkg->bnhg", w, one_hot.to(w.device))
                masses.append((mass * v[:, :, None, None]).sum(1) / nv[:, None, None])
                keys.append((w.mean(2) * v[:, :, None]).sum(1) / nv[:, None])
            mass_all = torch.stack(masses, 1).detach().cpu().save()  # [b, layer, head, group]
            keys_all = torch.stack(keys, 1).detach().cpu().save()  # [b, layer, pos]
    return mass_all, keys_all


def __getattr__(name: str) -> Any:
    """``attention_mass_nnsight``, the measurement, moved up to :mod:`mech.measure.attention.remote` (an
    engine imports no instrument): the old path keeps working for one release, with a warning."""
    if name == "attention_mass_nnsight":
        import importlib

        from mech.deprecation import warn_renamed

        warn_renamed(
            "mech.engines.nnsight_remote.attention_mass_nnsight",
            "mech.measure.attention.remote.attention_mass_nnsight",
        )
        return importlib.import_module("mech.measure.attention.remote").attention_mass_nnsight
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
