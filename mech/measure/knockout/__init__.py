"""Attention knockout (Geva et al. 2023, "Dissecting Recall of Factual Associations in Auto-Regressive
Language Models", §3; Zhang et al. 2025, "Cross-modal Information Flow in Multimodal Large Language
Models", §3): block the attention edges from one token group to another in a window of ``k``
consecutive decoder layers and measure the change of the answer probability.

``mech.measure.knockout.attention_knockout(m, inputs, edges=[("image", "last")], window=9)`` returns, per
window and edge, the **relative change of the answer probability in percent**
``100 · (p_knocked − p_clean) / p_clean`` at the answer (last) position, averaged over samples — the
quantity Zhang et al. plot ("relative diff": ``(new − base) · 100 / base`` per sample, then the mean;
their released code, ``InformationFlow.py``). The answer token defaults to the clean run's top token,
which is Zhang et al.'s "first generated token" under their greedy decoding.

Conventions, with the paper each follows (docs/knockout.md):

* **Window** (``anchor``): ``"center"`` (default) → layers ``[l − ⌊k/2⌋, l + ⌈k/2⌉)``, Zhang et al.'s
  code (``range(max(0, layer - window // 2), min(n, layer - (-window // 2)))``) and Geva et al.;
  ``"start"`` → ``[l, l + k)``. Both clipped to the model's layers.
* **Samples averaged** (``only_correct``): False (default) averages every sample; True averages only
  the correctly answered ones, as Zhang et al.'s code does (it skips a sample whose answer is wrong
  before any knockout). Correct means the clean run's top token equals the gold answer token
  (``gold_ids``), or a judgement passed as ``correct``.
* **Edges** are ``(source, target)``: queries at ``target`` positions may no longer attend to keys at
  ``source`` positions. Sources and targets: a token group (:data:`mech.prepare.groups.GROUPS`) or
  ``"last"`` (the answer position, ``groups.last()``). An edge set (a list of pairs) blocks the union.
  A position's own key is kept for group sources (Geva et al.: edges from *other* positions), so
  ``text -> text`` keeps self-attention; the source ``"last"`` blocks the answer position's key, its
  own included, so ``("last", "last")`` is Zhang et al.'s ``Last->Last``: the answer position's query
  loses exactly its own key and keeps every other one.

The block is implemented in the attention-function registry (:mod:`mech.engines.edge_blocker`): the
mask the model built is edited in the window's layers only, and the model's own SDPA/eager code runs
with it.

Cost: one full forward of the clean run (:func:`mech.engines.prefix.capture`); each knocked run
starts at its window's first layer from the cached residual stream (layers below a window are
unchanged) and several (window, edge) runs are stacked along the batch axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mech.deprecation import renamed_keywords
from mech.engines.edge_blocker import EdgeBlocker, blocking
from mech.engines.prefix import capture, run_from
from mech.errors import ConfigError, InputError
from mech.measure.knockout.record import KnockoutRecord
from mech.measure.knockout.result import KnockoutResult
from mech.models.load import takes_model
from mech.prepare.groups import GROUPS

__all__ = [
    "ANCHORS",
    "SOURCES",
    "TARGETS",
    "EdgeBlocker",
    "KnockoutRecord",
    "KnockoutResult",
    "attention_knockout",
    "blocking",
]

SOURCES = GROUPS + ("last",)
TARGETS = GROUPS + ("last",)
ANCHORS = ("center", "start")

Edge = tuple[str, str]


def _edge_sets(edges) -> list[list[Edge]]:
    """Normalise ``edges`` to a list of edge sets; validates the group names."""
    if isinstance(edges, tuple) and len(edges) == 2 and all(isinstance(e, str) for e in edges):
        edges = [edges]
    out = []
    for item in edges:
        if isinstance(item, str):
            raise ConfigError(
                f"an edge is a (source, target) pair, got the string {item!r}; e.g. ('image', 'last')"
            )
        is_pair = isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item)
        group = [tuple(item)] if is_pair else [tuple(e) for e in item]
        for e in group:
            if len(e) != 2 or e[0] not in SOURCES or e[1] not in TARGETS:
                raise ConfigError(
                    f"invalid edge {e!r}: source must be one of {', '.join(SOURCES)}; target one of "
                    f"{', '.join(TARGETS)} ('last' = the answer position)"
                )
        if not group:
            raise ConfigError("an empty edge set; give at least one (source, target) pair")
        out.append(group)
    if not out:
        raise ConfigError(
            f"no edges given; e.g. edges=[('image', 'last'), ('text', 'last')]; sources "
            f"{', '.join(SOURCES)}, targets {', '.join(TARGETS)}"
        )
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


NEEDS_GOLD = (
    "only_correct=True needs the gold answers: pass gold_ids (LongTensor [batch], the gold answer's "
    "first token, e.g. mech.prepare.targets.answer_tokens(m, samples, logits)[0]) or correct (BoolTensor "
    "[batch]); or use only_correct=False to average every sample."
)


def _kept(only_correct: bool, gold_ids, correct, top: torch.Tensor, vocab: int) -> torch.Tensor:
    """BoolTensor ``[batch]``: the samples averaged into ``change``."""
    batch = top.shape[0]
    if not only_correct:
        return torch.ones(batch, dtype=torch.bool)
    if correct is not None:
        correct = torch.as_tensor(correct).cpu()
        if correct.dtype != torch.bool or tuple(correct.shape) != (batch,):
            raise InputError(
                f"correct must be a BoolTensor [batch] = [{batch}]; got {correct.dtype} "
                f"{tuple(correct.shape)}."
            )
        return correct
    if gold_ids is None:
        raise ConfigError(NEEDS_GOLD)
    from mech.measure.patching.metrics import check_token_ids

    check_token_ids(batch, vocab, gold_ids=gold_ids)
    return top == torch.as_tensor(gold_ids).long().cpu()


def _check_last_row(groups, sets) -> None:
    """Refuse an edge set that hides every key from the answer position (its row would be fully masked).

    Only the answer position can lose its own key (source ``"last"``), so only its row can empty."""
    last = groups.last()
    rows = torch.arange(len(last), device=last.device)
    pos = torch.arange(groups.labels.shape[1], device=last.device)
    visible = groups.valid & (pos[None, :] <= last[:, None])
    for group in sets:
        hidden = torch.zeros_like(visible)
        for s, t in group:
            if bool(_positions(groups, t)[rows, last].any()):
                src = _positions(groups, s) & _positions(groups, t)[rows, last][:, None]
                if s != "last":
                    src[rows, last] = False
                hidden |= src
        full = (visible & ~hidden).sum(-1) == 0
        if bool(full.any()):
            name = "+".join(f"{s}->{t}" for s, t in group)
            raise ConfigError(
                f"the edge set {name!r} hides every key from the answer position in rows "
                f"{full.nonzero().flatten().tolist()}, so its attention row would be empty; "
                "drop one of its edges (e.g. keep 'bos' or 'last' visible)."
            )


@renamed_keywords(answer_ids="answer")
@takes_model
def attention_knockout(
    m,
    inputs,
    edges: Sequence = (("image", "last"),),
    window: int = 9,
    answer: torch.Tensor | None = None,
    layers: Sequence[int] | None = None,
    *,
    anchor: str = "center",
    only_correct: bool = False,
    gold_ids: torch.Tensor | None = None,
    correct: torch.Tensor | None = None,
    max_rows: int = 64,
) -> KnockoutResult:
    """Block ``source -> target`` attention edges in a window of ``window`` layers, for every window.

    Args:
        m: a :class:`~mech.MechModel` of a decoder-sequence family, with ``sdpa`` or ``eager`` attention.
        inputs: ``prepare`` output or raw processor output (``[batch, pos]``).
        edges: ``(source, target)`` pairs, each measured separately; an inner list is an edge set blocked
            together. Sources: :data:`SOURCES`; targets: :data:`TARGETS` (both: a token group or ``"last"``,
            the answer position). ``("last", "last")`` blocks the answer position's own key (Zhang et al.).
        window: ``k``, the number of consecutive layers blocked (clipped at the first/last layer); 9 as in
            Zhang et al.'s code.
        answer: LongTensor ``[batch]``, the token whose probability is measured; default: the clean
            run's top token at the last position (Zhang et al.: the first generated token, greedy).
            ``answer_ids=`` is its deprecated spelling (it warns).
        layers: window anchors (default every layer ``0 .. n_layers-1``).
        anchor: ``"center"`` (default; window ``[l-⌊k/2⌋, l+⌈k/2⌉)``, Zhang et al.'s code and Geva et al.) or
            ``"start"`` (``[l, l+k)``).
        only_correct: False (default): ``change`` averages every sample. True: only the correctly answered
            samples, as in Zhang et al.'s code; correct = the clean top token equals ``gold_ids`` (or
            ``correct``). ``kept`` and ``n_kept`` report which and how many; with none, ``change`` is NaN.
        gold_ids: LongTensor ``[batch]``, the gold answer's (first) token, e.g.
            ``mech.prepare.targets.answer_tokens(m, samples, logits)[0]``; used only with ``only_correct``.
        correct: BoolTensor ``[batch]``, a correctness judgement made elsewhere (Zhang et al. compare the
            lower-cased greedy generation with the gold answer string); overrides ``gold_ids``.
        max_rows: rows per stacked knocked batch (``batch`` × (window, edge) configurations).

    Returns:
        :class:`KnockoutResult` with ``change`` ``[window, edge]`` in percent.

    Raises:
        ConfigError: unknown group or anchor, ``window < 1``, layers out of range, flash attention;
            ``only_correct=True`` without ``gold_ids`` or ``correct``; an edge set that hides every key
            from the answer position.
        InputError: ``answer`` / ``gold_ids`` of the wrong shape or out of the vocabulary; ``correct``
            not a BoolTensor ``[batch]``.
        UnsupportedArchitectureError: a cross-attention family (mllama).
    """
    m.require_decoder_sequence("attention_knockout")
    sets = _edge_sets(edges)
    if anchor not in ANCHORS:
        raise ConfigError(f"anchor={anchor!r}; allowed: {', '.join(ANCHORS)}")
    if int(window) < 1:
        raise ConfigError(f"window={window}; the window is a number of layers >= 1")
    if only_correct and gold_ids is None and correct is None:
        raise ConfigError(NEEDS_GOLD)
    n = m.arch.n_layers
    starts = list(range(n)) if layers is None else [int(l) for l in layers]
    bad = [l for l in starts if not 0 <= l < n]
    if bad:
        raise ConfigError(f"layers {bad} out of range; this model has layers 0..{n - 1}")
    inputs = m.inputs(inputs)
    groups = inputs.groups
    batch = groups.labels.shape[0]
    _check_last_row(groups, sets)
    wins = _windows(starts, int(window), n, anchor)

    cap = capture(m, inputs)
    top = cap.logits.argmax(-1).cpu()
    if answer is None:
        answer = top
    else:
        from mech.measure.patching.metrics import check_token_ids

        check_token_ids(batch, cap.logits.shape[-1], answer=answer)
        answer = torch.as_tensor(answer).long().cpu()
    kept = _kept(bool(only_correct), gold_ids, correct, top, cap.logits.shape[-1])
    p_clean = cap.logits.softmax(-1).cpu()[torch.arange(batch), answer]

    # per edge set: [(source mask, target mask, own-key flag)]; only the source "last" blocks a query's own key
    masks = [
        [(_positions(groups, s), _positions(groups, t), s == "last") for s, t in group] for group in sets
    ]
    width = max(len(g) for g in masks)
    configs = [(wi, ei) for wi in range(len(wins)) for ei in range(len(sets))]
    p_knocked = torch.empty(len(wins), len(sets), batch)
    per = max(1, max_rows // batch)
    for i in range(0, len(configs), per):
        chunk = configs[i : i + per]
        rows = torch.arange(batch).repeat(len(chunk))
        pairs = []
        for j in range(width):
            parts = [
                masks[e][j]
                if j < len(masks[e])
                else (torch.zeros_like(masks[e][0][0]), torch.zeros_like(masks[e][0][1]), False)
                for _, e in chunk
            ]
            own = torch.tensor([flag for _, _, flag in parts], dtype=torch.bool).repeat_interleave(batch)
            pairs.append((torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), own))
        active = torch.zeros(len(rows), n, dtype=torch.bool)
        for k, (w, _) in enumerate(chunk):
            lo, hi = wins[w]
            active[k * batch : (k + 1) * batch, lo:hi] = True
        start = min(wins[w][0] for w, _ in chunk)
        hidden = cap.resid[start][rows.to(cap.resid[start].device)]
        with torch.no_grad(), blocking(m, pairs, active):
            logits = run_from(m, cap, start, hidden, rows)
        p = logits.softmax(-1).cpu()[torch.arange(len(rows)), answer[rows]]
        for k, (w, e) in enumerate(chunk):
            p_knocked[w, e] = p[k * batch : (k + 1) * batch]

    per_sample = 100.0 * (p_knocked - p_clean) / p_clean
    change = (
        per_sample[..., kept].mean(-1) if bool(kept.any()) else torch.full(per_sample.shape[:2], torch.nan)
    )
    names = ["+".join(f"{s}->{t}" for s, t in group) for group in sets]
    n_src = torch.stack([sum(s.sum(-1) for s, _, _ in g).cpu() for g in masks])
    n_tgt = torch.stack([sum(t.sum(-1) for _, t, _ in g).cpu() for g in masks])
    fe = 1.0 + cap.layer_evals / (n * batch)
    return KnockoutResult(
        change,
        per_sample,
        p_clean,
        p_knocked,
        answer,
        starts,
        wins,
        names,
        int(window),
        anchor,
        n_src,
        n_tgt,
        fe,
        kept=kept,
        only_correct=bool(only_correct),
    )
