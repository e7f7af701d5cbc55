"""Attention knockout (Geva et al. 2023, "Dissecting Recall of Factual Associations in Auto-Regressive
Language Models", §3; Zhang et al. 2025, "Cross-modal Information Flow in Multimodal Large Language
Models", §3): block the attention edges from one token group to another in a window of ``k``
consecutive decoder layers and measure the change of the answer probability.

``mech.measure.knockout.attention_knockout(m, inputs, edges=[("image", "last")], window=9)`` returns, per
window and edge, the **relative change of the answer probability in percent**
``100 · (p_knocked − p_clean) / p_clean`` at the answer (last) position, averaged over samples — the
quantity Zhang et al. plot ("relative diff": ``(new − base) · 100 / base`` per sample, then the mean;
their released code, ``InformationFlow.py``). The answer token defaults to the clean run's top token
(Zhang et al. use the model's first generated token).

Edges are ``(source, target)``: queries at ``target`` positions may no longer attend to keys at
``source`` positions. Sources: a token group (:data:`mech.prepare.groups.GROUPS`); targets: a token group or
``"last"`` (the answer position, ``groups.last()``). An edge set (a list of pairs) blocks the union.
The block is implemented in the attention-function registry (:mod:`.blocker`): the mask the model
built is edited in the window's layers only, and the model's own SDPA/eager code runs with it. A
position's edge to itself is never blocked (no query row becomes fully masked).

Windows (``anchor``): ``"start"`` → layers ``[l, l + k)``; ``"center"`` → ``[l − ⌊k/2⌋, l + ⌈k/2⌉)``
(Geva et al.; Zhang et al.'s code); both clipped to the model's layers.

Cost: one full forward of the clean run (:func:`mech.engines.prefix.capture`); each knocked run
starts at its window's first layer from the cached residual stream (layers below a window are
unchanged) and several (window, edge) runs are stacked along the batch axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mech.errors import ConfigError, InputError
from mech.prepare.groups import GROUPS
from mech.engines.edge_blocker import EdgeBlocker, blocking
from mech.engines.prefix import capture, run_from

__all__ = ["attention_knockout", "KnockoutResult", "EdgeBlocker", "blocking", "SOURCES", "TARGETS", "ANCHORS"]

SOURCES = GROUPS
TARGETS = GROUPS + ("last",)
ANCHORS = ("start", "center")

Edge = tuple[str, str]


@dataclass
class KnockoutResult:
    """What :func:`attention_knockout` measured.

    Attributes:
        change: ``[window, edge]`` mean over samples of the percent change of the answer probability,
            ``100 · (p_knocked − p_clean) / p_clean`` (Zhang et al. 2025).
        change_per_sample: ``[window, edge, batch]`` the same per sample.
        p_clean: ``[batch]`` answer probability of the clean run (softmax at the last position).
        p_knocked: ``[window, edge, batch]`` answer probability with the edges blocked.
        answer: ``[batch]`` answer token ids.
        layers: the window anchors (window start for ``anchor="start"``), one per window.
        windows: ``[(first, stop), ...]`` layer range ``first <= l < stop`` of each window.
        edges: edge names (``"image->last"``; ``"image->last+text->last"`` for an edge set).
        n_source, n_target: ``[edge, batch]`` positions in the source and target groups (0 = the edge is
            empty in that row, e.g. ``video`` in an image model: nothing is blocked there).
        forward_equivalents: decoder-layer evaluations / (n_layers · batch), the clean run included.
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
    forward_equivalents: float
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        """JSON-ready summary: ``change.{edge}`` per window, ``p_clean`` mean, windows and metadata."""
        return {
            "metric": "percent change of the answer probability, 100*(p_knocked-p_clean)/p_clean",
            "window": self.window, "anchor": self.anchor, "layers": self.layers,
            "windows": [list(w) for w in self.windows], "edges": self.edges,
            "change": {e: self.change[:, i].tolist() for i, e in enumerate(self.edges)},
            "p_clean": float(self.p_clean.mean()),
            "p_knocked": {e: self.p_knocked[:, i].mean(-1).tolist() for i, e in enumerate(self.edges)},
            "answer": self.answer.tolist(), "forward_equivalents": self.forward_equivalents, **self.meta,
        }

    def to_frame(self, per_sample: bool = False):
        """Tidy ``pandas.DataFrame`` (:func:`mech.frames.tidy`). ``per_sample=False``: one row per cell of
        ``change``, columns ``layer, first, stop, edge, change`` (``layer`` the window's anchor, ``first <=
        l < stop`` its layers, ``edge`` a Categorical in ``edges``' order). ``per_sample=True``: one row
        per sample, window and edge, columns ``sample, layer, first, stop, edge, change, p_knocked,
        p_clean, n_source, n_target`` (the per-sample tensors; ``p_clean`` repeated per window and edge)."""
        from mech.frames import tidy

        window = {"layer": self.layers, "first": [w[0] for w in self.windows], "stop": [w[1] for w in self.windows]}
        if not per_sample:
            return tidy(self.change, {"window": window, "edge": self.edges}, value="change")
        first = (2, 0, 1)  # [window, edge, batch] -> [batch, window, edge]
        return tidy({"change": self.change_per_sample.permute(first), "p_knocked": self.p_knocked.permute(first),
                     "p_clean": self.p_clean[:, None, None], "n_source": self.n_source.T[:, None, :],
                     "n_target": self.n_target.T[:, None, :]},
                    {"sample": None, "window": window, "edge": self.edges})

    def tensors(self) -> dict[str, torch.Tensor]:
        """safetensors content: ``change``, ``change_per_sample``, ``p_clean``, ``p_knocked``, ``answer``."""
        return {"change": self.change, "change_per_sample": self.change_per_sample, "p_clean": self.p_clean,
                "p_knocked": self.p_knocked, "answer": self.answer}


def _edge_sets(edges) -> list[list[Edge]]:
    """Normalise ``edges`` to a list of edge sets; validates the group names."""
    if isinstance(edges, tuple) and len(edges) == 2 and all(isinstance(e, str) for e in edges):
        edges = [edges]
    out = []
    for item in edges:
        if isinstance(item, str):
            raise ConfigError(f"an edge is a (source, target) pair, got the string {item!r}; e.g. ('image', 'last')")
        is_pair = isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item)
        group = [tuple(item)] if is_pair else [tuple(e) for e in item]
        for e in group:
            if len(e) != 2 or e[0] not in SOURCES or e[1] not in TARGETS:
                raise ConfigError(f"invalid edge {e!r}: source must be one of {', '.join(SOURCES)}; target one of "
                                  f"{', '.join(TARGETS)} ('last' = the answer position)")
        if not group:
            raise ConfigError("an empty edge set; give at least one (source, target) pair")
        out.append(group)
    if not out:
        raise ConfigError(f"no edges given; e.g. edges=[('image', 'last'), ('text', 'last')]; sources "
                          f"{', '.join(SOURCES)}, targets {', '.join(TARGETS)}")
    return out


def _positions(groups, name: str) -> torch.Tensor:
    """BoolTensor ``[batch, pos]`` of a source/target name."""
    if name == "last":
        out = torch.zeros(groups.labels.shape, dtype=torch.bool, device=groups.labels.device)
        out[torch.arange(out.shape[0], device=out.device), groups.last()] = True
        return out
    return groups.mask(name)


def _windows(starts: Sequence[int], k: int, n: int, anchor: str) -> list[tuple[int, int]]:
    if anchor == "start":
        return [(s, min(n, s + k)) for s in starts]
    return [(max(0, s - k // 2), min(n, s - (-k // 2))) for s in starts]


def attention_knockout(
    m,
    inputs,
    edges: Sequence = (("image", "last"),),
    window: int = 9,
    answer_ids: torch.Tensor | None = None,
    layers: Sequence[int] | None = None,
    *,
    anchor: str = "start",
    max_rows: int = 64,
) -> KnockoutResult:
    """Block ``source -> target`` attention edges in a window of ``window`` layers, for every window.

    Args:
        m: a :class:`~mech.MechModel` of a decoder-sequence family, with ``sdpa`` or ``eager`` attention.
        inputs: ``prepare`` output or raw processor output (``[batch, pos]``).
        edges: ``(source, target)`` pairs, each measured separately; an inner list is an edge set blocked
            together. Sources: :data:`SOURCES`; targets: :data:`TARGETS`.
        window: ``k``, the number of consecutive layers blocked (clipped at the first/last layer).
        answer_ids: LongTensor ``[batch]``; default: the clean run's top token at the last position.
        layers: window anchors (default every layer ``0 .. n_layers-1``).
        anchor: ``"start"`` (window ``[l, l+k)``) or ``"center"`` (``[l-⌊k/2⌋, l+⌈k/2⌉)``, Zhang et al.).
        max_rows: rows per stacked knocked batch (``batch`` × (window, edge) configurations).

    Returns:
        :class:`KnockoutResult` with ``change`` ``[window, edge]`` in percent.

    Raises:
        ConfigError: unknown group or anchor, ``window < 1``, layers out of range, flash attention.
        InputError: ``answer_ids`` of the wrong shape.
        UnsupportedArchitectureError: a cross-attention family (mllama).
    """
    m.require_decoder_sequence("attention_knockout")
    sets = _edge_sets(edges)
    if anchor not in ANCHORS:
        raise ConfigError(f"anchor={anchor!r}; allowed: {', '.join(ANCHORS)}")
    if int(window) < 1:
        raise ConfigError(f"window={window}; the window is a number of layers >= 1")
    n = m.arch.n_layers
    starts = list(range(n)) if layers is None else [int(l) for l in layers]
    bad = [l for l in starts if not 0 <= l < n]
    if bad:
        raise ConfigError(f"layers {bad} out of range; this model has layers 0..{n - 1}")
    inputs = m.inputs(inputs)
    groups = inputs.groups
    batch = groups.labels.shape[0]
    wins = _windows(starts, int(window), n, anchor)

    cap = capture(m, inputs)
    if answer_ids is None:
        answer = cap.logits.argmax(-1).cpu()
    else:
        from mech.measure.patching.metrics import check_token_ids

        check_token_ids(batch, cap.logits.shape[-1], answer_ids=answer_ids)
        answer = torch.as_tensor(answer_ids).long().cpu()
    p_clean = cap.logits.softmax(-1).cpu()[torch.arange(batch), answer]

    masks = [[(_positions(groups, s), _positions(groups, t)) for s, t in group] for group in sets]
    width = max(len(g) for g in masks)
    configs = [(wi, ei) for wi in range(len(wins)) for ei in range(len(sets))]
    p_knocked = torch.empty(len(wins), len(sets), batch)
    per = max(1, max_rows // batch)
    for i in range(0, len(configs), per):
        chunk = configs[i:i + per]
        rows = torch.arange(batch).repeat(len(chunk))
        pairs = []
        for j in range(width):
            src = torch.cat([masks[e][j][0] if j < len(masks[e]) else torch.zeros_like(masks[e][0][0])
                             for _, e in chunk])
            tgt = torch.cat([masks[e][j][1] if j < len(masks[e]) else torch.zeros_like(masks[e][0][1])
                             for _, e in chunk])
            pairs.append((src, tgt))
        active = torch.zeros(len(rows), n, dtype=torch.bool)
        for k, (w, _) in enumerate(chunk):
            lo, hi = wins[w]
            active[k * batch:(k + 1) * batch, lo:hi] = True
        start = min(wins[w][0] for w, _ in chunk)
        hidden = cap.resid[start][rows.to(cap.resid[start].device)]
        with torch.no_grad(), blocking(m, pairs, active):
            logits = run_from(m, cap, start, hidden, rows)
        p = logits.softmax(-1).cpu()[torch.arange(len(rows)), answer[rows]]
        for k, (w, e) in enumerate(chunk):
            p_knocked[w, e] = p[k * batch:(k + 1) * batch]

    per_sample = 100.0 * (p_knocked - p_clean) / p_clean
    names = ["+".join(f"{s}->{t}" for s, t in group) for group in sets]
    n_src = torch.stack([sum(s.sum(-1) for s, _ in g).cpu() for g in masks])
    n_tgt = torch.stack([sum(t.sum(-1) for _, t in g).cpu() for g in masks])
    fe = 1.0 + cap.layer_evals / (n * batch)
    return KnockoutResult(per_sample.mean(-1), per_sample, p_clean, p_knocked, answer, starts, wins, names,
                          int(window), anchor, n_src, n_tgt, fe)
