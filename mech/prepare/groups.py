"""Token groups: a modality label for every position of a batch (docs/design.md, "Words, token groups and conditions").

Groups partition every (non-padding) position:

* ``image`` / ``video`` / ``audio`` — placeholder positions whose decoder input embedding is
  replaced by encoder features (ids from the family table);
* ``text`` — the user's words;
* ``template`` — chat-template, system, role and begin/end-marker tokens;
* ``bos`` — the first non-padding, non-modality position: the attention sink, kept apart so that
  it never inflates either modality (for prefix families such as PaliGemma, where the images come
  first, this is the ``<bos>`` after the images).

How ``text`` and ``template`` are told apart (:func:`user_mask`):

* inputs made by :meth:`mech.MechModel.prepare` know where the user's characters are in the string
  the tokenizer read (:mod:`mech.prepare.spans`: the prompt's span in the chat template's rendering,
  carried through the processor's placeholder expansion). The string is encoded again with
  ``return_offsets_mapping=True`` and must give the row's token ids exactly; then a token is
  ``text`` when the user's characters make up at least half of the characters its offsets cover
  (**the straddling rule**: a token holding template and user characters, e.g. SentencePiece's
  ``"▁What"`` after ``"[INST]"``, goes to the side with more of its characters, a tie to ``text``),
  and ``template`` otherwise; a token covering no characters (a BOS the tokenizer adds) and a token
  whose characters are an added token's own string (``<|im_start|>``, ``<|vision_start|>``, wherever
  it stands) are ``template``, and so are the family's markers. This holds for any script,
  whitespace and symbols included. A prompt passed with ``chat_template=False`` is the user's text
  everywhere except its placeholders and added tokens. ``TokenGroups.text_source[row] == "prompt"``.
* inputs that carry their prompts but not the rendered string (``Inputs(..., prompts=...)`` without
  groups): the row is decoded, the decoding is accepted only when it encodes back to the same ids,
  and the prompts are found in it (the first segment's last occurrence, the others after it); then
  as above, ``text_source == "prompt"``.
* otherwise (raw processor outputs, which carry no prompt; a slow tokenizer, which has no offsets;
  a template or processor that rewrote the prompt): tokens the tokenizer treats as special or added
  and the family's markers are ``template``, all others ``text``;
  ``text_source[row] == "special_tokens"``. Role words rendered as ordinary tokens ("USER",
  "assistant") and the system prompt then count as text; when prompts were given, a
  :class:`GroupsWarning` names the rows and the fix.

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

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mech.errors import ConfigError, InputError
from mech.prepare.spans import Rendered, Span

__all__ = [
    "FASTV_GROUPS",
    "GROUPS",
    "MODALITIES",
    "PAD",
    "SCHEMES",
    "SPLIT_TEMPLATE_GROUPS",
    "GroupsWarning",
    "TokenGroups",
    "compute_groups",
    "regroup",
    "user_mask",
]

GROUPS: tuple[str, ...] = ("image", "video", "audio", "text", "template", "bos")
MODALITIES: tuple[str, ...] = ("image", "video", "audio")
SPLIT_TEMPLATE_GROUPS: tuple[str, ...] = (
    "image",
    "video",
    "audio",
    "text",
    "template_pre",
    "template_post",
    "bos",
)
FASTV_GROUPS: tuple[str, ...] = ("image", "video", "audio", "system", "instruction")
SCHEMES: dict[str, tuple[str, ...]] = {
    "mech": GROUPS,
    "split_template": SPLIT_TEMPLATE_GROUPS,
    "fastv": FASTV_GROUPS,
}
PAD = -1


class GroupsWarning(UserWarning):
    """Token groups whose ``text`` / ``template`` split is approximate (the special-token rule) although
    the prompts were given: a slow tokenizer, or a template or processor that rewrote the prompt."""


@dataclass(frozen=True)
class TokenGroups:
    """Per-position group labels of a batch.

    Attributes:
        labels: LongTensor ``[batch, pos]``: index into ``names``; ``-1`` marks padding.
        names: group names along the group axis of every instrument's output.
        text_source: per row, ``"prompt"`` (``text`` = the tokens of the user's characters, from the
            tokenizer's character offsets; exact) or ``"special_tokens"`` (``text`` = every non-special
            token; approximate, see the module docstring).
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


def user_mask(tokenizer: Any, row: Rendered, ids: Sequence[int]) -> list[bool] | None:
    """Which tokens of one row are the user's text, from the tokenizer's character offsets.

    Args:
        tokenizer: a fast tokenizer (``return_offsets_mapping``).
        row: the string the tokenizer read and the user's spans in it.
        ids: the row's token ids without padding.

    Returns:
        one bool per token (True: ``text``; the rule is in the module docstring), or None when the
        tokenizer has no offsets or ``row.text`` does not encode to ``ids`` exactly.
    """
    if not getattr(tokenizer, "is_fast", False):
        return None
    try:
        enc = tokenizer(row.text, add_special_tokens=row.add_special_tokens, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):
        return None
    if list(enc["input_ids"]) != list(ids):
        return None
    added = {i: str(t) for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()}
    out = []
    for tok, (start, end) in zip(ids, enc["offset_mapping"]):
        width = end - start
        if width <= 0 or row.text[start:end] == added.get(tok):
            out.append(False)
            continue
        mine = sum(max(0, min(end, e) - max(start, s)) for s, e in row.spans)
        out.append(2 * mine >= width)
    return out


def _decoded(tokenizer: Any, ids: list[int], segments: Sequence[str]) -> Rendered | None:
    """The row decoded, with the spans of ``segments`` in it, when the decoding encodes back to ``ids``
    (byte-level BPE decodes exactly; a SentencePiece decoding that differs is refused); else None."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    segments = [s for s in segments if s]
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if not segments or list(tokenizer(text, add_special_tokens=False)["input_ids"]) != list(ids):
        return None
    spans: list[Span] = []
    at = text.rfind(segments[0])
    if at < 0:
        return None
    for seg in segments:
        at = text.find(seg, at if not spans else spans[-1][1])
        if at < 0:
            return None
        spans.append((at, at + len(seg)))
    return Rendered(text, tuple(spans), add_special_tokens=False)


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
        raise ConfigError(
            f"regroup takes groups in mech's scheme {GROUPS}; got {tuple(groups.names)}. "
            "Compute them again with scheme='mech'."
        )
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
    *,
    rendered: Sequence[Rendered | None] | None = None,
) -> TokenGroups:
    """Label every position of ``input_ids`` with its token group.

    Args:
        arch: the model's resolved :class:`~mech.models.table.Architecture` (modality and marker ids).
        input_ids: LongTensor ``[batch, pos]``.
        attention_mask: ``[batch, pos]``, 0 at padding (all ones if None).
        tokenizer: gives the character offsets of the tokens and the special tokens.
        prompts: per row, the user's prompt (or its segments between placeholders); None for raw
            inputs. Used only for rows without ``rendered``.
        scheme: ``"mech"`` (default, :data:`GROUPS`), ``"split_template"`` (``template`` split at the
            first visual token into ``template_pre`` / ``template_post``) or ``"fastv"`` (FastV's
            ``system`` / ``instruction`` split of every non-modality position; Chen et al. 2024); see
            :func:`regroup`.
        rendered: per row, the exact string the tokenizer read and the user's character spans in it
            (:class:`~mech.prepare.spans.Rendered`, made by ``prepare``), or None.

    Returns:
        :class:`TokenGroups` with ``labels`` ``[batch, pos]``, ``names`` :data:`SCHEMES` ``[scheme]``
        and ``text_source`` per row (``"prompt"``: from character offsets, exact;
        ``"special_tokens"``: the approximate rule of the module docstring).

    Raises:
        InputError: ``input_ids`` is not 2-D, or ``prompts`` / ``rendered`` has a different length
            than the batch.
        ConfigError: unknown ``scheme``.

    Warns:
        GroupsWarning: rows given ``prompts`` or ``rendered`` whose split could not come from offsets.
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"scheme={scheme!r}; allowed: {', '.join(SCHEMES)}")
    if input_ids.dim() != 2:
        raise InputError(
            f"input_ids must be [batch, pos]; got shape {tuple(input_ids.shape)}. "
            "Add a batch axis with input_ids.unsqueeze(0)."
        )
    batch, length = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    for name, given in (("prompts", prompts), ("rendered strings", rendered)):
        if given is not None and len(given) != batch:
            raise InputError(f"{len(given)} {name} for a batch of {batch} rows; pass one per row.")
    g = {n: i for i, n in enumerate(GROUPS)}
    ids_cpu, mask_cpu = input_ids.detach().cpu(), attention_mask.detach().cpu().bool()
    labels = torch.full((batch, length), g["text"], dtype=torch.long)
    modality = torch.zeros_like(mask_cpu)
    for name, tok in arch.modality_ids.items():
        hit = ids_cpu == tok
        labels[hit] = g[name]
        modality |= hit
    special = _special_ids(tokenizer) | set(arch.marker_ids)
    sources, approximate = [], []
    for row in range(batch):
        row_ids = ids_cpu[row].tolist()
        kept = mask_cpu[row].nonzero().flatten()
        mine = None
        if tokenizer is not None:
            source = rendered[row] if rendered is not None else None
            if source is None and prompts is not None:
                segs = [prompts[row]] if isinstance(prompts[row], str) else list(prompts[row])
                source = _decoded(tokenizer, [row_ids[k] for k in kept.tolist()], segs)
            if source is not None:
                mine = user_mask(tokenizer, source, [row_ids[k] for k in kept.tolist()])
        other = mask_cpu[row] & ~modality[row]
        if mine is not None:
            user = torch.zeros_like(other)
            user[kept] = torch.tensor(mine, dtype=torch.bool)
            marker = torch.tensor([t in arch.marker_ids for t in row_ids], dtype=torch.bool)
            template = other & (~user | marker)
            sources.append("prompt")
        else:
            template = other & torch.tensor([t in special for t in row_ids], dtype=torch.bool)
            sources.append("special_tokens")
            if (rendered is not None and rendered[row] is not None) or prompts is not None:
                approximate.append(row)
        labels[row][template] = g["template"]
        first = other.nonzero().flatten()
        if len(first):
            labels[row, first[0]] = g["bos"]
    labels[~mask_cpu] = PAD
    if approximate:
        why = (
            "the tokenizer has no character offsets (a slow tokenizer)"
            if not getattr(tokenizer, "is_fast", False)
            else "the rendered prompt could not be matched to the tokens"
        )
        warnings.warn(
            GroupsWarning(
                f"token groups of rows {approximate[:10]} split text from template by the special-token rule "
                f"(approximate: role words and the system prompt count as text), because {why}. Load a fast "
                "tokenizer (use_fast=True) and make inputs with m.prepare(images, prompts) for exact groups."
            ),
            stacklevel=2,
        )
    return regroup(TokenGroups(labels.to(input_ids.device), GROUPS, tuple(sources)), scheme)
