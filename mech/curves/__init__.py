"""Layerwise modality-contribution curves from four estimators, and the imbalance ratio Δ.

For each sample, layer and token group, a contribution C from:

* ``attention`` — attention mass from the answer position to the group's keys, mean over heads
  (:func:`mech.attention_mass`; a fraction of the attention, 0..1). Pooled over layers by mean.
* ``patching`` — for the group g ∈ {image, text}: its content is removed by *resample ablation*
  (default; :func:`mech.conditions.resample_features`: g's embeddings become those of a donor
  sample of the same kind, :mod:`mech.curves.donors`; Zhang & Nanda 2024 §3 recommend this
  over Gaussian noise, which also destroys what the question asks) or by Gaussian noise
  (``corruption="noise"``: std = 3 × their std, Meng et al. 2022); then the clean ``resid_pre`` of
  g's positions at layer l is patched back (denoising). C_l(g) = patched − corrupted logit
  difference: how much of the decision still travels through g's positions at layer l (in
  logits). At layer 0 this is the group's total effect clean − corrupted (signed: positive when g
  supports the decision), the overall C(g). Samples without a donor are NaN and left out.
* ``dla`` — modality-resolved direct logit attribution (:mod:`mech.measure.dla`): the part of
  each layer's attention write at the answer position that comes from the group's values, in
  logits of the answer-vs-counterfactual direction. Pooled over layers by the sum of |.|.
* ``decomposition`` — the decision's logit difference split exactly over layer, component
  (embedding, attention, MLP) and modality, MLPs included: each component's direct write (frozen
  final-norm readout) credited to image and text by the Shapley value of removing them (resample
  ablation; :mod:`mech.curves.decomposition`). Pooled over layers by the signed sum; C(image) +
  C(text) = LD(clean) − LD_frozen(both removed).

Δ(text/image) = C(text) / C(image) per layer and overall, with bootstrap 95% intervals over samples
(:mod:`mech.curves.ratio`; Zheng et al. 2025, eq. 2). The estimators measure different
things (where attention goes; what the answer causally needs; what is written directly to the
logits): where they disagree, the report shows the disagreement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from mech.measure.dla import DLA, direct_logit_attribution
from mech.curves.ratio import POOLS, Imbalance, Pool, curves, imbalance
from mech.errors import ConfigError
from mech.prepare.groups import GROUPS

ESTIMATORS = ("attention", "patching", "dla", "decomposition")
POOL: dict[str, Pool] = {"attention": "mean", "patching": "first", "dla": "abs_sum", "decomposition": "sum"}
PATCHED_GROUPS = ("image", "text")
Corruption = Literal["resample", "noise"]
CORRUPTIONS = ("resample", "noise")

__all__ = ["Contributions", "DLA", "ESTIMATORS", "Imbalance", "POOLS", "curves",
           "direct_logit_attribution", "imbalance", "modality_contributions"]


@dataclass
class Contributions:
    """Per-sample contributions ``per_sample[estimator]`` ``[sample, layer, group]``.

    Groups a patching estimate does not cover (template, bos, ...) are NaN there.
    ``components`` (with ``dla``) holds the rest of the logit difference per sample ``[sample]``, in
    logits: ``dla.mlp`` (MLP writes, all layers), ``dla.other`` (embedding and biases) and
    ``dla.logit_diff`` (the total), so the report can say how much of a decision no attention
    group writes directly. With ``decomposition``: ``decomposition.attn`` / ``.mlp`` ``[sample, layer,
    group]``, ``.embed`` ``[sample, group]``, ``.decision`` / ``.rest`` / ``.removed`` / ``.interaction``
    ``[sample]``; with resample ablation ``same.<group>`` ``[sample]`` (1.0: the donor is identical);
    from :func:`mech.curves.donors.contributions_for_rows` ``decision`` ``[sample]`` (the model's logit
    difference, top option − runner-up) and ``missing.<group>`` ``[sample]`` (why a row's group was not
    removed: a code of :data:`mech.curves.donors.REASONS`, 0 where it was).
    """

    per_sample: dict[str, torch.Tensor]
    groups: tuple[str, ...] = GROUPS
    meta: dict = field(default_factory=dict)
    components: dict[str, torch.Tensor] = field(default_factory=dict)

    @staticmethod
    def concat(parts: Sequence[Contributions]) -> Contributions:
        keys, comp = parts[0].per_sample, parts[0].components
        return Contributions({k: torch.cat([p.per_sample[k] for p in parts]) for k in keys}, parts[0].groups,
                             dict(parts[0].meta), {k: torch.cat([p.components[k] for p in parts]) for k in comp})

    def dla_decomposition(self) -> dict[str, float]:
        """Sample-mean decomposition of the decision's logit difference (DLA), in logits:
        ``attn.<group>`` (summed over layers, signed), ``mlp``, ``other`` and ``logit_diff``."""
        dla = {k: v for k, v in self.components.items() if k.startswith("dla.")}
        if "dla" not in self.per_sample or not dla:
            return {}
        attn = self.per_sample["dla"].double().sum(1).mean(0)
        out = {f"attn.{g}": float(attn[k]) for k, g in enumerate(self.groups)}
        out.update({k.split(".", 1)[1]: float(v.double().mean()) for k, v in dla.items()})
        return out

    def imbalance(self, estimator: str, numerator: str = "text", denominator: str = "image",
                  n_boot: int = 1000, seed: int = 0) -> Imbalance:
        """Δ(numerator/denominator) of one estimator (see :func:`mech.curves.ratio.imbalance`)."""
        if estimator not in self.per_sample:
            raise ConfigError(f"estimator {estimator!r} was not computed; computed: {', '.join(self.per_sample)}")
        return imbalance(self.per_sample[estimator], self.groups, pool=POOL[estimator], numerator=numerator,
                         denominator=denominator, n_boot=n_boot, seed=seed)

    def to_frame(self, per_sample: bool = True):
        """Tidy ``pandas.DataFrame`` (:func:`mech.frames.tidy`); ``estimator`` and ``group`` are Categoricals.

        ``per_sample=True``: one row per cell of every ``per_sample[estimator]``, columns ``estimator,
        sample, layer, group, contribution`` (NaN where an estimator does not cover a group or sample).
        ``per_sample=False``: the curves (sample means, NaN samples left out, as ``contrib.json``'s
        ``curves``), columns ``estimator, layer, group, contribution``.
        """
        from mech.frames import concat, tidy

        if per_sample:
            return concat({e: tidy(x, {"sample": None, "layer": None, "group": self.groups}, value="contribution")
                           for e, x in self.per_sample.items()}, "estimator")
        return concat({e: tidy(x.double().nanmean(0), {"layer": None, "group": self.groups}, value="contribution")
                       for e, x in self.per_sample.items()}, "estimator")

    def imbalance_frame(self, numerator: str = "text", denominator: str = "image", n_boot: int = 1000,
                        seed: int = 0):
        """Δ(numerator/denominator) per layer of every estimator (:meth:`imbalance`), as a tidy
        ``pandas.DataFrame`` with columns ``estimator, layer, delta``."""
        from mech.frames import concat

        return concat({e: self.imbalance(e, numerator, denominator, n_boot=n_boot, seed=seed).to_frame()
                       for e in self.per_sample}, "estimator")

    def to_json(self, numerator: str = "text", denominator: str = "image", n_boot: int = 1000,
                categories: Sequence[str] | None = None, ids: Sequence[str] | None = None) -> dict:
        """``contrib.json``: ``curves``, ``cumulative``, ``imbalance_ratio``, ``overall`` (docs/design.md,
        "The run layer's contract"); ``decomposition`` (:func:`mech.curves.summary.decomposition_json`)
        with that estimator; ``by_category.{estimator}.{category}`` when ``categories`` (one question type
        per sample, :func:`mech.curves.summary.category_of`) are given (:func:`mech.curves.summary.by_category`).
        Every ``overall.{estimator}`` has ``coverage`` (:func:`mech.curves.summary.coverage`: the share of the
        samples with an estimate and the reason for each other one, named by ``ids``); the removal-based
        estimators also ``identical_donor``. With fewer than 2 estimated samples ``ci95`` is ``[null, null]``
        and the per-layer Δ null, rather than an error."""
        from mech.curves.summary import (
            REMOVAL_ESTIMATORS,
            by_category,
            coverage,
            decomposition_json,
            estimated,
            group_imbalance,
            identical_donor,
        )

        out: dict = {
            "groups": list(self.groups),
            "pool": {e: POOL[e] for e in self.per_sample},
            "ratio": f"{numerator}/{denominator}",
            "curves": {},
            "cumulative": {},
            "imbalance_ratio": {},
            "overall": {},
            "n": None,
            **self.meta,
        }
        for est, x in self.per_sample.items():
            keep = [g for g in self.groups if not torch.isnan(x[..., self.groups.index(g)]).all()]
            sub = x[..., [self.groups.index(g) for g in keep]]
            out["curves"][est] = curves(sub, tuple(keep))
            if est != "patching":  # restoration curves are already cumulative over the layers below
                out["cumulative"][est] = curves(sub, tuple(keep), cumulative=True)
            i, j = self.groups.index(numerator), self.groups.index(denominator)
            if int(estimated(x, i, j).sum()) >= 2:
                r = self.imbalance(est, numerator, denominator, n_boot=n_boot)
                out["imbalance_ratio"][est], out["overall"][est] = r.per_layer.tolist(), r.to_json()
            else:  # too few estimates for an interval: say so in coverage, keep the run
                out["imbalance_ratio"][est] = [None] * x.shape[1]
                out["overall"][est] = group_imbalance(x, self.groups, POOL[est], numerator, denominator)
            out["overall"][est]["coverage"] = coverage(
                x, self.components, i, j, (numerator, denominator), ids, removal=est in REMOVAL_ESTIMATORS
            )
            if est in REMOVAL_ESTIMATORS:  # the samples whose removal changed no input count as 0
                keep = torch.nonzero(estimated(x, i, j)).flatten()
                out["overall"][est].update(identical_donor(self.components, keep, (denominator, numerator)))
            out["n"] = int(x.shape[0])
        if self.dla_decomposition():
            out["dla_decomposition"] = self.dla_decomposition()
        if "decomposition" in self.per_sample and "decomposition.attn" in self.components:
            out["decomposition"] = decomposition_json(self.components, self.groups, PATCHED_GROUPS)
        if categories is not None:
            out["by_category"] = by_category(
                self.per_sample,
                self.components,
                list(categories),
                self.groups,
                POOL,
                numerator=numerator,
                denominator=denominator,
                n_boot=n_boot,
            )
        return out


def modality_contributions(
    m,
    inputs,
    answer: torch.Tensor,
    counterfactual: torch.Tensor,
    *,
    estimators: Sequence[str] = ESTIMATORS,
    seed: int = 0,
    corruption: Corruption = "resample",
    donors: Mapping[str, tuple] | None = None,
    noise_scale: float = 3.0,
) -> Contributions:
    """Contributions of every token group per layer for one batch, from each estimator.

    Args:
        m: a :class:`~mech.MechModel` whose images are decoder tokens.
        inputs: the complete (clean) inputs ``[batch, pos]``.
        answer, counterfactual: LongTensor ``[batch]``: the logit difference answer − counterfactual
            is what ``patching`` and ``dla`` attribute. ``mech contrib`` passes the model's own
            decision (:func:`mech.prepare.targets.decision_tokens`: top option vs runner-up), so that a
            modality's contribution is its support for the answer the model gives.
        estimators: any of ``("attention", "patching", "dla", "decomposition")``.
        corruption: how ``patching`` removes a group: ``"resample"`` (default; the group's embeddings
            are those of a donor sample, :func:`mech.conditions.resample_features`) or ``"noise"``
            (Gaussian noise of ``noise_scale`` × the group's embedding std, seeded by ``seed``).
        donors: for ``"resample"``: group -> ``(donor_inputs, rows)`` as
            the first two items of :func:`mech.curves.donors.donor_batch` (``mech contrib`` pairs donors
            over the whole data set); default: other rows of this batch with as many positions of the group
            (:func:`mech.curves.donors.batch_donors`). A donor with another number of the group's positions
            (a text donor) is repeated or truncated (:func:`mech.splice.splice_rows`). Rows without a donor
            get NaN. ``decomposition`` removes groups the same way (resample or noise).

    Returns:
        :class:`Contributions` with ``[batch, layer, group]`` per estimator. With resample ablation
        (patching or decomposition), ``components["same.<group>"]`` ``[batch]`` is 1.0 where the donor's
        group is identical to the row's own (the removal changes no input). With ``decomposition``,
        ``components["decomposition.attn"|"decomposition.mlp"]`` ``[batch, layer, group]``,
        ``"decomposition.embed"`` ``[batch, group]`` and ``"decomposition.decision"|"rest"|"removed"|
        "interaction"`` ``[batch]`` (:class:`mech.curves.decomposition.Decomposition`); its per-sample
        curve is attn + mlp per layer, the embedding's share added to layer 0.

    Raises:
        ConfigError: unknown estimator or corruption (the message lists them).
        UnsupportedArchitectureError: cross-attention family.
    """
    from mech.measure.attention import attention_mass
    from mech.conditions import corrupt_features, injects_visual, resample_features
    from mech.curves.donors import batch_donors
    from mech.curves.decomposition import noise_removals, resample_removals
    from mech.measure.patching import activation_patching

    bad = [e for e in estimators if e not in ESTIMATORS]
    if bad:
        raise ConfigError(f"unknown estimators {bad}; allowed: {', '.join(ESTIMATORS)}")
    if corruption not in CORRUPTIONS:
        raise ConfigError(f"corruption={corruption!r}; allowed: {', '.join(CORRUPTIONS)}")
    m.require_decoder_sequence("modality contributions")
    inputs = m.inputs(inputs)
    out: dict[str, torch.Tensor] = {}
    components: dict[str, torch.Tensor] = {}
    if "dla" in estimators:  # one forward serves both: DLA records the answer row's mass as well
        d = direct_logit_attribution(m, inputs, answer, counterfactual)
        out["dla"] = d.attn.float().cpu()
        components = {
            "dla.mlp": d.mlp.sum(1).float().cpu(),
            "dla.logit_diff": d.logit_diff.float().cpu(),
            "dla.other": (d.embed + d.attn_bias.sum(1) + d.unembed_bias).float().cpu(),
        }
        if "attention" in estimators:
            out["attention"] = d.mass.mean(dim=2).float().cpu()
    elif "attention" in estimators:
        out["attention"] = attention_mass(m, inputs, query="last").mass.mean(dim=2).float().cpu()
    batch = inputs["input_ids"].shape[0]
    removals = {}
    if "decomposition" in estimators or ("patching" in estimators and corruption == "resample"):
        removals = (
            resample_removals(m, inputs, PATCHED_GROUPS, donors, seed=seed, fit=True)
            if corruption == "resample"
            else noise_removals(m, inputs, PATCHED_GROUPS, seed=seed, noise_scale=noise_scale)
        )
        for g in PATCHED_GROUPS:  # every key in every batch, so that batches concatenate
            rm = removals.get(g)
            components[f"same.{g}"] = (rm.same & rm.rows).float() if rm is not None else torch.zeros(batch)
    if "decomposition" in estimators:
        out["decomposition"], parts = _decomposition(m, inputs, answer, counterfactual, removals)
        components.update(parts)
    if "patching" in estimators:
        curve = torch.full((batch, m.arch.n_layers, len(GROUPS)), float("nan"))
        for g in PATCHED_GROUPS:
            if not bool(inputs.groups.mask(g).any()):
                continue
            rows = torch.ones(batch, dtype=torch.bool)
            if corruption == "resample":  # the removal built above: its donor pass is not run again
                rows = removals[g].rows
                if not bool(rows.any()):
                    continue

                def corrupted(rm=removals[g]):
                    return rm.applied(m, inputs)
            else:

                def corrupted(g=g):
                    return corrupt_features(
                        m, inputs, "visual_noise", groups=(g,), seed=seed, noise_scale=noise_scale
                    )

            res = activation_patching(
                m,
                inputs,
                inputs,
                site="resid_pre",
                positions=(g,),
                metric="logit_diff",
                answer=answer,
                counterfactual=counterfactual,
                normalize=False,
                corrupted_context=corrupted,
                seed=seed,
            )
            restored = (res.patched["resid_pre"][:, 0, :] - res.corrupted_metric[None, :]).T.float().cpu()
            if (
                injects_visual(m, (g,)) and res.layers[0] == 0
            ):  # the image also enters after early layers, which
                # restoring resid_pre_0 leaves resampled: layer 0 is the total effect clean − corrupted itself
                restored[:, 0] = (res.clean_metric - res.corrupted_metric).float().cpu()
            restored[~rows.cpu()] = float("nan")  # [batch, layer]
            curve[:, res.layers, GROUPS.index(g)] = restored
        out["patching"] = curve
    return Contributions({e: out[e] for e in ESTIMATORS if e in out}, GROUPS, components=components)


def _decomposition(
    m, inputs, answer, counterfactual, removals
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The decomposition on the group axis of :data:`GROUPS` (NaN for groups that are no player):
    ``([batch, layer, group], components)``."""
    from mech.curves.decomposition import decompose

    batch, L, G = inputs["input_ids"].shape[0], m.arch.n_layers, len(GROUPS)
    attn, mlp = torch.full((batch, L, G), float("nan")), torch.full((batch, L, G), float("nan"))
    embed = torch.full((batch, G), float("nan"))
    parts = {}
    if removals:
        d = decompose(m, inputs, answer, counterfactual, removals)
        for k, g in enumerate(d.players):
            attn[..., GROUPS.index(g)], mlp[..., GROUPS.index(g)] = d.attn[..., k], d.mlp[..., k]
            embed[:, GROUPS.index(g)] = d.embed[:, k]
        parts = {
            f"decomposition.{k}": getattr(d, k).float()
            for k in ("decision", "rest", "removed", "interaction")
        }
    else:
        parts = {
            f"decomposition.{k}": torch.full((batch,), float("nan"))
            for k in ("decision", "rest", "removed", "interaction")
        }
    per = attn + mlp
    per[:, 0] += embed
    return per, {"decomposition.attn": attn, "decomposition.mlp": mlp, "decomposition.embed": embed, **parts}
