"""How close attribution patching comes to exact activation patching: Pearson r per site
(:func:`compare_to_exact`), on the normalized effects, the per-sample metric changes or the patched metrics."""

from __future__ import annotations

import torch

from mech.errors import ConfigError
from mech.measure.patching import PatchingResult

__all__ = ["COMPARE_ON", "compare_to_exact", "pearson"]


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of the entries finite in both ``x`` and ``y`` (any equal shapes); NaN when
    fewer than two such entries or either has zero variance."""
    x, y = x.double().flatten(), y.double().flatten()
    keep = torch.isfinite(x) & torch.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 2:
        return float("nan")
    x, y = x - x.mean(), y - y.mean()
    den = (x.square().sum() * y.square().sum()).sqrt()
    return float((x * y).sum() / den) if den > 0 else float("nan")


COMPARE_ON = ("effect", "delta", "patched")


def compare_to_exact(atp: PatchingResult, exact: PatchingResult, on: str = "effect") -> dict[str, float]:
    """Pearson r between AtP and exact activation patching, per site and ``"overall"`` (all sites' entries).

    Args:
        atp: a :class:`mech.measure.patching.PatchingResult` of :func:`attribution_patching`.
        exact: :class:`mech.measure.patching.PatchingResult` of the same inputs, sites, positions and direction.
        on: what is correlated (:data:`COMPARE_ON`):

            * ``"effect"`` — the normalized effects ``[layer, group]`` of the batch means, the grid a
              researcher reads (Heimersheim & Nanda 2024, eq. 1);
            * ``"delta"`` — per-sample metric changes ``ΔM`` ``[layer, group, batch]`` (AtP's ``delta``
              against exact ``patched − target metric``): the per-sample fidelity;
            * ``"patched"`` — per-sample patched metrics; both contain the same unpatched target metric,
              whose spread across samples inflates r: prefer ``"delta"``.

    Raises:
        ConfigError: ``on`` unknown; no site in common; the two results' axes differ.
    """
    if on not in COMPARE_ON:
        raise ConfigError(f"on={on!r}; allowed: {', '.join(COMPARE_ON)}")
    if on == "delta":
        target = exact.corrupted_metric if exact.direction == "denoising" else exact.clean_metric
        a_all, e_all = atp.delta, {s: p - target for s, p in exact.patched.items()}
    else:
        a_all, e_all = getattr(atp, on), getattr(exact, on)
    common = [s for s in a_all if s in e_all]
    if not common:
        raise ConfigError(f"no site in common: AtP has {sorted(a_all)}, exact patching has {sorted(e_all)}")
    if (
        tuple(atp.groups) != tuple(exact.groups)
        or list(atp.layers) != list(exact.layers)
        or atp.direction != exact.direction
    ):
        raise ConfigError(
            "the AtP and exact results differ in groups, layers or direction; run both with the same "
            "positions, layers and direction"
        )
    out = {s: pearson(a_all[s], e_all[s]) for s in common}
    out["overall"] = pearson(
        torch.cat([a_all[s].flatten() for s in common]), torch.cat([e_all[s].flatten() for s in common])
    )
    return out
