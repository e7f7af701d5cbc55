"""Splicing a donor's embeddings into a batch at one token group's positions (resample ablation,
:func:`mech.conditions.resample_features` and :class:`mech.curves.decomposition.Removal`).

A donor may have another number of the group's positions than the row it replaces (the text removal of
:mod:`mech.curves.donors`): its positions are then repeated or truncated (:func:`fitted`).
"""

from __future__ import annotations

import torch

from mech.errors import InputError

__all__ = ["check_donor_lengths", "fitted", "splice_rows"]


def check_donor_lengths(
    mask: torch.Tensor, dmask: torch.Tensor, rows: torch.Tensor, what: str, fit: bool
) -> None:
    """InputError for changed ``rows`` ``[batch]`` whose donor positions ``dmask`` ``[batch, pos']`` cannot
    fill ``mask`` ``[batch, pos]``: another count (without ``fit``) or none (with ``fit``)."""
    n, d = mask.sum(-1).cpu(), dmask.sum(-1).cpu()
    bad = [i for i in range(mask.shape[0]) if rows[i] and (d[i] == 0 if fit else n[i] != d[i])]
    if bad:
        raise InputError(
            f"rows {bad[:8]} have {'no' if fit else 'a different number of'} {what} positions "
            f"{'in their donors' if fit else 'than their donors'}; pick donors with the group "
            "(mech.curves.donors.pair_donors), pass fit=True, or pass rows=."
        )


def fitted(source: torch.Tensor, count: int) -> torch.Tensor:
    """``source`` ``[n, d_model]`` repeated or truncated to ``count`` rows: row k is ``source[k mod n]``."""
    return source[torch.arange(count, device=source.device) % source.shape[0]]


def splice_rows(
    emb: torch.Tensor, source: torch.Tensor, mask: torch.Tensor, dmask: torch.Tensor, rows: torch.Tensor
) -> torch.Tensor:
    """A copy of ``emb`` ``[batch, pos, d_model]`` whose ``mask`` ``[batch, pos]`` positions hold, in order,
    ``source``'s ``dmask`` ``[batch, pos']`` positions (``source`` ``[batch, pos', d_model]``), in the
    ``rows`` ``[batch]`` (bool) only. Where a changed row's donor has another number of positions they are
    repeated or truncated (:func:`fitted`: the k-th position gets donor position k mod n)."""
    emb = emb.clone()
    for i in range(mask.shape[0]):
        if rows[i]:
            where = mask[i].to(emb.device)
            emb[i, where] = fitted(source[i, dmask[i].to(source.device)], int(where.sum())).to(emb)
    return emb


def find_injections(
    kwargs: dict, d_model: int, shape: tuple[int, int]
) -> tuple[str, list, torch.Tensor] | None:
    """The visual features a decoder adds after early layers (Qwen3-VL's deepstack), found by type in the
    decoder's keyword arguments: ``(key, features, order)``, ``features`` the list of ``[n_visual, d_model]``
    tensors (one per injection layer) and ``order`` ``[batch, pos]`` long, the row of ``features`` each
    position receives (−1: none), from the one bool ``[batch, pos]`` argument with ``n_visual`` True entries.
    None when the call has no such list.

    Raises:
        InputError: several arguments look like the list or its positions.
    """
    lists = [
        (k, v)
        for k, v in kwargs.items()
        if isinstance(v, (list, tuple))
        and len(v) > 0
        and all(isinstance(t, torch.Tensor) and t.dim() == 2 and t.shape[-1] == d_model for t in v)
    ]
    if not lists:
        return None
    n = lists[0][1][0].shape[0]
    masks = [
        v
        for v in kwargs.values()
        if isinstance(v, torch.Tensor)
        and v.dtype == torch.bool
        and tuple(v.shape) == tuple(shape)
        and int(v.sum()) == n
    ]
    if len(lists) > 1 or len(masks) != 1:
        raise InputError(
            "the decoder's call has several candidates for the visual features added after early "
            "layers (a list of [n_visual, d_model] tensors and their [batch, pos] positions); mech "
            "cannot tell which to resample"
        )
    where = masks[0].cpu()
    order = torch.full(tuple(shape), -1, dtype=torch.long)
    order[where] = torch.arange(n)
    return lists[0][0], list(lists[0][1]), order


def splice_injections(
    features: list,
    order: torch.Tensor,
    donor: tuple[list, torch.Tensor],
    mask: torch.Tensor,
    dmask: torch.Tensor,
    rows: torch.Tensor,
) -> list:
    """``features`` (``[n_visual, d_model]`` per injection layer, ``order`` ``[batch, pos]``: the row each
    position receives) with each changed row's ``mask`` ``[batch, pos]`` positions taken, in order, from the
    donor's ``dmask`` positions (``donor`` = ``(features', order')`` of the donor pass); :func:`fitted`
    where the counts differ. Used with :func:`splice_rows` so that a resampled image is resampled at every
    layer it enters."""
    dfeat, dorder = donor
    out = [t.clone() for t in features]
    for i in range(mask.shape[0]):
        if not rows[i]:
            continue
        a, b = order[i][mask[i].cpu()], dorder[i][dmask[i].cpu()]
        a, b = a[a >= 0], b[b >= 0]
        if len(a) and len(b):
            for t, d in zip(out, dfeat):
                t[a.to(t.device)] = fitted(d[b.to(d.device)], len(a)).to(t)
    return out


def resample_hook(
    d_model: int,
    mask: torch.Tensor,
    dmask: torch.Tensor,
    rows: torch.Tensor,
    *,
    source: torch.Tensor | None = None,
    index: torch.Tensor | None = None,
    donor_injections: tuple[list, torch.Tensor] | None = None,
    injected: bool = False,
    what: str = "",
):
    """A forward pre-hook (``with_kwargs=True``) for the decoder that resamples one group: its input embeddings
    at ``mask`` ``[batch, pos]`` become the donor's at ``dmask`` (``source`` ``[batch, pos', d_model]``, or the
    batch's own rows ``index`` ``[batch]``), in ``rows`` only (:func:`splice_rows`); with ``injected`` (a
    visual group on a family that adds visual features after early layers) the added features too
    (:func:`splice_injections`; ``donor_injections`` from the donor pass, or the batch's own with ``index``).
    Prefill only: a call of another length passes through.

    Raises:
        UnsupportedArchitectureError: ``injected`` but the decoder's call carries no such features.
    """
    from mech.engines.hooks import find_hidden, with_hidden
    from mech.errors import UnsupportedArchitectureError

    def hook(module, args, kwargs):
        hit = find_hidden(args, kwargs, d_model)
        if hit is None or hit[1].shape[:2] != mask.shape:
            return None  # a decoding step after the prefill
        where, emb = hit
        src = emb[index.to(emb.device)] if index is not None else source.to(emb)
        args, kwargs = with_hidden(args, kwargs, where, splice_rows(emb, src, mask, dmask, rows))
        if injected:
            inj = find_injections(kwargs, d_model, tuple(mask.shape))
            if inj is None:
                raise UnsupportedArchitectureError(
                    f"{what}: this family adds visual features after early decoder layers, but the decoder's call "
                    "carries none that mech can find by type, so the image cannot be resampled at every layer it "
                    "enters; use the attention and dla estimators (mech contrib --estimators attention dla)."
                )
            key, features, order = inj
            donor = (features, order[index.cpu()]) if index is not None else donor_injections
            kwargs = {**kwargs, key: splice_injections(features, order, donor, mask, dmask, rows)}
        return args, kwargs

    return hook
