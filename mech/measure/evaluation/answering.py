"""Answering a batch: option scoring (one deterministic forward) or generation with answer parsing.

* ``method="score"``: the log-softmax of the logits at the answer position (the last non-padding
  position, ``groups.last()``) restricted to one token per option: the option letter
  (``scoring="letter"``, MMMU-Pro's prompt asks for it) or the first token of the option text
  (``scoring="option_text"``, for models that answer a word, such as the organisms). The
  prediction is the argmax over the sample's options.
* ``method="direct"`` / ``"cot"``: greedy ``model.generate`` (left padding) with
  ``max_new_tokens``, then a parser (:data:`PARSERS`):

  - ``"official"`` (default): :func:`official_multi_choice`, MMMU-Pro's own
    ``parse_multi_choice_response`` (``mmmu-pro/evaluate.py`` of https://github.com/MMMU-Benchmark/MMMU,
    commit bb0b95a9) re-implemented step for step. Where it picks a letter at random
    (``random.choice``: no candidate at all), mech first reads a response that is exactly an
    option's text as that option (word-answer models such as the organisms), else takes
    :func:`deterministic_guess`: uniform over the options like the official guess, but a function
    of the response, so reruns agree. Guesses are counted (``guessed`` in the result).
  - ``"strict"``: :func:`parse_multi_choice_response`, mech's stricter reading: the last
    ``Answer: X`` line by a pattern, then MMMU's steps; an unparseable response is ``None`` (wrong,
    and consistent with nothing).
"""

from __future__ import annotations

import hashlib
import re
import string
from typing import Any

import torch

from mech.conditions import feature_condition, resolve_condition
from mech.engines.unembed import answer_logits
from mech.errors import ConfigError
from mech.prepare.data import LETTERS
from mech.prepare.targets import option_token_ids  # re-exported: its home before it moved down

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "METHODS",
    "PARSERS",
    "check_method",
    "deterministic_guess",
    "generate_batch",
    "is_correct",
    "normalize_answer",
    "official_multi_choice",
    "parse_multi_choice_response",
    "parse_open_response",
    "parse_response",
    "read_response",
    "score_batch",
]

METHODS = ("score", "direct", "cot")
#: how a generated answer is read: MMMU-Pro's official parser (default) or mech's stricter one
PARSERS = ("official", "strict")
DEFAULT_MAX_NEW_TOKENS = {"direct": 16, "cot": 512}


def _model_kwargs(inputs: Any) -> dict:
    """The forward's keyword arguments, without training ``labels`` (PaliGemma's processor adds them)."""
    return {k: v for k, v in inputs.items() if k != "labels"}


@torch.no_grad()
def score_batch(
    m: Any, inputs: Any, samples: list[dict], scoring: str, *, condition: str | None = None, seed: int = 0
) -> list[dict]:
    """Score the options of each row with one forward.

    Args:
        inputs: ``[batch, pos]`` inputs, one row per sample.
        condition: default: the inputs' own ``.condition`` (:func:`~mech.conditions.condition_inputs`),
            else ``"complete"``. Feature conditions (``visual_noise``/``visual_mean``) run under
            :func:`~mech.conditions.feature_condition`.

    Returns:
        per row ``{"pred": letter, "scores": [log p(option token)] per option}``.

    Raises:
        ConfigError: ``condition`` contradicts the inputs' own (:func:`~mech.conditions.resolve_condition`).
    """
    tok = m.tokenizer
    option_ids = [option_token_ids(tok, s, scoring) for s in samples]
    inp = m.inputs(inputs)
    condition = resolve_condition(inp, condition, default="complete")
    with feature_condition(m, inp, condition, seed=seed):
        rows = answer_logits(m, inp)  # only the answer position: O(batch x vocab), either padding side
    logp = torch.log_softmax(rows.float(), dim=-1).cpu()
    out = []
    for i, ids in enumerate(option_ids):
        scores = logp[i, ids]
        out.append({"pred": LETTERS[int(scores.argmax())], "scores": scores.tolist()})
    return out


@torch.no_grad()
def generate_batch(
    m: Any, inputs: Any, max_new_tokens: int, *, condition: str | None = None, seed: int = 0
) -> list[str]:
    """Greedy ``model.generate`` on a (left-padded) ``[batch, pos]`` batch; the decoded new text of each row.

    ``condition``: as :func:`score_batch` (default: the inputs' own, else ``"complete"``).

    Raises:
        ConfigError: ``condition`` contradicts the inputs' own.
    """
    inp = m.inputs(inputs)
    condition = resolve_condition(inp, condition, default="complete")
    tok = m.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with feature_condition(m, inp, condition, seed=seed):
        out = m.model.generate(
            **_model_kwargs(inp), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
        )
    new = out[:, inp["input_ids"].shape[1] :]
    return [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]


_ANSWER_LINE = re.compile(r"(?i:answer)\s*(?:(?i:is))?\s*[:：]\s*\**\(?([A-Z])\)?(?![A-Za-z])")


def parse_multi_choice_response(
    response: str, all_choices: list[str], index2ans: dict[str, str] | None = None
) -> str | None:
    """The option letter a free-form ``response`` gives, or None: mech's ``"strict"`` parser.

    It differs from the official one (:func:`official_multi_choice`): its answer-line pattern
    misses ``**Answer:** C``, ``Answer: \\( \\text{C} \\)`` or ``Answer: $C`` and then reads an
    earlier ``(A)`` of the reasoning; it returns None instead of guessing.

    Order (MMMU ``eval_utils.parse_multi_choice_response``, with MMMU-Pro's CoT answer line):
    the last ``Answer: X`` line; then ``(X)``; then `` X `` between spaces; then ``X.``; then,
    for responses longer than five words, the text of an option; with several candidates the
    one that occurs last. Letters outside ``all_choices`` are never returned.
    """
    if not response:
        return None
    hits = [h for h in _ANSWER_LINE.findall(response) if h in all_choices]
    if hits:
        return hits[-1]
    for ch in [",", ".", "!", "?", ";", ":", "'"]:
        response = response.strip(ch)
    response = " " + response + " "
    candidates, kind = [c for c in all_choices if f"({c})" in response], "bracket"
    if not candidates:
        candidates, kind = [c for c in all_choices if f" {c} " in response], "space"
    if not candidates:
        candidates, kind = [c for c in all_choices if f"{c}." in response], "period"
    if not candidates and index2ans and len(response.split()) > 5:
        low = response.lower()
        candidates, kind = (
            [c for c in all_choices if c in index2ans and str(index2ans[c]).lower() in low],
            "text",
        )
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    pattern = {"bracket": "({})", "space": " {} ", "period": "{}."}.get(kind)
    if pattern is None:
        pos = [response.lower().rfind(str(index2ans[c]).lower()) for c in candidates]
    else:
        pos = [response.rfind(pattern.format(c)) for c in candidates]
    return candidates[max(range(len(pos)), key=pos.__getitem__)]


def official_multi_choice(response: str, all_choices: list[str], index2ans: dict[str, str]) -> str | None:
    """MMMU-Pro's ``parse_multi_choice_response`` (``mmmu-pro/evaluate.py``), step for step; None
    exactly where the official code would return ``random.choice(all_choices)``.

    Steps: the text after the last ``"Answer:"`` (case-sensitive) if exactly one choice letter
    occurs in it (as a substring); else, on the response with ``, . ! ? ; : '`` stripped from its
    ends (one character class after another) and padded with spaces: ``(X)``; else ``"X "``; else
    ``"X."``; else, for responses of more than five words, the option texts (case-insensitive).
    Of several candidates, the one whose pattern occurs last (``rfind``; ``" X "`` for the
    second and third steps; the first of equal positions, as ``np.argmax``).
    """
    pos = response.rfind("Answer:")
    if pos != -1:
        after = response[pos + len("Answer:") :].strip()
        matching = [c for c in all_choices if c in after]
        if len(matching) == 1:
            return matching[0]
    for char in [",", ".", "!", "?", ";", ":", "'"]:
        response = response.strip(char)
    response = " " + response + " "
    index_ans, with_bracket = True, False
    candidates = [c for c in all_choices if f"({c})" in response]
    with_bracket = bool(candidates)
    if not candidates:
        candidates = [c for c in all_choices if f"{c} " in response]
    if not candidates:
        candidates = [c for c in all_choices if f"{c}." in response]
    if not candidates and len(response.split()) > 5:
        candidates = [c for c, ans in index2ans.items() if str(ans).lower() in response.lower()]
        index_ans = False
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    if not index_ans:
        starts = [response.lower().rfind(str(index2ans[c]).lower()) for c in candidates]
    else:
        starts = [response.rfind(f"({c})" if with_bracket else f" {c} ") for c in candidates]
    return candidates[starts.index(max(starts))]


def deterministic_guess(response: str, all_choices: list[str]) -> str:
    """The replacement of the official parser's ``random.choice(all_choices)``: a choice picked
    uniformly by the SHA-256 of the response and the choices, so the same response always gets the
    same letter and the expected accuracy of guessing stays ``1 / len(all_choices)``."""
    digest = hashlib.sha256(("\x1f".join(all_choices) + "\x1e" + response).encode("utf-8")).digest()
    return all_choices[int.from_bytes(digest[:8], "big") % len(all_choices)]


_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (VQA-style answer normalisation)."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def parse_open_response(response: str) -> str | None:
    """An open answer: the text after the last ``Answer:``, else the first line; normalised."""
    if not response or not response.strip():
        return None
    parts = re.split(r"answer\s*[:：]", response, flags=re.IGNORECASE)
    text = parts[-1] if len(parts) > 1 else response.strip().splitlines()[0]
    return normalize_answer(text) or None


def _option_words(response: str, choices: list[str], options: list) -> str | None:
    """The option whose words the response is (or starts with): word-answer models (the organisms)."""
    norm = normalize_answer(response)
    for c, o in zip(choices, options):
        opt = normalize_answer(str(o))
        if opt and (norm == opt or norm.startswith(opt + " ")):
            return c
    return None


def read_response(response: str, sample: dict, parser: str = "official") -> tuple[str | None, bool]:
    """``(prediction, guessed)`` of ``sample`` from a generated ``response``.

    The prediction is a letter, normalised text (open questions: :func:`parse_open_response`), or
    None; ``guessed`` is True where the ``"official"`` parser fell back to :func:`deterministic_guess`
    (the official code's random guess). See the module docstring for the parsers.

    Raises:
        ConfigError: an unknown ``parser`` (the message lists :data:`PARSERS`).
    """
    if parser not in PARSERS:
        raise ConfigError(f"parser={parser!r}; allowed: {', '.join(PARSERS)}")
    options = sample.get("options") or []
    if not options:
        return parse_open_response(response), False
    choices = list(LETTERS[: len(options)])
    index2ans = dict(zip(choices, (str(o) for o in options)))
    if parser == "official":
        letter = official_multi_choice(response or "", choices, index2ans)
        if letter is None:
            words = _option_words(response, choices, options) if response else None
            return (words, False) if words else (deterministic_guess(response or "", choices), True)
        return letter, False
    letter = parse_multi_choice_response(response, choices, index2ans)
    if letter is None and response:  # a model that answers with the option's words (the organisms)
        letter = _option_words(response, choices, options)
    return letter, False


def parse_response(response: str, sample: dict, parser: str = "official") -> str | None:
    """The prediction of ``sample`` from a generated ``response``: :func:`read_response` without the flag."""
    return read_response(response, sample, parser)[0]


def is_correct(pred: str | None, sample: dict) -> bool:
    """Whether ``pred`` answers ``sample``: the gold letter, or (open) the normalised gold text."""
    if pred is None:
        return False
    if sample.get("options"):
        return pred == sample["answer"]
    return pred == normalize_answer(str(sample["answer"]))


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"method={method!r}; allowed: {', '.join(METHODS)}")
    return method
