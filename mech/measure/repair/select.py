"""Choosing what to edit from an explanation, on the fit split.

The metric explained is the prior's margin at the answer position,
``M = logit(prior answer) − logit(gold answer)``, on the fit samples whose prior answer is wrong
(:mod:`mech.measure.repair.targets`). A unit is worth editing when the edit lowers ``M``.

Sources (``source=``):

* ``attribution``: attribution patching at the answer position (AtP; Nanda 2023; Kramár et al. 2024,
  eq. 3): the edit's effect on ``M`` is estimated to first order from one forward and backward,
  ``ΔM_u ≈ (a_u' − a_u) · ∂M/∂a_u`` with ``a_u`` the unit's activation at the answer position and
  ``a_u'`` its edited value (0 for ``zero``, the fit mean for ``mean``; for ``steer`` the residual moves by
  ``alpha · v_l``). ``reweight`` has no first-order form here: heads are ranked by their zero-ablation
  estimate (the heads that write the prior's margin), a proxy stated in every result.
  The score is ``−mean ΔM`` over the fit samples (larger = the edit removes more of the prior's margin).
* ``decomposition``: the per-component text contribution of
  :func:`mech.curves.decomposition.decompose` (Shapley values of image and text over each layer's
  attention and MLP write, resample removal) to ``M``; granularity ``layers`` only.
* ``list``: units given by the user (no ranking; ``k`` is their number).

The ranking is the model's own: a :class:`Selection` records the model it was ranked on, and applying
it to another model is possible but labelled (``transferred_from``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mech.errors import ConfigError, InputError
from mech.measure.patching.attribution import grad_run
from mech.measure.repair.edits import POINTS, check_units, hook_name, n_units

__all__ = [
    "SOURCES",
    "Selection",
    "attribution_scores",
    "decomposition_scores",
    "fit_batches",
    "from_list",
    "rank",
    "site_names",
]

SOURCES = ("attribution", "decomposition", "list")


@dataclass(frozen=True)
class Selection:
    """Units ranked by an explanation, best first.

    Attributes:
        granularity: ``neurons`` | ``heads`` | ``layers``; source: a :data:`SOURCES` entry.
        ranking: every ranked unit ``(layer, index)``, best first; scores: their scores (same order; for
            ``list`` all NaN).
        model: the spec of the model ranked on; n_fit: fit samples the ranking used.
        note: how the ranking was made (e.g. the ``reweight`` proxy).
    """

    granularity: str
    source: str
    ranking: tuple[tuple[int, int], ...]
    scores: tuple[float, ...]
    model: str
    n_fit: int
    note: str = ""

    def top(self, k: int) -> tuple[tuple[int, int], ...]:
        """The ``k`` best units.

        Raises:
            ConfigError: ``k`` < 1 or more than the ranked units.
        """
        if not 1 <= k <= len(self.ranking):
            raise ConfigError(f"k={k}; pass 1..{len(self.ranking)} (the units this selection ranked).")
        return self.ranking[:k]

    def to_json(self, limit: int = 200) -> dict:
        return {
            "granularity": self.granularity,
            "source": self.source,
            "model": self.model,
            "n_fit": self.n_fit,
            "note": self.note,
            "ranking": [list(u) for u in self.ranking[:limit]],
            "scores": [float(x) for x in self.scores[:limit]],
            "n_ranked": len(self.ranking),
        }

    @classmethod
    def from_json(cls, d: dict) -> Selection:
        """The selection written by :meth:`to_json` (with ``limit`` at least its length)."""
        return cls(
            d["granularity"],
            d["source"],
            tuple(tuple(u) for u in d["ranking"]),
            tuple(d["scores"]),
            d["model"],
            d["n_fit"],
            d.get("note", ""),
        )


def _at_answer(x: torch.Tensor, inputs) -> torch.Tensor:
    q = inputs.groups.last().to(x.device)
    return x[torch.arange(x.shape[0], device=x.device), q]


def site_names(m, granularity: str, kind: str) -> list[str]:
    L = m.arch.n_layers
    if kind == "steer":
        return [f"blocks.{l}.hook_resid_post" for l in range(L)]
    if granularity == "layers":
        return [hook_name("layers", l, c) for l in range(L) for c in (0, 1)]
    return [hook_name(granularity, l) for l in range(L)]


def attribution_scores(
    m, batches, granularity: str, kind: str, values: dict | None = None, alpha: float = 1.0
) -> torch.Tensor:
    """``[layer, unit]``: ``−ΔM`` summed over the fit samples (module docstring), AtP at the answer position.

    Args:
        batches: ``(inputs, prior_ids, gold_ids)`` per fit batch (LongTensors ``[batch]``), prior-wrong rows only.
        values: hook name -> fit means (``mean``) or directions (``steer``).

    Returns: the summed scores and, via the caller's count, the mean.
    """
    n_l, n_u = n_units(m, granularity)
    total = torch.zeros(n_l, n_u, dtype=torch.float64)
    names = site_names(m, granularity, kind)
    for inputs, prior, gold in batches:
        last, acts, leaves = grad_run(m, inputs, names, points=POINTS)
        r = torch.arange(last.shape[0], device=last.device)
        metric = last[r, prior.to(last.device)] - last[r, gold.to(last.device)]
        grads = dict(
            zip(names, torch.autograd.grad(metric.sum(), [leaves[n] for n in names], allow_unused=True))
        )
        for n in names:
            g = grads[n]
            if g is None:
                continue
            a, g = _at_answer(acts[n], inputs).double(), _at_answer(g, inputs).double()
            layer = int(n.split(".")[1])
            if kind == "steer":
                v = (values or {})[n].to(g.device).double()
                total[layer, 1] += -(alpha * g @ v).sum().cpu()
                total[layer, 0] = float("nan")  # steering acts on the layer's residual: one unit (l, 1)
                continue
            target = torch.zeros_like(a) if kind != "mean" else values[n].to(a.device).double().expand_as(a)
            delta = (target - a) * g  # [batch, units(, d)]
            per = delta.flatten(2).sum(-1) if delta.dim() > 2 else delta  # heads: sum over d_head
            if granularity == "layers":
                total[layer, 0 if ".hook_attn_out" in n else 1] += -per.sum().cpu()
            else:
                total[layer] += -per.sum(0).cpu()
    return total


def decomposition_scores(m, batches, seed: int = 0) -> torch.Tensor:
    """``[layer, 2]``: the text Shapley value of each layer's attention (0) and MLP (1) write to ``M``,
    summed over the fit samples (:func:`mech.curves.decomposition.decompose`, resample removal)."""
    from mech.curves.decomposition import decompose, resample_removals

    total = torch.zeros(m.arch.n_layers, 2, dtype=torch.float64)
    for inputs, prior, gold in batches:
        removals = resample_removals(m, inputs, ("image", "text"), seed=seed)
        if "text" not in removals:
            raise InputError("the decomposition found no text positions to remove in the fit batch.")
        d = decompose(m, inputs, prior, gold, removals)
        t = d.players.index("text")
        ok = d.rows
        total[:, 0] += d.attn[ok][:, :, t].double().sum(0)
        total[:, 1] += d.mlp[ok][:, :, t].double().sum(0)
    return total


def rank(
    scores: torch.Tensor, granularity: str, source: str, model: str, n_fit: int, note: str = ""
) -> Selection:
    """A :class:`Selection` of every unit of ``scores`` ``[layer, unit]`` that has a score (NaN: none), best
    (largest) first; ties by position."""
    flat = scores.flatten()
    order = sorted(
        (j for j in range(flat.numel()) if not torch.isnan(flat[j])), key=lambda j: (-float(flat[j]), j)
    )
    n_u = scores.shape[1]
    return Selection(
        granularity,
        source,
        tuple((j // n_u, j % n_u) for j in order),
        tuple(float(flat[j]) for j in order),
        model,
        n_fit,
        note,
    )


def from_list(m, granularity: str, units: Sequence[Sequence[int]]) -> Selection:
    """A :class:`Selection` of the user's ``units`` in their order (source ``list``).

    Raises:
        ConfigError: an empty list or a unit outside the model (:func:`~mech.measure.repair.edits.check_units`).
    """
    if not units:
        raise ConfigError("source='list' needs units: pass (layer, index) pairs.")
    u = check_units(m, granularity, units)
    return Selection(granularity, "list", u, tuple(float("nan") for _ in u), m.spec, 0)


def fit_batches(m, samples: Sequence[dict], cands: Sequence, prior_idx: Sequence[int], batch_size: int):
    """``([(inputs, prior token ids, gold token ids)], n)``: the complete-image inputs of the fit samples whose
    prior answer is a candidate and wrong (``prior_idx[i] >= 0`` and not the gold index), in batches."""
    from mech.conditions import condition_inputs

    out = []
    rows = [i for i, c in enumerate(cands) if prior_idx[i] >= 0 and prior_idx[i] != c.gold]
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        inputs = condition_inputs(m, [samples[r] for r in chunk], "complete")
        prior = torch.tensor([cands[r].ids[prior_idx[r]] for r in chunk])
        gold = torch.tensor([cands[r].ids[cands[r].gold] for r in chunk])
        out.append((inputs, prior, gold))
    return out, len(rows)
