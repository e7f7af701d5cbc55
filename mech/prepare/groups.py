"""Token groups: a modality label for every position of a batch (docs/design.md, "Words, token groups and conditions").

Groups partition every (non-padding) position:

* ``image`` / ``video`` / ``audio`` — placeholder positions whose decoder input embedding is
  replaced by encoder features (ids from the family table);
* ``text`` — the user's words;
* ``template`` — chat-template, system, role and begin/end-marker tokens;
* ``bos`` — the first non-padding, non-modality position: the attention sink, kept apart so that
  it never inflates either modality (for prefix families such as PaliGemma, where the images come
  first, this is the ``<bos>`` after the images).

How ``text`` and ``template`` are told apart:

* inputs made by :meth:`mech.MechModel.prepare` know their prompts: a token is ``text`` when its
  characters overlap the prompt's span in the sequence (matched on ASCII letters, digits and
  punctuation, whitespace ignored, so BPE boundaries and leading-space markers do not matter);
  ``TokenGroups.text_source[row] == "prompt"``;
* raw processor outputs carry no prompt: tokens the tokenizer treats as special or added
  (``<|im_start|>``, ``<start_of_turn>``, ...) and the family's markers are ``template``, all
  others ``text``; ``text_source[row] == "special_tokens"``. Role words rendered as ordinary
  tokens ("USER", "assistant") then count as text: pass inputs from ``prepare`` for exact groups.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mech.errors import ConfigError, InputError

GROUPS: tuple[str, ...] = ("image", "video", "audio", "text", "template", "bos")
PAD = -1
_KEEP = re.compile(r"[^\x21-\x7e]")  # drop whitespace and non-ASCII before matching


@dataclass(frozen=True)
class TokenGroups:
    """Per-position group labels of a batch.

    Attributes:
        labels: LongTensor ``[batch, pos]``: index into ``names``; ``-1`` marks padding.
        names: group names along the group axis of every instrument's output.
        text_source: per row, ``"prompt"`` (text found by matching the prompt) or
            ``"special_tokens"`` (text = every non-special token).
    """

    labels: torch.Tensor
    names: tuple[str, ...] = GROUPS
    text_source: tuple[str, ...] = ()

    def index(self, name: str) -> int:
        """Position of group ``name`` along the group axis.

        Raises:
            ConfigError: unknown group; the message lists the valid ones.
        """
        if name not in self.names:
            raise ConfigError(f"unknown token group {name!r}; valid groups: {', '.join(self.names)}")
        return self.names.index(name)

    def mask(self, name: str) -> torch.Tensor:
        """BoolTensor ``[batch, pos]``: True where the position belongs to group ``name``."""
        return self.labels == self.index(name)

    @property
    def valid(self) -> torch.Tensor:
        """BoolTensor ``[batch, pos]``: True at non-padding positions."""
        return self.labels != PAD

    def one_hot(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``[batch, pos, group]`` indicator; padding rows are all zero."""
        idx = self.labels.clamp(min=0)
        out = torch.nn.functional.one_hot(idx, len(self.names)).to(dtype)
        return out * self.valid.unsqueeze(-1).to(dtype)

    def counts(self) -> torch.Tensor:
        """LongTensor ``[batch, group]``: number of positions in each group."""
        return self.one_hot(torch.long).sum(dim=1)

    def share(self) -> torch.Tensor:
        """FloatTensor ``[batch, group]``: fraction of non-padding positions in each group
        (the uniform-attention baseline of a mass curve)."""
        c = self.counts().float()
        return c / c.sum(dim=-1, keepdim=True).clamp(min=1)

    def last(self) -> torch.Tensor:
        """LongTensor ``[batch]``: the last non-padding position of each row (the answer position)."""
        pos = torch.arange(self.labels.shape[1], device=self.labels.device)
        return torch.where(self.valid, pos, -1).max(dim=1).values

    def positions(self, name: str, row: int) -> torch.Tensor:
        """LongTensor of the positions of group ``name`` in ``row``."""
        return self.mask(name)[row].nonzero().flatten()

    def select(self, rows: Sequence[int] | slice) -> TokenGroups:
        """The groups of a subset of rows."""
        idx = list(range(self.labels.shape[0]))[rows] if isinstance(rows, slice) else list(rows)
        src = tuple(self.text_source[i] for i in idx) if self.text_source else ()
        return TokenGroups(self.labels[idx], self.names, src)

    def to(self, device: torch.device | str) -> TokenGroups:
        return TokenGroups(self.labels.to(device), self.names, self.text_source)


def _special_ids(tokenizer: Any) -> set[int]:
    if tokenizer is None:
        return set()
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(int(i) for i in decoder)
    return ids


def _prompt_span(tokenizer: Any, ids: list[int], skip: set[int], prompt_segments: list[str]) -> list[int] | None:
    """Indices (into ``ids``) of tokens overlapping the prompt, or None if it cannot be found."""
    pieces, owner = [], []
    for i, tok in enumerate(ids):
        if tok in skip:
            continue
        piece = _KEEP.sub("", tokenizer.decode([tok], skip_special_tokens=False))
        pieces.append(piece)
        owner.extend([i] * len(piece))
    haystack = "".join(pieces)
    segments = [_KEEP.sub("", s) for s in prompt_segments]
    segments = [s for s in segments if s]
    if not segments:
        return None
    start = haystack.rfind(segments[0])
    if start < 0:
        return None
    hits, cursor = [], start
    for seg in segments:
        at = haystack.find(seg, cursor)
        if at < 0:
            return None
        hits.extend(range(at, at + len(seg)))
        cursor = at + len(seg)
    return sorted({owner[c] for c in hits})


def compute_groups(
    arch: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    tokenizer: Any = None,
    prompts: Sequence[Sequence[str] | str] | None = None,
) -> TokenGroups:
    """Label every position of ``input_ids`` with its token group.

    Args:
        arch: the model's resolved :class:`~mech.models.table.Architecture` (modality and marker ids).
        input_ids: LongTensor ``[batch, pos]``.
        attention_mask: ``[batch, pos]``, 0 at padding (all ones if None).
        tokenizer: used to decode tokens for prompt matching and to find special tokens.
        prompts: per row, the user's prompt (or its segments between placeholders); None for raw
            inputs.

    Returns:
        :class:`TokenGroups` with ``labels`` ``[batch, pos]``.

    Raises:
        InputError: ``input_ids`` is not 2-D, or ``prompts`` has a different length than the batch.
    """
    if input_ids.dim() != 2:
        raise InputError(f"input_ids must be [batch, pos]; got shape {tuple(input_ids.shape)}. "
                         "Add a batch axis with input_ids.unsqueeze(0).")
    batch, length = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if prompts is not None and len(prompts) != batch:
        raise InputError(f"{len(prompts)} prompts for a batch of {batch} rows; pass one prompt per row.")
    g = {n: i for i, n in enumerate(GROUPS)}
    ids_cpu, mask_cpu = input_ids.detach().cpu(), attention_mask.detach().cpu().bool()
    labels = torch.full((batch, length), g["text"], dtype=torch.long)
    modality = torch.zeros_like(mask_cpu)
    for name, tok in arch.modality_ids.items():
        hit = ids_cpu == tok
        labels[hit] = g[name]
        modality |= hit
    special = _special_ids(tokenizer) | set(arch.marker_ids)
    skip = set(arch.modality_ids.values())
    sources = []
    for row in range(batch):
        row_ids = ids_cpu[row].tolist()
        span = None
        if prompts is not None and tokenizer is not None:
            segs = [prompts[row]] if isinstance(prompts[row], str) else list(prompts[row])
            span = _prompt_span(tokenizer, row_ids, skip | special, segs)
        other = mask_cpu[row] & ~modality[row]
        if span is not None:
            template = other.clone()
            template[span] = False
            sources.append("prompt")
        else:
            template = other & torch.tensor([t in special for t in row_ids], dtype=torch.bool)
            sources.append("special_tokens")
        labels[row][template] = g["template"]
        first = other.nonzero().flatten()
        if len(first):
            labels[row, first[0]] = g["bos"]
    labels[~mask_cpu] = PAD
    return TokenGroups(labels.to(input_ids.device), GROUPS, tuple(sources))
