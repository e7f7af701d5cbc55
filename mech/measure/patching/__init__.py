"""Activation patching (Meng et al. 2022; Heimersheim & Nanda 2024) between a clean and a corrupted run.

``mech.activation_patching(m, clean, corrupted, sites="resid_post", positions="image")`` patches the
activation at each of ``sites`` of every layer, at the positions of each position group, from one run into
the other and measures the answer (:mod:`.metrics`). Sites: :mod:`.sites`; alignment of positions
across conditions: :mod:`.align`; prefix reuse and batching: :mod:`.engine`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mech.contract import Result
from mech.deprecation import renamed_keywords
from mech.engines import hooks as H
from mech.engines.prefix import Config, capture, patched_logits
from mech.engines.unembed import unembed_at
from mech.measure.patching.align import POSITION_GROUPS
from mech.measure.patching.metrics import DIRECTIONS, METRICS, Metric, Targets, normalized_effect
from mech.measure.patching.record import PatchRecord
from mech.measure.patching.setup import prepare
from mech.measure.patching.sites import SITES
from mech.models.load import takes_model

__all__ = [
    "DIRECTIONS",
    "METRICS",
    "POSITION_GROUPS",
    "SITES",
    "Metric",
    "PatchRecord",
    "PatchingResult",
    "Targets",
    "activation_patching",
]


@dataclass(frozen=True, eq=False)
class PatchingResult(Result):
    """What :func:`activation_patching` measured (``method="exact"``) or
    :func:`mech.attribution_patching` estimated (``method="atp" | "ig" | "deeplift"``): one result
    for exact and attribution patching (a frozen :class:`mech.contract.Result`).

    Attributes:
        effect: site -> normalized patching effect ``[layer, group]`` (``[layer, head, group]`` for
            ``z``), ``(patched − corrupted) / (clean − corrupted)`` of the batch means (Heimersheim &
            Nanda 2024, eq. 1); NaN for a group with no patched position (e.g. image positions of a
            no_image run), and everywhere when ``normalized`` is False.
        patched: site -> metric of the patched runs ``[layer, group, batch]`` (``z``: ``[layer, head,
            group, batch]``); for attribution patching the estimate ``target metric + delta``.
        delta: site -> attribution patching's first-order estimate ΔM ``[layer, (head,) group, batch]``
            (Nanda 2023; Kramár et al. 2024, eq. 3); None for ``method="exact"``.
        clean_metric, corrupted_metric: ``[batch]`` raw metric of the two unpatched runs.
        groups: position-group names along the group axis; ``layers``: layer indices.
        align: how positions were paired (:mod:`mech.measure.patching.align`).
        patched_positions: group -> per row ``[[target, source], ...]`` position pairs ({} for attribution).
        forward_equivalents: the cost, counted as the method counts it: ``"exact"``: decoder-layer
            evaluations per patched run / ``n_layers`` (1 = a full forward), JSON key
            ``forward_equivalents_per_patched_run``; attribution: forward-equivalents of the whole
            estimate (3.0 for ``"atp"``, ``2 + 2·steps`` for ``"ig"``), JSON key ``forward_equivalents``.
        n_patched_runs: patched runs computed (0 for attribution patching).
        answer, counterfactual: LongTensor ``[batch]`` (CPU): the token ids this batch was scored
            against (:meth:`Metric.resolve`); None where the metric needs none (``kl``; ``prob`` has no
            counterfactual).
        method: ``"exact"`` (activation patching) or the attribution method.
        normalized: whether ``effect`` holds normalized effects (``normalize=False``: NaN).
        meta: what else the method records (attribution: ``wall_s``, ``passes``, ``ig_steps``, ...).
    """

    AXES = {
        "effect": ("layer", "head?", "group"),
        "patched": ("layer", "head?", "group", "batch"),
        "delta": ("layer", "head?", "group", "batch"),
        "clean_metric": ("batch",),
        "corrupted_metric": ("batch",),
        "answer": ("batch",),
        "counterfactual": ("batch",),
    }
    LABELS = {"layer": "layers", "group": "groups"}
    COMBINE = {"forward_equivalents": "mean", "n_patched_runs": "sum", "patched_positions": "concat"}
    META_SUMS = ("wall_s",)

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
    method: str = "exact"
    delta: dict[str, torch.Tensor] | None = None
    normalized: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", tuple(self.groups))
        object.__setattr__(self, "layers", list(self.layers))
        super().__post_init__()

    def summarize(self) -> PatchingResult:
        """``effect`` recomputed from ``patched`` and the two metrics (normalized when
        ``normalized``), NaN for the groups no row has a patched position in (``patched_positions``)."""
        return self.with_effects(self.normalized)

    def with_effects(self, normalize: bool = True) -> PatchingResult:
        """This result with ``effect`` computed from ``patched``, ``clean_metric`` and
        ``corrupted_metric`` (:func:`mech.measure.patching.metrics.normalized_effect`) or, with
        ``normalize=False``, NaN.

        Raises:
            MechError: ``normalize`` and the clean and corrupted means are equal.
        """
        pp = self.patched_positions
        empty = torch.tensor([g in pp and sum(len(r) for r in pp[g]) == 0 for g in self.groups])
        effect = {}
        for site, vals in self.patched.items():
            if normalize:
                eff = normalized_effect(vals, self.clean_metric, self.corrupted_metric, self.direction)
            else:
                eff = torch.full(vals.shape[:-1], float("nan"))
            eff[..., empty] = float("nan")
            effect[site] = eff
        return dataclasses.replace(self, effect=effect, normalized=normalize)

    def to_json(self) -> dict:
        """``patch.json`` content (keys: docs/design.md, "The run layer's contract"); attribution
        patching adds ``method`` (in words) first and writes ``forward_equivalents``."""
        ids = {
            k: None if t is None else t.tolist()
            for k, t in (("answer", self.answer), ("counterfactual", self.counterfactual))
        }
        exact = self.method == "exact"
        return {
            **({} if exact else {"method": METHOD_NAMES.get(self.method, self.method)}),
            "corruption": self.corruption,
            "direction": self.direction,
            "metric": self.metric,
            "clean_metric": float(self.clean_metric.mean()),
            "corrupted_metric": float(self.corrupted_metric.mean()),
            "layers": self.layers,
            "groups": list(self.groups),
            "align": self.align,
            "effect": {
                s: (
                    {g: e[:, i].tolist() for i, g in enumerate(self.groups)}
                    if e.dim() == 2
                    else {g: e[:, :, i].tolist() for i, g in enumerate(self.groups)}
                )
                for s, e in self.effect.items()
            },
            (
                "forward_equivalents_per_patched_run" if exact else "forward_equivalents"
            ): self.forward_equivalents,
            **({"n_patched_runs": self.n_patched_runs} if exact else {}),
            **ids,
            **self.meta,
        }

    def to_frame(self, per_sample: bool = False):
        """Tidy ``pandas.DataFrame`` (:func:`mech.frames.patching_frame`). ``per_sample=False``: one row
        per cell of every ``effect[site]``, columns ``site, layer, head, group, effect``;
        ``per_sample=True``: one row per cell of every ``patched[site]``, columns ``site, sample, layer,
        head, group, patched, [delta,] clean_metric, corrupted_metric``. ``head`` is ``<NA>`` (nullable
        Int64) for sites without a head axis; ``site`` and ``group`` are Categoricals."""
        from mech.frames import patching_frame

        return patching_frame(self, per_sample)


#: ``method`` -> what ``to_json`` calls it
METHOD_NAMES = {
    "exact": "activation patching",
    "atp": "attribution patching (AtP)",
    "ig": "attribution patching, integrated gradients (EAP-IG)",
    "deeplift": "attribution patching, DeepLIFT multipliers",
}


def _cpu(ids: torch.Tensor | None) -> torch.Tensor | None:
    return None if ids is None else ids.detach().long().cpu()


def _context(factory):
    return factory() if callable(factory) else factory


@renamed_keywords(site="sites")
@takes_model
def activation_patching(
    m,
    clean,
    corrupted,
    sites: str | Sequence[str] = "resid_post",
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
    """Patch each of ``sites`` at every layer and position group between a clean and a corrupted run.

    Args:
        m: a :class:`~mech.MechModel` (a decoder-sequence family).
        clean, corrupted: inputs of the same samples, e.g. ``condition_inputs(m, samples, "complete")``
            and ``condition_inputs(m, samples, "white_image")``.
        sites: one of :data:`SITES` or a list (``site=`` is its deprecated spelling: it warns).
        positions: position group(s) of :data:`POSITION_GROUPS` or a BoolTensor ``[batch, pos]``.
        direction: ``"denoising"`` (clean activations into the corrupted run) or ``"noising"``.
        metric: ``"logit_diff"``, ``"prob"`` or ``"kl"`` (:mod:`.metrics`), or a :class:`Metric` (frozen:
            the same one can serve any number of batches; it is never changed).
        answer, counterfactual: LongTensor ``[batch]`` token ids; default answer = the clean run's top
            token, counterfactual = the corrupted run's top token other than the answer. What was
            used comes back in ``result.answer``/``result.counterfactual``.
        layers: layers to patch (default all).
        condition: the corrupted run's condition; default: the corrupted inputs' own ``.condition``
            (``condition_inputs`` sets it). Recorded; ``no_image``/``image_only`` select
            ``align="group"``; ``visual_noise``/``visual_mean`` wrap the corrupted run in ``feature_condition``.
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
    setup = prepare(
        m,
        "activation_patching",
        clean,
        corrupted,
        sites,
        positions,
        direction=direction,
        metric=metric,
        layers=layers,
        condition=condition,
        align_mode=align_mode,
        clean_context=clean_context,
        corrupted_context=corrupted_context,
        seed=seed,
    )
    site_list, metric_obj, aligns = setup.sites, setup.metric, setup.aligns
    layers, n = setup.layers, setup.n_layers
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
    clean_m, corr_m = (
        metric_obj(clean_logits, rows, targets).cpu(),
        metric_obj(corr_logits, rows, targets).cpu(),
    )
    target_m = corr_m if direction == "denoising" else clean_m

    n_runs, effects, patched = 0, {}, {}
    heads = m.arch.n_heads
    for s in site_list:
        shape = (len(layers), heads, len(aligns), batch) if s == "z" else (len(layers), len(aligns), batch)
        vals = target_m.expand(shape).clone()
        for li, l in enumerate(layers):
            configs = [
                Config(l, g, h)
                for g in range(len(aligns))
                if aligns[g].count()
                for h in (range(heads) if s == "z" else [None])
            ]
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
    return PatchingResult(
        effect=effects,
        patched=patched,
        clean_metric=clean_m,
        corrupted_metric=corr_m,
        groups=tuple(a_.name for a_ in aligns),
        layers=layers,
        direction=direction,
        metric=metric_obj.name,
        corruption=setup.condition,
        align=setup.mode,
        patched_positions={a_.name: a_.as_lists() for a_ in aligns},
        forward_equivalents=fe,
        n_patched_runs=n_runs,
        answer=a,
        counterfactual=cf,
        normalized=normalize,
    )
