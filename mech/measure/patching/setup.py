"""Set-up shared by exact activation patching (:func:`mech.activation_patching`) and attribution
patching (:func:`mech.attribution_patching`): argument checks, inputs, the corruption's context,
target/source selection by direction, position alignment, layers and hook names
(:func:`prepare`). The metric's targets, once the two unpatched runs' logits are known, come from
:meth:`mech.measure.patching.metrics.Metric.resolve` (a :class:`~mech.measure.patching.metrics.Targets` per batch;
the metric itself never changes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mech.conditions import feature_condition, resolve_condition
from mech.errors import ConfigError
from mech.measure.patching.align import GROUP_ALIGNED_CONDITIONS, Alignment, align
from mech.measure.patching.metrics import Metric, check_direction, check_metric
from mech.measure.patching.sites import check_site, hook_name

__all__ = ["PatchSetup", "prepare"]


@dataclass(frozen=True)
class PatchSetup:
    """What :func:`prepare` resolved (frozen).

    Attributes:
        sites: the checked site names; ``metric``: the :class:`Metric` (frozen; targets come from
            ``metric.resolve``).
        condition: the corruption's condition: the ``condition=`` argument, else the corrupted inputs'
            own (:func:`mech.conditions.resolve_condition`), else None.
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
    condition: str | None = None


def prepare(
    m,
    caller: str,
    clean,
    corrupted,
    sites: str | Sequence[str],
    positions: str | Sequence[str] | torch.Tensor,
    *,
    direction: str,
    metric: str | Metric,
    layers: Sequence[int] | None,
    condition: str | None,
    align_mode: str | None,
    clean_context: Callable | None,
    corrupted_context: Callable | None,
    seed: int,
) -> PatchSetup:
    """Check the arguments of a patching call named ``caller`` and resolve what both methods share.

    ``condition`` defaults to the corrupted inputs' own (``condition_inputs`` sets it).
    ``visual_noise``/``visual_mean`` wrap the corrupted run in ``feature_condition`` unless a
    ``corrupted_context`` is given; ``no_image``/``image_only`` select ``align="group"`` unless an
    ``align_mode`` is given.

    Raises:
        ConfigError: unknown site/metric/direction/position group; layers out of range; a
            ``condition`` that contradicts the corrupted inputs' own.
        InputError: groups that do not match (``align="strict"``); UnsupportedArchitectureError: no decoder sequence.
    """
    m.require_decoder_sequence(caller)
    site_list = [sites] if isinstance(sites, str) else list(sites)
    for s in site_list:
        check_site(s)
    check_direction(direction)
    metric_obj = metric if isinstance(metric, Metric) else Metric(check_metric(metric))
    clean, corrupted = m.inputs(clean), m.inputs(corrupted)
    condition = resolve_condition(corrupted, condition)
    if condition in ("visual_noise", "visual_mean") and corrupted_context is None:
        corrupted_context = lambda: feature_condition(m, corrupted, condition, seed=seed)  # noqa: E731
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
    return PatchSetup(
        site_list,
        metric_obj,
        mode,
        denoise,
        target,
        source,
        t_ctx,
        s_ctx,
        aligns,
        n,
        layer_list,
        names,
        condition,
    )
