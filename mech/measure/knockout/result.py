"""What :func:`mech.measure.knockout.attention_knockout` measured: :class:`KnockoutResult`, a frozen
:class:`mech.contract.Result` (named axes, ``concat`` over samples, ``save``/``load``, ``to_json``,
``to_frame``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from mech.contract import Result

__all__ = ["KnockoutResult"]


@dataclass(frozen=True, eq=False)
class KnockoutResult(Result):
    """What :func:`attention_knockout` measured (a frozen :class:`mech.contract.Result`: ``concat``
    over samples, ``save``/``load``, ``==``).

    Attributes:
        change: ``[window, edge]`` mean over the kept samples (``kept``) of the percent change of the
            answer probability, ``100 · (p_knocked − p_clean) / p_clean`` (Zhang et al. 2025); NaN when
            no sample is kept.
        change_per_sample: ``[window, edge, batch]`` the same per sample (every sample, kept or not).
        p_clean: ``[batch]`` answer probability of the clean run (softmax at the last position).
        p_knocked: ``[window, edge, batch]`` answer probability with the edges blocked.
        answer: ``[batch]`` answer token ids.
        layers: the window anchors (the centre layer for ``anchor="center"``, the first layer for
            ``"start"``), one per window.
        windows: ``[(first, stop), ...]`` layer range ``first <= l < stop`` of each window.
        edges: edge names (``"image->last"``; ``"image->last+text->last"`` for an edge set).
        n_source, n_target: ``[edge, batch]`` positions in the source and target groups (0 = the edge is
            empty in that row, e.g. ``video`` in an image model: nothing is blocked there).
        forward_equivalents: decoder-layer evaluations / (n_layers · batch), the clean run included.
        kept: ``[batch]`` BoolTensor, the samples averaged into ``change`` (all of them unless
            ``only_correct``; then the correctly answered ones).
        only_correct: whether ``change`` averages only correctly answered samples.
    """

    change: torch.Tensor
    change_per_sample: torch.Tensor
    p_clean: torch.Tensor
    p_knocked: torch.Tensor
    answer: torch.Tensor
    layers: list[int]
    windows: list[tuple[int, int]]
    edges: list[str]
    window: int
    anchor: str
    n_source: torch.Tensor
    n_target: torch.Tensor
    AXES = {
        "change": ("window", "edge"),
        "change_per_sample": ("window", "edge", "batch"),
        "p_clean": ("batch",),
        "p_knocked": ("window", "edge", "batch"),
        "answer": ("batch",),
        "n_source": ("edge", "batch"),
        "n_target": ("edge", "batch"),
        "kept": ("batch",),
    }
    LABELS = {"window": "layers", "edge": "edges"}
    COMBINE = {"forward_equivalents": "mean"}

    forward_equivalents: float
    kept: torch.Tensor | None = None
    only_correct: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kept is None:
            object.__setattr__(self, "kept", torch.ones(self.p_clean.shape[0], dtype=torch.bool))
        object.__setattr__(self, "windows", [tuple(w) for w in self.windows])
        super().__post_init__()

    def summarize(self) -> KnockoutResult:
        """``change`` recomputed as the mean of ``change_per_sample`` over the ``kept`` samples (NaN
        when none is kept), as :func:`attention_knockout` computes it."""
        per_sample, kept = self.change_per_sample, self.kept
        change = (
            per_sample[..., kept].mean(-1)
            if bool(kept.any())
            else torch.full(per_sample.shape[:2], torch.nan)
        )
        return dataclasses.replace(self, change=change)

    @property
    def n_kept(self) -> int:
        """Number of samples averaged into ``change``."""
        return int(self.kept.sum())

    def to_json(self) -> dict:
        """JSON-ready summary: ``change.{edge}`` per window (mean over the kept samples; ``null`` where
        none is kept), ``p_clean`` and ``p_knocked`` means over the kept samples, ``n`` and ``n_kept``,
        windows and metadata; ``note`` says so when no sample is kept."""
        k = self.kept
        nan = lambda xs: [None if x != x else x for x in xs]  # noqa: E731  (JSON has no NaN)
        out = {
            "metric": "percent change of the answer probability, 100*(p_knocked-p_clean)/p_clean",
            "window": self.window,
            "anchor": self.anchor,
            "layers": self.layers,
            "windows": [list(w) for w in self.windows],
            "edges": self.edges,
            "only_correct": self.only_correct,
            "n": int(k.numel()),
            "n_kept": self.n_kept,
            "kept": k.tolist(),
            "change": {e: nan(self.change[:, i].tolist()) for i, e in enumerate(self.edges)},
            "p_clean": nan([float(self.p_clean[k].mean())])[0],
            "p_knocked": {
                e: nan(self.p_knocked[:, i][:, k].mean(-1).tolist()) for i, e in enumerate(self.edges)
            },
            "answer": self.answer.tolist(),
            "forward_equivalents": self.forward_equivalents,
            **self.meta,
        }
        if not self.n_kept:
            out["note"] = (
                "no sample was kept (only_correct=True and no sample answered correctly); change is NaN"
            )
        return out

    def to_frame(self, per_sample: bool = False):
        """Tidy ``pandas.DataFrame`` (:func:`mech.frames.tidy`). ``per_sample=False``: one row per cell of
        ``change``, columns ``layer, first, stop, edge, change`` (``layer`` the window's anchor, ``first <=
        l < stop`` its layers, ``edge`` a Categorical in ``edges``' order). ``per_sample=True``: one row
        per sample, window and edge, columns ``sample, layer, first, stop, edge, change, p_knocked,
        p_clean, n_source, n_target`` (the per-sample tensors; ``p_clean`` repeated per window and edge)."""
        from mech.frames import tidy

        window = {
            "layer": self.layers,
            "first": [w[0] for w in self.windows],
            "stop": [w[1] for w in self.windows],
        }
        if not per_sample:
            return tidy(self.change, {"window": window, "edge": self.edges}, value="change")
        first = (2, 0, 1)  # [window, edge, batch] -> [batch, window, edge]
        return tidy(
            {
                "change": self.change_per_sample.permute(first),
                "p_knocked": self.p_knocked.permute(first),
                "p_clean": self.p_clean[:, None, None],
                "n_source": self.n_source.T[:, None, :],
                "n_target": self.n_target.T[:, None, :],
            },
            {"sample": None, "window": window, "edge": self.edges},
        )
