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

Other schemes (``scheme=`` of :func:`compute_groups`, or :func:`regroup` on existing groups) split the
non-modality positions at the first visual token (the first ``image`` / ``video`` / ``audio``
position of the row; a row without one has every position "before"):

* ``"mech"`` (default): :data:`GROUPS` above.
* ``"split_template"``: :data:`SPLIT_TEMPLATE_GROUPS`, mech's groups with ``template`` split into
  ``template_pre`` (before the first visual token: system prompt, the user's role marker, an
  image-start marker) and ``template_post`` (after it: image-end marker, the assistant's role
  marker, ...); ``text`` and ``bos`` unchanged.
* ``"fastv"``: :data:`FASTV_GROUPS`, FastV's token types (Chen et al. 2024, "An Image is Worth 1/2
  Tokens After Layer 2", §3.1, "system prompt, image tokens, user instruction, output tokens"):
  ``system`` = every non-modality position before the first visual token (BOS and the system
  prompt), ``instruction`` = every non-modality position after it (the user's words and the
  template around them). FastV's fourth type, the output tokens, are generated after the prompt
  and are not part of one forward of the prompt; their attention is the query, not a key group.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mech.errors import ConfigError, InputError

GROUPS: tuple[str, ...] = ("image", "video", "audio", "text", "template", "bos")
MODALITIES: tuple[str, ...] = ("image", "video", "audio")
SPLIT_TEMPLATE_GROUPS: tuple[str, ...] = ("image", "video", "audio", "text", "template_pre", "template_post", "bos")
FASTV_GROUPS: tuple[str, ...] = ("image", "video", "audio", "system", "instruction")
SCHEMES: dict[str, tuple[str, ...]] = {"mech": GROUPS, "split_template": SPLIT_TEMPLATE_GROUPS,
                                       "fastv": FASTV_GROUPS}
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


def regroup(groups: TokenGroups, scheme: str = "split_template") -> TokenGroups:
    """The same positions under another grouping scheme (see the module docstring).

    Args:
        groups: groups in mech's scheme (names :data:`GROUPS`), ``labels`` ``[batch, pos]``.
        scheme: ``"mech"`` (returns ``groups``), ``"split_template"`` or ``"fastv"``.

    Returns:
        :class:`TokenGroups` with ``names`` :data:`SCHEMES` ``[scheme]``; padding stays ``-1``.

    Raises:
        ConfigError: unknown scheme, or ``groups`` not in mech's scheme.
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"scheme={scheme!r}; allowed: {', '.join(SCHEMES)}")
    if tuple(groups.names) != GROUPS:
        raise ConfigError(f"regroup takes groups in mech's scheme {GROUPS}; got {tuple(groups.names)}. "
                          "Compute them again with scheme='mech'.")
    if scheme == "mech":
        return groups
    lab = groups.labels
    names = SCHEMES[scheme]
    old = {n: GROUPS.index(n) for n in GROUPS}
    new = {n: i for i, n in enumerate(names)}
    modality = torch.zeros_like(lab, dtype=torch.bool)
    for n in MODALITIES:
        modality |= lab == old[n]
    pos = torch.arange(lab.shape[1], device=lab.device).expand_as(lab)
    first = torch.where(modality, pos, lab.shape[1]).min(dim=1).values[:, None]  # [batch, 1]
    before = pos < first
    out = torch.full_like(lab, PAD)
    for n in MODALITIES:
        out[lab == old[n]] = new[n]
    other = (lab != PAD) & ~modality
    if scheme == "fastv":
        out[other & before] = new["system"]
        out[other & ~before] = new["instruction"]
    else:
        for n in ("text", "bos"):
            out[lab == old[n]] = new[n]
        template = lab == old["template"]
        out[template & before] = new["template_pre"]
        out[template & ~before] = new["template_post"]
    return TokenGroups(out, names, groups.text_source)


def compute_groups(
    arch: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    tokenizer: Any = None,
    prompts: Sequence[Sequence[str] | str] | None = None,
    scheme: str = "mech",
) -> TokenGroups:
    """Label every position of ``input_ids`` with its token group.

    Args:
        arch: the model's resolved :class:`~mech.models.table.Architecture` (modality and marker ids).
        input_ids: LongTensor ``[batch, pos]``.
        attention_mask: ``[batch, pos]``, 0 at padding (all ones if None).
        tokenizer: used to decode tokens for prompt matching and to find special tokens.
        prompts: per row, the user's prompt (or its segments between placeholders); None for raw
            inputs.
        scheme: ``"mech"`` (default, :data:`GROUPS`), ``"split_template"`` (``template`` split at the
            first visual token into ``template_pre`` / ``template_post``) or ``"fastv"`` (FastV's
            ``system`` / ``instruction`` split of every non-modality position; Chen et al. 2024); see
            :func:`regroup`.

    Returns:
        :class:`TokenGroups` with ``labels`` ``[batch, pos]`` and ``names`` :data:`SCHEMES` ``[scheme]``.

    Raises:
        InputError: ``input_ids`` is not 2-D, or ``prompts`` has a different length than the batch.
        ConfigError: unknown ``scheme``.
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"scheme={scheme!r}; allowed: {', '.join(SCHEMES)}")
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
    return regroup(TokenGroups(labels.to(input_ids.device), GROUPS, tuple(sources)), scheme)
