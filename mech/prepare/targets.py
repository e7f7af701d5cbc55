"""Which logit difference an instrument explains: the answer token and its counterfactual.

Two choices, both per sample ``[batch]`` token ids:

* :func:`answer_tokens` — the **gold** answer against a counterfactual: the sample's language-prior
  answer when it differs (organisms), else the clean run's best wrong option. Used by ``mech patch``
  to ask where the correct answer comes from.
* :func:`decision_tokens` — the model's **own decision**: its top option in the clean run against
  its runner-up option. Used by the contribution estimators: a modality contributes to the answer
  the model actually gives, right or wrong, which is what a modality-bias analysis explains (a
  text-biased model's wrong answers come from the text).

Options are scored by their first token: the option text for word-answer data sets (the
organisms), else the option letter (:func:`option_token_ids`, which evaluation scores with too).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mech.errors import ConfigError, InputError
from mech.models.load import takes_model
from mech.prepare.samples import LETTERS

__all__ = [
    "answer_tokens",
    "decision_tokens",
    "option_token_ids",
    "option_tokens",
    "target_refusal",
    "without_untargetable",
]


def _token(tok, word: str) -> int:
    ids = tok(str(word), add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError(f"the answer {word!r} encodes to no token")
    return int(ids[0])


def _scoring(sample: dict) -> str:
    return "option_text" if "answer_text" in sample else "letter"


def option_token_ids(tokenizer: Any, sample: dict, scoring: str) -> list[int]:
    """One token id per option of ``sample``: the first token of the letter or of the option text.

    Raises:
        ConfigError: unknown ``scoring``; a tokenizer that maps two letters to one token.
        InputError: a sample without options; two options sharing their first token; an option
            that tokenizes to nothing.
    """
    if scoring not in ("letter", "option_text"):
        raise ConfigError(f"scoring={scoring!r}; allowed: letter, option_text")
    options = sample.get("options") or []
    if not options:
        raise InputError(
            f"sample {sample.get('id')!r} has no options, so it cannot be scored by options; "
            "use method='direct' (generation) for open-ended questions."
        )
    texts = list(LETTERS[: len(options)]) if scoring == "letter" else [str(o).strip() for o in options]
    ids = []
    for t in texts:
        enc = tokenizer.encode(t, add_special_tokens=False)
        if not enc:
            raise InputError(f"option {t!r} of sample {sample.get('id')!r} tokenizes to nothing.")
        ids.append(int(enc[0]))
    if len(set(ids)) != len(ids):
        if scoring == "letter":
            raise ConfigError(
                f"the tokenizer maps the option letters {texts} to the tokens {ids} (not distinct); "
                "use scoring='option_text' or method='direct'."
            )
        raise InputError(
            f"options {texts} of sample {sample.get('id')!r} share a first token; "
            "use scoring='letter' or method='direct'."
        )
    return ids


def option_tokens(m, sample: dict) -> list[int]:
    """First-token ids of the sample's options (option words or letters, see the module docstring)."""
    return option_token_ids(m.tokenizer, sample, _scoring(sample))


def answer_tokens(
    m, samples: Sequence[dict], clean_logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gold answer and counterfactual token ids ``[batch]``.

    Answer: ``answer_text`` (organisms: a single word) else the option letter ``answer``.
    Counterfactual: the sample's ``prior_answer`` when it differs from the answer (organisms), else the
    highest-scoring wrong option of the clean run (``clean_logits`` ``[batch, vocab]``, last position).

    Raises:
        ConfigError: a sample with no wrong option.
    """
    tok = m.tokenizer
    ans, cf = [], []
    for i, s in enumerate(samples):
        words = "answer_text" in s
        a = _token(tok, s["answer_text"] if words else s["answer"])
        ans.append(a)
        prior = s.get("prior_answer")
        if words and prior is not None and prior != s["answer_text"]:
            cf.append(_token(tok, prior))
            continue
        cands = [c for c in (option_tokens(m, s) if s.get("options") else []) if c != a]
        if not cands:
            raise ConfigError(f"sample {s.get('id')!r} has no wrong option to use as the counterfactual")
        cf.append(max(cands, key=lambda c: float(clean_logits[i, c])))
    return torch.tensor(ans), torch.tensor(cf)


@takes_model
def decision_tokens(
    m, samples: Sequence[dict], clean_logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's top option and its runner-up option in the clean run, token ids ``[batch]``.

    Args:
        clean_logits: ``[batch, vocab]`` at the answer position of the clean (complete) run.

    Raises:
        InputError / ConfigError: a sample with fewer than two options, or options sharing a token.
    """
    top, second = [], []
    for i, s in enumerate(samples):
        ids = option_tokens(m, s)
        if len(ids) < 2:
            raise ConfigError(
                f"sample {s.get('id')!r} has {len(ids)} option(s); a decision needs at least two."
            )
        scores = clean_logits[i, torch.tensor(ids, device=clean_logits.device)]
        order = scores.argsort(descending=True).tolist()
        top.append(ids[order[0]])
        second.append(ids[order[1]])
    return torch.tensor(top), torch.tensor(second)


def target_refusal(sample: dict) -> str | None:
    """Why ``sample`` cannot define a logit difference between options, or None.

    A letter-scored sample needs at least two options and a gold letter among them. MMMU-Pro's official
    code keeps rows that break this (``validation_Accounting_29``: one option, gold ``B``; listed in
    :attr:`mech.prepare.data.Dataset.notes`) and counts them wrong; an instrument that explains a logit
    difference has nothing to explain there, so :func:`without_untargetable` leaves them out with this
    reason. Word-answer samples (``answer_text``, the organisms) and open questions are not checked here.
    """
    options = sample.get("options") or []
    if "answer_text" in sample or not options:
        return None
    if len(options) < 2:
        return f"{len(options)} option; a logit difference between options needs at least two"
    answer = str(sample.get("answer", ""))
    if answer not in LETTERS[: len(options)]:
        return f"gold answer {answer!r} is not one of its {len(options)} option letters"
    return None


def without_untargetable(data):
    """``data`` (a :class:`~mech.prepare.data.Dataset`) without the samples :func:`target_refusal` refuses,
    which join its ``skipped`` rows with their reason (counted in every result)."""
    import dataclasses

    keep, dropped = [], []
    for s in data:
        reason = target_refusal(s)
        if reason is None:
            keep.append(s)
        else:
            dropped.append((str(s.get("id")), reason))
    if not dropped:
        return data
    return dataclasses.replace(data, samples=keep, skipped=list(data.skipped) + dropped)
