"""Layerwise modality-contribution curves from three estimators, and the imbalance ratio Δ.

For each sample, layer and token group, a contribution C from:

* ``attention`` — attention mass from the answer position to the group's keys, mean over heads
  (:func:`mech.attention_mass`; a fraction of the attention, 0..1). Pooled over layers by mean.
* ``patching`` — for the group g ∈ {image, text}: its embeddings are corrupted with Gaussian noise
  (std = 3 × their std, Meng et al. 2022), then the clean ``resid_pre`` of g's positions at layer l
  is patched back (denoising). C_l(g) = patched − corrupted logit difference: how much of the
  decision still travels through g's positions at layer l (in logits). At layer 0 this is the
  group's total effect clean − corrupted (signed: positive when g supports the decision), the
  overall C(g).
* ``dla`` — modality-resolved direct logit attribution (:mod:`mech.contribution.dla`): the part of
  each layer's attention write at the answer position that comes from the group's values, in
  logits of the answer-vs-counterfactual direction. Pooled over layers by the sum of |.|.

Δ(text/image) = C(text) / C(image) per layer and overall, with bootstrap 95% intervals over samples
(:mod:`mech.contribution.ratio`; Zheng et al. 2025, eq. 2). The three estimators measure different
things (where attention goes; what the answer causally needs; what is written directly to the
logits): where they disagree, the report shows the disagreement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mech.contribution.dla import DLA, direct_logit_attribution
from mech.contribution.ratio import POOLS, Imbalance, Pool, curves, imbalance
from mech.errors import ConfigError
from mech.groups import GROUPS

ESTIMATORS = ("attention", "patching", "dla")
POOL: dict[str, Pool] = {"attention": "mean", "patching": "first", "dla": "abs_sum"}
PATCHED_GROUPS = ("image", "text")

__all__ = ["Contributions", "DLA", "ESTIMATORS", "Imbalance", "POOLS", "cmd_contrib", "curves",
           "direct_logit_attribution", "imbalance", "modality_contributions"]


@dataclass
class Contributions:
    """Per-sample contributions ``per_sample[estimator]`` ``[sample, layer, group]``.

    Groups a patching estimate does not cover (template, bos, ...) are NaN there.
    """

    per_sample: dict[str, torch.Tensor]
    groups: tuple[str, ...] = GROUPS
    meta: dict = field(default_factory=dict)

    @staticmethod
    def concat(parts: Sequence[Contributions]) -> Contributions:
        keys = parts[0].per_sample
        return Contributions({k: torch.cat([p.per_sample[k] for p in parts]) for k in keys}, parts[0].groups,
                             dict(parts[0].meta))

    def imbalance(self, estimator: str, numerator: str = "text", denominator: str = "image",
                  n_boot: int = 1000, seed: int = 0) -> Imbalance:
        """Δ(numerator/denominator) of one estimator (see :func:`mech.contribution.ratio.imbalance`)."""
        if estimator not in self.per_sample:
            raise ConfigError(f"estimator {estimator!r} was not computed; computed: {', '.join(self.per_sample)}")
        return imbalance(self.per_sample[estimator], self.groups, pool=POOL[estimator], numerator=numerator,
                         denominator=denominator, n_boot=n_boot, seed=seed)

    def to_json(self, numerator: str = "text", denominator: str = "image", n_boot: int = 1000) -> dict:
        """``contrib.json``: ``curves``, ``cumulative``, ``imbalance_ratio``, ``overall`` (DESIGN.md)."""
        out: dict = {"groups": list(self.groups), "pool": {e: POOL[e] for e in self.per_sample},
                     "ratio": f"{numerator}/{denominator}", "curves": {}, "cumulative": {},
                     "imbalance_ratio": {}, "overall": {}, "n": None, **self.meta}
        for est, x in self.per_sample.items():
            keep = [g for g in self.groups if not torch.isnan(x[..., self.groups.index(g)]).all()]
            sub = x[..., [self.groups.index(g) for g in keep]]
            out["curves"][est] = curves(sub, tuple(keep))
            if est != "patching":  # restoration curves are already cumulative over the layers below
                out["cumulative"][est] = curves(sub, tuple(keep), cumulative=True)
            r = self.imbalance(est, numerator, denominator, n_boot=n_boot)
            out["imbalance_ratio"][est] = r.per_layer.tolist()
            out["overall"][est] = r.to_json()
            out["n"] = int(x.shape[0])
        return out


def modality_contributions(m, inputs, answer: torch.Tensor, counterfactual: torch.Tensor, *,
                           estimators: Sequence[str] = ESTIMATORS, seed: int = 0,
                           noise_scale: float = 3.0) -> Contributions:
    """Contributions of every token group per layer for one batch, from each estimator.

    Args:
        m: a :class:`~mech.MechModel` whose images are decoder tokens.
        inputs: the complete (clean) inputs ``[batch, pos]``.
        answer, counterfactual: LongTensor ``[batch]``: the logit difference answer − counterfactual
            is what ``patching`` and ``dla`` attribute. ``mech contrib`` passes the model's own
            decision (:func:`mech.targets.decision_tokens`: top option vs runner-up), so that a
            modality's contribution is its support for the answer the model gives.
        estimators: any of ``("attention", "patching", "dla")``.
        seed, noise_scale: of the embedding noise of the ``patching`` estimator.

    Returns:
        :class:`Contributions` with ``[batch, layer, group]`` per estimator.

    Raises:
        ConfigError: unknown estimator (the message lists them).
        UnsupportedArchitectureError: cross-attention family.
    """
    from mech.attention import attention_mass
    from mech.conditions import corrupt_features
    from mech.patching import activation_patching

    bad = [e for e in estimators if e not in ESTIMATORS]
    if bad:
        raise ConfigError(f"unknown estimators {bad}; allowed: {', '.join(ESTIMATORS)}")
    m.require_decoder_sequence("modality contributions")
    inputs = m.inputs(inputs)
    out: dict[str, torch.Tensor] = {}
    if "dla" in estimators:  # one forward serves both: DLA records the answer row's mass as well
        d = direct_logit_attribution(m, inputs, answer, counterfactual)
        out["dla"] = d.attn.float().cpu()
        if "attention" in estimators:
            out["attention"] = d.mass.mean(dim=2).float().cpu()
    elif "attention" in estimators:
        out["attention"] = attention_mass(m, inputs, query="last").mass.mean(dim=2).float().cpu()
    if "patching" in estimators:
        batch = inputs["input_ids"].shape[0]
        curve = torch.full((batch, m.arch.n_layers, len(GROUPS)), float("nan"))
        for g in PATCHED_GROUPS:
            if not bool(inputs.groups.mask(g).any()):
                continue

            def noised(g=g):
                return corrupt_features(m, inputs, "visual_noise", groups=(g,), seed=seed, noise_scale=noise_scale)

            res = activation_patching(m, inputs, inputs, site="resid_pre", positions=(g,), metric="logit_diff",
                                      answer=answer, counterfactual=counterfactual, normalize=False,
                                      corrupted_context=noised, seed=seed)
            restored = res.patched["resid_pre"][:, 0, :] - res.corrupted_metric[None, :]  # [layer, batch]
            curve[:, res.layers, GROUPS.index(g)] = restored.T.float().cpu()
        out["patching"] = curve
    return Contributions({e: out[e] for e in ESTIMATORS if e in out}, GROUPS)


def cmd_contrib(args) -> dict:
    """``mech contrib``: see :mod:`mech.contribution.cli`."""
    from mech.contribution.cli import cmd_contrib as run

    return run(args)
