"""Does an input fit the model? Checks that ``m.prepare`` runs on every batch, and that a caller can run
once on a whole data set (:func:`check_data_fit`):

* :func:`check_length`: a row longer than the model's maximum positions (``max_position_embeddings`` of
  its text config, read through the family table) raises :class:`~mech.errors.InputError`;
* :func:`check_vocabulary`: prompts whose text tokens are mostly the tokenizer's unknown token (a
  word-level tokenizer, such as an organism's, on another data set) warn with :class:`FitWarning`.

Re-exported by :mod:`mech.prepare.inputs`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mech.errors import InputError

# ``m`` below: a mech.models.load.MechModel, annotated Any (loading imports prepare, never the reverse)


__all__ = [
    "UNKNOWN_LIMIT",
    "FitWarning",
    "check_data_fit",
    "check_length",
    "check_vocabulary",
    "image_refusal",
    "max_positions",
    "text_only_refusal",
    "unknown_share",
    "usable_images",
]


class FitWarning(UserWarning):
    """Inputs a model runs on but does not fit: most prompt words outside its tokenizer's vocabulary."""


#: share of the prompts' text tokens that may be the tokenizer's unknown token before a :class:`FitWarning`
UNKNOWN_LIMIT = 0.5


def max_positions(m: Any) -> int | None:
    """``max_position_embeddings`` of the model's text config (the family table's ``text_config``; the
    top-level config where that has none), or None when neither has one."""
    config = getattr(m.model, "config", None)
    text = config
    for part in m.arch.table.text_config.split(".") if m.arch.table.text_config else ():
        text = getattr(text, part, None)
    value = getattr(text, "max_position_embeddings", None) or getattr(config, "max_position_embeddings", None)
    return int(value) if value else None


def check_length(m: Any, data: Mapping[str, Any], prompts: Sequence[str] = ()) -> None:
    """Raise when a row of ``data`` (``input_ids`` / ``attention_mask`` ``[batch, pos]``) is longer than the
    model's :func:`max_positions`: the positions past it were never trained, so every number read there
    would be noise.

    Raises:
        InputError: names the row, its length, the limit and the fix.
    """
    limit, ids = max_positions(m), data.get("input_ids")
    if limit is None or not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        return
    mask = data.get("attention_mask")
    lengths = (
        mask.sum(-1)
        if isinstance(mask, torch.Tensor) and mask.shape == ids.shape
        else torch.full((ids.shape[0],), ids.shape[1])
    )
    for i, n in enumerate(lengths.tolist()):
        if n > limit:
            text = f" {prompts[i][:50]!r}" if i < len(prompts) else ""
            raise InputError(
                f"prompt {i} of this batch{text} is {int(n)} tokens long (its words, chat template and image "
                f"tokens), over the model's maximum of {limit} positions (max_position_embeddings of "
                "its text config); shorten the prompt, pass fewer or smaller images, or use a model "
                "with a longer context."
            )


def unknown_share(tokenizer: Any, texts: Sequence[str]) -> tuple[float, int]:
    """``(share, n)``: the share of the ``n`` tokens of ``texts`` (no special tokens added) that are the
    tokenizer's unknown token; ``(0.0, 0)`` without texts or for a tokenizer without an unknown token
    (byte-level BPE tokenizers never need one)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if unk is None or not texts:
        return 0.0, 0
    rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    n = sum(len(r) for r in rows)
    return (sum(int(t == unk) for r in rows for t in r) / n if n else 0.0), n


def _unknown_words(tokenizer: Any, texts: Sequence[str], k: int = 5) -> list[str]:
    words = list(dict.fromkeys(w for t in texts for w in t.split()))[:400]
    unk = tokenizer.unk_token_id
    hits = (
        [w for w, r in zip(words, tokenizer(words, add_special_tokens=False)["input_ids"]) if unk in r]
        if words
        else []
    )
    return hits[:k]


def check_vocabulary(
    tokenizer: Any, texts: Sequence[str], *, what: str = "the prompts", limit: float = UNKNOWN_LIMIT
) -> float:
    """Warn with :class:`FitWarning` when more than ``limit`` of the text tokens of ``texts`` are the
    tokenizer's unknown token (the model would read ``<unk>`` for most words); returns the share
    (:func:`unknown_share`). ``m.prepare`` checks its prompts' own words (not the chat template)."""
    share, n = unknown_share(tokenizer, texts) if tokenizer is not None else (0.0, 0)
    if n and share > limit:
        words = ", ".join(repr(w) for w in _unknown_words(tokenizer, texts))
        warnings.warn(
            f"{share:.0%} of the {n} text tokens of {what} are the tokenizer's unknown token "
            f"{getattr(tokenizer, 'unk_token', None)!r}: most question words (e.g. {words}) are outside the "
            "model's vocabulary, so what it answers says little about the text. Use a model whose "
            "tokenizer covers this data (the organisms know only the words of organism:shapes), or "
            "other prompts.",
            FitWarning,
            stacklevel=3,
        )
    return share


def check_data_fit(m: Any, data: Any, *, limit: float = UNKNOWN_LIMIT) -> float:
    """:func:`check_vocabulary` of a whole data set (a :class:`~mech.prepare.data.Dataset` or a list of
    sample dicts): the samples' own words (``question`` and ``options``; not the instruction mech's
    prompt styles add, whose few words a model may know) against ``m``'s tokenizer. One warning for the
    data set, where ``m.prepare`` checks each batch's whole prompts; returns the share of unknown tokens."""
    samples = list(getattr(data, "samples", data))
    texts = [str(t) for s in samples for t in [s.get("question") or "", *(s.get("options") or [])]]
    return check_vocabulary(
        m.tokenizer, texts, what=f"data set {getattr(data, 'name', 'of samples')}", limit=limit
    )


def image_refusal(processor: Any, images: Sequence[Any], *, cache: dict | None = None) -> str | None:
    """Why ``processor`` refuses one of one row's ``images``, or None when it takes them all.

    Asks the processor's own image processor about each image alone, so a refusal is found per row,
    before a batch is formed: Qwen2-VL's ``smart_resize`` raises for an aspect ratio over 200 (a 600×2
    image), other families for an image too small to resize. The verdict of an image processor depends on
    the image's size and mode only (it resizes, rescales and normalises), so it is asked with a blank
    image of that size and mode, once per size and mode (remembered in ``cache``, a dict the caller owns).

    Args:
        processor: the model's processor (``m.processor``); one without an ``image_processor`` (audio
            models, tokenizers) refuses nothing here.
        images: one row's images (``PIL.Image``), in order.

    Returns:
        A reason naming the image (``image k of n``), its size in pixels and the processor's own
        message (which states its limit), or None.
    """
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None or not callable(image_processor) or not images:
        return None
    from PIL import Image

    seen = {} if cache is None else cache
    for k, img in enumerate(images):
        size, mode = getattr(img, "size", None), getattr(img, "mode", None)
        if size is None or mode is None:
            continue  # not a PIL image: m.prepare reads and checks it
        key = (tuple(size), mode)
        if key not in seen:
            try:
                image_processor(images=[Image.new(mode, size)], return_tensors="pt")
                seen[key] = None
            except (ValueError, ZeroDivisionError, IndexError) as exc:
                message = " ".join(str(exc).split()) or type(exc).__name__
                seen[key] = f"the image processor ({type(image_processor).__name__}) refuses it: {message}"
        if seen[key] is not None:
            return f"image {k + 1} of {len(images)} ({size[0]}x{size[1]} pixels): {seen[key]}"
    return None


def usable_images(processor: Any, samples: Sequence[dict]) -> tuple[list[dict], list[tuple[str, str]]]:
    """``(keep, skipped)``: the samples whose images ``processor`` takes, and ``(id, reason)`` of the
    others (:func:`image_refusal`), in order. Every command's run loop applies it before batching, so
    one unusable image skips its row, never the batch or the run."""
    keep, skipped, seen = [], [], {}
    for s in samples:
        reason = image_refusal(processor, s.get("images") or [], cache=seen)
        if reason is None:
            keep.append(s)
        else:
            skipped.append((str(s.get("id")), reason))
    return keep, skipped


def text_only_refusal(processor: Any) -> str | None:
    """Why ``processor`` refuses a prompt without any image, or None when it takes one.

    Some processors cannot encode text alone: ``PaliGemmaProcessor`` raises "`images` are expected"
    (the checkpoints are prefix-LMs trained with an image before every prompt). The ``no_image``
    condition cannot be built for such a model; :func:`mech.measure.evaluation.run.answer_rows` reports
    it as unavailable, with this reason, instead of ending the run.

    Args:
        processor: the model's processor (``m.processor``); a bare tokenizer (or None) always takes text.
    """
    if processor is None or getattr(processor, "image_processor", None) is None:
        return None
    try:
        processor(text=["a"], return_tensors="pt")
    except (ValueError, TypeError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        return f"the processor ({type(processor).__name__}) refuses a prompt without images: {message}"
    return None
