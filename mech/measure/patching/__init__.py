"""Activation patching (Meng et al. 2022; Heimersheim & Nanda 2024) between a clean and a corrupted run.

``mech.activation_patching(m, clean, corrupted, site="resid_post", positions="image")`` patches the
activation at ``site`` of every layer, at the positions of each position group, from one run into
the other and measures the answer (:mod:`.metrics`). Sites: :mod:`.sites`; alignment of positions
across conditions: :mod:`.align`; prefix reuse and batching: :mod:`.engine`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mech.engines import hooks as H
from mech.measure.patching.align import POSITION_GROUPS
from mech.engines.prefix import Config, capture, patched_logits
from mech.engines.unembed import unembed_at
from mech.measure.patching.metrics import DIRECTIONS, METRICS, Metric, Targets, normalized_effect
from mech.measure.patching.setup import prepare
from mech.measure.patching.sites import SITES

__all__ = ["activation_patching", "PatchingResult", "SITES", "METRICS", "DIRECTIONS", "POSITION_GROUPS",
           "Metric", "Targets"]


@dataclass
class PatchingResult:
    """What :func:`activation_patching` measured.

    Attributes:
        effect: site -> normalized patching effect ``[layer, group]`` (``[layer, head, group]`` for
            ``z``); NaN for a group with no patched position (e.g. image positions of a no_image run).
        patched: site -> raw metric of the patched runs ``[layer, group, batch]`` (``z``: ``[layer, head,
            group, batch]``).
        clean_metric, corrupted_metric: ``[batch]`` raw metric of the two unpatched runs.
        groups: position-group names along the group axis; ``layers``: layer indices.
        patched_positions: group -> per row ``[[target, source], ...]`` position pairs.
        forward_equivalents: decoder-layer evaluations per patched run / ``n_layers`` (1 = full forward).
        answer, counterfactual: LongTensor ``[batch]`` (CPU): the token ids this batch was scored
            against (given or resolved for this batch, :meth:`Metric.resolve`); None where the metric
            needs none (``kl``; ``prob`` has no counterfactual). Also in ``meta`` as lists.
    """

    effect: dict[str, torch.Tensor]
    patched: dict[str, torch.Tensor]
    clean_metric: torch.Tensor
    corrupted_metric: torch.Tensor
    groups: tuple[str, ...]
    layers: list[int]
    direction: str
    metric: str
    corruption: str | None
    align: str
    patched_positions: dict[str, list]
    forward_equivalents: float
    n_patched_runs: int
    meta: dict[str, Any] = field(default_factory=dict)
    answer: torch.Tensor | None = None
    counterfactual: torch.Tensor | None = None

    def to_json(self) -> dict:
        """``patch.json`` content (keys of DESIGN.md)."""
        return {
            "corruption": self.corruption, "direction": self.direction, "metric": self.metric,
            "clean_metric": float(self.clean_metric.mean()), "corrupted_metric": float(self.corrupted_metric.mean()),
            "layers": self.layers, "groups": list(self.groups), "align": self.align,
            "effect": {s: ({g: e[:, i].tolist() for i, g in enumerate(self.groups)} if e.dim() == 2 else
                           {g: e[:, :, i].tolist() for i, g in enumerate(self.groups)})
                       for s, e in self.effect.items()},
            "forward_equivalents_per_patched_run": self.forward_equivalents,
            "n_patched_runs": self.n_patched_runs, **self.meta,
        }

    def to_frame(self, per_sample: bool = False):
        """Tidy ``pandas.DataFrame`` (:func:`mech.frames.patching_frame`). ``per_sample=False``: one row
        per cell of every ``effect[site]``, columns ``site, layer, head, group, effect``;
        ``per_sample=True``: one row per cell of every ``patched[site]``, columns ``site, sample, layer,
        head, group, patched, clean_metric, corrupted_metric``. ``head`` is ``<NA>`` (nullable Int64)
        for sites without a head axis; ``site`` and ``group`` are Categoricals."""
        from mech.frames import patching_frame

        return patching_frame(self, per_sample)

    def tensors(self) -> dict[str, torch.Tensor]:
        """``patch.safetensors`` content: ``effect.{site}``, ``patched.{site}``, ``clean_metric``, ``corrupted_metric``."""
        out = {"clean_metric": self.clean_metric, "corrupted_metric": self.corrupted_metric}
        out.update({f"effect.{s}": e for s, e in self.effect.items()})
        out.update({f"patched.{s}": p for s, p in self.patched.items()})
        return out


def _cpu(ids: torch.Tensor | None) -> torch.Tensor | None:
    return None if ids is None else ids.detach().long().cpu()


def _context(factory):
    return factory() if callable(factory) else factory


def activation_patching(
    m,
    clean,
    corrupted,
    site: str | Sequence[str] = "resid_post",
    positions: str | Sequence[str] | torch.Tensor = ("image", "text", "last"),
    *,
    direction: str = "denoising",
    metric: str | Metric = "logit_diff",
    answer: torch.Tensor | None = None,
    counterfactual: torch.Tensor | None = None,
    layers: Sequence[int] | None = None,
    condition: str | None = None,
    align_mode: str | None = None,
    normalize: bool = True,
    clean_context: Callable | None = None,
    corrupted_context: Callable | None = None,
    seed: int = 0,
    max_rows: int = 256,
) -> PatchingResult:
    """Patch ``site`` at every layer and position group between a clean and a corrupted run.

    Args:
        m: a :class:`~mech.MechModel` (a decoder-sequence family).
        clean, corrupted: inputs of the same samples, e.g. ``condition_inputs(m, samples, "complete")``
            and ``condition_inputs(m, samples, "white_image")``.
        site: one of :data:`SITES` or a list.
        positions: position group(s) of :data:`POSITION_GROUPS` or a BoolTensor ``[batch, pos]``.
        direction: ``"denoising"`` (clean activations into the corrupted run) or ``"noising"``.
        metric: ``"logit_diff"``, ``"prob"`` or ``"kl"`` (:mod:`.metrics`), or a :class:`Metric` (frozen:
            the same one can serve any number of batches; it is never changed).
        answer, counterfactual: LongTensor ``[batch]`` token ids; default answer = the clean run's top
            token, counterfactual = the corrupted run's top token other than the answer. What was
            used comes back in ``result.answer``/``result.counterfactual``.
        layers: layers to patch (default all).
        condition: the corruption's name; default: the corrupted inputs' own ``.condition``
            (``condition_inputs`` sets it). Recorded; ``no_image``/``image_only`` select
            ``align="group"``; ``visual_noise``/``visual_mean`` wrap the corrupted run in ``corrupt_features``.
        align_mode: ``"strict"`` (one to one, groups must match) or ``"group"`` (:mod:`.align`).
        normalize: compute normalized effects (raises when clean == corrupted); False gives NaN effects.
        clean_context, corrupted_context: context manager (or a factory of one) active during that run.
        max_rows: rows per stacked patched batch.

    Returns:
        :class:`PatchingResult`.

    Raises:
        ConfigError: unknown site/metric/direction/position group (messages list the valid values);
            ``condition`` contradicting the corrupted inputs' own; a target given on the metric and as an
            argument with other values.
        InputError: groups that do not match; token ids of the wrong shape or outside the vocabulary;
            UnsupportedArchitectureError: cross-attention family.
        MechError: NaN metric; clean == corrupted metric with ``normalize=True``.
    """
    setup = prepare(m, "activation_patching", clean, corrupted, site, positions, direction=direction, metric=metric,
                    layers=layers, condition=condition, align_mode=align_mode, clean_context=clean_context,
                    corrupted_context=corrupted_context, seed=seed)
    sites, metric_obj, aligns, layers, n = setup.sites, setup.metric, setup.aligns, setup.layers, setup.n_layers
    source = setup.source

    cap = capture(m, setup.target, _context(setup.t_ctx))
    ctx = _context(setup.s_ctx)
    # only the answer position is read: the unembedding runs there alone ([batch, 1, vocab])
    with ctx if ctx is not None else contextlib.nullcontext(), unembed_at(m, source.groups.last()):
        s_logits, cache = H.run_with_cache(m, source, setup.names)
    s_last = s_logits[:, 0].float()
    clean_logits, corr_logits = (s_last, cap.logits) if setup.denoise else (cap.logits, s_last)
    targets = metric_obj.resolve(clean_logits, corr_logits, answer, counterfactual)
    batch, rows = targets.batch, targets.rows()
    clean_m, corr_m = metric_obj(clean_logits, rows, targets).cpu(), metric_obj(corr_logits, rows, targets).cpu()
    target_m = corr_m if direction == "denoising" else clean_m

    n_runs, effects, patched = 0, {}, {}
    heads = m.arch.n_heads
    for s in sites:
        shape = (len(layers), heads, len(aligns), batch) if s == "z" else (len(layers), len(aligns), batch)
        vals = target_m.expand(shape).clone()
        for li, l in enumerate(layers):
            configs = [Config(l, g, h) for g in range(len(aligns)) if aligns[g].count()
                       for h in (range(heads) if s == "z" else [None])]
            if not configs:
                continue
            logits = patched_logits(m, cap, s, configs, aligns, cache, max_rows)
            n_runs += len(configs)
            for c, lg in zip(configs, logits):
                v = metric_obj(lg, rows, targets).cpu()
                if s == "z":
                    vals[li, c.head, c.group] = v
                else:
                    vals[li, c.group] = v
        patched[s] = vals
        if normalize:
            eff = normalized_effect(vals, clean_m, corr_m, direction)
        else:
            eff = torch.full(shape[:-1], float("nan"))
        empty = torch.tensor([a.count() == 0 for a in aligns])
        eff[..., empty] = float("nan")
        effects[s] = eff
    fe = cap.layer_evals / (n * batch) / max(n_runs, 1)
    a, cf = _cpu(targets.answer), _cpu(targets.counterfactual)
    return PatchingResult(effects, patched, clean_m, corr_m, tuple(a_.name for a_ in aligns), layers, direction,
                          metric_obj.name, setup.condition, setup.mode, {a_.name: a_.as_lists() for a_ in aligns}, fe,
                          n_runs, meta={"answer": None if a is None else a.tolist(),
                                        "counterfactual": None if cf is None else cf.tolist()},
                          answer=a, counterfactual=cf)
