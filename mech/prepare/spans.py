"""Where the user's characters are in the text a tokenizer reads (used by :mod:`mech.prepare.groups`).

:meth:`mech.MechModel.prepare` renders each prompt through the chat template; the processor then
expands the image / video / audio placeholders of that rendered string into the string its
tokenizer actually reads. Token groups are assigned from the tokenizer's own character offsets into
that final string, so this module follows the user's characters through both steps:

1. :func:`render_user_turn` renders one user turn and records the character span of the user's
   text in the rendered string (the template is rendered once with a sentinel in place of the
   text, so the span is exact whatever the template writes around it); :func:`inline_spans` does
   the same for a prompt written with its own placeholders (``chat_template=False``).
2. :func:`recording` records the strings the processor hands its tokenizer (the rendered string
   with the placeholders expanded).
3. :func:`carry_spans` carries the spans from the rendered string into that string: both are cut
   into atoms at the tokenizer's added tokens (``<|image_pad|>``, ``<image>``, ...), the rendered
   string's atoms are aligned in order to the final string's (a processor only inserts atoms and
   text next to its placeholders), and each span moves with the plain-text atom that holds it.

Nothing here guesses: a step that cannot be done exactly returns None, and the caller reports the
row (``TokenGroups.text_source``) and warns (:class:`mech.prepare.groups.GroupsWarning`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SENTINEL",
    "Rendered",
    "Span",
    "added_pattern",
    "carry_spans",
    "encoded_texts",
    "inline_spans",
    "recording",
    "render_user_turn",
    "rendered_rows",
    "split_at_added",
]

Span = tuple[int, int]  # [start, end) character positions

#: stands in for the user's text while a template is rendered (private-use code points)
SENTINEL = "\ue000mech user text\ue001"


@dataclass(frozen=True)
class Rendered:
    """One row as its tokenizer read it.

    Attributes:
        text: the exact string the processor passed to its tokenizer for this row.
        spans: ``[start, end)`` character spans of the user's text in ``text``, in order.
        add_special_tokens: the ``add_special_tokens`` the processor encoded ``text`` with.
    """

    text: str
    spans: tuple[Span, ...]
    add_special_tokens: bool = True


def render_user_turn(
    processor: Any, content: Sequence[dict], prompt: str
) -> tuple[str, tuple[Span, ...] | None]:
    """The chat template's rendering of one user turn (``content``: its items, one of them
    ``{"type": "text", "text": prompt}``; generation prompt added) and the span of ``prompt`` in it.

    The template is rendered twice: with ``prompt`` and with :data:`SENTINEL` in its place. The span
    is where the sentinel landed, provided that substituting ``prompt`` there gives the first
    rendering character for character (the template wrote the text unchanged). A template that
    changes the text (trims it, say) gets the span of the stripped prompt when that occurs exactly
    once in the rendering; otherwise the span is None (the caller falls back and reports it).

    Returns:
        ``(rendered, spans)``: the string ``prepare`` hands the processor, and a one-element tuple
        of ``[start, end)`` (an empty tuple for an empty prompt), or None.
    """

    def render(text: str) -> str:
        items = [dict(c, text=text) if c.get("type") == "text" else c for c in content]
        return processor.apply_chat_template(
            [{"role": "user", "content": items}], add_generation_prompt=True, tokenize=False
        )

    rendered = render(prompt)
    if not prompt:
        return rendered, ()
    probe = render(SENTINEL)
    if probe.count(SENTINEL) == 1:
        at = probe.index(SENTINEL)
        if probe[:at] + prompt + probe[at + len(SENTINEL) :] == rendered:
            return rendered, ((at, at + len(prompt)),)
    core = prompt.strip()
    if core and rendered.count(core) == 1:
        at = rendered.index(core)
        return rendered, ((at, at + len(core)),)
    return rendered, None


def inline_spans(prompt: str, placeholder: str | None) -> tuple[Span, ...]:
    """Spans of ``prompt`` outside its ``placeholder`` occurrences (a prompt that holds its own image
    placeholders is the user's text everywhere else, whitespace included)."""
    if not placeholder:
        return ((0, len(prompt)),) if prompt else ()
    spans, pos = [], 0
    for piece in prompt.split(placeholder):
        if piece:
            spans.append((pos, pos + len(piece)))
        pos += len(piece) + len(placeholder)
    return tuple(spans)


@contextlib.contextmanager
def recording(tokenizer: Any) -> Iterator[list[tuple[Any, bool]]]:
    """Record what is passed to ``tokenizer(...)`` inside the block: a list of ``(text,
    add_special_tokens)``, one per call, filled as the calls happen.

    The tokenizer object is given a subclass of its own class for the duration of the block, whose
    ``__call__`` notes its arguments and then calls the class's own ``__call__`` unchanged (so
    ``isinstance`` checks and every attribute stay as they were); its class is restored in
    ``finally``. ``tokenizer=None`` records nothing.
    """
    calls: list[tuple[Any, bool]] = []
    if tokenizer is None:
        yield calls
        return
    cls = type(tokenizer)

    def __call__(self, text=None, *args, **kwargs):
        calls.append((text, bool(kwargs.get("add_special_tokens", True))))
        return cls.__call__(self, text, *args, **kwargs)

    spy = type(
        cls.__name__,
        (cls,),
        {"__call__": __call__, "__module__": cls.__module__, "__qualname__": cls.__qualname__},
    )
    try:
        tokenizer.__class__ = spy
    except TypeError:  # an object whose class cannot be swapped: nothing recorded, the caller falls back
        yield calls
        return
    try:
        yield calls
    finally:
        tokenizer.__class__ = cls


def encoded_texts(calls: Sequence[tuple[Any, bool]], batch: int) -> list[tuple[str, bool]] | None:
    """The row strings of the last recorded call that encoded ``batch`` strings (a list of ``batch``
    strings, or one string for a batch of 1), with its ``add_special_tokens``; else the last ``batch``
    calls when each encoded one string (a processor that encodes row by row); None otherwise. (Whether
    they are the rows is checked later: they must encode to the rows' ids.)"""
    for text, special in reversed(calls):
        if isinstance(text, str) and batch == 1:
            return [(text, special)]
        if isinstance(text, (list, tuple)) and len(text) == batch and all(isinstance(t, str) for t in text):
            return [(t, special) for t in text]
    last = list(calls[-batch:])
    if len(last) == batch and all(isinstance(text, str) for text, _ in last):
        return [(text, special) for text, special in last]
    return None


def added_pattern(tokenizer: Any) -> re.Pattern | None:
    """A regex matching any of ``tokenizer``'s added tokens (longest first), or None without any."""
    try:
        added = list(tokenizer.get_added_vocab())
    except (AttributeError, NotImplementedError):
        added = [str(t) for t in getattr(tokenizer, "all_special_tokens", [])]
    added = sorted({a for a in added if a}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, added))) if added else None


def _atoms(text: str, pattern: re.Pattern | None) -> list[tuple[bool, int, int]]:
    """``(is_added, start, end)`` pieces of ``text``: added-token occurrences and the plain runs
    between them; consecutive equal added tokens form one atom (a run of image placeholders)."""
    out: list[tuple[bool, int, int]] = []
    pos = 0
    for m in pattern.finditer(text) if pattern is not None else ():
        if m.start() > pos:
            out.append((False, pos, m.start()))
        if (
            out
            and out[-1][0]
            and out[-1][2] == m.start()
            and text[out[-1][1] : out[-1][1] + len(m.group())] == m.group()
        ):
            out[-1] = (True, out[-1][1], m.end())
        else:
            out.append((True, m.start(), m.end()))
        pos = m.end()
    if pos < len(text):
        out.append((False, pos, len(text)))
    return out


def _unit(text: str, atom: tuple[bool, int, int], pattern: re.Pattern | None) -> str:
    """An added atom's token string (one token of a run), or a plain atom's text."""
    added, start, end = atom
    if added and pattern is not None:
        return pattern.match(text, start).group()
    return text[start:end]


def carry_spans(
    rendered: str, spans: Sequence[Span], final: str, pattern: re.Pattern | None
) -> tuple[Span, ...] | None:
    """``spans`` of ``rendered`` carried into ``final`` (the processor's expansion of ``rendered``).

    Both strings are cut into atoms (:func:`_atoms`); the atoms of ``rendered`` are aligned in order
    to atoms of ``final`` (dynamic programming: an added atom matches the same token, a plain atom a
    plain atom that contains it, an exact plain match preferred), every atom of ``rendered`` matched.
    A span inside a plain atom moves with it (an atom found inside a longer one, e.g. ``"What"`` in
    ``"\\n\\nWhat"`` where a processor wrote ``"\\n\\n"`` after an image, is placed where the longer one
    starts or ends with it, else at its first occurrence).

    Returns:
        the spans in ``final`` (each holding exactly the characters it held in ``rendered``), or None
        when ``rendered`` does not align (a processor that rewrote the text) or a span crosses an
        added token.
    """
    if rendered == final:
        return tuple(spans)
    a, b = _atoms(rendered, pattern), _atoms(final, pattern)
    ua, ub = [_unit(rendered, x, pattern) for x in a], [_unit(final, x, pattern) for x in b]
    n, m = len(a), len(b)
    neg = -1
    # best[i][j]: best score matching the first i atoms of rendered within the first j of final
    best = [[0] * (m + 1)] + [[neg] * (m + 1) for _ in range(n)]
    for i in range(1, n + 1):
        row, prev = best[i], best[i - 1]
        for j in range(1, m + 1):
            row[j] = row[j - 1]
            if prev[j - 1] < 0 or a[i - 1][0] != b[j - 1][0]:
                continue
            if a[i - 1][0]:
                score = 1 if ua[i - 1] == ub[j - 1] else neg
            else:
                score = 2 if ua[i - 1] == ub[j - 1] else (1 if ua[i - 1] in ub[j - 1] else neg)
            if score > 0 and prev[j - 1] + score > row[j]:
                row[j] = prev[j - 1] + score
    if best[n][m] < 0:
        return None
    shift: dict[int, int] = {}  # plain atom of rendered -> its start in final
    j = m
    for i in range(n, 0, -1):
        while best[i][j] == best[i][j - 1]:
            j -= 1
        if not a[i - 1][0]:
            piece, host = ua[i - 1], ub[j - 1]
            offset = (
                0
                if host.startswith(piece)
                else (len(host) - len(piece) if host.endswith(piece) else host.index(piece))
            )
            shift[i - 1] = b[j - 1][1] + offset
        j -= 1
    out = []
    for start, end in spans:
        hit = [k for k, x in enumerate(a) if not x[0] and x[1] <= start and end <= x[2]]
        if not hit:
            if start == end:
                continue
            return None
        k = hit[0]
        delta = shift[k] - a[k][1]
        if final[start + delta : end + delta] != rendered[start:end]:  # never carry a span onto other text
            return None
        out.append((start + delta, end + delta))
    return tuple(out)


def split_at_added(spans: Sequence[Span], text: str, pattern: re.Pattern | None) -> tuple[Span, ...]:
    """``spans`` with the added-token occurrences inside them cut out (an inline prompt may hold
    ``<|vision_start|>`` and the like; those are never the user's words)."""
    out: list[Span] = []
    for start, end in spans:
        pos = start
        for m in pattern.finditer(text, start, end) if pattern is not None else ():
            if m.start() > pos:
                out.append((pos, m.start()))
            pos = m.end()
        if pos < end:
            out.append((pos, end))
    return tuple(out)


def rendered_rows(
    tokenizer: Any,
    texts: Sequence[str],
    spans: Sequence[tuple[Span, ...] | None],
    calls: Sequence[tuple[Any, bool]],
) -> list[Rendered | None]:
    """Per row, the string the processor's tokenizer read (from ``calls``, :func:`recording`) with the
    user's ``spans`` of ``texts`` (the strings handed to the processor) carried into it; None for a row
    whose spans are unknown or do not carry over (the caller reports it)."""
    final = encoded_texts(calls, len(texts))
    if final is None:
        return [None] * len(texts)
    pattern = added_pattern(tokenizer)
    out: list[Rendered | None] = []
    for text, span, (seen, special) in zip(texts, spans, final):
        carried = (
            None if span is None else carry_spans(text, split_at_added(span, text, pattern), seen, pattern)
        )
        out.append(None if carried is None else Rendered(seen, carried, special))
    return out
