"""Modality contribution curves and the modality imbalance ratio Δ with bootstrap intervals.

Δ_modality = C(dominant) / C(underutilized)  — Zheng et al. 2025, *MLLMs are Deeply Affected by
Modality Bias*, eq. 2. mech reports it with a fixed orientation, Δ(text/image) = C(text) / C(image),
so that values above 1 mean text dominates, and names the dominant group beside it.

Every estimator supplies per-sample, per-layer contributions ``[sample, layer, group]``; how a
layer's contributions are pooled into one overall C(group) is the estimator's (``pool``):

* ``"mean"`` — mean over layers (attention mass: the share of attention, a fraction);
* ``"abs_sum"`` — sum over layers of absolute values (direct logit attribution, in logits);
* ``"first"`` — the signed value at layer 0 (patching: restoring every corrupted position of the
  group at the first layer recovers the group's total effect, in logit-difference units);
* ``"sum"`` — the signed sum over layers (the decomposition: its layers' contributions add up exactly
  to the group's share of the decision, in logits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from mech.errors import ConfigError, InputError

__all__ = ["EPS", "POOLS", "Imbalance", "Pool", "curves", "imbalance", "pool_layers", "ratio"]

Pool = Literal["mean", "abs_sum", "first", "sum"]
POOLS = ("mean", "abs_sum", "first", "sum")
EPS = 1e-8


def pool_layers(per_layer: torch.Tensor, pool: Pool) -> torch.Tensor:
    """Pool ``[sample, layer, group]`` into ``[sample, group]`` (see the module docstring).

    Raises:
        ConfigError: unknown ``pool`` (the message lists the allowed ones).
    """
    if pool == "mean":
        return per_layer.mean(dim=1)
    if pool == "abs_sum":
        return per_layer.abs().sum(dim=1)
    if pool == "first":
        return per_layer[:, 0]
    if pool == "sum":
        return per_layer.sum(dim=1)
    raise ConfigError(f"pool={pool!r}; allowed: {POOLS}")


def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``|num| / |den|`` elementwise, with the denominator floored at 1e-8."""
    return num.abs() / den.abs().clamp(min=EPS)


@dataclass(frozen=True)
class Imbalance:
    """Δ(numerator/denominator) of one estimator.

    Attributes:
        per_layer: ``[layer]`` Δ of the sample-mean contributions at each layer.
        delta: overall Δ = mean_s C_s(num) / mean_s C_s(den) after pooling layers.
        ci95: (low, high) percentile bootstrap interval of ``delta`` over samples.
        dominant / underutilized: group names ordered by overall contribution.
        contribution: overall C per group name (sample mean).
        n: samples used (those with both groups' contributions; e.g. patching without a donor is NaN).
    """

    per_layer: torch.Tensor
    delta: float
    ci95: tuple[float, float]
    dominant: str
    underutilized: str
    contribution: dict[str, float]
    n: int = 0

    def to_frame(self):
        """``per_layer`` as a tidy ``pandas.DataFrame``: columns ``layer, delta`` (:func:`mech.frames.tidy`)."""
        from mech.frames import tidy

        return tidy(self.per_layer, {"layer": None}, value="delta")

    def to_json(self) -> dict:
        return {
            "dominant": self.dominant,
            "underutilized": self.underutilized,
            "delta": self.delta,
            "ci95": list(self.ci95),
            "contribution": self.contribution,
            "n": self.n,
        }


def imbalance(
    per_layer: torch.Tensor,
    groups: tuple[str, ...],
    *,
    pool: Pool,
    numerator: str = "text",
    denominator: str = "image",
    n_boot: int = 1000,
    seed: int = 0,
) -> Imbalance:
    """Δ(numerator/denominator) per layer and overall with a 95% bootstrap interval.

    Args:
        per_layer: per-sample contributions ``[sample, layer, group]``.
        groups: names along the last axis.
        pool: how layers are pooled into one overall contribution (module docstring).
        numerator / denominator: the two groups compared (default text over image).
        n_boot: bootstrap resamples of the samples (percentile interval, seeded).

    Raises:
        InputError: not ``[sample, layer, group]``, fewer than 2 samples (with both groups estimated),
            or a group missing.
    """
    if per_layer.dim() != 3 or per_layer.shape[-1] != len(groups):
        raise InputError(
            f"contributions must be [sample, layer, group] with {len(groups)} groups; "
            f"got shape {tuple(per_layer.shape)}."
        )
    if per_layer.shape[0] < 2:
        raise InputError("a bootstrap interval needs at least 2 samples; pass more samples (--n).")
    for g in (numerator, denominator):
        if g not in groups:
            raise InputError(f"group {g!r} not among {groups}; pick numerator/denominator from them.")
    x = per_layer.double()
    i, j = groups.index(numerator), groups.index(denominator)
    keep = ~(torch.isnan(x[..., i]).any(1) | torch.isnan(x[..., j]).any(1))  # samples without an estimate
    x = x[keep]
    if x.shape[0] < 2:
        raise InputError(
            f"only {x.shape[0]} sample(s) have {numerator} and {denominator} contributions; "
            "a bootstrap interval needs at least 2 (pass more samples, or pair donors)."
        )
    mean_layers = x.mean(dim=0)  # [layer, group]
    per_layer_delta = ratio(mean_layers[:, i], mean_layers[:, j]).float()
    pooled = pool_layers(x, pool)  # [sample, group]
    c = pooled.mean(dim=0)
    delta = float(ratio(c[i], c[j]))
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, x.shape[0], (n_boot, x.shape[0]), generator=gen)
    boot = pooled[idx].mean(dim=1)  # [boot, group]
    draws = ratio(boot[:, i], boot[:, j])
    lo, hi = torch.quantile(draws, torch.tensor([0.025, 0.975], dtype=draws.dtype)).tolist()
    dominant, under = (numerator, denominator) if c[i].abs() >= c[j].abs() else (denominator, numerator)
    return Imbalance(
        per_layer_delta,
        delta,
        (float(lo), float(hi)),
        dominant,
        under,
        {g: float(c[k]) for k, g in enumerate(groups)},
        int(x.shape[0]),
    )


def curves(
    per_layer: torch.Tensor, groups: tuple[str, ...], cumulative: bool = False
) -> dict[str, list[float]]:
    """Sample-mean contribution per layer for each group (``cumulative``: running sum over layers)."""
    mean = per_layer.double().nanmean(dim=0)
    if cumulative:
        mean = mean.cumsum(dim=0)
    return {g: mean[:, k].tolist() for k, g in enumerate(groups)}
