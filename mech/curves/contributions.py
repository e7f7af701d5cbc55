"""The per-sample modality contributions of :func:`mech.curves.modality_contributions` and what they
give: curves per layer, the imbalance ratio Δ with intervals, ``contrib.json`` (:class:`Contributions`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mech.contract import Result
from mech.curves.ratio import Imbalance, Pool, curves, imbalance
from mech.errors import ConfigError
from mech.prepare.groups import GROUPS

__all__ = ["ESTIMATORS", "PATCHED_GROUPS", "POOL", "Contributions"]

ESTIMATORS = ("attention", "patching", "dla", "decomposition")
POOL: dict[str, Pool] = {"attention": "mean", "patching": "first", "dla": "abs_sum", "decomposition": "sum"}
PATCHED_GROUPS = ("image", "text")


@dataclass(frozen=True, eq=False)
class Contributions(Result):
    """Per-sample contributions ``per_sample[estimator]`` ``[sample, layer, group]`` (a frozen
    :class:`mech.contract.Result`: ``concat`` over samples, ``save``/``load``, ``==``).

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

    AXES = {"per_sample": ("batch", "layer", "group"), "components": ("batch", "...")}
    LABELS = {"group": "groups"}

    per_sample: dict[str, torch.Tensor]
    groups: tuple[str, ...] = GROUPS
    meta: dict = field(default_factory=dict)
    components: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", tuple(self.groups))
        super().__post_init__()

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

    def imbalance(
        self,
        estimator: str,
        numerator: str = "text",
        denominator: str = "image",
        n_boot: int = 1000,
        seed: int = 0,
    ) -> Imbalance:
        """Δ(numerator/denominator) of one estimator (see :func:`mech.curves.ratio.imbalance`)."""
        if estimator not in self.per_sample:
            raise ConfigError(
                f"estimator {estimator!r} was not computed; computed: {', '.join(self.per_sample)}"
            )
        return imbalance(
            self.per_sample[estimator],
            self.groups,
            pool=POOL[estimator],
            numerator=numerator,
            denominator=denominator,
            n_boot=n_boot,
            seed=seed,
        )

    def to_frame(self, per_sample: bool = True):
        """Tidy ``pandas.DataFrame`` (:func:`mech.frames.tidy`); ``estimator`` and ``group`` are Categoricals.

        ``per_sample=True``: one row per cell of every ``per_sample[estimator]``, columns ``estimator,
        sample, layer, group, contribution`` (NaN where an estimator does not cover a group or sample).
        ``per_sample=False``: the curves (sample means, NaN samples left out, as ``contrib.json``'s
        ``curves``), columns ``estimator, layer, group, contribution``.
        """
        from mech.frames import concat, tidy

        if per_sample:
            return concat(
                {
                    e: tidy(x, {"sample": None, "layer": None, "group": self.groups}, value="contribution")
                    for e, x in self.per_sample.items()
                },
                "estimator",
            )
        return concat(
            {
                e: tidy(x.double().nanmean(0), {"layer": None, "group": self.groups}, value="contribution")
                for e, x in self.per_sample.items()
            },
            "estimator",
        )

    def imbalance_frame(
        self, numerator: str = "text", denominator: str = "image", n_boot: int = 1000, seed: int = 0
    ):
        """Δ(numerator/denominator) per layer of every estimator (:meth:`imbalance`), as a tidy
        ``pandas.DataFrame`` with columns ``estimator, layer, delta``."""
        from mech.frames import concat

        return concat(
            {
                e: self.imbalance(e, numerator, denominator, n_boot=n_boot, seed=seed).to_frame()
                for e in self.per_sample
            },
            "estimator",
        )

    def to_json(
        self,
        numerator: str = "text",
        denominator: str = "image",
        n_boot: int = 1000,
        categories: Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
    ) -> dict:
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
