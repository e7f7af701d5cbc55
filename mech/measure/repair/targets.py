"""What a repair scores: each sample's candidate answers, its gold answer and the answer its prior gives.

Two scorings, both from the logits at the answer position (one forward serves both):

* ``options``: one token per option, the data set's own scoring (``letter`` or ``option_text``,
  :func:`mech.measure.evaluation.answering.option_token_ids`); the prediction is an option letter, and
  its distribution over letters is the check of Mirage (arXiv 2504.10020) that a repair did not just
  move the answer prior.
* ``answer_set``: the first token of every word of the sample's answer set (``organism:shapes``: the
  template's answers, ``mech.organisms.shapes.ANSWERS``), the definition of the organisms' cards; every
  item's prior answer is then a candidate, so "the prior is wrong" is always a live alternative.

The *prior answer* of a sample (``prior=``): ``"planted"`` reads the data's ``prior_answer`` (the
organisms' question prior, :func:`mech.organisms.shapes.prior_answer`); ``"white_image"`` takes what the
unedited model answers when the image is replaced by a white one (its text-only answer), for data sets
that define no prior.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mech.errors import ConfigError, InputError
from mech.measure.evaluation.answering import option_token_ids

__all__ = ["PRIORS", "SCORINGS", "Candidates", "answer_set", "candidates", "default_scoring", "resolve_prior"]

SCORINGS = ("options", "answer_set")
PRIORS = ("auto", "planted", "white_image")


def answer_set(sample: dict) -> tuple[str, ...] | None:
    """The answer words of ``sample``'s question type, or None when the data defines none."""
    if sample.get("source") not in ("organism:shapes", "organism:shapes-varied") or "template" not in sample:
        return None
    from mech.organisms.varied import ANSWERS  # organism:shapes' answer sets and the two-image types'

    return tuple(ANSWERS.get(sample["template"], ())) or None


@dataclass(frozen=True)
class Candidates:
    """One sample's candidates under one scoring.

    Attributes:
        labels: the candidate answers (option letters for ``options``, words for ``answer_set``).
        texts: the candidates' answer texts (option texts, or the words).
        ids: one token id per candidate.
        gold: index of the right answer.
    """

    labels: tuple[str, ...]
    texts: tuple[str, ...]
    ids: tuple[int, ...]
    gold: int

    def index_of(self, text: str | None) -> int | None:
        """The index of the candidate whose text is ``text`` (None when absent)."""
        if text is None:
            return None
        t = str(text).strip().lower()
        hits = [i for i, x in enumerate(self.texts) if str(x).strip().lower() == t]
        return hits[0] if hits else None


def candidates(tokenizer: Any, sample: dict, scoring: str, option_scoring: str) -> Candidates:
    """The :class:`Candidates` of ``sample``.

    Args:
        scoring: ``"options"`` or ``"answer_set"``; option_scoring: ``"letter"`` or ``"option_text"``.

    Raises:
        ConfigError: unknown scoring; ``answer_set`` for data without answer sets.
        InputError: as :func:`~mech.measure.evaluation.answering.option_token_ids`; two answer words sharing a token.
    """
    from mech.prepare.data import LETTERS, answer_index

    if scoring == "options":
        ids = option_token_ids(tokenizer, sample, option_scoring)
        opts = [str(o) for o in sample["options"]]
        gold = answer_index(sample)
        if gold is None:
            raise InputError(f"sample {sample.get('id')!r}: its answer is not one of its options.")
        return Candidates(tuple(LETTERS[: len(opts)]), tuple(opts), tuple(ids), int(gold))
    if scoring != "answer_set":
        raise ConfigError(f"scoring={scoring!r}; allowed: {', '.join(SCORINGS)}")
    words = answer_set(sample)
    if words is None:
        raise ConfigError(
            f"sample {sample.get('id')!r} has no answer set (only the organisms' data sets define one); "
            "use scoring='options'."
        )
    ids = [tokenizer.encode(w, add_special_tokens=False)[0] for w in words]
    if len(set(ids)) != len(ids):
        raise InputError(f"answer words {words} share a first token; use scoring='options'.")
    gold_text = sample.get("true_answer", sample.get("answer_text"))
    if gold_text not in words:
        raise InputError(
            f"sample {sample.get('id')!r}: gold answer {gold_text!r} is not in its answer set {words}."
        )
    return Candidates(tuple(words), tuple(words), tuple(int(i) for i in ids), words.index(gold_text))


def resolve_prior(samples: Sequence[dict], prior: str) -> str:
    """``"planted"`` or ``"white_image"`` (``"auto"``: planted when every sample carries ``prior_answer``).

    Raises:
        ConfigError: unknown value; ``planted`` on data without ``prior_answer``.
    """
    if prior not in PRIORS:
        raise ConfigError(f"prior={prior!r}; allowed: {', '.join(PRIORS)}")
    has = all(s.get("prior_answer") is not None for s in samples)
    if prior == "auto":
        return "planted" if has else "white_image"
    if prior == "planted" and not has:
        raise ConfigError(
            "prior='planted' needs a 'prior_answer' in every sample (organism:shapes has one); "
            "use prior='white_image' (the model's text-only answer)."
        )
    return prior


def default_scoring(samples: Sequence[dict]) -> str:
    """``answer_set`` when every sample has one (the organisms), else ``options``."""
    return "answer_set" if all(answer_set(s) is not None for s in samples) else "options"
