"""Which target position receives which source position, per row.

Same-length conditions (``white_image``, ``black_image``, ``noise_image``, ``visual_noise``,
``visual_mean``) align one to one: the clean and corrupted token groups must be identical, and
group ``g`` patches exactly the positions of ``g``.

``no_image`` and ``image_only`` change the sequence (no image tokens; a different question). There
positions are aligned explicitly (``align="group"``):

* ``last``: the last position of the target ↔ the last position of the source (the answer position);
* ``text``: the tokens present in both runs, as the longest common subsequence of the token ids of
  the two rows' text groups (all of them for ``no_image``, only the shared words for ``image_only``);
* ``image``/``video``/``audio``/``bos``/``template``: the k-th position of the group in the target ↔
  the k-th in the source, for k below the smaller count (none when one run lacks the group, e.g.
  image positions of a ``no_image`` run);
* ``all``: the union of the above.

The result of :func:`mech.activation_patching` records the pairs (``patched_positions``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mech.errors import ConfigError, InputError
from mech.prepare.groups import GROUPS, TokenGroups

__all__ = ["ALIGN", "GROUP_ALIGNED_CONDITIONS", "POSITION_GROUPS", "Alignment", "align", "check_same_groups"]

POSITION_GROUPS = GROUPS + ("last", "all")
ALIGN = ("strict", "group")
GROUP_ALIGNED_CONDITIONS = ("no_image", "image_only")


@dataclass
class Alignment:
    """Patched positions of one position group: per row, ``(target_positions, source_positions)``
    LongTensors of equal length (target = the run patched into, source = the run patched from)."""

    name: str
    pairs: list[tuple[torch.Tensor, torch.Tensor]]

    def count(self) -> int:
        return sum(len(t) for t, _ in self.pairs)

    def as_lists(self) -> list[list[list[int]]]:
        """Per row ``[[target, source], ...]`` (JSON-ready)."""
        return [[[int(a), int(b)] for a, b in zip(t.tolist(), s.tolist())] for t, s in self.pairs]


def check_same_groups(target: TokenGroups, source: TokenGroups) -> None:
    """Raises InputError when the two runs' token groups differ (the message names the first rows)."""
    if target.labels.shape != source.labels.shape:
        raise InputError(
            f"clean and corrupted inputs have different shapes {tuple(target.labels.shape)} vs "
            f"{tuple(source.labels.shape)}, so positions do not align one to one; for no_image / image_only "
            "pass align='group' (or condition=...), otherwise prepare both with the same samples and padding."
        )
    diff = (target.labels != source.labels).any(-1).nonzero().flatten().tolist()
    if diff:
        row = diff[0]
        pos = (target.labels[row] != source.labels[row]).nonzero().flatten().tolist()
        raise InputError(
            f"the token groups of the clean and corrupted inputs do not match in rows {diff[:10]} "
            f"(row {row}, positions {pos[:10]}); same-length patching needs identical groups. Pass "
            "the same samples in the same order under a same-length condition, or align='group' for "
            "no_image / image_only."
        )


def _lcs(a: list[int], b: list[int]) -> list[tuple[int, int]]:
    """Index pairs of a longest common subsequence of ``a`` and ``b`` (O(len(a)·len(b)))."""
    n, k = len(a), len(b)
    dp = [[0] * (k + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(k - 1, -1, -1):
            dp[i][j] = dp[i + 1][j + 1] + 1 if a[i] == b[j] else max(dp[i + 1][j], dp[i][j + 1])
    out, i, j = [], 0, 0
    while i < n and j < k:
        if a[i] == b[j]:
            out.append((i, j))
            i, j = i + 1, j + 1
        elif dp[i + 1][j] >= dp[i][j + 1]:
            i += 1
        else:
            j += 1
    return out


def _pairs_group(tg: TokenGroups, sg: TokenGroups, t_ids, s_ids, name: str, row: int):
    if name == "last":
        return torch.tensor([int(tg.last()[row])]), torch.tensor([int(sg.last()[row])])
    if name == "all":
        parts = [_pairs_group(tg, sg, t_ids, s_ids, g, row) for g in GROUPS]
        t = torch.cat([p[0] for p in parts] + [torch.tensor([int(tg.last()[row])])])
        s = torch.cat([p[1] for p in parts] + [torch.tensor([int(sg.last()[row])])])
        keep = torch.ones_like(t, dtype=torch.bool)
        keep[:-1] = t[:-1] != t[-1]  # the last position may already be in a group
        return t[keep], s[keep]
    tp, sp = tg.positions(name, row).cpu(), sg.positions(name, row).cpu()
    if name == "text":
        a, b = t_ids[row, tp].tolist(), s_ids[row, sp].tolist()
        hits = _lcs(a, b)
        return (tp[[i for i, _ in hits]], sp[[j for _, j in hits]]) if hits else (tp[:0], sp[:0])
    n = min(len(tp), len(sp))
    return tp[:n], sp[:n]


def align(
    target: TokenGroups,
    source: TokenGroups,
    positions,
    mode: str,
    target_ids: torch.Tensor | None = None,
    source_ids: torch.Tensor | None = None,
) -> list[Alignment]:
    """The alignments of ``positions``: a group name, a BoolTensor ``[batch, pos]``, or a list of them.

    Raises:
        ConfigError: unknown position group (the message lists them) or align mode.
        InputError: groups that differ under ``mode="strict"``; a mask of the wrong shape or one used with
            ``mode="group"``; different batch sizes.
    """
    if mode not in ALIGN:
        raise ConfigError(f"align={mode!r}; allowed: {', '.join(ALIGN)}")
    if target.labels.shape[0] != source.labels.shape[0]:
        raise InputError(
            f"clean and corrupted inputs have {source.labels.shape[0]} and {target.labels.shape[0]} "
            "rows (or the reverse); pass the same samples in the same order."
        )
    if mode == "strict":
        check_same_groups(target, source)
    items = [positions] if isinstance(positions, (str, torch.Tensor)) else list(positions)
    if not items:
        raise ConfigError(
            f"no positions given; valid: {', '.join(POSITION_GROUPS)} or a BoolTensor [batch, pos]"
        )
    for item in items:
        if isinstance(item, torch.Tensor):
            if mode != "strict":
                raise InputError(
                    "explicit position masks need same-length inputs (align='strict'); use group "
                    "names with align='group'."
                )
            if item.dtype != torch.bool or item.shape != target.labels.shape:
                raise InputError(
                    f"a positions mask must be a BoolTensor [batch, pos] = {tuple(target.labels.shape)}; "
                    f"got {item.dtype} {tuple(item.shape)}"
                )
    names = [p for p in items if not isinstance(p, torch.Tensor)]
    bad = [p for p in names if p not in POSITION_GROUPS]
    if bad:
        raise ConfigError(
            f"unknown position group(s) {bad}; valid: {', '.join(POSITION_GROUPS)} or a BoolTensor "
            "[batch, pos]"
        )
    out = []
    for i, name in enumerate(items):
        if isinstance(name, torch.Tensor):
            pairs = [(r.nonzero().flatten().cpu(),) * 2 for r in name]
            out.append(Alignment("custom" if len(items) == 1 else f"custom{i}", pairs))
            continue
        pairs = []
        for row in range(target.labels.shape[0]):
            if mode == "strict":
                if name == "last":
                    p = torch.tensor([int(target.last()[row])])
                elif name == "all":
                    p = target.valid[row].nonzero().flatten().cpu()
                else:
                    p = target.positions(name, row).cpu()
                pairs.append((p, p))
            else:
                if target_ids is None or source_ids is None:
                    raise InputError("align='group' needs the token ids of both runs")
                pairs.append(_pairs_group(target, source, target_ids.cpu(), source_ids.cpu(), name, row))
        out.append(Alignment(name, pairs))
    return out
