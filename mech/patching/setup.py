"""Set-up shared by exact activation patching (:func:`mech.activation_patching`) and attribution
patching (:func:`mech.attribution_patching`): argument checks, inputs, the corruption's context,
target/source selection by direction, position alignment, layers and hook names
(:func:`prepare`), and the metric's targets once the two unpatched runs' logits are known
(:func:`resolve_targets`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mech.errors import ConfigError
from mech.patching.align import GROUP_ALIGNED_CONDITIONS, Alignment, align
from mech.patching.metrics import Metric, check_direction, check_metric, check_token_ids
from mech.patching.sites import check_site, hook_name


@dataclass
class PatchSetup:
    """What :func:`prepare` resolved.

    Attributes:
        sites: the checked site names; ``metric``: the :class:`Metric` to fill in.
        mode: the alignment mode (``"strict"`` or ``"group"``); ``denoise``: ``direction == "denoising"``.
        target, source: the run patched into and the run patched from (inputs).
        t_ctx, s_ctx: their contexts (a context manager, a factory of one, or None).
        aligns: one :class:`Alignment` per position group.
        n_layers: the model's layer count; ``layers``: the checked layer indices.
        names: hook names, site-major (``[hook_name(s, l) for s in sites for l in layers]``).
    """

    sites: list[str]
    metric: Metric
    mode: str
    denoise: bool
    target: Any
    source: Any
    t_ctx: Callable | None
    s_ctx: Callable | None
    aligns: list[Alignment]
    n_layers: int
    layers: list[int]
    names: list[str]


def prepare(m, caller: str, clean, corrupted, sites: str | Sequence[str],
            positions: str | Sequence[str] | torch.Tensor, *, direction: str, metric: str | Metric,
            layers: Sequence[int] | None, condition: str | None, align_mode: str | None,
            clean_context: Callable | None, corrupted_context: Callable | None, seed: int) -> PatchSetup:
    """Check the arguments of a patching call named ``caller`` and resolve what both methods share.

    ``visual_noise``/``visual_mean`` wrap the corrupted run in ``corrupt_features`` unless a
    ``corrupted_context`` is given; ``no_image``/``image_only`` select ``align="group"`` unless an
    ``align_mode`` is given.

    Raises:
        ConfigError: unknown site/metric/direction/position group; layers out of range.
        InputError: groups that do not match (``align="strict"``); UnsupportedArchitectureError: no decoder sequence.
    """
    m.require_decoder_sequence(caller)
    site_list = [sites] if isinstance(sites, str) else list(sites)
    for s in site_list:
        check_site(s)
    check_direction(direction)
    metric_obj = metric if isinstance(metric, Metric) else Metric(check_metric(metric))
    clean, corrupted = m.inputs(clean), m.inputs(corrupted)
    if condition in ("visual_noise", "visual_mean") and corrupted_context is None:
        from mech.conditions import corrupt_features

        corrupted_context = lambda: corrupt_features(m, corrupted, condition, seed=seed)  # noqa: E731
    mode = align_mode or ("group" if condition in GROUP_ALIGNED_CONDITIONS else "strict")
    denoise = direction == "denoising"
    target, source = (corrupted, clean) if denoise else (clean, corrupted)
    t_ctx, s_ctx = (corrupted_context, clean_context) if denoise else (clean_context, corrupted_context)
    aligns = align(target.groups, source.groups, positions, mode, target["input_ids"], source["input_ids"])
    n = m.arch.n_layers
    layer_list = list(range(n)) if layers is None else [int(l) for l in layers]
    bad = [l for l in layer_list if not 0 <= l < n]
    if bad:
        raise ConfigError(f"layers {bad} out of range; this model has layers 0..{n - 1}")
    names = [hook_name(s, l) for s in site_list for l in layer_list]
    return PatchSetup(site_list, metric_obj, mode, denoise, target, source, t_ctx, s_ctx, aligns, n, layer_list,
                      names)


def resolve_targets(metric: Metric, clean_logits: torch.Tensor, corr_logits: torch.Tensor,
                    answer: torch.Tensor | None, counterfactual: torch.Tensor | None) -> tuple[int, torch.Tensor]:
    """Fill in ``metric``'s targets from the last-position logits of the two unpatched runs.

    Default answer = the clean run's top token; default counterfactual (``logit_diff``) = the
    corrupted run's top token other than the answer. Targets already set on ``metric`` are kept.

    Returns:
        ``(batch, rows)``: the batch size and ``torch.arange(batch)``.

    Raises:
        InputError: token ids of the wrong shape or out of the vocabulary.
        ConfigError: a target the metric needs is missing (:meth:`Metric.check`).
    """
    batch = clean_logits.shape[0]
    check_token_ids(batch, clean_logits.shape[-1], answer=answer, counterfactual=counterfactual,
                    metric_answer=metric.answer, metric_counterfactual=metric.counterfactual)
    if metric.name in ("logit_diff", "prob") and metric.answer is None:
        metric.answer = answer if answer is not None else clean_logits.argmax(-1)
    if metric.name == "logit_diff" and metric.counterfactual is None:
        if counterfactual is None:
            masked = corr_logits.clone()
            masked[torch.arange(batch), metric.answer.to(masked.device)] = -torch.inf
            counterfactual = masked.argmax(-1)
        metric.counterfactual = counterfactual
    metric.clean_logp = clean_logits.log_softmax(-1)
    metric.check(batch)
    return batch, torch.arange(batch)
