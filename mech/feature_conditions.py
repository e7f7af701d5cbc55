"""Feature conditions: the change happens in the forward pass, at the decoder's input embeddings.

:func:`feature_condition` (``visual_noise``: Gaussian noise on the visual token embeddings, Meng et al.
2022; ``visual_mean``: their data-set mean) and :func:`resample_features` (resample ablation: the visual
features of another sample) edit the embeddings the decoder receives in every forward inside their
``with`` block, through one scoped pre-hook on the language model (removed on exit). They keep the
sequence length, so patched and clean runs line up position by position. The input conditions, which
rewrite the sample instead, are :mod:`mech.conditions` (which re-exports this module's names).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from mech import words as W
from mech.deprecation import renamed_function
from mech.engines.hooks import find_hidden, with_hidden
from mech.errors import ConfigError, InputError
from mech.splice import check_donor_lengths

__all__ = [
    "VISUAL_GROUPS",
    "check_condition",
    "corrupt_features",
    "decoder_input_embeds",
    "donor_rows_ok",
    "feature_condition",
    "injects_visual",
    "require_input_only_visual",
    "resample_features",
]

CONDITIONS, FEATURE_CONDITIONS = W.names(W.CONDITIONS), W.FEATURE_CONDITIONS


def check_condition(condition: str) -> str:
    """Return ``condition`` if known (input or feature condition: :data:`mech.conditions.CONDITIONS`).

    Raises:
        ConfigError: an unknown condition; the message lists the known ones.
    """
    if condition not in CONDITIONS:
        raise ConfigError(f"unknown condition {condition!r}; allowed: {', '.join(CONDITIONS)}")
    return condition


VISUAL_GROUPS = ("image", "video")


def _group_mask(groups: Any, names: Sequence[str] = VISUAL_GROUPS) -> torch.Tensor:
    mask = torch.zeros_like(groups.valid)
    for name in names:
        mask |= groups.mask(name)
    return mask


@contextlib.contextmanager
def feature_condition(
    m: Any,
    inputs: Any,
    condition: str,
    *,
    seed: int = 0,
    noise_scale: float = 3.0,
    mean: torch.Tensor | None = None,
    groups: Sequence[str] = VISUAL_GROUPS,
) -> Iterator[None]:
    """Apply a feature condition to the visual token embeddings in every forward inside the ``with`` block
    (``corrupt_features`` is its deprecated name: it warns).

    ``groups`` (default image and video) selects the token groups whose embeddings are corrupted;
    the contribution estimator passes ``("text",)`` to corrupt the question the same way.

    A forward pre-hook on the decoder (``arch.module(model, "language_model")``) edits
    its input embeddings (found by type: :func:`mech.engines.hooks.find_hidden`) ``[batch, pos, d_model]`` at the image/video positions of
    ``inputs.groups`` (only when the sequence length equals the groups' length, i.e. at the
    prefill of a generation; later decoding steps pass through):

    * ``visual_noise``: add Gaussian noise with std = ``noise_scale`` × the std of the visual
      embeddings of this batch (all entries at visual positions), as in the causal tracing of
      Meng et al. 2022 (ROME, §2.1: ν = 3 × the empirical std). The noise is drawn from a
      ``torch.Generator`` seeded with ``seed``, the same at every forward, so clean and
      corrupted runs are reproducible.
    * ``visual_mean``: replace every visual embedding by ``mean`` (``[d_model]``; default: the
      mean over the visual positions of this batch).
    * any other condition of :data:`CONDITIONS`: no hook (the change was in the inputs).

    Only the hook this function added is removed, in ``finally``.

    Raises:
        ConfigError: unknown condition; ``mean`` of the wrong shape.
        InputError: no image/video positions in ``inputs``; the decoder was called without
            ``inputs_embeds``.
        UnsupportedArchitectureError: a cross-attention family (Mllama); visual groups on a family that
            adds visual features after decoder layers (Qwen3-VL's deepstack, :func:`require_input_only_visual`).
    """
    check_condition(condition)
    if condition not in FEATURE_CONDITIONS:
        yield
        return
    m.require_decoder_sequence(f"feature_condition({condition!r})")
    require_input_only_visual(m, groups, f"feature_condition({condition!r})")
    token_groups = groups
    groups = m.inputs(inputs).groups
    mask = _group_mask(groups, token_groups)
    if not bool(mask.any()):
        raise InputError(
            f"{condition} needs {' or '.join(token_groups)} tokens, but these inputs have none; "
            "prepare the inputs with them."
        )
    if mean is not None and mean.dim() != 1:
        raise ConfigError(f"mean must be a [d_model] tensor; got shape {tuple(mean.shape)}.")

    d_model = m.arch.d_model

    def hook(module, args, kwargs):
        hit = find_hidden(args, kwargs, d_model)
        if hit is None:
            raise InputError(
                "the decoder was called without input embeddings, so visual features cannot be "
                "corrupted; this family needs a table entry for its decoder input."
            )
        where, emb = hit
        if emb.shape[:2] != mask.shape:
            return None  # a decoding step after the prefill: no visual positions here
        sel = mask.to(emb.device)
        vis = emb[sel]  # [n_visual, d_model]
        if condition == "visual_noise":
            gen = torch.Generator(device=emb.device).manual_seed(seed)
            std = vis.float().std()
            noise = torch.randn(vis.shape, generator=gen, device=emb.device, dtype=torch.float32)
            new = vis + (noise_scale * std * noise).to(emb.dtype)
        else:
            fill = vis.float().mean(dim=0) if mean is None else mean.to(emb.device).float()
            if fill.shape[-1] != emb.shape[-1]:
                raise ConfigError(
                    f"mean has {fill.shape[-1]} features; the decoder embeddings have {emb.shape[-1]}."
                )
            new = fill.to(emb.dtype).expand_as(vis)
        emb = emb.clone()
        emb[sel] = new
        return with_hidden(args, kwargs, where, emb)

    module = m.arch.module(m.model, "language_model")
    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


corrupt_features = renamed_function(feature_condition, "corrupt_features")


class _Stop(Exception):
    """Raised by :func:`decoder_input_embeds`'s hook to skip the decoder layers."""


def decoder_input_embeds(m: Any, inputs: Any, injections: bool = False):
    """The decoder's input embeddings ``[batch, pos, d_model]`` (text embeddings with the visual
    features merged in), from one pass that stops before the first decoder layer. With ``injections``:
    ``(embeds, (features, order))``, the visual features added after early layers and the row each
    position receives (:func:`mech.splice.find_injections`; None on families without them).

    Raises:
        InputError: the decoder is called without ``inputs_embeds`` (the family's table needs an entry).
    """
    from mech.splice import find_injections

    m.require_decoder_sequence("decoder_input_embeds")
    inputs = m.inputs(inputs)
    box: list = []

    def hook(module, args, kwargs):
        hit = find_hidden(args, kwargs, m.arch.d_model)
        if hit is None:
            raise InputError(
                "the decoder was called without input embeddings; this family needs a table entry "
                "for its decoder input."
            )
        box.append(hit[1].detach())
        inj = find_injections(kwargs, m.arch.d_model, tuple(hit[1].shape[:2])) if injections else None
        box.append(None if inj is None else ([t.detach() for t in inj[1]], inj[2]))
        raise _Stop

    handle = m.arch.module(m.model, "language_model").register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            m.model(**inputs)
    except _Stop:
        pass
    finally:
        handle.remove()
    return (box[0], box[1]) if injections else box[0]


@contextlib.contextmanager
def resample_features(
    m: Any,
    inputs: Any,
    donors: Any,
    groups: Sequence[str] = VISUAL_GROUPS,
    rows: torch.Tensor | None = None,
    fit: bool = False,
) -> Iterator[None]:
    """Resample ablation: the embeddings of ``groups`` in each row are replaced by the same groups'
    embeddings of another sample, in every forward inside the block.

    This is the symmetric token replacement (STR) corruption that Zhang & Nanda 2024 (*Towards Best
    Practices of Activation Patching*, §3) recommend over Gaussian noise, and the resampling ablation
    of causal scrubbing (Chan et al. 2022): the corrupted input stays in distribution and keeps the
    rest of the prompt (what is asked), while the group's content comes from another sample. A donor
    must have exactly as many positions of ``groups`` as the row (:func:`donor_rows_ok`), or with ``fit``
    at least one (repeated or truncated, :func:`mech.splice.splice_rows`); positions are filled in order.

    Args:
        inputs: ``[batch, pos]`` inputs.
        donors: either prepared donor inputs with one row per row of ``inputs`` (row ``i`` is the
            donor of row ``i``; one extra embedding pass), or a LongTensor ``[batch]`` of row indices
            into ``inputs`` itself (donors from the same batch; no extra pass).
        groups: token groups whose embeddings are swapped (default image and video).
        rows: ``[batch]`` bool; rows that are left as they are where False (default: all swapped).
        fit: allow donors with another number of positions (the text removal of :mod:`mech.curves.donors`).

    On a family that adds visual features after early decoder layers (Qwen3-VL's deepstack), a visual
    group's added features are resampled from the donor too (:func:`mech.splice.splice_injections`), so
    the image is the donor's at every layer it enters.

    Raises:
        InputError: row counts differ; a swapped row's group lengths differ (without ``fit``) or its donor
            has none of the group's positions (with ``fit``).
        UnsupportedArchitectureError: a deepstack family whose added features mech cannot find by type.
    """
    from mech.splice import resample_hook

    m.require_decoder_sequence("resample_features")
    inputs = m.inputs(inputs)
    mask = _group_mask(inputs.groups, groups)
    index = None
    if isinstance(donors, torch.Tensor):
        index = donors.long().cpu()
        dmask = mask[index]
    else:
        donors = m.inputs(donors)
        dmask = _group_mask(donors.groups, groups)
    if mask.shape[0] != dmask.shape[0]:
        raise InputError(
            f"inputs have {mask.shape[0]} rows and donors {dmask.shape[0]}; give one donor per row."
        )
    rows = torch.ones(mask.shape[0], dtype=torch.bool) if rows is None else rows.bool().cpu()
    check_donor_lengths(mask, dmask, rows, "/".join(groups), fit)
    injected = injects_visual(m, groups)
    donor_emb, donor_inj = (
        (None, None) if index is not None else decoder_input_embeds(m, donors, injections=True)
    )
    hook = resample_hook(
        m.arch.d_model,
        mask,
        dmask,
        rows,
        source=donor_emb,
        index=index,
        donor_injections=donor_inj,
        injected=injected,
        what="resample_features",
    )
    handle = m.arch.module(m.model, "language_model").register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def injects_visual(m: Any, groups: Sequence[str]) -> bool:
    """Whether ``groups`` hold a visual group and the family adds visual features after early decoder layers
    (``m.arch.injection_layers``: Qwen3-VL's deepstack)."""
    return any(g in VISUAL_GROUPS for g in groups) and bool(m.arch.injection_layers)


def require_input_only_visual(m: Any, groups: Sequence[str], what: str) -> None:
    """Raise UnsupportedArchitectureError (naming the input conditions that remove the image everywhere)
    for visual ``groups`` on a family that also adds visual features after early decoder layers
    (``m.arch.injection_layers``: Qwen3-VL's deepstack), which an input-embedding edit leaves clean."""
    from mech.errors import UnsupportedArchitectureError

    if injects_visual(m, groups):
        visual, layers = [g for g in groups if g in VISUAL_GROUPS], m.arch.injection_layers
        raise UnsupportedArchitectureError(
            f"{what} edits the {'/'.join(visual)} embeddings at the decoder's input, but {m.arch.model_type} also adds "
            f"visual features after decoder layers {list(layers)} (deepstack), which would keep the clean image; "
            "use an input condition instead (white_image, black_image, noise_image: a real forward without the "
            "image), or the attention and dla estimators (mech contrib --estimators attention dla)."
        )


def donor_rows_ok(inputs: Any, donors: Any, groups: Sequence[str]) -> torch.Tensor:
    """``[batch]`` bool: rows whose ``groups`` have as many positions as the donor row's."""
    a, b = _group_mask(inputs.groups, groups), _group_mask(donors.groups, groups)
    return a.sum(-1).cpu() == b.sum(-1).cpu()
