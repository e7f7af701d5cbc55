"""Samples, the :class:`Dataset` that holds them, and their prompt.

A sample is a plain dict with at least ``id``, ``question``, ``images`` (list of PIL images, possibly
empty), ``options`` (list of str, possibly empty) and ``answer`` (option letter, or answer text when
there are no options), plus ``prompt_style`` and ``source`` (the loaders: :mod:`mech.prepare.data`).
Prompt formatting lives here so that every instrument formats the same way: :func:`format_prompt` /
:meth:`Dataset.prompt` (styles :data:`PROMPT_STYLES`).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mech.errors import ConfigError
from mech.prepare.mmmu_pro import COT, COT_VISION, DIRECT, DIRECT_VISION
from mech.prepare.mmmu_pro import prompt as mmmu_prompt

__all__ = [
    "COT_OPEN",
    "DIRECT_OPEN",
    "LETTERS",
    "PROMPT_STYLES",
    "SCORINGS",
    "Dataset",
    "answer_index",
    "format_prompt",
    "skipped_summary",
]

PROMPT_STYLES = ("bare", "direct", "cot")
SCORINGS = ("letter", "option_text")
LETTERS = string.ascii_uppercase
#: instructions for questions without options (mech's own; MMMU-Pro's DIRECT, COT, ... are its prompts.yaml)
DIRECT_OPEN = "Answer the question using a single word or phrase."
COT_OPEN = (
    "Think step by step. The last line of your response should be of the following format: "
    "'Answer: $ANSWER' (without quotes)."
)


@dataclass
class Dataset:
    """Samples of one data spec, plus every row that was skipped and why.

    ``default_style``: prompt style of :meth:`prompt`; ``scoring``: the default way to score
    multiple-choice answers (``"letter"``: option-letter logits; ``"option_text"``: the first
    token of each option's text, for models that answer a word, such as the organisms).
    ``notes``: ``(id, note)`` of rows kept as the benchmark's official code keeps them although
    something about them is odd (an MMMU-Pro answer letter beyond the options: always wrong).
    """

    name: str
    samples: list[dict[str, Any]]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    default_style: str = "direct"
    scoring: str = "letter"
    notes: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]

    def __iter__(self):
        return iter(self.samples)

    def skipped_summary(self) -> dict[str, Any]:
        """:func:`skipped_summary` of the rows this data set left out."""
        return skipped_summary(self.skipped)

    def prompt(self, sample: dict, style: str | None = None) -> str:
        """The prompt text of ``sample`` (see :func:`format_prompt`); style defaults to ``default_style``."""
        return format_prompt(sample, style or sample.get("prompt_style") or self.default_style)


def skipped_summary(skipped: Sequence[Sequence[str]]) -> dict[str, Any]:
    """``{"count", "reasons": reason -> count, "items": [{"id", "reason"[, "stage"]}]}`` of the rows
    left out; ``skipped`` holds ``(id, reason)`` or ``(id, reason, stage)`` tuples."""
    reasons: dict[str, int] = {}
    for row in skipped:
        reasons[row[1]] = reasons.get(row[1], 0) + 1
    items = [dict(zip(("id", "reason", "stage"), row)) for row in skipped]
    return {"count": len(skipped), "reasons": reasons, "items": items}


def format_prompt(sample: dict, style: str | None = None) -> str:
    """The prompt text of ``sample`` in ``style`` (without image placeholders).

    * ``"bare"``: the question as it is (the organisms' training format).
    * ``"direct"``: question, the options as ``"A. …"`` lines, and :data:`DIRECT` (MMMU-Pro's
      standard prompt); without options :data:`DIRECT_OPEN`.
    * ``"cot"``: the same with :data:`COT`; without options :data:`COT_OPEN`.

    MMMU-Pro samples (``source == "mmmu-pro"``) are formatted exactly as the official code does
    (:func:`mech.prepare.mmmu_pro.prompt`: the question verbatim, ``<image N>`` written ``[image]``;
    the ``vision`` setting's prompt is :data:`DIRECT_VISION` / :data:`COT_VISION` alone); other
    samples strip the question and leave ``<image N>`` as written.

    ``style`` defaults to ``sample["prompt_style"]`` (else ``"direct"``).

    Raises:
        ConfigError: unknown style (the message lists :data:`PROMPT_STYLES`).
    """
    style = style or sample.get("prompt_style") or "direct"
    if style not in PROMPT_STYLES:
        raise ConfigError(f"prompt style {style!r}; allowed: {', '.join(PROMPT_STYLES)}")
    if style != "bare" and sample.get("source") == "mmmu-pro":
        return mmmu_prompt(sample, style)
    question = (sample.get("question") or "").strip()
    if style == "bare":
        return question
    options = list(sample.get("options") or [])
    parts = [question] if question else []
    if sample.get("options_in_image"):
        parts.append(DIRECT_VISION if style == "direct" else COT_VISION)
    elif options:
        parts.append("\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options)))
        parts.append(DIRECT if style == "direct" else COT)
    else:
        parts.append(DIRECT_OPEN if style == "direct" else COT_OPEN)
    return "\n".join(parts)


def answer_index(sample: dict) -> int | None:
    """Index of the gold option (``answer`` is a letter), or None for open-ended samples."""
    if not sample.get("options"):
        return None
    return LETTERS.index(sample["answer"])
