"""Layerwise modality-contribution curves from four estimators, and the imbalance ratio Δ.

For each sample, layer and token group, a contribution C from:

* ``attention`` — attention mass from the answer position to the group's keys, mean over heads
  (:func:`mech.attention_mass`; a fraction of the attention, 0..1). Pooled over layers by mean.
* ``patching`` — for the group g ∈ {image, text}: its content is removed by *resample ablation*
  (default; :func:`mech.conditions.resample_features`: g's embeddings become those of a donor
  sample of the same kind, :mod:`mech.curves.donors`; Zhang & Nanda 2024 §3 recommend this
  over Gaussian noise, which also destroys what the question asks) or by Gaussian noise
  (``removal="noise"``: std = 3 × their std, Meng et al. 2022); then the clean ``resid_pre`` of
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
logits): where they disagree, the report shows the disagreement. ``ContribRecord``
(:mod:`mech.curves.record`) is ``contrib.json`` as a typed, frozen record (what the report and the
figures read).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch

from mech.curves.contributions import ESTIMATORS, PATCHED_GROUPS, POOL, Contributions  # noqa: F401  (re-exported)
from mech.curves.ratio import POOLS, Imbalance, curves, imbalance
from mech.curves.record import ContribRecord
from mech.deprecation import renamed_attributes, renamed_keywords
from mech.errors import ConfigError
from mech.measure.dla import DLA, direct_logit_attribution
from mech.models.load import takes_model
from mech.prepare.groups import GROUPS
from mech.words import REMOVALS as REMOVALS_TABLE
from mech.words import names

#: how ``patching`` and ``decomposition`` remove a token group (:data:`mech.words.REMOVALS`)
REMOVALS = names(REMOVALS_TABLE)
#: ``CORRUPTIONS`` is the deprecated name of :data:`REMOVALS` (reading it warns)
__getattr__ = renamed_attributes(__name__, CORRUPTIONS="REMOVALS")

__all__ = [
    "DLA",
    "ESTIMATORS",
    "POOLS",
    "ContribRecord",
    "Contributions",
    "Imbalance",
    "curves",
    "direct_logit_attribution",
    "imbalance",
    "modality_contributions",
]


@renamed_keywords(corruption="removal")
@takes_model
def modality_contributions(
    m,
    inputs,
    answer: torch.Tensor,
    counterfactual: torch.Tensor,
    *,
    estimators: Sequence[str] = ESTIMATORS,
    seed: int = 0,
    removal: Literal["resample", "noise"] = "resample",
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
        removal: how ``patching`` removes a group: ``"resample"`` (default; the group's embeddings
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
        ConfigError: unknown estimator or removal (the message lists them).
        UnsupportedArchitectureError: cross-attention family.
    """
    from mech.conditions import feature_condition, injects_visual
    from mech.curves.decomposition import noise_removals, resample_removals
    from mech.measure.attention import attention_mass
    from mech.measure.patching import activation_patching

    bad = [e for e in estimators if e not in ESTIMATORS]
    if bad:
        raise ConfigError(f"unknown estimators {bad}; allowed: {', '.join(ESTIMATORS)}")
    if removal not in REMOVALS:
        raise ConfigError(f"removal={removal!r}; allowed: {', '.join(REMOVALS)}")
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
    if "decomposition" in estimators or ("patching" in estimators and removal == "resample"):
        removals = (
            resample_removals(m, inputs, PATCHED_GROUPS, donors, seed=seed, fit=True)
            if removal == "resample"
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
            if removal == "resample":  # the removal built above: its donor pass is not run again
                rows = removals[g].rows
                if not bool(rows.any()):
                    continue

                def corrupted(rm=removals[g]):
                    return rm.applied(m, inputs)
            else:

                def corrupted(g=g):
                    return feature_condition(
                        m, inputs, "visual_noise", groups=(g,), seed=seed, noise_scale=noise_scale
                    )

            res = activation_patching(
                m,
                inputs,
                inputs,
                sites="resid_pre",
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
